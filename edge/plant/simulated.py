"""The simulated actuator: records each pulse instead of driving hardware (demo, tests)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import List

from edge.plant.base import Actuator


@dataclass(frozen=True)
class Pulse:
    output: int
    started: float       # time.monotonic() when the output went on
    width_s: float
    item_id: str


class SimulatedActuator(Actuator):
    """Records pulses instead of driving hardware (demo, tests)."""

    name = "simulated"

    def __init__(self, cfg=None, max_pulse_s: float = 0.1):
        super().__init__(max_pulse_s)
        self.pulses: List[Pulse] = []
        self.on: set = set()
        self.off_calls = 0
        self._lock = threading.Lock()

    def pulse(self, output: int, width_s: float, item_id: str = "") -> float:
        width = min(width_s, self.max_pulse_s)
        started = time.monotonic()
        with self._lock:
            self.on.add(output)
            self.pulses.append(Pulse(output, started, width, item_id))
        threading.Timer(width, self._off, args=(output,)).start()
        return started

    def _off(self, output: int) -> None:
        with self._lock:
            self.on.discard(output)

    def all_off(self) -> None:
        with self._lock:
            self.on.clear()
            self.off_calls += 1


