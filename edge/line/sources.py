"""Frame sources behind one door, keyed by URI, and the capture thread.

sim://                simulated conveyor (edge.line.simulator)
file:///a/video.mp4   video file through OpenCV
folder:///a/images    image files in name order
v4l2:///dev/video0    USB/V4L2 camera
csi://0               Jetson CSI camera (GStreamer nvarguscamerasrc)
rtsp://host/stream    RTSP camera

The capture thread keeps only the newest frame (cameras buffer; lag is the top complaint),
stamps every frame with its capture time and encoder count, and never blocks without a
deadline: no frame for `read_timeout_s` means the source is reopened.
"""
from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlparse

import cv2
import numpy as np

from edge.config import Config, SourceConfig
from edge.errors import ConfigError, ImageError
from edge.vision.images import IMAGE_SUFFIXES, read_image, to_bgr8

log = logging.getLogger(__name__)


@dataclass
class Frame:
    image: np.ndarray           # BGR uint8
    t_capture: float            # time.monotonic() when the frame was taken
    seq: int
    encoder: Optional[int] = None
    meta: dict = field(default_factory=dict)


class EndOfStream(Exception):
    """A finite source (file, folder, simulation) has nothing more to give."""


class Source(ABC):
    @abstractmethod
    def read(self) -> Optional[Frame]:
        """Next frame, None when a frame was bad or not ready (the caller goes on), or raise EndOfStream."""

    def reopen(self) -> None:
        """Re-establish the device/stream after a timeout."""

    def close(self) -> None:
        pass


class OpenCVSource(Source):
    """Video files, V4L2, CSI (GStreamer) and RTSP through cv2.VideoCapture.

    A file that cannot be opened is a configuration error. A camera that cannot be opened
    (not plugged in yet, still booting) is not: the capture thread retries it with backoff
    while the line reports not ready, so the service does not exhaust systemd's start limit."""

    def __init__(self, target, api: int, cfg: SourceConfig, finite: bool):
        self.target, self.api, self.cfg, self.finite = target, api, cfg, finite
        self.seq, self.bad_frames = 0, 0
        self.cap = None
        try:
            self.reopen()
        except ImageError as exc:
            if finite:
                raise ConfigError(f"source.uri: {exc} (check the path)") from None
            log.error("%s; retrying while the line is not ready", exc)

    def reopen(self) -> None:
        if self.cap is not None:
            self.cap.release()
        timeout_ms = int(self.cfg.read_timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        self.cap = cv2.VideoCapture(self.target, self.api, params)
        if not self.cap.isOpened():
            raise ImageError(f"cannot open video source {self.target!r}")
        if self.api == cv2.CAP_V4L2:
            self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not one from the driver's queue
        self.frame_count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT)) if self.finite else 0
        self._next = time.monotonic()

    def read(self) -> Optional[Frame]:
        if self.cap is None or not self.cap.isOpened():
            raise IOError(f"video source {self.target!r} is not open")
        if self.finite:  # a recording is replayed at its frame rate, as the camera delivered it
            self._next = max(self._next + 1.0 / (self.cap.get(cv2.CAP_PROP_FPS) or self.cfg.fps), time.monotonic() - 0.1)
            time.sleep(max(0.0, self._next - time.monotonic()))
        ok, image = self.cap.read()
        t_capture = time.monotonic()
        if not ok or image is None:
            position = int(self.cap.get(cv2.CAP_PROP_POS_FRAMES))
            if self.finite and (self.frame_count <= 0 or position >= self.frame_count - 1 or self.bad_frames > 25):
                raise EndOfStream(self.target)
            self.bad_frames += 1
            log.warning("%s: unreadable frame near %d skipped", self.target, position)
            return None
        self.seq += 1
        return Frame(to_bgr8(image, f"{self.target} frame {self.seq}"), t_capture, self.seq)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()


class FolderSource(Source):
    """Image files in name order, paced at the configured fps; bad files skipped with the reason."""

    def __init__(self, folder: Path, cfg: SourceConfig):
        if not folder.is_dir():
            raise ConfigError(f"source.uri: folder {folder} does not exist")
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.cfg, self.index, self.seq = cfg, 0, 0
        self._next = time.monotonic()

    def read(self) -> Optional[Frame]:
        if self.index >= len(self.files):
            if not self.cfg.loop or not self.files:
                raise EndOfStream(str(self.files[0].parent) if self.files else "empty folder")
            self.index = 0
        path = self.files[self.index]
        self.index += 1
        self._next = max(self._next + 1.0 / self.cfg.fps, time.monotonic())
        time.sleep(max(0.0, self._next - time.monotonic()))
        try:
            image = read_image(path)
        except ImageError as exc:
            log.warning("skipped: %s", exc)
            return None
        self.seq += 1
        return Frame(image, time.monotonic(), self.seq, meta={"path": str(path)})


def csi_pipeline(sensor: int, cfg: SourceConfig) -> str:
    return (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={cfg.width},"
            f"height={cfg.height},framerate={int(cfg.fps)}/1 ! nvvidconv ! video/x-raw,format=BGRx ! "
            f"videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")


def open_source(config: Config, simulator=None) -> Source:
    cfg = config.source
    uri = urlparse(cfg.uri)
    if uri.scheme == "sim":
        if simulator is None:
            raise ConfigError("source.uri: sim:// needs the simulated conveyor (scrapsort run/demo create it)")
        return simulator
    if uri.scheme == "file":
        return OpenCVSource(uri.path, cv2.CAP_ANY, cfg, finite=True)
    if uri.scheme == "folder":
        return FolderSource(Path(uri.path), cfg)
    if uri.scheme == "v4l2":
        return OpenCVSource(uri.path, cv2.CAP_V4L2, cfg, finite=False)
    if uri.scheme == "csi":
        return OpenCVSource(csi_pipeline(int(uri.netloc or 0), cfg), cv2.CAP_GSTREAMER, cfg, finite=False)
    if uri.scheme in ("rtsp", "rtsps"):
        return OpenCVSource(cfg.uri, cv2.CAP_FFMPEG, cfg, finite=False)
    raise ConfigError(f"source.uri: unsupported source {cfg.uri!r} (sim://, file://, folder://, v4l2://, csi://, rtsp://)")


class CaptureThread(threading.Thread):
    """Reads the source continuously; hands each good frame to `on_frame` and keeps the newest.

    Good means: new (not a repeat of the last one: a frozen camera), and of the configured
    size (the belt geometry, line.mm_per_px, is calibrated for it; frames of another size
    are refused, never guessed at). Without a good frame for read_timeout_s the source is
    reopened; reopenings that bring no good frame count as failed until one does.
    """

    def __init__(self, source: Source, cfg: SourceConfig, on_frame: Callable[[Frame], None],
                 encoder: Optional[Callable[[], int]] = None):
        super().__init__(name="capture", daemon=True)
        self.source, self.cfg, self.on_frame, self.encoder = source, cfg, on_frame, encoder
        self.stop_event = threading.Event()
        self.latest: Optional[Frame] = None
        self.frames = self.processed = self.bad_frames = self.frozen_frames = self.wrong_size_frames = 0
        self.reopens = self.failed_reopens = 0
        self.wrong_size = False                   # the latest frame had another resolution than configured
        self.last_frame_at = time.monotonic()     # the last good frame; reopening does not move it
        self._reopen_due = self.last_frame_at + cfg.read_timeout_s
        self.ended = threading.Event()
        self.error: Optional[str] = None
        self._last_signature = None
        self._read_error = ""

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                frame = self.source.read()
            except EndOfStream:
                self.ended.set()
                return
            except Exception as exc:  # a camera fault must not kill capture: reopen below
                if str(exc) != self._read_error:
                    log.warning("source read failed: %s", exc)
                self._read_error, frame = str(exc), None
                self.stop_event.wait(0.05)  # a failing device answers at once: do not spin on it
            if frame is None:
                self.bad_frames += 1
            elif self._frozen(frame):
                self.frozen_frames += 1
            elif not self._expected_size(frame):
                self.wrong_size_frames += 1
            else:
                self._good(frame)
                continue
            self._maybe_reopen()

    def _good(self, frame: Frame) -> None:
        if frame.encoder is None and self.encoder is not None:
            frame.encoder = self.encoder()
        self.frames += 1
        self.last_frame_at = time.monotonic()
        self._reopen_due = self.last_frame_at + self.cfg.read_timeout_s
        self.failed_reopens, self.error, self.wrong_size, self._read_error = 0, None, False, ""
        self.latest = frame
        try:
            self.on_frame(frame)
            self.processed += 1
        except Exception:  # a bad frame must not end capture; it is logged and counted
            self.bad_frames += 1
            log.exception("frame %d could not be processed", frame.seq)

    def _frozen(self, frame: Frame) -> bool:
        """Some backends repeat the last frame forever after an unplug: compare a subsample."""
        signature = frame.image[::16, ::16].tobytes()
        frozen = signature == self._last_signature
        self._last_signature = signature
        return frozen

    def _expected_size(self, frame: Frame) -> bool:
        height, width = frame.image.shape[:2]
        if (width, height) == (self.cfg.width, self.cfg.height):
            return True
        error = (f"camera delivers {width}x{height}, but source.width/height say {self.cfg.width}x{self.cfg.height} "
                 f"(line.mm_per_px is calibrated for that): set the camera's mode back, or re-measure and fix the config")
        if error != self.error:
            log.error("%s; its frames are not used", error)
        self.error, self.wrong_size = error, True
        return False

    def _maybe_reopen(self) -> None:
        if time.monotonic() < self._reopen_due:
            return
        self.reopens += 1
        self.failed_reopens += 1  # until a good frame proves otherwise
        try:
            self.source.reopen()
            log.warning("no good frame for %.1f s: source reopened (%d in a row)", self.cfg.read_timeout_s,
                        self.failed_reopens)
        except Exception as exc:
            self.error = f"reopen failed ({exc})"
            log.error("source reopen %d failed: %s", self.failed_reopens, exc)
        # Back off while nothing good comes: read_timeout_s, doubling, at most 30 s.
        backoff = min(self.cfg.read_timeout_s * 2 ** max(self.failed_reopens - 1, 0), 30.0)
        self._reopen_due = time.monotonic() + backoff
        if self.failed_reopens > 1:
            self.stop_event.wait(min(backoff, 1.0))  # a dead device answers at once: do not spin on it

    def stop(self) -> None:
        self.stop_event.set()
