"""The last hour of the line in one-minute buckets, for the operator page's charts.

Fed by the sorting loop (one call per decision, constant time) and read by the page a few
times a minute; memory is bounded (60 buckets, latency samples capped per bucket). The
charts need no external service: the daemon keeps its own hour.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, List, Tuple

import numpy as np

CONFIDENCE_BINS = 10  # top-1 confidence histogram over 0..1
SAMPLES_PER_MINUTE = 1200  # latency samples kept per stage and minute (20 items/s)


class _Minute:
    def __init__(self, start: int):
        self.start = start
        self.items: Dict[str, int] = {}
        self.rejects = 0
        self.confidence = np.zeros(CONFIDENCE_BINS, np.int64)
        self.latency: Dict[str, List[float]] = {}


class History:
    def __init__(self, minutes: int = 60, clock: Callable[[], float] = time.time):
        self.minutes, self.clock = minutes, clock
        self._buckets: Deque[_Minute] = deque(maxlen=minutes)
        self._links: Dict[str, Deque[Tuple[float, bool]]] = {}
        self._times: Deque[float] = deque()  # decision times of the last minute
        self._lock = threading.Lock()

    def _bucket(self, now: float) -> _Minute:
        start = int(now // 60) * 60
        if not self._buckets or self._buckets[-1].start != start:
            self._buckets.append(_Minute(start))
        return self._buckets[-1]

    def decision(self, label: str, confidence: float, rejected: bool, latency_s: Dict[str, float]) -> None:
        with self._lock:
            now = self.clock()
            self._times.append(now)
            self._forget(now)
            minute = self._bucket(now)
            minute.items[label] = minute.items.get(label, 0) + 1
            minute.rejects += rejected
            if np.isfinite(confidence):
                minute.confidence[min(int(confidence * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)] += 1
            for stage, seconds in latency_s.items():
                samples = minute.latency.setdefault(stage, [])
                if len(samples) < SAMPLES_PER_MINUTE:
                    samples.append(seconds)

    def link(self, name: str, healthy: bool) -> None:
        """Record a link's state when it changes (the first observation included)."""
        with self._lock:
            changes = self._links.setdefault(name, deque(maxlen=500))
            if not changes or changes[-1][1] != healthy:
                changes.append((self.clock(), healthy))

    def items_last_minute(self) -> int:
        """Decisions in the last 60 s (exactly, not by bucket)."""
        with self._lock:
            self._forget(self.clock())
            return len(self._times)

    def _forget(self, now: float) -> None:
        while self._times and self._times[0] <= now - 60:
            self._times.popleft()

    def series(self) -> Dict:
        """Every minute of the last hour (empty minutes as zeros), oldest first."""
        now = self.clock()
        last = int(now // 60) * 60
        starts = [last - 60 * i for i in range(self.minutes - 1, -1, -1)]
        with self._lock:
            by_start = {b.start: b for b in self._buckets}
            minutes = [by_start.get(start) for start in starts]
            classes = sorted({c for m in minutes if m for c in m.items})
            stages = sorted({s for m in minutes if m for s in m.latency})
            confidence = sum((m.confidence for m in minutes if m), np.zeros(CONFIDENCE_BINS, np.int64))
            links = {name: [[t, up] for t, up in changes] for name, changes in self._links.items()}
            return {
                "minute_starts": starts,
                "items": {c: [m.items.get(c, 0) if m else 0 for m in minutes] for c in classes},
                "rejects": [m.rejects if m else 0 for m in minutes],
                "confidence_histogram": confidence.tolist(),
                "latency_ms": {s: {"p50": [_percentile(m, s, 50) for m in minutes],
                                   "p99": [_percentile(m, s, 99) for m in minutes]} for s in stages},
                "links": links,
                "now": now,
            }


def _percentile(minute, stage: str, q: float):
    samples = minute.latency.get(stage) if minute else None
    return round(float(np.percentile(samples, q)) * 1000, 3) if samples else None
