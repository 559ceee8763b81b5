"""Operator web page served by the daemon: live view, status, classify, review queue, controls.

The live view encodes the newest frame at `preview_fps` for each viewer: preview frames are
dropped, sorting frames never wait. Control actions (pause, resume, force a bin, relabel)
and classification need the configured token (without one the page is view-only); binding
anywhere but loopback without one is refused at start. Uploads are checked for size and
pixel count before they are decoded.
Capture names are resolved inside the captures folder only. Classification runs on the
page's own backend instance, at most CLASSIFY_WORKERS at a time.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Optional
from urllib.parse import unquote

import cv2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from edge.config import Config
from edge.errors import ConfigError, ImageError
from edge.secrets import read_secret
from edge.service.http import app, read_body
from edge.vision.images import decode_image

PAGE = Path(__file__).with_name("webui.html")
MAX_UPLOAD = 20 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000  # a 12000x12000 upload would need 430 MB decoded
MAX_CONTROL = 4096
CLASSIFY_WORKERS = 2


def load_token(config: Config) -> Optional[str]:
    web = config.web
    token = read_secret(web.token_file, "web.token_file") if web.token_file else None
    if not ipaddress.ip_address(web.bind).is_loopback and not token:
        raise ConfigError(f"{config.source_file}: 'web.bind' is {web.bind} (reachable from the network) but no "
                          f"web.token_file is set; every control action must require a token")
    return token


class OperatorWeb:
    """What the page shows and does, on top of a running Sorter; `routes()` maps it to HTTP."""

    def __init__(self, sorter, config: Config):
        self.sorter, self.config = sorter, config
        self.token = load_token(config)
        self.review_dir = Path(config.web.review_dir or config.run_path / "review")
        self.captures_dir = sorter.audit.captures.folder.resolve()
        self._classifier = None
        self._classify_lock = threading.Lock()
        self._classify_slots = asyncio.Semaphore(CLASSIFY_WORKERS)

    # -- data ------------------------------------------------------------------------------
    def status(self) -> dict:
        sorter, telemetry = self.sorter, self.sorter.telemetry
        ok, health = sorter.health()
        decisions = telemetry.recent_decisions()
        recent = [d for d in decisions if d["t_wall"] > time.time() - 60]
        return {"ready": ok, "health": health, "items": telemetry.decisions, "per_class": telemetry.per_class(),
                "rejects": telemetry.total(telemetry.rejects), "items_per_minute": len(recent),
                "pulses": telemetry.total(telemetry.ejections), "stale": telemetry.total(telemetry.stale),
                "dropped": telemetry.total(telemetry.dropped), "latency_ms": telemetry.latency_ms(last=500),
                "actuators": [{"name": a.name, "healthy": a.healthy()} for a in sorter.actuators],
                "model": sorter.model.path, "precision": sorter.model.precision, "backend": sorter.backend.name,
                "runs_on": sorter.backend.runs_on,
                "bins": sorter.decider.bins, "classes": list(sorter.model.classes),
                "last": {k: decisions[-1][k] for k in ("item_id", "class", "confidence", "bin", "reason")}
                if decisions else None}

    def classify(self, data: bytes) -> dict:
        from edge.vision.backends import open_backend
        from edge.vision.predict import Classifier

        image = decode_image(data, "upload", max_pixels=MAX_UPLOAD_PIXELS)
        with self._classify_lock:  # its own backend instance: the sorting loop's buffers stay its own
            if self._classifier is None:
                self._classifier = Classifier(open_backend(self.sorter.model.path))
            return self._classifier.classify(image, top=3)

    def review_queue(self) -> list:
        return [{**{k: v for k, v in item.items() if k != "capture"}, "image": f"/captures/{item['capture']}"}
                for item in self.sorter.audit.review_queue()]

    def relabel(self, decision_id: int, label: str) -> str:
        if label not in self.sorter.model.classes:
            raise ValueError(f"unknown class {label!r}")
        capture = self.sorter.audit.capture_of(decision_id)
        if capture is None:
            raise KeyError(f"no capture for decision {decision_id}")
        source = self.capture_path(capture)
        target = self.review_dir / label / f"review-{decision_id}-{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        self.sorter.audit.mark_reviewed(decision_id, label, str(target))
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
        decisions = self.sorter.telemetry.recent_decisions()
        if decisions:
            last = decisions[-1]
            text = f"#{last['item_id']} {last['class']} {last['confidence']:.2f} -> {last['bin'] or 'none'}"
            cv2.rectangle(image, (0, 0), (image.shape[1], 28), (0, 0, 0), -1)
            cv2.putText(image, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 75])
        return data.tobytes() if ok else None

    def require_token(self, request: Request) -> None:
        """Every action that changes the line or costs inference needs the token, sent in a
        header a cross-site form cannot set. Without web.token_file the page is view-only."""
        if self.token is None:
            raise PermissionError("view-only: set web.token_file to enable classify and the controls")
        given = request.headers.get("X-Scrapsort-Token", "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise PermissionError("this action needs the operator token")

    # -- HTTP ------------------------------------------------------------------------------
    def app(self):
        return app([
            Route("/", self._page, methods=["GET"]),
            Route("/api/status", self._status, methods=["GET"]),
            Route("/api/review", self._review_queue, methods=["GET"]),
            Route("/stream.mjpg", self._stream, methods=["GET"]),
            Route("/captures/{name:path}", self._capture, methods=["GET"]),
            Route("/api/classify", self._classify, methods=["POST"]),
            Route("/api/control", self._control, methods=["POST"]),
            Route("/api/review/{decision_id:int}", self._relabel, methods=["POST"]),
        ], {ImageError: 400, ValueError: 400, KeyError: 404, PermissionError: 403})

    async def _page(self, request: Request):
        return HTMLResponse(PAGE.read_text(), headers={"Cache-Control": "no-store"})

    async def _status(self, request: Request):
        return JSONResponse(self.status(), headers={"Cache-Control": "no-store"})

    async def _review_queue(self, request: Request):
        return JSONResponse(await run_in_threadpool(self.review_queue))

    async def _capture(self, request: Request):
        return FileResponse(self.capture_path(request.path_params["name"]), media_type="image/jpeg")

    async def _classify(self, request: Request):
        self.require_token(request)
        body = await read_body(request, MAX_UPLOAD)
        async with self._classify_slots:
            return JSONResponse(await run_in_threadpool(self.classify, body))

    async def _json_action(self, request: Request) -> dict:
        self.require_token(request)
        try:
            data = json.loads(await read_body(request, MAX_CONTROL) or b"{}")
        except json.JSONDecodeError:
            raise ValueError("the body must be JSON") from None
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return data

    async def _control(self, request: Request):
        data = await self._json_action(request)
        return JSONResponse(self.control(str(data.get("action", "")), data.get("bin")))

    async def _relabel(self, request: Request):
        data = await self._json_action(request)
        target = await run_in_threadpool(self.relabel, request.path_params["decision_id"], str(data.get("label", "")))
        return JSONResponse({"saved": target})

    async def _stream(self, request: Request):
        period = 1.0 / self.config.web.preview_fps

        async def frames():
            while True:  # ends when the client goes: the server cancels the stream
                jpeg = await run_in_threadpool(self.preview_jpeg)
                if jpeg:
                    yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpeg)).encode()
                           + b"\r\n\r\n" + jpeg + b"\r\n")
                await asyncio.sleep(period)

        return StreamingResponse(frames(), media_type="multipart/x-mixed-replace; boundary=frame",
                                 headers={"Cache-Control": "no-store"})

