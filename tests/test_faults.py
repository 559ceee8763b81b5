"""Fault injection: each test breaks one thing a plant breaks and checks the line survives it,
says so, and loses nothing. `pytest -k fault` selects them."""
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edge.config import AuditConfig
from edge.errors import ConfigError
from edge.service.audit import AuditLog
from edge.service.sorter import Sorter
from tests.conftest import (Broker, PlcServer, line_config, needs_mosquitto, run_sim, running, simulated_sorter,
                            wait_for)


def nan_model(run, path):
    """The tiny run's model with its logits multiplied by NaN; metadata (classes, preprocessing) kept."""
    model = onnx.load(str(run / "model.onnx"))
    graph = model.graph
    output = graph.output[0]
    graph.initializer.append(numpy_helper.from_array(np.array([np.nan], np.float32), "nan_scale"))
    graph.node.append(helper.make_node("Mul", [output.name, "nan_scale"], ["nan_logits"]))
    output.name = "nan_logits"
    onnx.save(model, str(path))
    return path


def test_fault_nan_model_output_goes_to_reject_and_is_logged(tmp_path, trained_run):
    _, run = trained_run
    model = nan_model(run, tmp_path / "nan.onnx")
    config = line_config(tmp_path, run, runtime={"model": str(model), "allow_root": True}, simulator={"items": 4})
    sorter, sim, summary = run_sim(config)
    decisions = sorter.telemetry.recent_decisions()
    assert len(decisions) == 4 and {d["reason"] for d in decisions} == {"invalid_output"}
    assert {d["bin"] for d in decisions} == {"reject"}                       # never ejected as classes[0]
    assert {p.output for p in sorter.actuators[0].pulses} == {6}             # the reject ejector fired
    assert summary["invalid_outputs"] == 4 and summary["rejects"] == 0
    with sqlite3.connect(str(tmp_path / "line" / "audit.db")) as db:
        rows = db.execute("SELECT class, confidence, reason, capture FROM decisions").fetchall()
    assert len(rows) == 4 and all(r[:3] == ("invalid", 0.0, "invalid_output") and r[3] for r in rows)
    assert sorter.audit.problem is None and sorter.audit.bad_rows == 0


def test_fault_a_bad_audit_row_never_kills_the_writer(tmp_path):
    audit = AuditLog(AuditConfig(), tmp_path, "sha")
    audit.start()
    good = {"item_id": "000001", "t_wall": time.time(), "class": "glass", "confidence": 0.9, "top3": [],
            "bin": "glass", "reason": "class", "x_mm": 0.0, "belt_mm": 0.0, "latency_ms": {}}
    audit.record(good, None, False)
    audit.record({**good, "item_id": "000002", "class": None}, None, False)   # violates NOT NULL
    audit.record({**good, "item_id": "000003", "confidence": float("nan")}, None, False)
    audit.record({"item_id": "000004"}, None, False)                           # fields missing
    audit.record({**good, "item_id": "000005"}, None, False)
    audit.event("check", {})
    assert wait_for(lambda: audit.committed >= 5, timeout=5)
    assert audit.is_alive() and audit.problem is None and audit.bad_rows == 3
    audit.close()
    with sqlite3.connect(str(tmp_path / "audit.db")) as db:
        items = [r[0] for r in db.execute("SELECT item_id FROM decisions ORDER BY id")]
        assert items == ["000001", "000005"] and db.execute("SELECT count(*) FROM events").fetchone()[0] == 1


def test_fault_a_dead_audit_writer_never_blocks_sorting_and_health_says_so(tmp_path, trained_run):
    _, run = trained_run
    config = line_config(tmp_path, run, simulator={"items": 3})
    sorter = simulated_sorter(config)
    sorter.audit.db.close()                  # the writer's database goes away under it
    sorter.audit._queue.maxsize = 2          # and its queue is nearly full already
    line = threading.Thread(target=sorter.run_to_end, daemon=True)
    line.start()
    line.join(timeout=60)
    assert not line.is_alive()               # the run ended: nothing waited on the dead writer
    assert len(sorter.telemetry.recent_decisions()) == 3
    ready, health = sorter.health()
    assert not ready and "audit writer stopped" in health["audit"]
    assert sorter.audit.dropped > 0
    assert json.dumps(health)  # the reason is plain data for /healthz


def stalled_line(tmp_path, run, fault):
    """A simulated line whose camera develops `fault(image) -> image` after 1.5 s; watchdog pings recorded."""
    config = line_config(tmp_path, run, source={"read_timeout_s": 0.3, "reopen_limit": 2}, simulator={"items": 30})
    sorter = simulated_sorter(config)
    sim, pings = sorter.line.simulator, []
    sorter.notifier.watchdog = lambda: pings.append(time.monotonic()) or True
    sorter.notifier.watchdog_interval = 0.05
    original, broken_at = sim.read, []

    def read():
        frame = original()
        if sim.t0 is not None and time.monotonic() - sim.t0 > 1.5:
            broken_at.append(broken_at[0] if broken_at else time.monotonic())
            frame.image = fault(frame.image)
        return frame

    sim.read = read
    return sorter, pings, broken_at


def assert_stops_acting_and_says_so(sorter, pings, broken_at, reason):
    with running(sorter):
        assert wait_for(lambda: broken_at, timeout=10)
        assert wait_for(lambda: not sorter.health()[0], timeout=3)
        decided = sorter.telemetry.decisions
        time.sleep(1.0)
        ready, health = sorter.health()
        assert not ready and not health["camera_ok"] and reason(health)
        assert sorter.telemetry.decisions == decided                 # nothing decided on broken frames
        assert sorter.telemetry.total(sorter.telemetry.camera_faults) == 1
    late_pings = [p for p in pings if p > broken_at[0] + 0.2]
    assert pings and not late_pings                                     # the watchdog is no longer fed
    with sqlite3.connect(str(sorter.audit.path)) as db:
        assert db.execute("SELECT count(*) FROM events WHERE kind = 'camera_fault'").fetchone()[0] == 1


def test_fault_camera_resolution_change_is_refused_and_reported(tmp_path, trained_run, caplog):
    import cv2

    _, run = trained_run
    sorter, pings, broken_at = stalled_line(tmp_path, run, lambda image: cv2.resize(image, (640, 360)))
    assert_stops_acting_and_says_so(sorter, pings, broken_at,
                                    lambda health: "camera delivers 640x360" in health["camera_error"])
    assert "could not be processed" not in caplog.text                 # no tracebacks from the trigger
    assert sorter.capture.wrong_size_frames > 0


def test_fault_frozen_camera_is_not_ready_after_failed_reopens(tmp_path, trained_run):
    _, run = trained_run
    frozen = {}
    sorter, pings, broken_at = stalled_line(tmp_path, run, lambda image: frozen.setdefault("image", image.copy()))
    assert_stops_acting_and_says_so(sorter, pings, broken_at, lambda health: health["frozen_frames"] > 0)
    assert sorter.capture.failed_reopens >= 2


def test_fault_ready_waits_until_the_plc_is_linked(tmp_path, trained_run):
    """With the PLC unreachable at start the daemon runs but says it is waiting, and sends
    READY=1 only once the link is up (before: READY at once, and nothing could fire)."""
    _, run = trained_run
    plc = PlcServer(tmp_path)                                  # its port, nothing listening yet
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    line_config(tmp_path, run, simulator={"items": 60},
                actuators=[{"type": "modbus", "port": plc.port, "timeout_s": 0.2, "retries": 0}])
    daemon = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(tmp_path / "line.yaml")],
                              env={**os.environ, "NOTIFY_SOCKET": sock_path}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    messages = []

    def receive(seconds):
        sock.settimeout(0.2)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                messages.append(sock.recv(4096).decode())
            except socket.timeout:
                pass

    try:
        receive(4)
        assert messages and not any("READY=1" in m for m in messages)
        assert any("waiting for actuator link(s): modbus" in m for m in messages)
        plc.start()
        receive(6)
        assert any(m.startswith("READY=1") for m in messages)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        if plc.proc is not None:
            plc.kill()


@needs_mosquitto
def test_fault_a_telemetry_only_link_loss_degrades_but_sorting_goes_on(tmp_path, trained_run):
    _, run = trained_run
    broker = Broker(tmp_path).start()
    config = line_config(tmp_path, run, simulator={"items": 30},
                         actuators=[{"type": "simulated"}, {"type": "mqtt", "port": broker.port, "commands": False}])
    sorter = simulated_sorter(config)
    try:
        with running(sorter):
            assert wait_for(lambda: sorter.health()[0] and sorter.telemetry.total(sorter.telemetry.ejections) > 0,
                            timeout=20)
            broker.stop()
            assert wait_for(lambda: not sorter.actuators[1].healthy(), timeout=10)
            fired = len(sorter.actuators[0].pulses)
            assert wait_for(lambda: len(sorter.actuators[0].pulses) > fired + 2, timeout=20)  # valves still fire
            assert sorter.health()[0]                          # still ready: the valves are all linked
            assert sorter.health()[1].get("degraded_links") == ["mqtt"]
    finally:
        if broker.proc.poll() is None:
            broker.stop()


def test_fault_camera_absent_at_start_is_retried_not_fatal(tmp_path, trained_run, caplog):
    """A camera that is not there yet: the daemon starts, is not ready, and keeps retrying with
    backoff (before: exit 65 at once, and systemd's start limit left the service failed)."""
    _, run = trained_run
    config = line_config(tmp_path, run, source={"uri": "v4l2:///dev/video-absent", "read_timeout_s": 0.2,
                                                "width": 320, "height": 160})
    sorter = Sorter.from_config(config)
    with running(sorter):
        assert wait_for(lambda: sorter.capture.failed_reopens >= 3, timeout=10)
        ready, health = sorter.health()
        assert not ready and not health["camera_ok"] and "cannot open video source" in health["camera_error"]
        assert sorter.capture.is_alive()
    reopen_times = [r.created for r in caplog.records if "source reopen" in r.getMessage()]
    gaps = [b - a for a, b in zip(reopen_times, reopen_times[1:])]
    assert gaps and gaps[-1] > gaps[0]                                   # backing off, not spinning
    file_config = line_config(tmp_path / "f", run, source={"uri": "file:///no/such/video.avi"})
    with pytest.raises(ConfigError, match="source.uri: cannot open video source"):
        Sorter.from_config(file_config)                                  # a wrong file path is a config error


def test_fault_missing_tls_ca_file_is_a_config_error_not_a_restart_loop(tmp_path, trained_run, caplog):
    from edge.cli import main

    _, run = trained_run
    line_config(tmp_path, run, actuators=[{"type": "mqtt", "port": 1, "tls": True, "ca_file": "/no/such/ca.pem"}])
    assert main(["run", "--config", str(tmp_path / "line.yaml")]) == 78   # before: 70, which systemd restarts
    assert "ca_file /no/such/ca.pem does not exist" in caplog.text


def test_fault_jpeg_truncation_is_decided_by_decoding(tmp_path):
    """Before: a cut JPEG with an end marker appended passed the marker check, and a valid JPEG
    with bytes after its end marker was refused."""
    import cv2

    from edge.errors import ImageError
    from edge.vision.images import decode_image

    image = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (240, 320, 3)).astype(np.uint8), (15, 15), 5)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    with pytest.raises(ImageError, match="truncated JPEG"):
        decode_image(data[: len(data) // 2] + b"\xff\xd9", "cut.jpg")
    with pytest.raises(ImageError, match="truncated JPEG"):
        decode_image(data[: len(data) // 2], "cut.jpg")
    padded = decode_image(data + b"\x00" * 2000 + b"camera firmware trailer", "padded.jpg")
    assert padded.shape == (240, 320, 3) and np.array_equal(padded, decode_image(data, "whole.jpg"))
    grey = decode_image(cv2.imencode(".jpg", image[:, :, 0])[1].tobytes(), "grey.jpg")
    assert grey.shape == (240, 320, 3)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 6 MiB tmpfs, for what a full disk does (mounting needs root, which `make test` in CI has)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_fault_full_disk_pauses_captures_first_and_every_decision_is_still_logged(tiny_disk, tmp_path, trained_run):
    """Before: captures filled the disk, then the decision log died ('database or disk is full')."""
    _, run = trained_run
    (tiny_disk / "filler").write_bytes(b"\0" * (2 * 2**20))    # the rest of the plant's disk use
    config = line_config(tmp_path, run, run_dir=str(tiny_disk / "line"), simulator={"items": 12},
                         decision={"threshold": 1.0},            # every item low confidence: every crop captured
                         audit={"reserve_free_mb": 1.2, "captures_quota_mb": 100})
    sorter = simulated_sorter(config)
    noise = np.random.default_rng(0).integers(0, 255, (900, 900, 3), dtype=np.uint8)   # ~700 kB per JPEG
    original = sorter.process

    def process(obs):
        obs.crop = noise                                     # incompressible crops fill the disk quickly
        return original(obs)

    sorter.process = process
    sorter.run_to_end()
    with sqlite3.connect(str(tiny_disk / "line" / "audit.db")) as db:
        assert db.execute("SELECT count(*) FROM decisions").fetchone()[0] == 12   # nothing lost
        assert db.execute("SELECT count(*) FROM events WHERE kind = 'captures_paused'").fetchone()[0] == 1
    captures = list((tiny_disk / "line" / "captures").rglob("*.jpg"))
    assert 0 < len(captures) < 12 and sorter.audit.captures.skipped == 12 - len(captures)
    health = sorter.health()[1]
    assert "captures paused" in health["captures"] and sorter.audit.problem is None and sorter.audit.bad_rows == 0
    assert sorter.telemetry.registry.get_sample_value("scrapsort_captures_paused") == 1


@needs_mosquitto
def test_fault_mqtt_eject_commands_are_never_delivered_stale(tmp_path):
    """Behind a link that goes silent, the driver notices within the acknowledgement budget and
    no command published into the silence is ever delivered, however long the link takes to
    come back. Before: healthy for seconds (keepalive), then paho re-sent them, seconds late."""
    import paho.mqtt.client as paho

    from edge.config import MqttActuatorConfig
    from edge.plant.mqtt import MqttActuator
    from tests.conftest import BlackHoleProxy

    broker = Broker(tmp_path).start()
    proxy = BlackHoleProxy(broker.port)
    arrivals = []
    listener = paho.Client(paho.CallbackAPIVersion.VERSION2)
    listener.on_connect = lambda c, u, f, r, p: c.subscribe("scrapsort/line1/eject", qos=1)
    listener.on_message = lambda c, u, m: arrivals.append((time.time(), json.loads(m.payload)))
    listener.connect("127.0.0.1", broker.port)
    listener.loop_start()
    actuator = MqttActuator(MqttActuatorConfig(type="mqtt", port=proxy.port, commands=True, command_valid_ms=200,
                                               command_ack_ms=250, keepalive_s=10), max_pulse_s=0.1)
    delivered = lambda: [payload.get("item_id") for _, payload in arrivals]  # noqa: E731
    try:
        assert actuator.healthy() and wait_for(lambda: listener.is_connected(), timeout=5)
        time.sleep(0.3)
        actuator.pulse(1, 0.03, "000001")
        assert wait_for(lambda: "000001" in delivered(), timeout=2)
        proxy.silent.set()
        silent_at = time.monotonic()
        for item in ("000002", "000003", "000004"):
            try:
                actuator.pulse(1, 0.03, item)
            except IOError:
                pass                                                      # already known to be down: refused
            time.sleep(0.1)
        assert wait_for(lambda: not actuator.healthy(), timeout=1.0)
        assert time.monotonic() - silent_at < 1.5                         # noticed within the budget, not keepalive
        time.sleep(5.0)
        proxy.silent.clear()
        assert wait_for(actuator.healthy, timeout=20), "no reconnect once the link is back"
        actuator.pulse(1, 0.03, "000005")
        assert wait_for(lambda: "000005" in delivered(), timeout=2)
        time.sleep(1.0)
        assert not {"000002", "000003", "000004"} & set(delivered())     # never delivered, not even late
        assert all(arrived <= payload["valid_until"] for arrived, payload in arrivals if "item_id" in payload)
    finally:
        actuator.close()
        listener.loop_stop()
        proxy.close()
        broker.stop()


def test_fault_items_inference_cannot_keep_up_with_are_counted_and_logged(tmp_path, trained_run):
    """Inference far slower than the belt: the oldest waiting items are dropped, never decided
    late; each one is counted and has its own audit event, so no item leaves without a trace."""
    _, run = trained_run
    config = line_config(tmp_path, run, simulator={"items": 20, "processing_jitter_ms": [1000, 1000]},
                         line={"max_frame_age_ms": 60000})
    sorter, sim, summary = run_sim(config)
    assert summary["dropped"] > 0
    assert summary["decisions"] + summary["dropped"] + summary["stale_skipped"] == len(sim.items)
    with sqlite3.connect(str(sorter.audit.path)) as db:
        events = [json.loads(d) for (d,) in db.execute("SELECT detail FROM events WHERE kind = 'item_unclassified'")]
        decided = {r[0] for r in db.execute("SELECT item_id FROM decisions")}
    assert len(events) == summary["dropped"] and {e["reason"] for e in events} == {"inference behind"}
    assert not {e["item_id"] for e in events} & decided


def test_fault_an_item_longer_than_the_view_is_counted_unclassified(tmp_path, trained_run):
    """The view is 400 mm of belt; 450 mm items are never wholly in it. Before: no decision,
    no counter, no log line; now each is counted once with its reason and an audit event."""
    _, run = trained_run
    config = line_config(tmp_path, run, simulator={"items": 3, "item_length_mm": 450, "spacing_mm": 900})
    sorter, sim, summary = run_sim(config)
    assert summary["decisions"] == 0 and summary["unclassified"] == 3
    assert sorter.telemetry.registry.get_sample_value(
        "scrapsort_unclassified_items_total", {"reason": "too long for the view"}) == 3
    with sqlite3.connect(str(sorter.audit.path)) as db:
        reasons = [json.loads(d)["reason"] for (d,) in db.execute("SELECT detail FROM events WHERE kind = "
                                                                   "'item_unclassified'")]
    assert reasons == ["too long for the view"] * 3
