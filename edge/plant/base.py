"""Actuators: what turns a decision into air. One small interface, one factory.

Every driver caps pulse length itself (a lost "off" must never leave a valve open) and
drives every output off on `all_off()`, which the daemon calls at start, on shutdown and
on any fault. Drivers are registered by config `type` in ACTUATORS.
"""
from __future__ import annotations

import importlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from typing import Callable, Dict, List, Sequence

from edge.config import ActuatorConfig

log = logging.getLogger(__name__)
# config `type` -> driver class; each imported only when configured (pymodbus, paho, gpiod are optional).
ACTUATORS = {"simulated": "edge.plant.simulated:SimulatedActuator", "gpio": "edge.plant.gpio:GpioActuator",
             "modbus": "edge.plant.modbus:ModbusActuator", "mqtt": "edge.plant.mqtt:MqttActuator"}


class PulseEnds:
    """Switches outputs off when their pulse ends. A pulse's outputs (a bank's valves) share one
    timer thread, started after they are all on: a thread start per valve opened a bank's
    valves up to 8 ms apart on a loaded 2-core machine. An output pulsed again meanwhile stays
    on until its later end (an earlier pulse's timer must not cut the next item's pulse
    short). `started` and `forget` are called under `lock`, `schedule` after it;
    `switch_off(outputs)` runs under `lock`."""

    def __init__(self, lock: threading.Lock, switch_off: Callable[[List[int]], None]):
        self._lock, self._switch_off = lock, switch_off
        self._until: Dict[int, float] = {}

    def started(self, outputs: Sequence[int], at: float, width_s: float) -> None:
        for output in outputs:
            self._until[output] = at + width_s

    def schedule(self, outputs: Sequence[int], width_s: float) -> None:
        timer = threading.Timer(width_s, self._end, args=(tuple(outputs),))
        timer.daemon = True
        timer.start()

    def forget(self) -> None:
        """Every output is off (all_off, under the lock): pending ends have nothing to do."""
        self._until.clear()

    def _end(self, outputs: Sequence[int]) -> None:
        with self._lock:
            now = time.monotonic()
            due = [output for output in outputs if output in self._until and self._until[output] <= now]
            for output in due:
                del self._until[output]
            if due:
                self._switch_off(due)


class Actuator(ABC):
    name = "actuator"

    def __init__(self, max_pulse_s: float):
        self.max_pulse_s = max_pulse_s

    @abstractmethod
    def pulse(self, output: int, width_s: float, item_id: str = "") -> float:
        """Drive `output` on for min(width_s, cap); return the monotonic time it went on."""

    def pulse_valves(self, outputs: Sequence[int], width_s: float, item_id: str = "") -> float:
        """Several valves at once (a bank under one item); returns when the first went on.
        Drivers that can set several outputs in one command override this."""
        started = [self.pulse(output, width_s, item_id) for output in outputs]
        return started[0]

    @abstractmethod
    def all_off(self) -> None:
        """Every output off. Idempotent; must work after any failure. Raises when it cannot
        confirm the outputs are off (device unreachable), so `outputs-off` never claims it."""

    @property
    def fires(self) -> bool:
        """True when this driver moves items (a valve, a coil, an eject command); False for a
        telemetry-only link, whose loss degrades the line but does not stop it."""
        return True

    def healthy(self) -> bool:
        return True

    def alive(self, ready: bool) -> None:
        """Called by the sorting loop on every pass, with the line's readiness (heartbeats follow it)."""

    def decision(self, row: dict) -> None:
        """Told of every decision (telemetry drivers publish it); pulses come separately."""

    def close(self) -> None:
        """Outputs off, then (in the drivers) release the device. A device that cannot be reached
        must not stop the close: it is logged, and its own watchdog has to act."""
        try:
            self.all_off()
        except IOError as exc:
            log.warning("%s", exc)


def all_off(actuators: Sequence[Actuator]) -> List[str]:
    """Switch every driver's outputs off, each tried whatever the others did; the failures, as text."""
    failures = []
    for actuator in actuators:
        try:
            actuator.all_off()
        except Exception as exc:
            log.error("%s: could not switch outputs off: %s", actuator.name, exc)
            failures.append(f"{actuator.name}: {exc}")
    return failures


def open_actuators(configs: Sequence[ActuatorConfig], max_pulse_s: float) -> List[Actuator]:
    """Every configured driver; if one fails to open, the ones already open are switched off."""
    opened: List[Actuator] = []
    try:
        for cfg in configs:
            opened.append(_open(cfg, max_pulse_s))
    except Exception:
        for actuator in opened:
            actuator.close()
        raise
    return opened


def _open(cfg: ActuatorConfig, max_pulse_s: float) -> Actuator:
    module, name = ACTUATORS[cfg.type].split(":")
    return getattr(importlib.import_module(module), name)(cfg, max_pulse_s)
