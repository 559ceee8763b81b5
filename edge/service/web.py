"""Operator web page served by the daemon: live view, status, classify, review queue, controls.

Stdlib HTTP only (the Jetson installs nothing more). The live view encodes the newest
frame at `preview_fps` in the web thread: preview frames are dropped, sorting frames never
wait. Control actions (pause, resume, force a bin, relabel) need the configured token;
binding anywhere but loopback without one is refused at start. Capture names are resolved
inside the captures folder only.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import shutil
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlparse

import cv2

from edge.config import Config
from edge.errors import ConfigError, ImageError
from edge.secrets import read_secret
from edge.vision.images import decode_image

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("webui.html")
MAX_UPLOAD = 20 * 1024 * 1024


def load_token(config: Config) -> Optional[str]:
    web = config.web
    token = None
    if web.token_file:
        token = read_secret(web.token_file, "web.token_file")
    if not ipaddress.ip_address(web.bind).is_loopback and not token:
        raise ConfigError(f"{config.source_file}: 'web.bind' is {web.bind} (reachable from the network) but no "
                          f"web.token_file is set; every control action must require a token")
    return token


class OperatorWeb:
    def __init__(self, sorter, config: Config):
        self.sorter, self.config = sorter, config
        self.token = load_token(config)
        self.review_dir = Path(config.web.review_dir or config.run_path / "review")
        self.captures_dir = sorter.audit.captures.folder.resolve()
        self._classifier = None
        self._classify_lock = threading.Lock()
        self.server = ThreadingHTTPServer((config.web.bind, config.web.port), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="web", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- data ------------------------------------------------------------------------------
    def status(self) -> dict:
        sorter = self.sorter
        ok, health = sorter.health()
        decisions = list(sorter.decisions)
        recent = [d for d in decisions if d["t_wall"] > time.time() - 60]
        from edge.service.telemetry import STAGES
        from edge.stats import percentiles

        return {"ready": ok, "health": health, "items": sorter.counts["decisions"],
                "per_class": dict(sorter.class_counts), "rejects": sorter.counts["rejects"],
                "items_per_minute": len(recent), "pulses": len(sorter.scheduler.fired),
                "stale": sorter.counts["stale"], "dropped": sorter.counts["dropped"],
                "latency_ms": {s: percentiles(list(sorter.latency[s])[-500:]) for s in STAGES},
                "actuators": [{"name": a.name, "healthy": a.healthy()} for a in sorter.actuators],
                "model": sorter.model.path, "precision": sorter.model.precision, "backend": sorter.backend.name,
                "bins": sorter.decider.bins, "classes": list(sorter.model.classes),
                "last": {k: decisions[-1][k] for k in ("item_id", "class", "confidence", "bin", "reason")}
                if decisions else None}

    def classify(self, data: bytes) -> dict:
        from edge.vision.backends import open_backend
        from edge.vision.predict import Classifier

        image = decode_image(data, "upload")
        with self._classify_lock:  # its own backend instance: the sorting loop's buffers stay its own
            if self._classifier is None:
                self._classifier = Classifier(open_backend(self.sorter.model.path))
            return self._classifier.classify(image, top=3)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.sorter.audit.path), timeout=5)
        db.execute("CREATE TABLE IF NOT EXISTS reviews (decision_id INTEGER PRIMARY KEY, label TEXT NOT NULL, "
                   "t_wall REAL NOT NULL, path TEXT NOT NULL)")
        return db

    def review_queue(self) -> list:
        with self._db() as db:
            rows = db.execute(
                "SELECT d.id, d.item_id, d.class, d.confidence, d.top3, d.capture FROM decisions d "
                "LEFT JOIN reviews r ON r.decision_id = d.id WHERE d.reason = 'low_confidence' "
                "AND d.capture IS NOT NULL AND r.decision_id IS NULL ORDER BY d.id DESC LIMIT 50").fetchall()
        return [{"id": r[0], "item_id": r[1], "class": r[2], "confidence": r[3], "top3": json.loads(r[4]),
                 "image": f"/captures/{r[5]}"} for r in rows]

    def relabel(self, decision_id: int, label: str) -> str:
        if label not in self.sorter.model.classes:
            raise ValueError(f"unknown class {label!r}")
        with self._db() as db:
            row = db.execute("SELECT capture FROM decisions WHERE id = ?", (decision_id,)).fetchone()
            if row is None or row[0] is None:
                raise KeyError(f"no capture for decision {decision_id}")
            source = self.capture_path(row[0])
            target = self.review_dir / label / f"review-{decision_id}-{source.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            db.execute("INSERT OR REPLACE INTO reviews VALUES (?, ?, ?, ?)", (decision_id, label, time.time(), str(target)))
        self.sorter.audit.event("relabel", {"decision_id": decision_id, "label": label, "file": str(target)})
        return str(target)

    def capture_path(self, name: str) -> Path:
        path = (self.captures_dir / unquote(name)).resolve()
        if self.captures_dir not in path.parents or not path.is_file():
            raise KeyError(name)  # also every '..' or absolute-path trick
        return path

    def control(self, action: str, bin_name: Optional[str]) -> dict:
        controls = self.sorter.controls
        if action == "pause":
            controls.pause(True)
        elif action == "resume":
            controls.pause(False)
        elif action == "force":
            if bin_name is not None and bin_name not in self.sorter.decider.bins:
                raise ValueError(f"unknown bin {bin_name!r}")
            controls.force(bin_name)
        else:
            raise ValueError(f"unknown action {action!r}")
        self.sorter.audit.event("operator", {"action": action, "bin": bin_name})
        paused, forced = controls.state()
        return {"paused": paused, "forced_bin": forced}

    def preview_jpeg(self) -> Optional[bytes]:
        frame = self.sorter.capture.latest
        if frame is None:
            return None
        image = frame.image.copy()
        last = self.sorter.decisions[-1] if self.sorter.decisions else None
        if last:
            text = f"#{last['item_id']} {last['class']} {last['confidence']:.2f} -> {last['bin'] or 'none'}"
            cv2.rectangle(image, (0, 0), (image.shape[1], 28), (0, 0, 0), -1)
            cv2.putText(image, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 75])
        return data.tobytes() if ok else None

    # -- HTTP ------------------------------------------------------------------------------
    def authorised(self, headers) -> bool:
        if self.token is None:
            return True
        given = headers.get("X-Scrapsort-Token", "")
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _handler(self):
        web = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                path = urlparse(self.path).path
                try:
                    if path == "/":
                        return self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
                    if path == "/api/status":
                        return self._json(200, web.status())
                    if path == "/api/review":
                        return self._json(200, web.review_queue())
                    if path == "/stream.mjpg":
                        return self._stream()
                    if path.startswith("/captures/"):
                        return self._send(200, web.capture_path(path[len("/captures/"):]).read_bytes(), "image/jpeg")
                except KeyError:
                    pass
                self._json(404, {"error": "not found"})

            def do_POST(self):  # noqa: N802
                path = urlparse(self.path).path
                length = int(self.headers.get("Content-Length", 0))
                if length > MAX_UPLOAD:
                    return self._json(413, {"error": "upload too large"})
                body = self.rfile.read(length)
                try:
                    if path == "/api/classify":
                        return self._json(200, web.classify(body))
                    if not web.authorised(self.headers):
                        return self._json(403, {"error": "this action needs the operator token"})
                    data = json.loads(body or b"{}")
                    if path == "/api/control":
                        return self._json(200, web.control(data.get("action", ""), data.get("bin")))
                    if path.startswith("/api/review/"):
                        target = web.relabel(int(path.rsplit("/", 1)[1]), data.get("label", ""))
                        return self._json(200, {"saved": target})
                except (ImageError, ValueError) as exc:
                    return self._json(400, {"error": str(exc)})
                except KeyError as exc:
                    return self._json(404, {"error": str(exc)})
                self._json(404, {"error": "not found"})

            def _stream(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                period = 1.0 / max(web.config.web.preview_fps, 0.1)
                try:
                    while True:
                        jpeg = web.preview_jpeg()
                        if jpeg:
                            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                             + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                        time.sleep(period)
                except (BrokenPipeError, ConnectionResetError):
                    return

            def _json(self, code: int, payload) -> None:
                self._send(code, json.dumps(payload).encode(), "application/json")

            def _send(self, code: int, data: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler
