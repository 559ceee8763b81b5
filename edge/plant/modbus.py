"""Modbus TCP to a PLC (pymodbus): a coil per ejector, heartbeat and status registers.

Registers from `register_base`: +0 heartbeat (toggles every heartbeat_s; set the PLC's
watchdog to drop every output when it stops; it toggles only while the sorting loop runs),
+1 status bits (1 online, 2 ready: the line's health),
+2 last item id (low 16 bits), +3 last bin output. Coils outside
[coil_base, coil_base + coil_count) are never written. Every request has a timeout; a lost
link marks the driver unhealthy, the daemon's health goes not-ready, and reconnection
backs off exponentially. Pulses are never queued here: one that cannot be sent is
dropped, so nothing is replayed after a reconnect. Modbus has no authentication: keep the
PLC network isolated. ModbusEncoder reads the belt encoder from a PLC counter.
"""
from __future__ import annotations

import logging
import threading
import time

from edge.plant.base import Actuator, PulseEnds
from edge.config import ModbusActuatorConfig, ModbusEncoderConfig
from edge.deps import require
from edge.line.ejector import realtime_thread
from edge.line.inputs import Encoder

log = logging.getLogger(__name__)
ONLINE, READY = 1, 2


class ModbusActuator(Actuator):
    name = "modbus"

    def __init__(self, cfg: ModbusActuatorConfig, max_pulse_s: float):
        super().__init__(max_pulse_s)
        ModbusTcpClient = require("pymodbus.client", "plant").ModbusTcpClient
        self.cfg = cfg
        self.client = ModbusTcpClient(cfg.host, port=cfg.port or 502, timeout=cfg.timeout_s, retries=cfg.retries,
                                      reconnect_delay=0, reconnect_delay_max=0)
        self._lock = threading.RLock()   # one request at a time on the socket
        self._ends = PulseEnds(self._lock, self._switch_off)
        self._online = False
        self._backoff, self._next_attempt = 0.5, 0.0
        self._beat = 0
        self._loop_at, self._loop_ready = float("-inf"), False
        self._stop = threading.Event()
        self._connect()
        self._thread = threading.Thread(target=self._heartbeat, name="modbus-heartbeat", daemon=True)
        self._thread.start()

    # -- link ----------------------------------------------------------------------------
    def _connect(self) -> bool:
        now = time.monotonic()
        if now < self._next_attempt:
            return False
        with self._lock:
            if self.client.connect():
                was_offline = not self._online
                self._online, self._backoff = True, 0.5
                if was_offline:
                    self._write_coils_off()  # a clean start: nothing left on from before
                    log.info("modbus: connected to %s:%s", self.cfg.host, self.cfg.port or 502)
                return True
        self._next_attempt = now + self._backoff
        self._backoff = min(self._backoff * 2, 8.0)
        return False

    def _lost(self, exc: Exception) -> None:
        if self._online:
            log.error("modbus: link to %s lost (%s); outputs are the PLC watchdog's now", self.cfg.host, exc)
        self._online = False
        self.client.close()

    def _request(self, call, *args, **kwargs) -> bool:
        """One request with the configured timeout; False (and link down) on any failure."""
        if not self._online and not self._connect():
            return False
        try:
            with self._lock:
                response = call(*args, device_id=self.cfg.unit_id, **kwargs)
            if response.isError():
                raise IOError(str(response))
            return True
        except Exception as exc:  # pymodbus raises ConnectionException, ModbusIOException, ...
            self._lost(exc)
            return False

    def healthy(self) -> bool:
        return self._online

    # -- outputs -------------------------------------------------------------------------
    def _coil(self, output: int) -> int:
        if not 0 <= output < self.cfg.coil_count:
            raise ValueError(f"output {output} is outside the configured coils (0..{self.cfg.coil_count - 1})")
        return self.cfg.coil_base + output

    def pulse(self, output: int, width_s: float, item_id: str = "") -> float:
        return self.pulse_valves([output], width_s, item_id)

    def pulse_valves(self, outputs, width_s: float, item_id: str = "") -> float:
        """The coils on (neighbouring ones in one request, FC15), one timer for their end, then
        the last-item registers (item id, the lowest output)."""
        coils = sorted(self._coil(o) for o in outputs)
        width = min(width_s, self.max_pulse_s)
        started = time.monotonic()
        if not self._write(coils, True):
            raise IOError(f"modbus: pulse on coil(s) {coils} for item {item_id} not sent (link down)")
        with self._lock:
            self._ends.started(outputs, started, width)
        self._ends.schedule(outputs, width)
        self._request(self.client.write_registers, self.cfg.register_base + 2,
                      [int(item_id) & 0xFFFF if item_id.isdigit() else 0, min(outputs)])
        return started

    def _write(self, coils, on: bool) -> bool:
        if len(coils) > 1 and coils == list(range(coils[0], coils[0] + len(coils))):
            return self._request(self.client.write_coils, coils[0], [on] * len(coils))
        return all([self._request(self.client.write_coil, coil, on) for coil in coils])  # every coil tried

    def _switch_off(self, outputs) -> None:
        self._write(sorted(self._coil(o) for o in outputs), False)

    def _write_coils_off(self) -> bool:
        try:
            response = self.client.write_coils(self.cfg.coil_base, [False] * self.cfg.coil_count,
                                               device_id=self.cfg.unit_id)
            return not response.isError()
        except Exception as exc:
            self._lost(exc)
            return False

    def all_off(self) -> None:
        """Every configured coil off, or IOError: unreachable, the PLC's own watchdog has to act."""
        with self._lock:
            self._ends.forget()
            if (self._online or self._connect()) and self._write_coils_off():
                return
        raise IOError(f"modbus: coils on {self.cfg.host}:{self.cfg.port or 502} not confirmed off (PLC unreachable)")

    # -- heartbeat -----------------------------------------------------------------------
    def alive(self, ready: bool) -> None:
        self._loop_at, self._loop_ready = time.monotonic(), ready

    def _heartbeat(self) -> None:
        """Toggle the heartbeat only while the sorting loop makes progress (a hung loop stops it,
        and the PLC's watchdog drops the outputs); the status bits mirror the line's health.
        At the ejection timer's priority: a pulse waits for the socket while a heartbeat is on
        it, and a heartbeat of normal priority preempted mid-request would hold the pulse back."""
        realtime_thread()
        while not self._stop.wait(self.cfg.heartbeat_s):
            if time.monotonic() - self._loop_at > 2 * self.cfg.heartbeat_s:
                continue
            self._beat ^= 1
            status = ONLINE | (READY if self._loop_ready else 0)
            self._request(self.client.write_registers, self.cfg.register_base, [self._beat, status])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        super().close()
        if self._online:
            self._request(self.client.write_registers, self.cfg.register_base + 1, [0])  # not ready
        self.client.close()


class ModbusEncoder(Encoder):
    """A PLC's high-speed counter read over Modbus TCP: two holding registers (high word first),
    polled every poll_s in its own thread, so count() never waits on the network. The count
    is unwrapped across the counter's 32-bit overflow. A failed read marks the encoder
    unhealthy (the line goes not-ready) and the next poll reconnects, backing off to 2 s."""

    def __init__(self, cfg: ModbusEncoderConfig):
        self.cfg = cfg
        self.client = require("pymodbus.client", "plant").ModbusTcpClient(
            cfg.host, port=cfg.port or 502, timeout=cfg.timeout_s, retries=0, reconnect_delay=0,
            reconnect_delay_max=0)
        self._raw, self._wraps, self._count, self._ok = None, 0, 0, False
        self._wait = cfg.poll_s
        self._stop = threading.Event()
        self._poll()
        self._thread = threading.Thread(target=self._run, name="modbus-encoder", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        try:
            if not self.client.connected and not self.client.connect():
                raise IOError("no connection")
            response = self.client.read_holding_registers(self.cfg.address, count=2, device_id=self.cfg.unit_id)
            if response.isError():
                raise IOError(str(response))
        except Exception as exc:
            if self._ok:
                log.error("modbus encoder %s:%s lost (%s)", self.cfg.host, self.cfg.port or 502, exc)
            self._ok, self._wait = False, min(max(self._wait * 2, 0.1), 2.0)
            self.client.close()
            return
        high, low = response.registers[:2]
        raw = (high << 16) | low
        if self._raw is not None and self._raw - raw > 1 << 31:  # the counter wrapped past 2**32
            self._wraps += 1
        self._raw, self._count = raw, raw + (self._wraps << 32)
        self._ok, self._wait = True, self.cfg.poll_s

    def _run(self) -> None:
        while not self._stop.wait(self._wait):
            self._poll()

    def count(self) -> int:
        return self._count

    def healthy(self) -> bool:
        return self._ok

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.client.close()
