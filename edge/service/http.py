"""HTTP for the daemon on one server stack: Starlette route tables served by uvicorn, each
server in its own thread so the sorting loop never waits on a client.

What a plant network needs from it: a client that connects and never finishes its request
head is dropped after HEADER_TIMEOUT_S (uvicorn itself only times out idle keep-alives);
request heads are capped in size, bodies in size (checked before reading, from
Content-Length) and in time; at most MAX_CONNECTIONS at once (503 beyond); malformed HTTP
gets 400 from h11; a route answers only its methods (405 otherwise).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Callable, Dict, Optional, Tuple

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from edge.service.telemetry import CONTENT_TYPE, Telemetry

log = logging.getLogger(__name__)
logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start/stop lines, twice per run, say nothing
HEADER_TIMEOUT_S = 5.0
BODY_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 32
MAX_HEAD_BYTES = 16 * 1024


class _HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol, plus: no complete request head within HEADER_TIMEOUT_S -> closed."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline = self.loop.call_later(HEADER_TIMEOUT_S, self._drop_if_idle)

    def _drop_if_idle(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self._head_deadline.cancel()
        super().connection_lost(exc)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 411/400/413/408 before or while reading, never buffered past `limit`."""
    length = request.headers.get("content-length")
    if length is None and "chunked" not in request.headers.get("transfer-encoding", ""):
        raise HTTPException(411, "Content-Length required")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise HTTPException(413 if length.isdigit() else 400, "body too large" if length.isdigit() else "bad length")
    body = bytearray()

    async def collect() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise HTTPException(413, "body too large")

    try:
        await asyncio.wait_for(collect(), BODY_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise HTTPException(408, "request body not received in time") from None
    return bytes(body)


def app(routes, errors: Optional[Dict[type, int]] = None) -> Starlette:
    """A Starlette app whose errors are JSON, like every other answer; `errors` maps more
    exception types to the status they answer with."""

    async def answer(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, HTTPException):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        status = next(code for kind, code in (errors or {}).items() if isinstance(exc, kind))  # subclasses too
        return JSONResponse({"error": message}, status_code=status)

    return Starlette(routes=routes, exception_handlers={kind: answer for kind in [HTTPException, *(errors or {})]})


def status_app(telemetry: Telemetry, health: Callable[[], Tuple[bool, Dict]]) -> Starlette:
    """GET /metrics (Prometheus) and /healthz (200 ready / 503 not, with the reasons)."""

    async def metrics(request: Request) -> Response:
        return Response(telemetry.render(), media_type=CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        ok, details = health()
        return JSONResponse(details, status_code=200 if ok else 503)

    return app([Route("/metrics", metrics, methods=["GET"]), Route("/healthz", healthz, methods=["GET"])])


class HttpServer:
    """One uvicorn server in a daemon thread, on a socket bound at construction (so a port
    conflict is a start-up error, and port 0 picks a free port the tests can read)."""

    def __init__(self, application, bind: str, port: int, name: str):
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((bind, port))
        self.address = self.socket.getsockname()
        self.port = self.address[1]
        config = uvicorn.Config(application, http=_HeadDeadline, lifespan="off", log_config=None,
                                access_log=False, limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=5,
                                h11_max_incomplete_event_size=MAX_HEAD_BYTES, timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, name=name,
                                       daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.thread.name}: HTTP server on port {self.port} did not start")
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        self.socket.close()
