"""The audit log and the capture store on real files: quota, rotation, and atomic writes
that survive SIGKILL."""
import signal
import sqlite3
import subprocess
import sys
import time

import cv2
import numpy as np

from edge.config import AuditConfig
from edge.service.audit import AuditLog, CaptureStore
from tests.conftest import wait_for


def noise(seed, size=200):
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)


def test_captures_stay_within_their_quota_oldest_deleted_first(tmp_path):
    store = CaptureStore(tmp_path / "captures", quota_mb=0.3)
    names = [store.save(noise(i), "glass", f"{i:06d}") for i in range(12)]   # ~60 kB each
    files = sorted((tmp_path / "captures").rglob("*.jpg"), key=lambda p: p.stat().st_mtime)
    assert sum(f.stat().st_size for f in files) <= 0.3 * 2 ** 20 and store.used <= 0.3 * 2 ** 20
    assert 0 < len(files) < 12
    assert [f.name for f in files] == [n.split("/")[-1] for n in names[-len(files):]]   # the newest kept


def row(n, t_wall):
    return {"item_id": f"{n:06d}", "t_wall": t_wall, "class": "glass", "confidence": 0.9, "top3": [], "bin": "glass",
            "reason": "class", "x_mm": 0.0, "belt_mm": 0.0, "latency_ms": {"inference": 1.0}}


def test_fault_decisions_are_rotated_by_age_and_by_size(tmp_path):
    """Before: size was read from the main file, which in WAL mode stays tiny while the -wal
    file grows, so rotation by size never happened."""
    audit = AuditLog(AuditConfig(max_age_days=1, max_db_mb=0.1), tmp_path, "sha")
    audit.start()
    old = time.time() - 3 * 86400
    for n in range(2500):
        audit.record({**row(n, old if n < 500 else time.time()), "top3": [{"class": "glass", "confidence": 0.9}] * 3},
                     None, False)
    assert wait_for(lambda: audit.committed == 2500, timeout=20)
    audit.close()
    with sqlite3.connect(str(tmp_path / "audit.db")) as db:
        ages = db.execute("SELECT min(t_wall), count(*), min(id) FROM decisions").fetchone()
    assert ages[0] > time.time() - 86400                       # nothing older than max_age_days is left
    assert (tmp_path / "audit.db").stat().st_size <= 0.1 * 2 ** 20 * 3   # rotated every 1000 rows, file included
    assert ages[1] < 2000 and ages[2] > 500                    # by size too, the oldest first


def test_fault_a_shadow_model_s_answers_are_rotated_by_size_with_the_decisions(tmp_path):
    """The shadow table grows with the decisions: by size it goes too, or it alone would keep
    the log over max_db_mb (and every decision would be deleted trying to get under it)."""
    audit = AuditLog(AuditConfig(max_db_mb=0.1), tmp_path, "sha")
    audit.start()
    for n in range(3700):  # rotated every 1000 rows, the last time at 7000 of 7400
        audit.record({**row(n, time.time()), "top3": [{"class": "glass", "confidence": 0.9}] * 3}, None, False)
        audit.shadow({"item_id": f"{n:06d}", "live_class": "glass", "live_confidence": 0.9, "class": "metal",
                      "confidence": 0.8, "agrees": False, "model_sha256": "e" * 64, "model_version": "v2@" + "e" * 12})
    assert wait_for(lambda: audit.committed == 3700, timeout=30)
    audit.close()
    with sqlite3.connect(str(tmp_path / "audit.db")) as db:
        decisions, shadow = (db.execute(f"SELECT count(*), min(item_id) FROM {t}").fetchone() for t in ("decisions", "shadow"))
    assert (tmp_path / "audit.db").stat().st_size <= 0.1 * 2 ** 20 * 3
    assert 0 < shadow[0] < 3700 and shadow[1] > "000000"       # the oldest answers went
    assert decisions[0] > 0                                     # the decisions were not sacrificed for them


WRITER = """
import sys, numpy as np, cv2
from pathlib import Path
from edge.files import atomic_write
folder = Path(sys.argv[1])
image = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)
data = cv2.imencode(".jpg", image)[1].tobytes()
n = 0
while True:
    atomic_write(folder / f"{n:05d}.jpg", data)
    n += 1
"""


def test_atomic_writes_leave_no_partial_file_visible_after_sigkill(tmp_path):
    folder = tmp_path / "captures"
    folder.mkdir()
    for _ in range(3):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)])
        assert wait_for(lambda: len(list(folder.glob("*.jpg"))) > 3, timeout=20)
        time.sleep(0.05 * _)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    visible = sorted(folder.glob("*.jpg"))
    assert visible
    for path in visible:                                       # every visible file is whole
        image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (600, 600, 3), path
        assert path.read_bytes().rstrip(b"\0").endswith(b"\xff\xd9"), path


def test_csv_export_of_a_time_range_round_trips_from_the_cli(tmp_path):
    import csv
    import io

    from edge.cli import main

    audit = AuditLog(AuditConfig(), tmp_path, "f" * 64)
    audit.start()
    start = time.time() - 1000
    for n in range(1200):  # more than one chunk of rows
        audit.record({**row(n, start + n * 0.5), "top3": [{"class": "glass", "confidence": 0.9},
                                                          {"class": "metal", "confidence": 0.05}],
                      "latency_ms": {"inference": 6.5, "capture_to_decision": 11.0}}, None, False)
    assert wait_for(lambda: audit.committed == 1200, timeout=20)
    audit.close()
    since, until = start + 100, start + 400                     # rows 200 .. 799
    out = tmp_path / "export.csv"
    assert main(["audit", "export", "--db", str(tmp_path / "audit.db"), "--since", str(since), "--until", str(until),
                 "--csv", "--output", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    with sqlite3.connect(str(tmp_path / "audit.db")) as db:
        ids = [r[0] for r in db.execute("SELECT id FROM decisions WHERE t_wall >= ? AND t_wall < ? ORDER BY id",
                                        (since, until))]
    assert [int(r["id"]) for r in rows] == ids and len(ids) == 600
    first = rows[0]
    assert first["item_id"] == "000200" and first["class"] == "glass" and first["top3"] == "glass:0.9000 | metal:0.0500"
    assert first["inference_ms"] == "6.500" and first["preprocess_ms"] == "" and first["model_sha256"] == "f" * 12
    assert first["time_utc"].endswith("Z")
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since))    # local ISO time works too
    assert main(["audit", "export", "--db", str(tmp_path / "audit.db"), "--since", iso, "--output", str(out)]) == 0
    from_iso = time.mktime(time.strptime(iso, "%Y-%m-%dT%H:%M:%S"))
    with sqlite3.connect(str(tmp_path / "audit.db")) as db:
        expected = db.execute("SELECT count(*) FROM decisions WHERE t_wall >= ?", (from_iso,)).fetchone()[0]
    assert len(list(csv.DictReader(io.StringIO(out.read_text())))) == expected > 990
    assert main(["audit", "export", "--db", str(tmp_path / "audit.db"), "--since", "yesterday"]) == 78


def test_an_audit_log_from_before_lateral_positions_gains_the_column(tmp_path):
    with sqlite3.connect(str(tmp_path / "audit.db")) as db:   # the schema as it was
        db.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY, item_id TEXT NOT NULL, t_wall REAL NOT NULL, "
                   "class TEXT NOT NULL, confidence REAL NOT NULL, top3 TEXT NOT NULL, bin TEXT, reason TEXT NOT NULL, "
                   "x_mm REAL, belt_mm REAL, eject_target_mm REAL, latency_ms TEXT NOT NULL, "
                   "model_sha256 TEXT NOT NULL, capture TEXT)")
        db.execute("INSERT INTO decisions (item_id, t_wall, class, confidence, top3, reason, latency_ms, model_sha256)"
                   " VALUES ('000001', ?, 'glass', 0.9, '[]', 'class', '{}', 'sha')", (time.time(),))
    audit = AuditLog(AuditConfig(), tmp_path, "sha")
    audit.start()
    audit.record({**row(2, time.time()), "y_mm": -42.5}, None, False)
    assert wait_for(lambda: audit.committed == 1, timeout=10)
    audit.close()
    with sqlite3.connect(str(tmp_path / "audit.db")) as db:
        assert db.execute("SELECT item_id, y_mm FROM decisions ORDER BY id").fetchall() == [("000001", None),
                                                                                           ("000002", -42.5)]
