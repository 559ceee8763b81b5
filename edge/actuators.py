"""Actuators: what turns a decision into air. One small interface, one factory.

Every driver caps pulse length itself (a lost "off" must never leave a valve open) and
drives every output off on `all_off()`, which the daemon calls at start, on shutdown and
on any fault. The simulated actuator records each pulse for the demo and the tests.
"""
from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import List, Sequence

from edge.config import ActuatorConfig

ACTUATOR_TYPES = ("simulated", "gpio", "modbus", "mqtt")


@dataclass(frozen=True)
class Pulse:
    output: int
    started: float       # time.monotonic() when the output went on
    width_s: float
    item_id: str


class Actuator(ABC):
    name = "actuator"

    def __init__(self, max_pulse_s: float):
        self.max_pulse_s = max_pulse_s

    @abstractmethod
    def pulse(self, output: int, width_s: float, item_id: str = "") -> float:
        """Drive `output` on for min(width_s, cap); return the monotonic time it went on."""

    @abstractmethod
    def all_off(self) -> None:
        """Every output off. Idempotent; must work after any failure."""

    def healthy(self) -> bool:
        return True

    def decision(self, row: dict) -> None:
        """Told of every decision (telemetry drivers publish it); pulses come separately."""

    def close(self) -> None:
        self.all_off()


class SimulatedActuator(Actuator):
    """Records pulses instead of driving hardware (demo, tests)."""

    name = "simulated"

    def __init__(self, max_pulse_s: float):
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
    if cfg.type == "simulated":
        return SimulatedActuator(max_pulse_s)
    if cfg.type == "gpio":
        from edge.gpio import GpioActuator

        return GpioActuator(cfg, max_pulse_s)
    if cfg.type == "modbus":
        from edge.modbus import ModbusActuator

        return ModbusActuator(cfg, max_pulse_s)
    from edge.mqtt import MqttActuator

    return MqttActuator(cfg, max_pulse_s)
