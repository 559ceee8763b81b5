"""Audit trail: every decision in SQLite (WAL), low-confidence items saved for re-labelling.

A writer thread owns the database so the sorting loop never waits on the disk. Each batch
is one transaction with synchronous=FULL: after a crash every committed decision is there
and the file passes integrity_check; at most the decisions of the last fraction of a
second (not yet committed) are lost. Captures are JPEGs written atomically (temp file,
fsync, rename) under a disk quota; a full disk stops capturing, never sorting.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import queue
import random
import shutil
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import cv2
import numpy as np

from edge.config import AuditConfig
from edge.files import atomic_write
from edge.service.telemetry import STAGES

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    item_id TEXT NOT NULL,
    t_wall REAL NOT NULL,
    class TEXT NOT NULL,
    confidence REAL NOT NULL,
    top3 TEXT NOT NULL,
    bin TEXT,
    reason TEXT NOT NULL,
    x_mm REAL,
    y_mm REAL,
    belt_mm REAL,
    eject_target_mm REAL,
    latency_ms TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    capture TEXT,
    model_version TEXT
);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (t_wall);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    t_wall REAL NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS shadow (
    id INTEGER PRIMARY KEY,
    item_id TEXT NOT NULL,
    t_wall REAL NOT NULL,
    live_class TEXT NOT NULL,
    live_confidence REAL,
    class TEXT NOT NULL,
    confidence REAL,
    agrees INTEGER NOT NULL,
    model_sha256 TEXT NOT NULL,
    model_version TEXT
);
CREATE TABLE IF NOT EXISTS reviews (
    decision_id INTEGER PRIMARY KEY,
    label TEXT NOT NULL,
    t_wall REAL NOT NULL,
    path TEXT NOT NULL
);
"""


ROTATED = ("decisions", "shadow")  # the tables that grow with every item


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False)
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # effective on a new file: rotation can shrink it
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(decisions)")}
    if "y_mm" not in columns:  # a log from before items were placed across the belt
        db.execute("ALTER TABLE decisions ADD COLUMN y_mm REAL")
    if "model_version" not in columns:  # a log from before models could be swapped while sorting
        db.execute("ALTER TABLE decisions ADD COLUMN model_version TEXT")
    return db


class CaptureStore:
    """JPEGs for re-labelling, in <dir>/<class>/, oldest deleted beyond the quota.

    The decision log comes first: while the disk has less free space than `reserve` (its
    room), captures pause (counted, said in health) and resume once space is back."""

    def __init__(self, folder: Path, quota_mb: float, reserve_mb: float = 0.0):
        self.folder, self.quota = folder, int(quota_mb * 1024 * 1024)
        self.reserve = int(reserve_mb * 1024 * 1024)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.disabled_reason: Optional[str] = None
        self.skipped = 0
        self.used = sum(p.stat().st_size for p in folder.rglob("*.jpg"))

    def save(self, image: np.ndarray, label: str, item_id: str) -> Optional[str]:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            return None
        target = self.folder / label / f"{time.strftime('%Y%m%d-%H%M%S')}-{item_id}.jpg"
        try:
            self._make_room(len(data))
            free = shutil.disk_usage(self.folder).free
            if free - len(data) < self.reserve:
                return self._skip(f"captures paused: {free / 2**20:.1f} MiB free, below the "
                                  f"{self.reserve / 2**20:.0f} MiB kept for the decision log")
            atomic_write(target, data.tobytes())
        except OSError as exc:  # disk full or read-only: keep sorting, stop capturing, raise the alarm
            return self._skip(f"captures stopped: {exc.strerror or exc}")
        if self.disabled_reason:
            log.info("captures resumed")
        self.disabled_reason = None
        self.used += len(data)
        return str(target.relative_to(self.folder))

    def _skip(self, reason: str) -> None:
        if reason.split(":")[0] != (self.disabled_reason or "").split(":")[0]:
            log.error("%s", reason)
        self.disabled_reason = reason
        self.skipped += 1
        return None

    def _make_room(self, size: int) -> None:
        if self.used + size <= self.quota:
            return
        for old in sorted(self.folder.rglob("*.jpg"), key=lambda p: p.stat().st_mtime):
            self.used -= old.stat().st_size
            old.unlink()
            if self.used + size <= self.quota:
                return


class AuditLog(threading.Thread):
    def __init__(self, cfg: AuditConfig, run_dir: Path, model_sha256: str):
        super().__init__(name="audit", daemon=True)
        self.cfg, self.model_sha256 = cfg, model_sha256
        self.path = Path(cfg.db) if cfg.db else run_dir / "audit.db"
        self.db = connect(self.path)
        self.captures = CaptureStore(Path(cfg.captures_dir) if cfg.captures_dir else run_dir / "captures",
                                     cfg.captures_quota_mb, cfg.reserve_free_mb)
        self._queue: "queue.Queue[Optional[tuple]]" = queue.Queue(maxsize=10000)
        self.committed = self.bad_rows = self.dropped = 0
        self._rows = 0  # rows written to the tables rotation keeps in bounds (ROTATED)
        self.error: Optional[str] = None
        self._closing = False
        self.rotate()

    def record(self, row: Dict, crop: Optional[np.ndarray], keep_crop: bool) -> None:
        """Queue a decision; its crop is saved when asked (low confidence, invalid output) or sampled.
        Never waits: a full queue drops the row and counts it."""
        keep = keep_crop or random.random() < self.cfg.sample_rate
        self._put(("decision", row, crop if keep else None))

    def shadow(self, row: Dict) -> None:
        """What the shadow model answered for a decided item."""
        self._put(("shadow", row, None))

    def event(self, kind: str, detail: Dict) -> None:
        self._put(("event", {"kind": kind, "detail": json.dumps(detail)}, None))

    def _put(self, entry: tuple) -> None:
        try:
            self._queue.put_nowait(entry)
        except queue.Full:  # the writer is stuck or dead: health says so; sorting never waits for it
            self.dropped += 1
            log.error("audit queue full: %s not logged (%d dropped)", entry[0], self.dropped)

    @property
    def problem(self) -> Optional[str]:
        """Why the decision log is not working, or None."""
        if self.error:
            return self.error
        if self.started and not self.is_alive() and not self._closing:
            return "audit writer stopped"
        return None

    @property
    def started(self) -> bool:
        return self.ident is not None

    def run(self) -> None:
        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < 256:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = any(entry is None for entry in batch)
                self._write([entry for entry in batch if entry is not None])
                if stop:
                    return
        except Exception as exc:  # e.g. the database file is gone: say so, do not take the line down
            self.error = f"audit writer stopped: {exc}"
            log.exception("audit writer stopped")

    def _write(self, batch: List[tuple]) -> None:
        if not batch:
            return
        now = time.time()
        with self.db:  # one transaction per batch; a row that cannot be written is skipped, not the batch
            for kind, row, crop in batch:
                try:
                    self._insert(kind, row, crop, now)
                except (sqlite3.Error, KeyError, TypeError, ValueError) as exc:
                    self.bad_rows += 1
                    log.error("audit: %s row not written (%s): %r", kind, exc, {k: row.get(k) for k in list(row)[:6]})
        self.committed += sum(1 for kind, _, _ in batch if kind == "decision")
        grown = sum(1 for kind, _, _ in batch if kind in ("decision", "shadow"))
        self._rows += grown
        if self._rows % 1000 < grown:  # every 1000 rows of the tables that grow
            self.rotate()

    def _insert(self, kind: str, row: Dict, crop: Optional[np.ndarray], now: float) -> None:
        if kind == "event":
            self.db.execute("INSERT INTO events (t_wall, kind, detail) VALUES (?, ?, ?)", (now, row["kind"], row["detail"]))
            return
        if kind == "shadow":
            self.db.execute(
                "INSERT INTO shadow (item_id, t_wall, live_class, live_confidence, class, confidence, agrees, "
                "model_sha256, model_version) VALUES (?,?,?,?,?,?,?,?,?)",
                (row["item_id"], now, row["live_class"], row["live_confidence"], row["class"], row["confidence"],
                 int(row["agrees"]), row["model_sha256"], row["model_version"]))
            return
        capture = self.captures.save(crop, row["class"], row["item_id"]) if crop is not None else None
        self.db.execute(
            "INSERT INTO decisions (item_id, t_wall, class, confidence, top3, bin, reason, x_mm, y_mm, belt_mm,"
            " eject_target_mm, latency_ms, model_sha256, capture, model_version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (row["item_id"], row["t_wall"], row["class"], row["confidence"], json.dumps(row["top3"]),
             row["bin"], row["reason"], row["x_mm"], row.get("y_mm"), row["belt_mm"], row.get("eject_target_mm"),
             json.dumps(row["latency_ms"]), row.get("model_sha256", self.model_sha256), capture,
             row.get("model_version")))

    def rotate(self) -> None:
        """Delete decisions (and the shadow model's answers, which grow with them) older than
        max_age_days, then the oldest of each while over max_db_mb."""
        with self.db:
            oldest = time.time() - self.cfg.max_age_days * 86400
            for table in ROTATED:
                self.db.execute(f"DELETE FROM {table} WHERE t_wall < ?", (oldest,))
        while self._size() > self.cfg.max_db_mb * 1024 * 1024:
            with self.db:
                deleted = sum(self.db.execute(f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} "
                                              f"ORDER BY id LIMIT 1000)").rowcount for table in ROTATED)
            self.db.execute("PRAGMA incremental_vacuum")
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if not deleted:
                break

    def _size(self) -> int:
        """Bytes of pages in use. Not the file's size: in WAL mode new pages live in the -wal file
        until a checkpoint, so the main file can stay tiny while the log grows."""
        pages = self.db.execute("PRAGMA page_count").fetchone()[0] - self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return pages * self.db.execute("PRAGMA page_size").fetchone()[0]

    # -- the review queue (operator page) ----------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        """Its own connection: readers never touch the writer thread's."""
        return sqlite3.connect(str(self.path), timeout=5)

    def review_queue(self, limit: int = 50) -> List[Dict]:
        """Low-confidence decisions with a capture that nobody has labelled yet, newest first."""
        with closing(self._reader()) as db:
            rows = db.execute(
                "SELECT d.id, d.item_id, d.class, d.confidence, d.top3, d.capture FROM decisions d "
                "LEFT JOIN reviews r ON r.decision_id = d.id WHERE d.reason = 'low_confidence' "
                "AND d.capture IS NOT NULL AND r.decision_id IS NULL ORDER BY d.id DESC LIMIT ?", (limit,)).fetchall()
        return [{"id": r[0], "item_id": r[1], "class": r[2], "confidence": r[3], "top3": json.loads(r[4]),
                 "capture": r[5]} for r in rows]

    def capture_of(self, decision_id: int) -> Optional[str]:
        with closing(self._reader()) as db:
            row = db.execute("SELECT capture FROM decisions WHERE id = ?", (decision_id,)).fetchone()
        return row[0] if row else None

    def mark_reviewed(self, decision_id: int, label: str, path: str) -> None:
        with closing(self._reader()) as db, db:
            db.execute("INSERT OR REPLACE INTO reviews VALUES (?, ?, ?, ?)", (decision_id, label, time.time(), path))

    def export_csv(self, since: float, until: float) -> Iterator[str]:
        return export_csv(self.path, since, until)

    def close(self) -> None:
        self._closing = True
        if self.started:
            try:
                self._queue.put(None, timeout=5)
            except queue.Full:
                log.error("audit writer not draining: %d queued rows lost at shutdown", self._queue.qsize())
            self.join(timeout=10)
        self.db.close()


# -- CSV export (operator page and `scrapsort audit export`) -----------------------------------
EXPORT_COLUMNS = ("id", "time_utc", "t_wall", "item_id", "class", "confidence", "top3", "bin", "reason",
                  *(f"{stage}_ms" for stage in STAGES), "model_sha256", "model_version")


def export_csv(db_path: Path, since: float, until: float, chunk: int = 500) -> Iterator[str]:
    """Decisions with since <= t_wall < until as CSV text, a chunk of rows at a time, read
    through its own connection (the writer never waits for an export)."""
    if not Path(db_path).is_file():
        raise FileNotFoundError(f"{db_path}: no audit log")
    out, writer = _csv_buffer()
    writer.writerow(EXPORT_COLUMNS)
    yield _take(out)
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)) as db:
        cursor = db.execute("SELECT id, t_wall, item_id, class, confidence, top3, bin, reason, latency_ms, "
                            "model_sha256, model_version FROM decisions WHERE t_wall >= ? AND t_wall < ? ORDER BY id", (since, until))
        while rows := cursor.fetchmany(chunk):
            for row in rows:
                writer.writerow(_export_row(row))
            yield _take(out)


def _export_row(row) -> list:
    id_, t_wall, item_id, label, confidence, top3, bin_, reason, latency, sha, version = row
    latency = json.loads(latency)
    top = " | ".join(f"{t['class']}:{t['confidence']:.4f}" for t in json.loads(top3))
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t_wall)) + f".{int(t_wall % 1 * 1000):03d}Z"
    return [id_, when, f"{t_wall:.3f}", item_id, label, f"{confidence:.4f}", top, bin_ or "", reason,
            *(f"{latency[s]:.3f}" if latency.get(s) is not None else "" for s in STAGES), sha[:12], version or ""]


def _csv_buffer():
    out = io.StringIO()
    return out, csv.writer(out)


def _take(out: io.StringIO) -> str:
    text = out.getvalue()
    out.seek(0)
    out.truncate()
    return text
