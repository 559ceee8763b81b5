"""Belt-timed ejection: a FIFO of pending pulses fired on the monotonic clock.

Each ejection is keyed to the belt position at which the item reaches its ejector; the
scheduler thread sleeps until then (re-estimating with the encoder's speed) and fires the
pulse on every actuator. An ejection whose moment has passed is dropped, never fired late
or replayed. Firing error against the exact crossing time is measured for every pulse.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from collections import deque
from typing import Callable, Deque, List, Optional, Protocol, Sequence, Tuple

from edge.line.belt import BeltTracker

log = logging.getLogger(__name__)
LATE_TOLERANCE_S = 0.02   # later than this past its moment: the item has gone, do not fire
REALTIME_PRIORITY = 10    # SCHED_FIFO for this thread alone (the unit's LimitRTPRIO allows it)


class Output(Protocol):
    """What the scheduler fires (edge.plant's actuators); the line layer needs nothing more."""

    name: str

    def pulse_valves(self, outputs: Sequence[int], width_s: float, item_id: str = "") -> float: ...


@dataclass(order=True)
class PendingEjection:
    target_mm: float
    order: int
    item_id: str = field(compare=False)
    outputs: Tuple[int, ...] = field(compare=False)
    width_s: float = field(compare=False)


@dataclass
class Fired:
    item_id: str
    outputs: Tuple[int, ...]  # one valve, or the valves of a bank under the item
    t_fired: float
    error_s: float            # fired - estimated exact moment
    width_s: float = 0.0      # how long the valves were open


class EjectionScheduler(threading.Thread):
    def __init__(self, belt: BeltTracker, actuators: Sequence[Output],
                 on_fired: Optional[Callable[[Fired], None]] = None, on_late: Optional[Callable[[str], None]] = None,
                 on_error: Optional[Callable[[str], None]] = None):
        super().__init__(name="ejector", daemon=True)
        self.belt, self.actuators = belt, list(actuators)
        self.on_fired, self.on_late, self.on_error = on_fired, on_late, on_error
        self._heap: List[PendingEjection] = []
        self._order = itertools.count()
        self._cv = threading.Condition()
        self._stop = False
        self.fired: Deque[Fired] = deque(maxlen=20000)   # recent pulses, for reports
        self.dropped_late = 0
        self.errors = 0
        self.realtime = False

    def schedule(self, item_id: str, outputs: Sequence[int], target_mm: float, width_s: float) -> None:
        """Fire `outputs` together when the belt reaches `target_mm`."""
        with self._cv:
            heapq.heappush(self._heap, PendingEjection(target_mm, next(self._order), item_id, tuple(outputs),
                                                       width_s))
            self._cv.notify()

    def pending(self) -> int:
        with self._cv:
            return len(self._heap)

    def clear(self) -> int:
        """Forget every pending ejection (link lost, shutdown): nothing is replayed later."""
        with self._cv:
            dropped, self._heap = len(self._heap), []
            return dropped

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()

    def run(self) -> None:
        self.realtime = realtime_thread()
        while True:
            with self._cv:
                while not self._heap and not self._stop:
                    self._cv.wait(0.1)
                if self._stop:
                    return
                head = self._heap[0]
            wait = self.belt.seconds_until(head.target_mm)
            if wait > 0.002:
                # Halve the remaining wait each round: with an encoder the speed estimate
                # is re-read ever more often as the item closes in. Wakes early for a new head.
                with self._cv:
                    self._cv.wait(min(wait / 2, 0.02))
                continue
            if wait > 0:
                time.sleep(wait)
            with self._cv:
                if not self._heap or self._heap[0] is not head:
                    continue
                heapq.heappop(self._heap)
            self._fire(head, time.monotonic() + self.belt.seconds_until(head.target_mm))

    def _fire(self, job: PendingEjection, exact: float) -> None:
        now = time.monotonic()
        if now - exact > LATE_TOLERANCE_S:
            self.dropped_late += 1
            log.warning("item %s: ejection %.0f ms late, dropped", job.item_id, (now - exact) * 1000)
            if self.on_late:
                self.on_late(job.item_id)
            return
        started = now
        for actuator in self.actuators:
            try:
                started = actuator.pulse_valves(job.outputs, job.width_s, job.item_id)
            except Exception as exc:  # one failing driver must not stop the others
                self.errors += 1
                log.error("%s: pulse for item %s failed: %s", actuator.name, job.item_id, exc)
                if self.on_error:
                    self.on_error(job.item_id)
        fired = Fired(job.item_id, job.outputs, started, started - exact, job.width_s)
        self.fired.append(fired)
        if self.on_fired:
            self.on_fired(fired)


def realtime_thread(priority: int = REALTIME_PRIORITY) -> bool:
    """Run the calling thread under SCHED_FIFO: with inference and the camera keeping both cores
    busy, a timer thread of normal priority can wake milliseconds late. Allowed to root or by
    RLIMIT_RTPRIO (LimitRTPRIO= in systemd/scrapsort.service); without it, normal priority.
    Threads it starts inherit the policy (glibc's default), the pulse-end timers among them."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # 0: this thread (Linux)
        return True
    except (AttributeError, OSError) as exc:
        log.warning("%s thread at normal priority (%s): pulses may jitter under load; "
                    "LimitRTPRIO=%d in the service unit allows real-time priority",
                    threading.current_thread().name, exc, priority)
        return False
