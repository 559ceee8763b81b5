"""A simulated conveyor: real item photos moving across a belt, with the truth known.

Renders camera frames in real time from a class-folder tree (TrashNet), moves them at a
constant or swinging speed (read through a simulated encoder), offers a photo-eye input,
and knows for every item its label, where it was at any time and when its centre passes
each ejector, so the whole loop can be checked against the truth. For the demo and tests.

Items come in rows along the belt: one item per row (single file, centred) by default, or
several abreast with a gap (or touching), shifted, resized and turned at random (seeded).
The image's x axis is the belt direction, its y axis the belt width; both at mm_per_px.
"""
from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import cv2
import numpy as np

from edge.config import Config
from edge.errors import ConfigError
from edge.vision.dataset import Manifest
from edge.vision.images import IMAGE_SUFFIXES, read_image
from edge.line.inputs import Encoder, LineInputs, PhotoEye
from edge.line.sources import EndOfStream, Frame, Source

BELT_GREY = 70
NOISE_FRAMES = 7


@dataclass
class SimItem:
    index: int
    label: str
    path: str
    image: np.ndarray    # scaled and turned as it lies on the belt
    mask: np.ndarray     # which pixels of `image` are the item
    s_mm: float          # belt coordinate: world x of the centre = belt_position - s_mm
    y_mm: float = 0.0    # across the belt: centre relative to the camera's centre line (image y, down +)
    length_mm: float = 0.0   # extent along the belt
    width_mm: float = 0.0    # extent across the belt
    angle_deg: float = 0.0
    row: int = 0


class BeltMotion:
    """Belt position (mm) over time: v0 (1 + a sin(2 pi t / T)), integrated exactly."""

    def __init__(self, speed: float, variation: float, period: float):
        self.v0, self.a, self.T = speed, variation, period

    def position(self, t: float) -> float:
        if not self.a:
            return self.v0 * t
        return self.v0 * t + self.v0 * self.a * self.T / (2 * math.pi) * (1 - math.cos(2 * math.pi * t / self.T))

    def time_at(self, position: float) -> float:
        low, high = 0.0, max(1.0, position / (self.v0 * (1 - abs(self.a))) + 1.0)
        for _ in range(60):  # monotonic (|a| < 1): bisection to well below a microsecond
            mid = (low + high) / 2
            low, high = (mid, high) if self.position(mid) < position else (low, mid)
        return (low + high) / 2


class SimulatedConveyor(Source):
    def __init__(self, config: Config, items: Optional[List[tuple]] = None):
        sim, self.config = config.simulator, config
        self.width, self.height = config.source.width, config.source.height
        self.mm_per_px, self.fps = config.line.mm_per_px, config.source.fps
        self.motion = BeltMotion(config.line.belt_speed_mm_s, sim.speed_variation, sim.speed_period_s)
        self.rng = np.random.default_rng(sim.seed)
        self.items = self._place(items if items is not None else sample_items(config), sim)
        last_ejector = max((e.position_mm for e in config.decision.ejectors), default=0.0)
        self.end_position = max((i.s_mm + i.length_mm for i in self.items), default=0.0) + last_ejector
        self.background = np.full((self.height, self.width, 3), BELT_GREY, np.uint8)
        # Sensor noise, drawn once: drawing it for every frame (cv2.randu, 6 ms at 960x540) would take
        # a fifth of a core at 30 fps from the line the simulator stands in for a camera of.
        self._noise = [cv2.randu(np.empty_like(self.background), (0, 0, 0), (6, 6, 6)) for _ in range(NOISE_FRAMES)]
        self._renders = 0
        self._render_s = 0.005   # how long drawing a frame takes (averaged)
        self.t0: Optional[float] = None
        self.seq = 0
        self._lock = threading.Lock()

    def _place(self, items: List[tuple], sim) -> List[SimItem]:
        rng = random.Random(sim.seed)
        placed = []
        start = self.width / 2 * self.mm_per_px + sim.item_length_mm * (1 + sim.size_variation) * 1.5
        for i, (label, path) in enumerate(items):  # upstream of the view, row after row
            row, slot = divmod(i, sim.abreast)
            length = sim.item_length_mm * (1 + rng.uniform(-sim.size_variation, sim.size_variation))
            angle = rng.uniform(-sim.rotation_deg, sim.rotation_deg)
            image, mask = self._item_image(read_image(path), length, angle)
            _, _, w, h = cv2.boundingRect(mask)  # the item's own pixels: a turned photo's corners are not
            placed.append(SimItem(i, label, str(path), image, mask, start + row * sim.spacing_mm, 0.0,
                                  w * self.mm_per_px, h * self.mm_per_px, angle, row))
        for row in sorted({item.row for item in placed}):
            self._spread_across([item for item in placed if item.row == row], sim, rng)
        return placed

    def _item_image(self, photo: np.ndarray, length_mm: float, angle: float):
        """The photo at its size on the belt, turned by `angle`, with the mask of its pixels."""
        length_px = max(8, int(length_mm / self.mm_per_px))
        height_px = max(8, min(int(length_px * photo.shape[0] / photo.shape[1]), self.height - 8))
        image = cv2.resize(photo, (length_px, height_px), interpolation=cv2.INTER_AREA)
        mask = np.full(image.shape[:2], 255, np.uint8)
        if not angle:
            return image, mask
        turn = cv2.getRotationMatrix2D((length_px / 2, height_px / 2), angle, 1.0)
        cos, sin = abs(turn[0, 0]), abs(turn[0, 1])
        w, h = int(height_px * sin + length_px * cos) + 1, int(height_px * cos + length_px * sin) + 1
        turn[0, 2] += w / 2 - length_px / 2
        turn[1, 2] += h / 2 - height_px / 2
        # Replicated border: the item's edge keeps its colour instead of fading into black.
        return (cv2.warpAffine(image, turn, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE),
                cv2.warpAffine(mask, turn, (w, h), flags=cv2.INTER_NEAREST))

    def _spread_across(self, row: List[SimItem], sim, rng: random.Random) -> None:
        """Side by side across the belt, `lateral_gap_mm` apart (0 when the row touches),
        centred on the belt with a random shift that keeps the row on the belt (the view's
        width: the camera sees the whole belt) where it fits."""
        gap = 0.0 if rng.random() < sim.touching_fraction else sim.lateral_gap_mm
        total = sum(item.width_mm for item in row) + gap * (len(row) - 1)
        room = max(0.0, (self.height * self.mm_per_px - total) / 2)
        shift = rng.uniform(-sim.lateral_jitter_mm, sim.lateral_jitter_mm)
        edge = -total / 2 + min(max(shift, -room), room)
        for item in row:
            item.y_mm = edge + item.width_mm / 2
            edge += item.width_mm + gap

    # -- time and position -------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self.t0 is None:
                self.t0 = time.monotonic()

    def belt_mm(self, now: Optional[float] = None) -> float:
        self.start()
        return self.motion.position((now if now is not None else time.monotonic()) - self.t0)

    def encoder_count(self) -> int:
        return int(self.belt_mm() / self.config.line.mm_per_count)

    def inputs(self) -> LineInputs:
        """The conveyor's encoder and photo-eye, as a plant's would be read."""
        return LineInputs(encoder=_Encoder(self), photo_eye=_PhotoEye(self))

    def world_x(self, item: SimItem, now: float) -> float:
        return self.belt_mm(now) - item.s_mm

    def photo_eye(self) -> bool:
        """True while an item covers the beam at trigger.photo_eye_position_mm."""
        now, eye = time.monotonic(), self.config.trigger.photo_eye_position_mm
        return any(abs(self.world_x(item, now) - eye) <= item.length_mm / 2 for item in self.items)

    def truth_time(self, item: SimItem, position_mm: float) -> float:
        """Monotonic time at which the item's centre passes world position `position_mm`."""
        self.start()
        return self.t0 + self.motion.time_at(position_mm + item.s_mm)

    def item_at(self, t: float, x_mm: float, y_mm: float = 0.0, tolerance_mm: float = 40.0) -> Optional[SimItem]:
        """The item whose centre was nearest (x, y) at time t, if within `tolerance_mm`."""
        def distance(item):
            return math.hypot(self.world_x(item, t) - x_mm, item.y_mm - y_mm)
        best = min(self.items, key=distance, default=None)
        return best if best is not None and distance(best) <= tolerance_mm else None

    def finished(self) -> bool:
        return self.belt_mm() > self.end_position

    # -- Source ----------------------------------------------------------------------------
    def read(self) -> Optional[Frame]:
        self.start()
        if self.finished():
            raise EndOfStream("simulation finished")
        self.seq += 1
        # A camera exposes at its frame clock and delivers the image a little later: the frame
        # is rendered for its exposure time while waiting for it, so the time spent drawing the
        # simulation does not count as the line's latency (unless the reader is behind).
        # Drawing starts just before the exposure, not at once: it would take a core from the
        # line's work on the frame before.
        exposure = max(self.t0 + self.seq / self.fps, time.monotonic())
        time.sleep(max(0.0, exposure - 2 * self._render_s - time.monotonic()))
        started = time.monotonic()
        frame = self.render(exposure)
        self._render_s = 0.8 * self._render_s + 0.2 * (time.monotonic() - started)
        time.sleep(max(0.0, exposure - time.monotonic()))
        return Frame(frame, exposure, self.seq, encoder=int(self.belt_mm(exposure) / self.config.line.mm_per_count))

    def render(self, now: float) -> np.ndarray:
        frame = self.background.copy()
        self._renders += 1
        cv2.add(frame, self._noise[self._renders % NOISE_FRAMES], dst=frame)  # no two frames in a row alike
        for item in self.items:
            h, w = item.image.shape[:2]
            left = int(round(self.width / 2 + self.world_x(item, now) / self.mm_per_px - w / 2))
            top = int(round(self.height / 2 + item.y_mm / self.mm_per_px - h / 2))
            x0, x1 = max(left, 0), min(left + w, self.width)
            y0, y1 = max(top, 0), min(top + h, self.height)
            if x0 < x1 and y0 < y1:
                patch, keep = item.image[y0 - top:y1 - top, x0 - left:x1 - left], item.mask[y0 - top:y1 - top, x0 - left:x1 - left]
                np.copyto(frame[y0:y1, x0:x1], patch, where=keep[..., None] > 0)
        return frame


class _Encoder(Encoder):
    def __init__(self, conveyor: SimulatedConveyor):
        self.conveyor = conveyor

    def count(self) -> int:
        return self.conveyor.encoder_count()


class _PhotoEye(PhotoEye):
    def __init__(self, conveyor: SimulatedConveyor):
        self.conveyor = conveyor

    def blocked(self) -> bool:
        return self.conveyor.photo_eye()


def sample_items(config: Config) -> List[tuple]:
    """(label, path) for the simulation: the run's test split when a manifest exists (images
    the model never trained on), else a seeded sample of the dataset folder."""
    sim = config.simulator
    manifest = config.run_path / "manifest.json"
    rng = random.Random(sim.seed)
    if manifest.is_file():
        split = Manifest.load(manifest)
        pool = [(item.label, split.absolute(item)) for item in split.split(sim.split)]
    else:
        root = Path(sim.dataset)
        if not root.is_dir():
            raise ConfigError(f"simulator.dataset: {root} does not exist (a class-folder tree of item photos)")
        pool = [(label, p) for label in config.classes for p in sorted((root / label).glob("*"))
                if p.suffix.lower() in IMAGE_SUFFIXES]
    if not pool:
        raise ConfigError("simulator: no item images found (check simulator.dataset / the manifest's split)")
    return [pool[i] for i in rng.sample(range(len(pool)), min(sim.items, len(pool)))]
