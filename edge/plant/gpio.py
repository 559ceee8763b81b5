"""GPIO valves: Jetson.GPIO on a Jetson, libgpiod elsewhere; one line per ejector.

The line layer is tiny and swappable (tests use a recording one). Pulses are capped at
max_pulse_ms by this driver; every line is requested inactive and driven inactive by
all_off(). Valves must be normally closed: line state after a crash is not guaranteed.
"""
from __future__ import annotations

import threading
import time
from typing import Sequence

from edge.plant.base import Actuator
from edge.config import GpioActuatorConfig
from edge.errors import MissingDependencyError


class GpiodLines:
    def __init__(self, chip: str, lines: Sequence[int], active_low: bool):
        import gpiod
        from gpiod.line import Direction, Value

        self._on, self._off = Value.ACTIVE, Value.INACTIVE
        settings = gpiod.LineSettings(direction=Direction.OUTPUT, output_value=Value.INACTIVE, active_low=active_low)
        self.request = gpiod.request_lines(chip, consumer="scrapsort", config={tuple(lines): settings})
        self.lines = list(lines)

    def set(self, index: int, on: bool) -> None:
        self.request.set_value(self.lines[index], self._on if on else self._off)

    def close(self) -> None:
        self.request.release()


class JetsonLines:
    def __init__(self, pins: Sequence[int], active_low: bool):
        import Jetson.GPIO as GPIO

        self.gpio, self.pins = GPIO, list(pins)
        self._on, self._off = (GPIO.LOW, GPIO.HIGH) if active_low else (GPIO.HIGH, GPIO.LOW)
        GPIO.setmode(GPIO.BOARD)
        GPIO.setup(self.pins, GPIO.OUT, initial=self._off)

    def set(self, index: int, on: bool) -> None:
        self.gpio.output(self.pins[index], self._on if on else self._off)

    def close(self) -> None:
        self.gpio.cleanup(self.pins)


def open_lines(cfg: GpioActuatorConfig):
    library = cfg.library
    if library == "auto":
        try:
            import Jetson.GPIO  # noqa: F401

            library = "jetson"
        except ImportError:
            library = "gpiod"
    try:
        return JetsonLines(cfg.lines, cfg.active_low) if library == "jetson" else GpiodLines(cfg.chip, cfg.lines, cfg.active_low)
    except ImportError as exc:
        raise MissingDependencyError(f"gpio: {exc.name} is not installed (Jetson.GPIO on a Jetson, "
                                     f"pip install gpiod elsewhere)") from None


class GpioActuator(Actuator):
    name = "gpio"

    def __init__(self, cfg: GpioActuatorConfig, max_pulse_s: float, lines=None):
        super().__init__(max_pulse_s)
        self.lines = lines if lines is not None else open_lines(cfg)
        self.count = len(cfg.lines)
        self._lock = threading.Lock()
        self._timers = {}

    def pulse(self, output: int, width_s: float, item_id: str = "") -> float:
        if not 0 <= output < self.count:
            raise ValueError(f"gpio: output {output} has no line (lines configured: {self.count})")
        width = min(width_s, self.max_pulse_s)
        with self._lock:
            self.lines.set(output, True)
            started = time.monotonic()
            if output in self._timers:
                self._timers[output].cancel()
            self._timers[output] = threading.Timer(width, self._off, args=(output,))
            self._timers[output].start()
        return started

    def _off(self, output: int) -> None:
        with self._lock:
            self.lines.set(output, False)

    def all_off(self) -> None:
        with self._lock:
            for timer in self._timers.values():
                timer.cancel()
            for output in range(self.count):
                self.lines.set(output, False)

    def close(self) -> None:
        self.all_off()
        self.lines.close()
