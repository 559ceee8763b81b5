"""Plant I/O against real peers on loopback: a pymodbus TCP server process and mosquitto."""
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from edge.plant.base import Actuator
from edge.line.belt import BeltTracker
from edge.config import GpioActuatorConfig, LineConfig, ModbusActuatorConfig, MqttActuatorConfig
from edge.line.ejector import EjectionScheduler
from edge.plant.gpio import GpioActuator
from edge.plant.modbus import ModbusActuator
from tests.conftest import (Broker, freeze_spans, frozen_s, gauge_note, line_config, needs_mosquitto,
                            realtime_allowed, running, simulated_sorter, wait_for)

def modbus_cfg(port, **kw):
    return ModbusActuatorConfig(type="modbus", port=port, timeout_s=0.3, retries=0, heartbeat_s=0.1, **kw)


def test_daemon_drives_plc_coils_at_the_right_times(tmp_path, trained_run, plc):
    _, run = trained_run
    config = line_config(tmp_path, run, simulator={"items": 4},
                         actuators=[{"type": "simulated"}, {"type": "modbus", "port": plc.port, "timeout_s": 0.3}])
    sorter = simulated_sorter(config).run_to_end()
    on = [w for w in plc.writes() if w["fn"] == "write_coil" and w["values"] == [1]]
    fired = sorter.scheduler.fired
    assert len(on) == len(fired) == 4
    spans = freeze_spans()  # time the whole machine stood still counts for no one
    for write, pulse in zip(on, fired):
        assert write["address"] == pulse.outputs[0]
        took = write["t"] - pulse.t_fired  # loopback TCP: the coil goes on when the pulse fires
        assert 0 <= took < 0.010 + frozen_s(pulse.t_fired, write["t"], spans), took
    offs = [w for w in plc.writes() if w["fn"] == "write_coil" and w["values"] == [0]]
    assert len(offs) == 4
    for on_, off in zip(on, offs):
        assert 0.025 <= off["t"] - on_["t"] <= 0.060 + frozen_s(on_["t"], off["t"], spans), (on_, off)
    assert plc.coils() == [False] * 8


def test_the_freeze_gauge_counts_the_time_it_was_held_still(freeze_gauge):
    """What excuses a timing bound above: a process held still (here by SIGSTOP, on a VM by its
    host) shows up as a span as long as the hold, and only within it."""
    time.sleep(0.2)  # the gauge is up and ticking
    if gauge_note():
        pytest.skip(gauge_note())
    held = time.monotonic()
    freeze_gauge.send_signal(signal.SIGSTOP)
    time.sleep(0.05)
    freeze_gauge.send_signal(signal.SIGCONT)
    released = time.monotonic()
    assert wait_for(lambda: frozen_s(held, released) > 0.030, timeout=2)
    assert frozen_s(held, released) <= released - held
    hold = [(start, end) for start, end in freeze_spans() if end - start > 0.030 and end > held]
    assert hold and held - 0.002 <= hold[0][0] and hold[0][1] <= released + 0.010  # where the hold was


@contextlib.contextmanager
def sorting_loop(actuator, ready=True):
    """Stands in for the sorter's loop, which tells the actuators it is alive on every pass."""
    stop = threading.Event()

    def passes():
        while not stop.wait(0.02):
            actuator.alive(ready)

    thread = threading.Thread(target=passes)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_plc_killed_and_restarted(plc):
    actuator = ModbusActuator(modbus_cfg(plc.port), max_pulse_s=0.1)
    with sorting_loop(actuator):
        plc_killed_and_restarted(plc, actuator)


def plc_killed_and_restarted(plc, actuator):
    belt = BeltTracker(LineConfig(belt_speed_mm_s=1000))
    scheduler = EjectionScheduler(belt, [actuator])
    scheduler.start()
    assert actuator.healthy()
    plc.kill()
    killed = time.monotonic()
    scheduler.schedule("000001", (1,), belt.position() + 300, 0.03)   # due while the PLC is away
    assert wait_for(lambda: not actuator.healthy(), timeout=2)
    assert time.monotonic() - killed < 1.0                         # noticed within the timeout
    assert wait_for(lambda: scheduler.errors == 1, timeout=2)       # the pulse failed, was not kept
    plc.start()
    assert wait_for(actuator.healthy, timeout=15), "no reconnect"
    time.sleep(0.5)
    after = plc.writes(since=plc.started_at)
    assert after[0]["fn"] == "write_coils" and after[0]["values"] == [0] * 8   # clean state first
    beats = [w["values"][0] for w in after if w["fn"] == "write_registers" and w["address"] == 100]
    assert len(beats) >= 3 and len(set(beats)) == 2                 # heartbeat toggles again
    assert not [w for w in after if w["fn"] == "write_coil"]        # nothing replayed
    scheduler.stop()
    actuator.close()


def test_fault_modbus_heartbeat_follows_the_sorting_loop_and_status_mirrors_health(plc):
    """A hung loop stops the heartbeat (the PLC's watchdog then drops the outputs); the ready
    bit is the line's health. Before, a thread of its own toggled it whatever the loop did."""
    actuator = ModbusActuator(modbus_cfg(plc.port), max_pulse_s=0.1)

    def registers(since, until=float("inf")):
        return [w["values"] for w in plc.writes(since) if w["fn"] == "write_registers" and w["address"] == 100
                and w["t"] <= until]

    started = time.monotonic()
    with sorting_loop(actuator, ready=True):
        time.sleep(0.6)
    hung = time.monotonic()
    time.sleep(0.8)
    with sorting_loop(actuator, ready=False):
        resumed = time.monotonic()
        time.sleep(0.6)
    actuator.close()
    running_ = registers(started, hung)
    assert len(running_) >= 3 and {beat for beat, _ in running_} == {0, 1} and {s for _, s in running_} == {3}
    assert registers(hung + 0.25, resumed) == []                       # the loop hung: no heartbeat
    not_ready = registers(resumed)
    assert len(not_ready) >= 3 and {s for _, s in not_ready} == {1}    # online, not ready


@pytest.mark.skipif(not realtime_allowed(), reason="needs root or RLIMIT_RTPRIO >= 10 (LimitRTPRIO in the unit)")
def test_the_modbus_heartbeat_holds_the_socket_at_the_ejection_timers_priority(plc):
    """Heartbeat and pulses share one socket, one request at a time: a normal-priority heartbeat
    preempted by inference in the middle of its request would hold a due pulse back (priority
    inversion). At the timer's real-time priority nothing of normal priority can preempt it."""
    import os

    from edge.line.ejector import REALTIME_PRIORITY

    actuator = ModbusActuator(modbus_cfg(plc.port), max_pulse_s=0.1)
    try:
        beat = actuator._thread
        assert wait_for(lambda: os.sched_getscheduler(beat.native_id) == os.SCHED_FIFO, timeout=2)
        assert os.sched_getparam(beat.native_id).sched_priority == REALTIME_PRIORITY
    finally:
        actuator.close()


def test_only_configured_coils_are_written(plc):
    actuator = ModbusActuator(modbus_cfg(plc.port, coil_base=2, coil_count=3), max_pulse_s=0.1)
    with pytest.raises(ValueError, match="outside the configured coils"):
        actuator.pulse(3, 0.02)
    actuator.pulse(2, 0.02, "000009")
    time.sleep(0.1)
    actuator.close()
    addresses = {w["address"] for w in plc.writes() if w["fn"].startswith("write_coil")}
    assert addresses <= {2, 3, 4}


def test_daemon_health_drops_and_outputs_go_off_when_plc_is_lost(tmp_path, trained_run, plc):
    _, run = trained_run
    config = line_config(tmp_path, run, simulator={"items": 30},
                         actuators=[{"type": "simulated"}, {"type": "modbus", "port": plc.port, "timeout_s": 0.3,
                                                            "heartbeat_s": 0.1, "retries": 0}])
    sorter = simulated_sorter(config)
    with running(sorter):
        assert wait_for(lambda: sorter.health()[0], timeout=5)
        offs_before = sorter.actuators[0].off_calls
        plc.kill()
        assert wait_for(lambda: not sorter.health()[0], timeout=3)
        assert wait_for(lambda: sorter.actuators[0].off_calls > offs_before, timeout=2)
        assert sorter.scheduler.pending() == 0


def test_outputs_off_after_sigkill_leaves_every_coil_at_zero(tmp_path, trained_run, plc):
    from pymodbus.client import ModbusTcpClient

    _, run = trained_run
    line_config(tmp_path, run, simulator={"items": 40},
                actuators=[{"type": "modbus", "port": plc.port, "timeout_s": 0.3}])
    config = str(tmp_path / "line.yaml")
    daemon = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", config],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: any(w["fn"] == "write_coil" for w in plc.writes()), timeout=30)
    client = ModbusTcpClient("127.0.0.1", port=plc.port)
    client.connect()
    client.write_coils(0, [True] * 6)   # valves caught open at the moment of the crash
    client.close()
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(timeout=10)
    assert any(plc.coils())
    result = subprocess.run([sys.executable, "-m", "edge.cli", "outputs-off", "--config", config],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert plc.coils() == [False] * 8


# -- MQTT ------------------------------------------------------------------------------------
class Subscriber:
    def __init__(self, port, topic="scrapsort/#", **auth):
        import paho.mqtt.client as mqtt

        self.messages = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        if auth:
            self.client.username_pw_set(auth["username"], auth["password"])
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, qos=1)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload.decode(), m.retain))
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def payloads(self, suffix):
        return [json.loads(p) if p.startswith("{") else p for t, p, _ in self.messages if t.endswith(suffix)]

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def mqtt_cfg(port, **kw):
    return MqttActuatorConfig(type="mqtt", port=port, **{"timeout_s": 2.0, **kw})


def row(item_id):
    return {"item_id": item_id, "class": "glass", "confidence": 0.9, "bin": "glass", "reason": "class",
            "t_wall": time.time(), "latency_ms": {"inference": 4.0}}


@contextlib.contextmanager
def broker_with_commands(tmp_path, max_pulse_s=0.1):
    """A real broker, a subscriber to everything the line publishes, and an actuator sending commands."""
    from edge.plant.mqtt import MqttActuator

    broker = Broker(tmp_path).start()
    try:
        sub = Subscriber(broker.port)
        actuator = MqttActuator(mqtt_cfg(broker.port, commands=True), max_pulse_s=max_pulse_s)
        yield broker, sub, actuator
        actuator.close()
        sub.close()
    finally:
        broker.stop()


@needs_mosquitto
def test_mqtt_decisions_and_nothing_stale_after_broker_restart(tmp_path):
    with broker_with_commands(tmp_path) as (broker, sub, actuator):
        assert actuator.healthy()
        assert wait_for(lambda: "online" in sub.payloads("availability"))
        actuator.decision(row("000001"))
        actuator.pulse(2, 0.03, "000001")
        assert wait_for(lambda: len(sub.payloads("decisions")) == 1 and len(sub.payloads("eject")) == 1)
        assert sub.payloads("eject")[0]["output"] == 2 and sub.payloads("eject")[0]["valid_until"] > 0
        broker.stop()
        assert wait_for(lambda: not actuator.healthy(), timeout=5)
        actuator.decision(row("000002"))          # during the outage: dropped, not queued
        assert actuator.dropped == 1
        broker.start()
        assert wait_for(actuator.healthy, timeout=40), "no reconnect"
        assert wait_for(lambda: sub.client.is_connected(), timeout=10)
        time.sleep(0.5)
        actuator.decision(row("000003"))
        assert wait_for(lambda: "000003" in [d["item_id"] for d in sub.payloads("decisions")], timeout=5)
        assert "000002" not in [d["item_id"] for d in sub.payloads("decisions")]


def test_modbus_bank_on_neighbouring_coils_is_one_request_on_and_one_off(plc):
    actuator = ModbusActuator(modbus_cfg(plc.port, coil_count=16), max_pulse_s=0.1)
    actuator.pulse_valves((5, 3, 4), 0.03, "000011")       # coils 3..5, in any order
    actuator.pulse_valves((0, 7), 0.03, "000012")          # not neighbours: a coil each
    time.sleep(0.15)
    actuator.close()
    writes = [(w["fn"], w["address"], w["values"]) for w in plc.writes() if w["fn"].startswith("write_coil")]
    assert ("write_coils", 3, [1, 1, 1]) in writes and ("write_coils", 3, [0, 0, 0]) in writes
    assert [(a, v) for f, a, v in writes if f == "write_coil" and v == [1]] == [(0, [1]), (7, [1])]


def test_a_modbus_coil_pulsed_again_before_its_end_stays_on_to_the_later_end(plc):
    """The next item on the same valve: the first pulse's end must not cut its pulse short."""
    actuator = ModbusActuator(modbus_cfg(plc.port, coil_count=16), max_pulse_s=0.5)
    actuator.pulse(2, 0.1, "000031")
    time.sleep(0.05)
    actuator.pulse(2, 0.1, "000032")
    time.sleep(0.25)
    writes = [w for w in plc.writes() if w["fn"] == "write_coil" and w["address"] == 2]
    actuator.close()
    assert [w["values"] for w in writes] == [[1], [1], [0]]
    assert writes[2]["t"] - writes[0]["t"] >= 0.14   # on for both pulses, off after the second


@needs_mosquitto
def test_mqtt_bank_is_one_command_listing_its_valves(tmp_path):
    with broker_with_commands(tmp_path, max_pulse_s=0.5) as (_, sub, actuator):
        assert wait_for(lambda: "online" in sub.payloads("availability"))
        actuator.pulse_valves((4, 5, 6), 0.26, "000021")
        assert wait_for(lambda: len(sub.payloads("eject")) == 1)
        command = sub.payloads("eject")[0]
        assert command["outputs"] == [4, 5, 6] and command["width_ms"] == 260.0 and command["item_id"] == "000021"


@needs_mosquitto
def test_mqtt_last_will_is_retained_offline(tmp_path):
    broker = Broker(tmp_path).start()
    try:
        code = ("import sys, time; from edge.plant.mqtt import MqttActuator; from edge.config import MqttActuatorConfig; "
                f"a = MqttActuator(MqttActuatorConfig(type='mqtt', port={broker.port}), 0.1); "
                "print('up' if a.healthy() else 'down', flush=True); time.sleep(60)")
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "up"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        late = Subscriber(broker.port, topic="scrapsort/line1/availability")
        assert wait_for(lambda: ("scrapsort/line1/availability", "offline", True) in late.messages, timeout=10)
        late.close()
    finally:
        broker.stop()


@needs_mosquitto
def test_mqtt_credentials(tmp_path, caplog):
    from edge.errors import ConfigError
    from edge.plant.mqtt import MqttActuator

    broker = Broker(tmp_path, password=True).start()
    try:
        anonymous = MqttActuator(mqtt_cfg(broker.port, timeout_s=0.5), max_pulse_s=0.1)
        assert not anonymous.healthy() and "refused" in caplog.text
        anonymous.close()
        secret = tmp_path / "mqtt.secret"
        secret.write_text("s3cret\n")
        secret.chmod(0o644)
        with pytest.raises(ConfigError, match="chmod 600"):
            MqttActuator(mqtt_cfg(broker.port, username="sorter", password_file=str(secret)), max_pulse_s=0.1)
        secret.chmod(0o600)
        user = MqttActuator(mqtt_cfg(broker.port, username="sorter", password_file=str(secret)), max_pulse_s=0.1)
        assert user.healthy()
        assert "s3cret" not in caplog.text   # secrets never logged
        user.close()
    finally:
        broker.stop()


def test_fault_a_broker_answering_before_the_client_is_stored_is_handled(monkeypatch, caplog):
    """paho calls on_connect on its own thread, possibly before connect_async/loop_start return;
    the actuator once stored its client only afterwards, so a fast refusal crashed the callback
    (AttributeError) and the refusal was never logged. Here the callback runs synchronously."""
    import paho.mqtt.client as paho

    from edge.plant.mqtt import MqttActuator

    refused = type("Reason", (), {"is_failure": True, "__str__": lambda self: "Not authorized"})()
    monkeypatch.setattr(paho.Client, "loop_start", lambda client: client.on_connect(client, None, {}, refused, None))
    monkeypatch.setattr(paho.Client, "connect_async", lambda client, *a, **kw: None)
    monkeypatch.setattr(paho.Client, "loop_stop", lambda client: None)
    monkeypatch.setattr(paho.Client, "disconnect", lambda client, *a, **kw: None)
    actuator = MqttActuator(mqtt_cfg(1, timeout_s=0.05), max_pulse_s=0.1)
    assert not actuator.healthy() and "refused the connection: Not authorized" in caplog.text
    actuator.close()


# -- GPIO ------------------------------------------------------------------------------------
class RecordingLines:
    """Stands in for the kernel's gpio-sim, which this machine does not offer (no configfs
    gpio-sim): records every line change with its time."""

    def __init__(self, count):
        self.state, self.changes = [False] * count, []

    def set(self, index, on):
        self.state[index] = on
        self.changes.append((time.monotonic(), index, on))

    def close(self):
        pass


def test_gpio_driver_logic_caps_pulses_and_switches_off():
    """The kernel's gpio-sim needs configfs and the gpio-sim module, which this sandbox lacks:
    the driver's logic runs here against RecordingLines; GpiodLines is the only untested part."""
    lines = RecordingLines(3)
    actuator = GpioActuator(GpioActuatorConfig(type="gpio", lines=(5, 6, 7)), max_pulse_s=0.05, lines=lines)
    started = actuator.pulse(1, 2.0, "000001")   # asks for 2 s: the driver caps it at 50 ms
    time.sleep(0.2)
    on, off = [c for c in lines.changes if c[1] == 1]
    assert on[2] is True and off[2] is False and 0.045 <= off[0] - started <= 0.09
    with pytest.raises(ValueError, match="no line"):
        actuator.pulse(3, 0.01)
    actuator.pulse(0, 1.0)
    actuator.all_off()
    assert lines.state == [False] * 3
    time.sleep(0.1)
    assert lines.state == [False] * 3   # the cancelled timer does not switch anything later


def test_a_gpio_bank_opens_its_valves_together_and_a_valve_pulsed_again_stays_on(monkeypatch):
    """On a loaded machine a thread start can take milliseconds: the valves must all be on
    before any timer thread starts (one per valve opened a bank's valves ~8 ms apart)."""
    import threading

    start = threading.Timer.start
    monkeypatch.setattr(threading.Timer, "start", lambda timer: (time.sleep(0.005), start(timer)))
    lines = RecordingLines(6)
    actuator = GpioActuator(GpioActuatorConfig(type="gpio", lines=(1, 2, 3, 4, 5, 6)), max_pulse_s=0.5, lines=lines)
    actuator.pulse_valves([1, 2, 3, 4], 0.06, "000001")
    on = [t for t, _, state in lines.changes if state]
    assert len(on) == 4 and max(on) - min(on) < 0.001
    time.sleep(0.03)
    actuator.pulse(2, 0.1, "000002")      # the next item needs valve 2 again before the bank's end
    time.sleep(0.06)                      # the bank's pulse has ended
    assert lines.state == [False, False, True, False, False, False]
    time.sleep(0.1)
    assert lines.state == [False] * 6
    off = {index: t for t, index, state in lines.changes if not state}
    assert 0.06 <= off[1] - min(on) < 0.09 and off[2] - min(on) >= 0.13


def test_several_drivers_at_once_and_one_failing(tmp_path):
    class Broken(Actuator):
        name = "broken"

        def pulse(self, output, width_s, item_id=""):
            raise IOError("bus error")

        def all_off(self):
            pass

    from edge.plant.simulated import SimulatedActuator

    sim = SimulatedActuator(max_pulse_s=0.1)
    belt = BeltTracker(LineConfig(belt_speed_mm_s=1000))
    scheduler = EjectionScheduler(belt, [Broken(0.1), sim])
    scheduler.start()
    scheduler.schedule("000001", (0,), belt.position() + 50, 0.02)
    assert wait_for(lambda: len(sim.pulses) == 1, timeout=2)
    assert scheduler.errors == 1
    scheduler.stop()


def test_modbus_last_item_registers_follow_each_pulse(plc):
    actuator = ModbusActuator(modbus_cfg(plc.port, register_base=100), max_pulse_s=0.1)
    actuator.pulse(2, 0.02, "000009")
    actuator.pulse(4, 0.02, "070001")   # item ids beyond 16 bits keep their low 16 bits
    time.sleep(0.1)
    actuator.close()
    last = [w["values"] for w in plc.writes() if w["fn"] == "write_registers" and w["address"] == 102]
    assert last == [[9, 2], [70001 & 0xFFFF, 4]]
    status = [w["values"] for w in plc.writes() if w["fn"] == "write_registers" and w["address"] == 101]
    assert status[-1] == [0]            # closing says "not ready"


@needs_mosquitto
def test_mqtt_all_off_is_published_as_a_command(tmp_path):
    from edge.plant.mqtt import MqttActuator

    broker = Broker(tmp_path).start()
    try:
        sub = Subscriber(broker.port, topic="scrapsort/line1/eject")
        assert wait_for(lambda: sub.client.is_connected(), timeout=5)
        time.sleep(0.3)
        actuator = MqttActuator(mqtt_cfg(broker.port, commands=True), max_pulse_s=0.1)
        actuator.all_off()
        assert wait_for(lambda: any(p.get("all_off") for p in sub.payloads("eject")), timeout=5)
        command = next(p for p in sub.payloads("eject") if p.get("all_off"))
        assert command["valid_until"] > command["t_wall"]
        actuator.close()
        sub.close()
    finally:
        broker.stop()


def test_sigterm_with_valves_open_ends_with_every_coil_off(tmp_path, trained_run, plc):
    from pymodbus.client import ModbusTcpClient

    _, run = trained_run
    line_config(tmp_path, run, simulator={"items": 60},
                actuators=[{"type": "modbus", "port": plc.port, "timeout_s": 0.3}])
    daemon = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(tmp_path / "line.yaml")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: any(w["fn"] == "write_coil" for w in plc.writes()), timeout=30)
    client = ModbusTcpClient("127.0.0.1", port=plc.port)
    client.connect()
    client.write_coils(0, [True] * 6)                       # valves open at the moment of the stop
    client.close()
    daemon.terminate()
    assert daemon.wait(timeout=30) == 0
    assert plc.coils() == [False] * 8
