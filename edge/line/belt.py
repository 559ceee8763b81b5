"""Where the belt is: from a fixed speed or from encoder counts.

Positions are in mm of belt travel. An item seen at world x (mm from the camera centre,
downstream positive) when the belt was at B reaches an ejector at E when the belt is at
B + (E - x): ejections are keyed to belt position at capture, not to when a decision ends.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Optional

from edge.config import LineConfig


class BeltTracker:
    def __init__(self, cfg: LineConfig, encoder: Optional[Callable[[], int]] = None):
        if cfg.encoder and encoder is None:
            raise ValueError("line.encoder is on but no encoder input is available")
        self.cfg = cfg
        self.encoder = encoder if cfg.encoder else None
        self.t0 = time.monotonic()
        self._samples = deque(maxlen=8)   # (time, position) for the speed estimate
        self._lock = threading.Lock()

    def position_at_capture(self, t_capture: float, encoder_count: Optional[int]) -> float:
        if self.encoder is not None and encoder_count is not None:
            return encoder_count * self.cfg.mm_per_count
        return (t_capture - self.t0) * self.cfg.belt_speed_mm_s

    def position(self) -> float:
        now = time.monotonic()
        if self.encoder is None:
            return (now - self.t0) * self.cfg.belt_speed_mm_s
        position = self.encoder() * self.cfg.mm_per_count
        with self._lock:
            self._samples.append((now, position))
        return position

    def speed(self) -> float:
        """mm/s: configured, or estimated from recent encoder samples."""
        if self.encoder is None:
            return self.cfg.belt_speed_mm_s
        with self._lock:
            if len(self._samples) < 2 or self._samples[-1][0] - self._samples[0][0] < 1e-3:
                return self.cfg.belt_speed_mm_s
            (t0, p0), (t1, p1) = self._samples[0], self._samples[-1]
        return max((p1 - p0) / (t1 - t0), 1e-3)

    def seconds_until(self, target_mm: float) -> float:
        return (target_mm - self.position()) / self.speed()
