"""The daemon as a process and through real files: video, folders, SIGKILL, sd_notify, HTTP."""
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edge.service.sorter import Sorter
from edge.line.simulator import SimulatedConveyor
from tests.conftest import audit_rows, free_port, line_config, running, simulated_sorter


def write_video(path, config, seconds=4.0):
    """Record the simulated belt into a real MJPEG/AVI file (what a camera would have seen)."""
    sim = SimulatedConveyor(config)
    fps = config.source.fps
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (config.source.width, config.source.height))
    sim.start()
    for n in range(int(seconds * fps)):
        writer.write(sim.render(sim.t0 + n / fps))
    writer.release()
    return path


def test_video_file_through_opencv(tmp_path, trained_run):
    _, run = trained_run
    sim_config = line_config(tmp_path, run, simulator={"items": 4})
    video = write_video(tmp_path / "belt.avi", sim_config)
    config = line_config(tmp_path / "v", run, source={"uri": f"file://{video}"}, line={"max_frame_age_ms": 60000})
    sorter = Sorter.from_config(config).run_to_end()
    assert sorter.capture.frames == int(4.0 * config.source.fps)
    assert len(sorter.telemetry.recent_decisions()) == 4  # each item seen in the video classified once


def test_truncated_video_and_corrupt_images_are_skipped(tmp_path, trained_run, caplog):
    _, run = trained_run
    video = write_video(tmp_path / "belt.avi", line_config(tmp_path, run, simulator={"items": 3}))
    data = video.read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    config = line_config(tmp_path / "v", run, source={"uri": f"file://{tmp_path / 'cut.avi'}"},
                         line={"max_frame_age_ms": 60000})
    sorter = Sorter.from_config(config).run_to_end()  # ends at the cut instead of hanging or crashing
    assert 0 < sorter.capture.frames < int(4.0 * config.source.fps)

    folder = tmp_path / "frames"
    folder.mkdir()
    frame = np.full((160, 320, 3), 70, np.uint8)
    for n in range(3):
        cv2.imwrite(str(folder / f"{n}.jpg"), frame)
    good = (folder / "1.jpg").read_bytes()
    (folder / "1.jpg").write_bytes(good[: len(good) // 2])
    (folder / "2.png").write_bytes(b"garbage")
    config = line_config(tmp_path / "f", run, source={"uri": f"folder://{folder}", "fps": 50})
    sorter = Sorter.from_config(config).run_to_end()
    assert sorter.capture.frames == 1 and sorter.capture.bad_frames == 2
    assert "truncated JPEG" in caplog.text and "not a decodable image" in caplog.text


def start_daemon(tmp_path, run, env=None, **overrides):
    config = line_config(tmp_path, run, **overrides)
    path = tmp_path / "line.yaml"
    return config, subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(path)],
                                    env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)


def test_sigkill_keeps_audit_db_consistent(tmp_path, trained_run):
    _, run = trained_run
    config, proc = start_daemon(tmp_path, run, simulator={"items": 40, "spacing_mm": 200})
    db_path = tmp_path / "line" / "audit.db"
    committed = 0
    deadline = time.monotonic() + 60
    while committed < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
        committed = len(audit_rows(db_path, "SELECT id FROM decisions"))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert committed >= 5, proc.stdout.read()
    db = sqlite3.connect(str(db_path))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM decisions").fetchone()[0] >= committed


def test_sd_notify_ready_only_when_sorting_and_watchdog(tmp_path, trained_run, plc):
    """READY=1 comes once the line really sorts: at that moment every PLC coil has already
    been written off and /healthz already answers ready. Then the loop feeds the watchdog."""
    _, run = trained_run
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(30)
    env = {"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"}
    port = free_port()
    _, proc = start_daemon(tmp_path, run, env=env, simulator={"items": 3}, observability={"port": port},
                           actuators=[{"type": "modbus", "port": plc.port, "timeout_s": 0.3}])
    messages, at_ready = [], None
    try:
        while proc.poll() is None and not any("STOPPING=1" in m for m in messages):
            try:
                messages.append(sock.recv(4096).decode())
            except socket.timeout:
                break
            if messages[-1].startswith("READY=1") and at_ready is None:
                health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
                at_ready = (health, plc.writes())
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert messages[0].startswith("READY=1")
    health, writes = at_ready
    assert health["ready"] and health["actuators_ok"] and health["camera_ok"]
    assert {"fn": "write_coils", "address": 0, "values": [0] * 8}.items() <= writes[0].items()
    assert sum(m == "WATCHDOG=1" for m in messages) >= 2

    # A broken config: no READY, the config exit code.
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"decision": {"threshhold": 0.5}}))
    result = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(bad)],
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 78 and "decision.threshhold" in result.stderr
    sock.settimeout(0.5)
    with pytest.raises(socket.timeout):
        sock.recv(4096)


def test_watchdog_pings_stop_when_the_source_stalls(tmp_path, trained_run):
    _, run = trained_run
    config = line_config(tmp_path, run, simulator={"items": 2})
    sim = SimulatedConveyor(config)
    sorter = Sorter.from_config(config, simulator=sim)
    pings = []
    sorter.notifier.watchdog = lambda: pings.append(time.monotonic()) or True
    sorter.notifier.watchdog_interval = 0.05
    stall, release = threading.Event(), threading.Event()
    original_read = sim.read

    def read():
        if stall.is_set():
            release.wait(30)  # the camera hangs inside read()
        return original_read()

    sim.read = read
    stop = threading.Event()
    sorter.start()
    loop = threading.Thread(target=sorter.run, args=(stop,))
    loop.start()
    time.sleep(0.5)
    stall.set()
    time.sleep(0.3)
    stalled_at = time.monotonic()
    time.sleep(0.7)
    stop.set()
    loop.join(timeout=5)
    release.set()
    sorter.shutdown()
    assert len([p for p in pings if p < stalled_at]) >= 3
    assert not [p for p in pings if p > stalled_at]


def test_metrics_and_health_endpoint_are_read_only(tmp_path, trained_run):
    _, run = trained_run
    config = line_config(tmp_path, run, simulator={"items": 3}, observability={"port": free_port()})
    sorter = simulated_sorter(config)
    with running(sorter) as loop:
        base = f"http://127.0.0.1:{sorter.status.port}"
        time.sleep(1.5)
        health = json.loads(urllib.request.urlopen(base + "/healthz", timeout=5).read())
        assert health["ready"] and health["camera_ok"] and health["actuators_ok"]
        loop.join(timeout=30)
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        inference = samples[("scrapsort_stage_latency_seconds_bucket", (("le", "+Inf"), ("stage", "inference")))]
        assert inference == len(sorter.telemetry.recent_decisions()) > 0
        assert samples[("scrapsort_frames_total", ())] > 0
        assert sum(v for (name, _), v in samples.items() if name == "scrapsort_items_total") == inference
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(base + "/metrics", data=b"x", method="POST"), timeout=5)
        assert err.value.code == 405
        assert sorter.status.address[0] == "127.0.0.1"
