"""Shared fixtures: a small synthetic class-folder dataset and a tiny trained run.

The dataset is drawn, not downloaded: each class is a differently coloured shape on a
light background, so a one-epoch model on 64 px inputs already separates some of them.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
COLOURS = [(40, 90, 160), (60, 160, 60), (160, 160, 160), (230, 230, 230), (200, 60, 60), (30, 30, 30)]
SHARED_TRASHNET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "trashnet"


def draw_item(label_index: int, seed: int, size=(96, 72)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w, h = size
    image = np.full((h, w, 3), 235, np.uint8) + rng.integers(0, 15, (h, w, 3), dtype=np.uint8)
    centre = (int(rng.integers(30, w - 30)), int(rng.integers(25, h - 25)))
    colour = tuple(int(c) for c in COLOURS[label_index])
    if label_index % 2:
        cv2.circle(image, centre, int(rng.integers(12, 20)), colour, -1)
    else:
        cv2.rectangle(image, (centre[0] - 15, centre[1] - 12), (centre[0] + 15, centre[1] + 12), colour, -1)
    return image


def make_dataset(root: Path, per_class: int = 8) -> Path:
    for index, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            cv2.imwrite(str(root / label / f"{label}{n}.jpg"), draw_item(index, index * 100 + n))
    return root


def write_config(path: Path, data_root: Path, run_dir: Path, **sections) -> Path:
    config = {
        "classes": CLASSES,
        "run_dir": str(run_dir),
        "data": {"root": str(data_root), "seed": 1},
        "model": {"backbone": "efficientnet_lite0", "input_size": 64, "freeze_stages": 3},
        "train": {"epochs": 1, "batch_size": 8, "workers": 0, "seed": 1},
        "export": {"parity_images": 4},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(name, {}).update(values)
        else:
            config[name] = values
    path.write_text(yaml.safe_dump(config))
    return path


def pytest_sessionstart(session):
    """`make test` sets SCRAPSORT_REQUIRE_PEERS: there a missing peer fails the run instead of
    skipping its tests (tests/peers/ensure.sh installs them)."""
    if os.environ.get("SCRAPSORT_REQUIRE_PEERS") != "1":
        return
    missing = [name for name, found in (
        ("mosquitto", shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()),
        ("chromium", shutil.which("chromium") or shutil.which("chromium-browser")),
        ("systemd-analyze", shutil.which("systemd-analyze")),
        ("prometheus", shutil.which("prometheus") and shutil.which("promtool"))) if not found]
    if missing:
        pytest.exit(f"missing test peers: {', '.join(missing)} (run tests/peers/ensure.sh, or make peers)", returncode=3)


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """prepare -> train (1 epoch) -> export, once for the session. Returns (config path, run dir)."""
    from edge.cli import main

    base = tmp_path_factory.mktemp("run")
    data = make_dataset(base / "data")
    config = write_config(base / "tiny.yaml", data, base / "out")
    for command in (["prepare"], ["train"], ["export"]):
        assert main(command + ["--config", str(config), "-q"]) == 0, command
    return config, base / "out"


def calibrated_copy(trained_run, base: Path, **calibration):
    """A copy of the tiny run with `scrapsort calibrate` run on it: (its config path, the run dir)."""
    from edge.cli import main

    _, run = trained_run
    shutil.copytree(run, base / "out")
    path = write_config(base / "c.yaml", run.parent / "data", base / "out", calibration=calibration)
    assert main(["calibrate", "--config", str(path), "-q"]) == 0
    return path, base / "out"


def layer_output_means(model: Path, layers, reader):
    """The mean output over the reader's images of each node named in `layers`, as the (quantized)
    model computes it; by node name."""
    import onnx

    from calibration.bias_correction import tensor_means

    nodes = [n for n in onnx.load(str(model)).graph.node if n.name in layers]
    means = tensor_means(model, [n.output[0] for n in nodes], reader)
    return {n.name: means[n.output[0]] for n in nodes}


@pytest.fixture
def trashnet() -> Path:
    if not SHARED_TRASHNET.is_dir():
        pytest.skip(f"real data not present at {SHARED_TRASHNET}")
    return SHARED_TRASHNET


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- a line on the simulated conveyor ------------------------------------------------------
EJECTORS = [{"bin": c, "position_mm": 300 + 60 * i, "output": i} for i, c in enumerate(CLASSES)] + \
           [{"bin": "reject", "position_mm": 700, "output": 6}]


def line_config(tmp_path, run, **overrides):
    """A line config written to tmp_path/line.yaml (and loaded): the simulated conveyor carrying
    the tiny run's images, one ejector per class plus reject, HTTP off unless overridden."""
    from edge.config import load_config

    config = {
        "classes": CLASSES, "run_dir": str(tmp_path / "line"),
        "runtime": {"model": str(run / "model.onnx"), "allow_root": True},
        "source": {"uri": "sim://", "width": 320, "height": 160, "fps": 40},
        "line": {"belt_speed_mm_s": 500, "mm_per_px": 1.25},
        "trigger": {"type": "vision", "min_gap_mm": 80},
        "decision": {"threshold": 0.0, "ejectors": EJECTORS},
        "observability": {"port": 0},
        "web": {"port": 0},
        "simulator": {"dataset": str(run.parent / "data"), "items": 8, "spacing_mm": 200, "item_length_mm": 120},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


def simulated_sorter(config):
    from edge.line.simulator import SimulatedConveyor
    from edge.service.sorter import Sorter

    return Sorter.from_config(config, simulator=SimulatedConveyor(config))


def run_sim(config):
    """The whole run on the simulated conveyor: (sorter, simulator, summary against the truth)."""
    from edge.service.report import summarize

    sorter = simulated_sorter(config)
    sorter.run_to_end()
    return sorter, sorter.line.simulator, summarize(sorter, sorter.line.simulator)


def check_exactly_once_and_timing(summary, sorter, tolerance_ms=10.0):
    """Every item decided once, every ejecting decision fired once at its ejector, on time:
    within the tolerance, plus for a late pulse however long the whole machine was frozen
    while it was due (no code on it could have fired then)."""
    from edge.service.report import pulse_timing

    assert summary["items_decided"] == summary["items_on_belt"]
    assert summary["entered"] == summary["decisions"] + summary["unclassified"] == summary["items_on_belt"]
    assert summary["items_decided_more_than_once"] == 0 and summary["decisions_without_item"] == 0
    assert summary["pulses_to_wrong_output"] == 0
    ejecting = [d for d in sorter.telemetry.recent_decisions() if d["bin"] in sorter.ejectors]
    assert summary["pulses"] == len(ejecting) > 0  # every ejecting decision fired once, nothing else
    tolerance = tolerance_ms / 1000
    spans, off = freeze_spans(), []
    for fired, error in pulse_timing(sorter, sorter.line.simulator):
        frozen = frozen_s(fired - error - 0.002, fired, spans) if error > 0 else 0.0  # due, its last sleep, fired
        if abs(error) > tolerance + frozen:
            off.append((round(1000 * error, 2), round(1000 * frozen, 2)))
    assert not off, f"pulses off by (ms, machine frozen meanwhile ms): {off}; {summary['ejection_error_ms']}"


def realtime_allowed() -> bool:
    """May this process run threads under SCHED_FIFO at the ejection timer's priority?"""
    import resource

    from edge.line.ejector import REALTIME_PRIORITY

    return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_RTPRIO)[0] >= REALTIME_PRIORITY


# -- machine freezes (tests/peers/freeze_gauge.py) -------------------------------------------
# The gauge's file, in the environment: pytest's own conftest module and `tests.conftest` as
# the test files import it are two module objects, with two copies of any global.
FREEZES_ENV = "SCRAPSORT_TEST_FREEZES"
FREEZE_SUMMARY: list = []  # for the run's last lines (this module's own copy: pytest's hooks use it)


@pytest.fixture(scope="session", autouse=True)
def freeze_gauge(tmp_path_factory):
    """A real-time bound on this machine holds for the time it ran: a VM's host can stop it for
    10 ms and more. The gauge measures those spans for the timing checks (frozen_s)."""
    path = tmp_path_factory.mktemp("gauge") / "freezes.txt"
    path.touch()
    gauge = subprocess.Popen([sys.executable, str(Path(__file__).parent / "peers" / "freeze_gauge.py"), str(path)])
    os.environ[FREEZES_ENV] = str(path)
    yield gauge
    spans = [end - start for start, end in freeze_spans()]
    FREEZE_SUMMARY.append(gauge_note() or f"machine freezes (tests/peers/freeze_gauge.py): {len(spans)} of 1 ms "
                          f"or more, {sum(s > 0.005 for s in spans)} over 5 ms, longest {1000 * max(spans, default=0):.1f} ms")
    del os.environ[FREEZES_ENV]
    gauge.kill()
    gauge.wait()


def pytest_terminal_summary(terminalreporter):
    for line in FREEZE_SUMMARY:
        terminalreporter.write_line(line)


def gauge_note() -> str:
    """Why the gauge measures nothing (no real-time priority), or ''."""
    path = os.environ.get(FREEZES_ENV)
    text = Path(path).read_text() if path else "# no gauge running"
    return text.splitlines()[0] if text.startswith("#") else ""


def freeze_spans() -> list:
    """(start, end) of each freeze the gauge has seen so far."""
    path = os.environ.get(FREEZES_ENV)
    lines = Path(path).read_text().splitlines() if path else []
    return [tuple(map(float, line.split())) for line in lines if line and not line.startswith("#")]


def frozen_s(t0: float, t1: float, spans=None) -> float:
    """How long within [t0, t1] (time.monotonic()) no process here could run, as the gauge saw it."""
    return sum(max(0.0, min(end, t1) - max(start, t0)) for start, end in (freeze_spans() if spans is None else spans))


@contextlib.contextmanager
def running(sorter):
    """Start the sorter, run its loop in a thread, and on the way out stop it and shut it down."""
    stop = threading.Event()
    sorter.start()
    loop = threading.Thread(target=sorter.run, args=(stop,))
    loop.start()
    try:
        yield loop
    finally:
        stop.set()
        loop.join(timeout=10)
        sorter.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=10.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def audit_rows(db_path, sql):
    """Rows of a running daemon's audit database; none while its file or schema is not there
    yet (SQLite creates the file a moment before the daemon's CREATE TABLE)."""
    if not db_path.exists():
        return []
    with sqlite3.connect(str(db_path), timeout=5) as db:
        try:
            return db.execute(sql).fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return []
            raise


TOKEN = "s3cret-token"


def operator_line(tmp_path, run, models=None, **web):
    """A simulated line with the operator page on a free port and a token file."""
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    config = line_config(tmp_path, run, simulator={"items": 60, "spacing_mm": 250},  # ~25 s of belt: outlasts a slow browser
                         decision={"threshold": 0.99},  # a one-epoch model is unsure: items go to review
                         web={"port": free_port(), "token_file": str(token), "preview_fps": 10, **web},
                         models=models or {})
    return simulated_sorter(config)


# -- a real Modbus TCP server on loopback (tests/peers/plc_server.py) ------------------------
PLC = Path(__file__).parent / "peers" / "plc_server.py"


class PlcServer:
    def __init__(self, tmp_path):
        self.port, self.log, self.proc = free_port(), tmp_path / "plc.jsonl", None

    def start(self):
        self.proc = subprocess.Popen([sys.executable, str(PLC), str(self.port), str(self.log)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(self._listening), "PLC server did not start"
        self.started_at = time.monotonic()
        return self

    def _listening(self):
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def writes(self, since=0.0):
        if not self.log.exists():
            return []
        return [w for w in map(json.loads, self.log.read_text().splitlines()) if w["t"] >= since]

    def coils(self):
        from pymodbus.client import ModbusTcpClient

        client = ModbusTcpClient("127.0.0.1", port=self.port, timeout=1)
        client.connect()
        bits = client.read_coils(0, count=8).bits[:8]
        client.close()
        return bits


@pytest.fixture
def plc(tmp_path):
    server = PlcServer(tmp_path).start()
    yield server
    if server.proc.poll() is None:
        server.kill()


# -- a real MQTT broker on loopback ------------------------------------------------------------
needs_mosquitto = pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
                                     reason="mosquitto is not installed (apt-get install mosquitto)")


class Broker:
    def __init__(self, tmp_path, password: bool = False):
        self.port = free_port()
        self.conf = tmp_path / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "persistence false"]
        if password:
            pw = tmp_path / "passwd"
            subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "sorter", "s3cret"], check=True)
            os.chmod(pw, 0o600)
            lines += ["allow_anonymous false", f"password_file {pw}"]
            if os.geteuid() == 0:  # as root, mosquitto would drop to a user who cannot read the test's tmp dir
                lines.insert(0, "user root")
        else:
            lines.append("allow_anonymous true")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc = None

    def start(self):
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", self.port)) == 0), "broker did not start"
        return self

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class BlackHoleProxy:
    """A TCP proxy on loopback that can go silent: while `silent` is set it reads both ways and
    forwards nothing (a link that dies mid-route: no RST, no FIN, just nothing)."""

    def __init__(self, target_port: int):
        self.target, self.silent, self._stop = target_port, threading.Event(), threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self._sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except socket.timeout:
                continue
            except OSError:  # closed, or the broker is gone: the proxy's work is over
                return
            self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source, target):
        import select

        while not self._stop.is_set():
            try:
                if not select.select([source], [], [], 0.2)[0]:
                    continue
                data = source.recv(65536)
                if not data:
                    break
                if not self.silent.is_set():
                    target.sendall(data)
            except OSError:
                break
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self._stop.set()
        self.listener.close()
        for sock in self._sockets:
            sock.close()
