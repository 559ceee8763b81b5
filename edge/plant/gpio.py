"""GPIO: valves out, photo-eye and encoder in. Jetson.GPIO on a Jetson, libgpiod elsewhere.

The line layer is tiny and swappable (tests use recording/scripted ones). Pulses are capped
at max_pulse_ms by this driver; every output line is requested inactive and driven inactive
by all_off(). Valves must be normally closed: line state after a crash is not guaranteed.
An encoder on a GPIO line is counted from the kernel's edge events (rising edges, one
channel): fine to a few kHz; faster encoders belong on a PLC counter (inputs.encoder: modbus).
"""
from __future__ import annotations

import threading
import time
from typing import Sequence

from edge.config import GpioActuatorConfig, GpioInputConfig
from edge.deps import require
from edge.line.inputs import Encoder, PhotoEye
from edge.plant.base import Actuator, PulseEnds

_GPIOD_FIX = "gpio needs libgpiod's Python binding: pip install gpiod (Jetson.GPIO comes with JetPack)"


class GpiodLines:
    def __init__(self, chip: str, lines: Sequence[int], active_low: bool):
        gpiod = require("gpiod", fix=_GPIOD_FIX)
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


def _library(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import Jetson.GPIO  # noqa: F401

        return "jetson"
    except ImportError:
        return "gpiod"


def open_lines(cfg: GpioActuatorConfig):
    if _library(cfg.library) == "jetson":
        return JetsonLines(cfg.lines, cfg.active_low)
    return GpiodLines(cfg.chip, cfg.lines, cfg.active_low)


# -- inputs ----------------------------------------------------------------------------------
class GpiodInput:
    """One input line with rising-edge events (kernel timestamps, nothing missed between reads)."""

    def __init__(self, cfg: GpioInputConfig):
        gpiod = require("gpiod", fix=_GPIOD_FIX)
        from gpiod.line import Direction, Edge, Value

        self._active, self.line = Value.ACTIVE, cfg.line
        settings = gpiod.LineSettings(direction=Direction.INPUT, edge_detection=Edge.RISING, active_low=cfg.active_low)
        self.request = gpiod.request_lines(cfg.chip, consumer="scrapsort", config={cfg.line: settings})

    def value(self) -> bool:
        return self.request.get_value(self.line) == self._active

    def wait_edges(self, timeout_s: float) -> int:
        """Rising edges seen within timeout_s (0 when none)."""
        return len(self.request.read_edge_events()) if self.request.wait_edge_events(timeout_s) else 0

    def close(self) -> None:
        self.request.release()


class JetsonInput:
    def __init__(self, cfg: GpioInputConfig):
        import Jetson.GPIO as GPIO

        self.gpio, self.pin, self.active_low = GPIO, cfg.line, cfg.active_low
        self._edges, self._event = 0, threading.Event()
        self._lock = threading.Lock()
        GPIO.setmode(GPIO.BOARD)
        GPIO.setup(self.pin, GPIO.IN)
        GPIO.add_event_detect(self.pin, GPIO.FALLING if cfg.active_low else GPIO.RISING, callback=self._edge)

    def _edge(self, _pin) -> None:
        with self._lock:
            self._edges += 1
        self._event.set()

    def value(self) -> bool:
        return bool(self.gpio.input(self.pin)) != self.active_low

    def wait_edges(self, timeout_s: float) -> int:
        self._event.wait(timeout_s)
        with self._lock:
            edges, self._edges = self._edges, 0
            self._event.clear()
        return edges

    def close(self) -> None:
        self.gpio.remove_event_detect(self.pin)
        self.gpio.cleanup(self.pin)


def open_input(cfg: GpioInputConfig):
    return JetsonInput(cfg) if _library(cfg.library) == "jetson" else GpiodInput(cfg)


class GpioPhotoEye(PhotoEye):
    def __init__(self, cfg: GpioInputConfig, line=None):
        self.line = line if line is not None else open_input(cfg)

    def blocked(self) -> bool:
        return self.line.value()

    def close(self) -> None:
        self.line.close()


class GpioEncoder(Encoder):
    """Counts rising edges in its own thread; count() never waits."""

    WAIT_S = 0.05

    def __init__(self, cfg: GpioInputConfig, line=None):
        self.line = line if line is not None else open_input(cfg)
        self._count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpio-encoder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._count += self.line.wait_edges(self.WAIT_S)  # one writer: no lock needed for an int

    def count(self) -> int:
        return self._count

    def healthy(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        self.line.close()


class GpioActuator(Actuator):
    name = "gpio"

    def __init__(self, cfg: GpioActuatorConfig, max_pulse_s: float, lines=None):
        super().__init__(max_pulse_s)
        self.lines = lines if lines is not None else open_lines(cfg)
        self.count = len(cfg.lines)
        self._lock = threading.Lock()
        self._ends = PulseEnds(self._lock, self._switch_off)

    def pulse(self, output: int, width_s: float, item_id: str = "") -> float:
        return self.pulse_valves([output], width_s, item_id)

    def pulse_valves(self, outputs: Sequence[int], width_s: float, item_id: str = "") -> float:
        """Every valve of the bank on, back to back, then one timer for their end."""
        for output in outputs:
            if not 0 <= output < self.count:
                raise ValueError(f"gpio: output {output} has no line (lines configured: {self.count})")
        width = min(width_s, self.max_pulse_s)
        with self._lock:
            for output in outputs:
                self.lines.set(output, True)
            started = time.monotonic()
            self._ends.started(outputs, started, width)
        self._ends.schedule(outputs, width)
        return started

    def _switch_off(self, outputs) -> None:
        for output in outputs:
            self.lines.set(output, False)

    def all_off(self) -> None:
        with self._lock:
            self._ends.forget()
            self._switch_off(range(self.count))

    def close(self) -> None:
        self.all_off()
        self.lines.close()
