"""When is an item under the camera? Vision (background subtraction) or a photo-eye.

Each trigger turns frames into Observations: the item's crop, where it was (world x in mm
from the camera centre) and where the belt was when the frame was taken. Items are
tracked by belt coordinate, so one item is classified once however many frames show it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, List, Optional

import cv2
import numpy as np

from edge.line.belt import BeltTracker
from edge.config import Config
from edge.line.sources import Frame


BACKGROUND_ADAPT = 0.01   # per frame: about 3 s to follow a lighting change at 30 fps


@dataclass
class Observation:
    item_id: str
    crop: np.ndarray          # BGR, the item with a little belt around it
    bbox: tuple               # x, y, w, h in the frame
    x_mm: float               # item centre, world coordinate at capture (downstream positive)
    belt_mm: float            # belt position at capture
    t_capture: float
    encoder: Optional[int]
    frame_seq: int


class _SeenItems:
    """Belt coordinates of items already classified (one decision per item)."""

    def __init__(self, min_gap_mm: float):
        self.min_gap, self.coords, self.count = min_gap_mm, [], 0

    def new(self, coordinate: float) -> Optional[str]:
        if any(abs(coordinate - c) < self.min_gap for c in self.coords):
            return None
        self.coords = self.coords[-64:] + [coordinate]
        self.count += 1
        return f"{self.count:06d}"


class Trigger:
    """Turns frames into Observations; items it sees but cannot observe are kept, with the
    reason, for take_unclassified(), so no item leaves the view without a trace."""

    def __init__(self):
        self._unclassified: List[str] = []
        self._lock = threading.Lock()

    def _lost(self, reason: str) -> None:
        with self._lock:
            self._unclassified.append(reason)

    def take_unclassified(self) -> List[str]:
        with self._lock:
            taken, self._unclassified = self._unclassified, []
        return taken

    def close(self) -> None:
        pass


class VisionTrigger(Trigger):
    def __init__(self, config: Config, belt: BeltTracker):
        super().__init__()
        self.cfg, self.line, self.belt = config.trigger, config.line, belt
        self.seen = _SeenItems(self.cfg.min_gap_mm)
        self.background: Optional[np.ndarray] = None
        self._learned, self._sum = 0, None
        self.kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (5, 5))
        join = max(3, int(self.cfg.join_mm / self.line.mm_per_px) | 1)
        self.join_kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (join, join))
        self._spanning = False  # an item longer than the view is in it

    def _roi(self, image: np.ndarray):
        h, w = image.shape[:2]
        x, y, rw, rh = self.cfg.roi
        return int(x * w), int(y * h), max(int(rw * w), 1), max(int(rh * h), 1)

    def observe(self, frame: Frame) -> List[Observation]:
        x0, y0, rw, rh = self._roi(frame.image)
        grey = cv2.cvtColor(frame.image[y0:y0 + rh, x0:x0 + rw], cv2.COLOR_BGR2GRAY).astype(np.float32)
        if self._learned < self.cfg.learn_frames:  # the empty belt, averaged
            self._sum = grey if self._sum is None else self._sum + grey
            self._learned += 1
            self.background = (self._sum / self._learned).astype(np.float32)
            return []
        mask = (cv2.absdiff(grey, self.background) > self.cfg.diff_threshold).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self.kernel)
        # Follow slow lighting and belt changes where no item is: a plant runs for months.
        cv2.accumulateWeighted(grey, self.background, BACKGROUND_ADAPT, mask=(1 - mask))
        # Join the parts of one item that differ little from the belt (a pale edge, a shadow):
        # a fragment's centre would misplace the item and its ejection.
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self.join_kernel)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        observations, spanning = [], False
        margin = self.cfg.edge_margin_px
        for contour in contours:
            bx, by, bw, bh = cv2.boundingRect(contour)
            if bw * bh < self.cfg.min_area * rw * rh:
                continue
            if bx <= margin and bx + bw >= rw - margin:  # across the whole view: never fully in it
                spanning = True
                continue
            if bx <= margin or bx + bw >= rw - margin:  # not fully in view along the belt yet
                continue
            if bx + bw / 2 < rw / 2:  # classify at the trigger line (ROI centre): the whole item is in view
                continue
            obs = self._observation(frame, (x0 + bx, y0 + by, bw, bh))
            if obs is not None:
                observations.append(obs)
        if spanning and not self._spanning:
            self._lost("too long for the view")
        self._spanning = spanning
        return observations

    def _observation(self, frame: Frame, bbox) -> Optional[Observation]:
        x, y, w, h = bbox
        width = frame.image.shape[1]
        x_mm = (x + w / 2 - width / 2) * self.line.mm_per_px
        belt_mm = self.belt.position_at_capture(frame.t_capture, frame.encoder)
        item_id = self.seen.new(belt_mm - x_mm)
        if item_id is None:
            return None
        crop = frame.image[y:y + h, x:x + w].copy()
        return Observation(item_id, crop, bbox, x_mm, belt_mm, frame.t_capture, frame.encoder, frame.seq)


class PhotoEyeTrigger(Trigger):
    """An external beam: on its rising edge the item's leading edge is at the eye; the first
    frame that shows the whole item (by belt travel since the edge) is classified.

    The beam is sampled by its own thread every millisecond (a GPIO edge interrupt does the
    same on hardware): sampling once per frame would misplace items by up to a frame's travel.
    """

    POLL_S = 0.001

    def __init__(self, config: Config, belt: BeltTracker, beam: Callable[[], bool]):
        super().__init__()
        self.cfg, self.line, self.belt, self.beam = config.trigger, config.line, belt, beam
        self.seen = _SeenItems(self.cfg.min_gap_mm)
        self.pending: List[float] = []   # belt positions at rising edges
        self._edges = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="photo-eye", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        was_blocked = False
        while not self._stop.wait(self.POLL_S):
            blocked = bool(self.beam())
            if blocked and not was_blocked:
                with self._edges:
                    self.pending.append(self.belt.position())
            was_blocked = blocked

    def close(self) -> None:
        self._stop.set()

    def observe(self, frame: Frame) -> List[Observation]:
        height, width = frame.image.shape[:2]
        half_view = width / 2 * self.line.mm_per_px
        belt_mm = self.belt.position_at_capture(frame.t_capture, frame.encoder)
        length = self.cfg.item_length_mm
        observations = []
        with self._edges:
            edges = list(self.pending)
        for edge_belt in edges:
            centre = self.cfg.photo_eye_position_mm + (belt_mm - edge_belt) - length / 2
            if centre - length / 2 < -half_view:
                continue  # not fully in view yet
            with self._edges:
                self.pending.remove(edge_belt)
            if centre + length / 2 > half_view:
                self._lost("passed between frames")  # missed, never guessed
                continue
            item_id = self.seen.new(belt_mm - centre)
            if item_id is None:
                continue
            left = int(width / 2 + (centre - length / 2) / self.line.mm_per_px)
            right = int(width / 2 + (centre + length / 2) / self.line.mm_per_px)
            bbox = (max(left, 0), 0, min(right, width) - max(left, 0), height)
            crop = frame.image[:, bbox[0]:bbox[0] + bbox[2]].copy()
            observations.append(Observation(item_id, crop, bbox, centre, belt_mm, frame.t_capture,
                                            frame.encoder, frame.seq))
        return observations
