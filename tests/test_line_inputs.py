"""Plant inputs: the belt encoder from a PLC counter (a real pymodbus server on loopback) and
from a GPIO line, and the photo-eye from a GPIO line, each behind the line's interfaces."""
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient

from edge.config import GpioInputConfig, ModbusEncoderConfig
from edge.errors import ConfigError
from edge.plant.gpio import GpioEncoder, GpioPhotoEye
from edge.plant.modbus import ModbusEncoder
from edge.service.report import summarize
from tests.conftest import CLASSES, check_exactly_once_and_timing, line_config, simulated_sorter, wait_for

COUNTER = 20  # first of the two holding registers the PLC keeps its belt counter in
COUNTER_CARD = Path(__file__).parent / "peers" / "counter_card.py"


class PlcCounter:
    """Writes a 32-bit count into the PLC's registers, as the PLC's counter card would."""

    def __init__(self, port):
        self.client = ModbusTcpClient("127.0.0.1", port=port, timeout=1)
        self.client.connect()

    def set(self, value):
        self.client.write_registers(COUNTER, [(value >> 16) & 0xFFFF, value & 0xFFFF])

    def close(self):
        self.client.close()


def encoder_cfg(port, **kw):
    return ModbusEncoderConfig(type="modbus", port=port, address=COUNTER, poll_s=0.01, timeout_s=0.3, **kw)


def test_modbus_encoder_follows_the_counter_across_wrap_and_link_loss(plc):
    counter = PlcCounter(plc.port)
    counter.set(0xFFFFFF00)
    encoder = ModbusEncoder(encoder_cfg(plc.port))
    try:
        assert encoder.healthy() and encoder.count() == 0xFFFFFF00
        counter.set(0x40)                                   # the 32-bit counter wrapped
        assert wait_for(lambda: encoder.count() == 2 ** 32 + 0x40, timeout=2)
        counter.close()
        plc.kill()
        assert wait_for(lambda: not encoder.healthy(), timeout=2)
        assert encoder.count() == 2 ** 32 + 0x40            # holds the last good count, never invents one
        plc.start()
        counter = PlcCounter(plc.port)
        counter.set(0x80)
        assert wait_for(lambda: encoder.healthy() and encoder.count() == 2 ** 32 + 0x80, timeout=10)
    finally:
        encoder.close()
        counter.close()


def test_line_times_ejections_from_the_plc_encoder(tmp_path, trained_run, plc):
    """The belt position comes from the PLC counter (a counter card process counts the simulated
    belt's motion into the PLC's registers); every item is still decided once and ejected on
    time."""
    _, run = trained_run
    line, simulator = {"belt_speed_mm_s": 250, "encoder": True, "mm_per_count": 0.05}, \
        {"items": 4, "speed_variation": 0.3, "speed_period_s": 2.0}
    config = line_config(tmp_path, run, line=line, simulator=simulator,
                         inputs={"encoder": {"type": "modbus", "port": plc.port, "address": COUNTER,
                                             "poll_s": 0.002, "timeout_s": 0.3}},
                         decision={"threshold": 0.0, "ejectors": [{"bin": c, "position_mm": 700 + 40 * i, "output": i}
                                                                  for i, c in enumerate(CLASSES)]})
    sorter = simulated_sorter(config)
    belt = sorter.line.simulator.motion
    card = subprocess.Popen([sys.executable, str(COUNTER_CARD), str(plc.port), str(COUNTER)] +
                            [repr(v) for v in (belt.v0, belt.a, belt.T, config.line.mm_per_count)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert card.stdout.readline().strip() == "ready"
        sorter.line.simulator.start()  # the belt starts; the card counts from the same moment
        card.stdin.write(f"{sorter.line.simulator.t0!r}\n")
        card.stdin.flush()
        sorter.run_to_end()
    finally:
        card.kill()
        card.wait()
    assert type(sorter.line.inputs.encoder).__name__ == "ModbusEncoder"
    check_exactly_once_and_timing(summarize(sorter, sorter.line.simulator), sorter, tolerance_ms=15.0)


def test_an_encoder_or_photo_eye_line_without_its_input_is_a_config_error(tmp_path, trained_run):
    from edge.service.sorter import Sorter

    _, run = trained_run
    config = line_config(tmp_path, run, source={"uri": "file:///x.avi"}, line={"encoder": True})
    with pytest.raises(ConfigError, match="inputs.encoder"):
        Sorter.from_config(config)
    config = line_config(tmp_path, run, source={"uri": "file:///x.avi"}, trigger={"type": "photo_eye"})
    with pytest.raises(ConfigError, match="inputs.photo_eye"):
        Sorter.from_config(config)


class ScriptedLine:
    """A GPIO input line whose level and edges the test sets (the kernel's gpio-sim is not
    available here: the driver logic runs against this, the libgpiod calls are one line each)."""

    def __init__(self):
        self.level, self.edges, self.closed = False, 0, False
        self._lock = threading.Lock()

    def value(self):
        return self.level

    def pulse(self, n):
        with self._lock:
            self.edges += n

    def wait_edges(self, timeout_s):
        time.sleep(min(timeout_s, 0.005))
        with self._lock:
            edges, self.edges = self.edges, 0
        return edges

    def close(self):
        self.closed = True


def test_gpio_encoder_counts_edges_and_photo_eye_reads_the_level():
    line = ScriptedLine()
    encoder = GpioEncoder(GpioInputConfig(type="gpio", line=4), line=line)
    for _ in range(50):
        line.pulse(7)
    assert wait_for(lambda: encoder.count() == 350, timeout=2) and encoder.healthy()
    encoder.close()
    assert line.closed and not encoder.healthy()

    eye_line = ScriptedLine()
    eye = GpioPhotoEye(GpioInputConfig(type="gpio", line=5), line=eye_line)
    assert eye.blocked() is False
    eye_line.level = True
    assert eye.blocked() is True
