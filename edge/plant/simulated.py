"""The simulated actuator: records each pulse instead of driving hardware (demo, tests)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import List, Sequence

from edge.plant.base import Actuator, PulseEnds


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
        self._ends = PulseEnds(self._lock, self.on.difference_update)

    def pulse(self, output: int, width_s: float, item_id: str = "") -> float:
        return self.pulse_valves([output], width_s, item_id)

    def pulse_valves(self, outputs: Sequence[int], width_s: float, item_id: str = "") -> float:
        width = min(width_s, self.max_pulse_s)
        with self._lock:
            started = time.monotonic()
            for output in outputs:  # each valve's own moment, as a driver setting lines one by one
                self.on.add(output)
                self.pulses.append(Pulse(output, time.monotonic(), width, item_id))
            self._ends.started(outputs, started, width)
        self._ends.schedule(outputs, width)
        return started

    def all_off(self) -> None:
        with self._lock:
            self._ends.forget()
            self.on.clear()
            self.off_calls += 1


