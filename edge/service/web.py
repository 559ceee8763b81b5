"""Operator web page served by the daemon: live view, status, charts, camera and upload
classification, batch tests, review queue, controls and the audit CSV export.

The live view encodes the newest frame at `preview_fps` for each viewer: preview frames are
dropped, sorting frames never wait. Control actions (pause, resume, force a bin, relabel)
and classification need the configured token (without one the page is view-only); binding
anywhere but loopback without one is refused at start. Uploads are checked for size and
pixel count before they are decoded.
Capture names are resolved inside the captures folder only. Classification and batch tests
run on the page's own model instances with one inference thread each (the sorting loop
keeps its buffers and the other cores), at most CLASSIFY_WORKERS requests at a time.
"""
from __future__ import annotations

import asyncio
import contextlib
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
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edge.config import Config
from edge.errors import ConfigError, DataError, ImageError
from edge.secrets import read_secret
from edge.service.batch_test import BatchTests, BusyError
from edge.service.http import app, read_body
from edge.service.model_swap import SwapBusy, SwapRefused
from edge.vision.batch import results_csv
from edge.vision.dataset import REVIEW_LOG
from edge.vision.images import decode_image
from edge.vision.predict import Classifier

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
        self.batch = BatchTests(self._page_classifier, sorter.model.classes, config.run_path / "batch",
                                Path(config.web.batch_root) if config.web.batch_root else None)

    # -- data ------------------------------------------------------------------------------
    def status(self) -> dict:
        sorter, telemetry = self.sorter, self.sorter.telemetry
        ok, health = sorter.health()
        last = telemetry.last_decision()
        return {"ready": ok, "health": health, "items": telemetry.decisions, "per_class": telemetry.per_class(),
                "rejects": telemetry.total(telemetry.rejects), "items_per_minute": telemetry.history.items_last_minute(),
                "pulses": telemetry.total(telemetry.ejected), "stale": telemetry.total(telemetry.stale),
                "dropped": telemetry.total(telemetry.dropped), "latency_ms": telemetry.latency_ms(last=500),
                "actuators": [{"name": a.name, "healthy": a.healthy()} for a in sorter.actuators],
                "model": sorter.model.path, "precision": sorter.model.precision, "backend": sorter.backend.name,
                "runs_on": sorter.backend.runs_on,
                "bins": sorter.decider.bins, "classes": list(sorter.model.classes),
                "last": {k: last[k] for k in ("item_id", "class", "confidence", "bin", "reason")} if last else None}

    def _page_backend(self):
        """A model instance of the page's own, with one inference thread."""
        from edge.vision.backends import open_side_instance

        return open_side_instance(self.sorter.model.path, self.config.runtime.flip_average)

    @contextlib.contextmanager
    def _page_classifier(self):
        with self._page_backend() as backend:
            yield Classifier(backend)

    def classify(self, data: bytes) -> dict:
        image = decode_image(data, "upload", max_pixels=MAX_UPLOAD_PIXELS)
        with self._classify_lock:  # its own backend instance: the sorting loop's buffers stay its own
            if self._classifier is not None and self._classifier.backend.info.sha256 != self.sorter.model.sha256:
                self._classifier.backend.close()  # the line swapped its model: the page follows
                self._classifier = None
            if self._classifier is None:
                self._classifier = Classifier(self._page_backend())
            return self._classifier.classify(image, top=3)

    def save_for_review(self, data: bytes, label: str, reviewer: str = "") -> str:
        """A camera frame the operator files under a class (the review folder, as relabelled captures)."""
        if label not in self.sorter.model.classes:
            raise ValueError(f"unknown class {label!r}")
        decode_image(data, "camera frame", max_pixels=MAX_UPLOAD_PIXELS)  # only real images are kept
        target = self.review_dir / label / f"camera-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self._log_review(target, label, reviewer, source="camera")
        self.sorter.audit.event("camera_frame_saved", {"label": label, "file": str(target)})
        return str(target)

    def review_queue(self) -> list:
        return [{**{k: v for k, v in item.items() if k != "capture"}, "image": f"/captures/{item['capture']}"}
                for item in self.sorter.audit.review_queue()]

    def relabel(self, decision_id: int, label: str, reviewer: str = "") -> str:
        if label not in self.sorter.model.classes:
            raise ValueError(f"unknown class {label!r}")
        capture = self.sorter.audit.capture_of(decision_id)
        if capture is None:
            raise KeyError(f"no capture for decision {decision_id}")
        source = self.capture_path(capture)
        target = self.review_dir / label / f"review-{decision_id}-{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        self._log_review(target, label, reviewer, source="review_queue", decision_id=decision_id)
        self.sorter.audit.mark_reviewed(decision_id, label, str(target))
        self.sorter.audit.event("relabel", {"decision_id": decision_id, "label": label, "file": str(target)})
        return str(target)

    def _log_review(self, target: Path, label: str, reviewer: str, **detail) -> None:
        """One line per filed image in <review_dir>/reviews.jsonl: `scrapsort prepare --review`
        reads who filed it and when into the manifest."""
        entry = {"file": str(target.relative_to(self.review_dir)), "label": label,
                 "reviewed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reviewer": _reviewer(reviewer),
                 "line_model": self.sorter.model.sha256[:12], **detail}
        with open(self.review_dir / REVIEW_LOG, "a") as log:
            log.write(json.dumps(entry) + "\n")

    def model_action(self, action: str, name: str) -> dict:
        """Swap to a model file in models.dir, or roll back; checked off the loop, answered at once."""
        swapper = self.sorter.swapper
        if action == "swap":
            swapper.request(swapper.allowed(name), "operator page")
        elif action == "rollback":
            swapper.rollback()
        else:
            raise ValueError(f"unknown action {action!r} (swap or rollback)")
        self.sorter.audit.event("operator", {"action": f"model {action}", "file": name or None})
        return self.model_status()

    def model_status(self) -> dict:
        status = self.sorter.swapper.status()
        if self.sorter.shadow is not None:
            status["shadow"] = {"label": self.sorter.shadow.info.label, **self.sorter.telemetry.shadow_summary()}
        return status

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
        last = self.sorter.telemetry.last_decision()
        if last:
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
            Route("/api/review/camera", self._save_camera_frame, methods=["POST"]),
            Route("/api/history", self._history, methods=["GET"]),
            Route("/api/model", self._model_status, methods=["GET"]),
            Route("/api/model", self._model_action, methods=["POST"]),
            Route("/api/audit.csv", self._audit_csv, methods=["GET"]),
            Route("/api/batch", self._batch_start, methods=["POST"]),
            Route("/api/batch/{job:int}", self._batch_status, methods=["GET"]),
            Route("/api/batch/{job:int}/results.{fmt:str}", self._batch_results, methods=["GET"]),
            Route("/api/batch/{job:int}/image/{index:int}", self._batch_image, methods=["GET"]),
        ], {ImageError: 400, DataError: 400, ValueError: 400, KeyError: 404, IndexError: 404,
            PermissionError: 403, BusyError: 409, SwapBusy: 409, SwapRefused: 409})

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
        return await self._json_body(request)

    async def _json_body(self, request: Request) -> dict:
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
        target = await run_in_threadpool(self.relabel, request.path_params["decision_id"], str(data.get("label", "")),
                                         str(data.get("reviewer", "")))
        return JSONResponse({"saved": target})

    async def _save_camera_frame(self, request: Request):
        self.require_token(request)
        body = await read_body(request, MAX_UPLOAD)
        label, reviewer = request.query_params.get("label", ""), request.query_params.get("reviewer", "")
        return JSONResponse({"saved": await run_in_threadpool(self.save_for_review, body, label, reviewer)})

    async def _model_status(self, request: Request):
        return JSONResponse(self.model_status(), headers={"Cache-Control": "no-store"})

    async def _model_action(self, request: Request):
        data = await self._json_action(request)
        return JSONResponse(await run_in_threadpool(self.model_action, str(data.get("action", "")),
                                                    str(data.get("file", ""))))

    async def _history(self, request: Request):
        return JSONResponse(self.sorter.telemetry.history.series(), headers={"Cache-Control": "no-store"})

    async def _audit_csv(self, request: Request):
        since, until = (_epoch(request.query_params.get(k), default) for k, default in
                        (("since", 0.0), ("until", time.time() + 1)))
        rows = self.sorter.audit.export_csv(since, until)
        name = time.strftime("scrapsort-audit-%Y%m%d-%H%M%S.csv", time.localtime(since if since else time.time()))
        # A plain generator: Starlette reads it in its thread pool (SQLite never blocks the event loop).
        return StreamingResponse(rows, media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"',
                                          "Cache-Control": "no-store"})

    async def _batch_start(self, request: Request):
        self.require_token(request)
        if request.headers.get("content-type", "").startswith("application/json"):
            data = await self._json_body(request)
            job = await run_in_threadpool(self.batch.start_folder, str(data.get("folder", "")))
        else:
            body = await read_body(request, self.config.web.batch_max_mb << 20)
            job = await run_in_threadpool(self.batch.start_zip, body)
        return JSONResponse(job.view(), status_code=202)

    async def _batch_status(self, request: Request):
        return JSONResponse(self.batch.get(request.path_params["job"]).view(), headers={"Cache-Control": "no-store"})

    async def _batch_results(self, request: Request):
        job, fmt = self.batch.get(request.path_params["job"]), request.path_params["fmt"]
        if job.report is None or fmt not in ("json", "csv"):
            raise KeyError("no results (yet) in that form: results.json or results.csv once the test is done")
        name = f"batch-test-{job.id}.{fmt}"
        body = json.dumps(job.view(), indent=1) if fmt == "json" else results_csv(job.report)
        return Response(body, media_type="application/json" if fmt == "json" else "text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    async def _batch_image(self, request: Request):
        job = self.batch.get(request.path_params["job"])
        return FileResponse(job.image(request.path_params["index"]))

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



def _reviewer(name: str) -> str:
    """Who filed an image, as typed on the page: printable, at most 64 characters."""
    return "".join(c for c in name if c.isprintable())[:64].strip() or "operator"


def _epoch(value: Optional[str], default: float) -> float:
    """Unix seconds from a query parameter (the page converts its local date-times)."""
    if value in (None, ""):
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"since/until must be Unix seconds, got {value!r}") from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError("since/until must be finite")
    return seconds
