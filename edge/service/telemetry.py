"""Prometheus metrics and /healthz over a read-only HTTP endpoint (stdlib only: the Jetson
installs nothing beyond numpy, OpenCV, PyYAML and TensorRT).

Bound to 127.0.0.1 unless configured otherwise; anything but GET is refused.
"""
from __future__ import annotations

import bisect
import json
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional, Tuple

STAGES = ("frame_age", "preprocess", "inference", "postprocess", "capture_to_decision")
LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    """Counters, gauges and histograms with labels, rendered in the Prometheus text format."""

    def __init__(self, prefix: str = "scrapsort"):
        self.prefix = prefix
        self._lock = threading.Lock()
        self._help: Dict[str, Tuple[str, str]] = {}
        self._values: Dict[str, Dict[Tuple, float]] = defaultdict(dict)
        self._hist: Dict[str, Dict[Tuple, List]] = defaultdict(dict)

    def describe(self, name: str, kind: str, help_text: str) -> None:
        self._help[name] = (kind, help_text)

    def inc(self, name: str, amount: float = 1.0, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[name][key] = self._values[name].get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels) -> None:
        with self._lock:
            self._values[name][tuple(sorted(labels.items()))] = float(value)

    def observe(self, name: str, value: float, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            counts = self._hist[name].setdefault(key, [[0] * (len(LATENCY_BUCKETS_S) + 1), 0.0, 0])
            counts[0][bisect.bisect_left(LATENCY_BUCKETS_S, value)] += 1
            counts[1] += value
            counts[2] += 1

    def get(self, name: str, **labels) -> float:
        with self._lock:
            return self._values[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines = []
        with self._lock:
            for name in sorted(set(self._values) | set(self._hist)):
                full = f"{self.prefix}_{name}"
                kind, help_text = self._help.get(name, ("histogram" if name in self._hist else "gauge", name))
                lines += [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}"]
                for key, value in sorted(self._values.get(name, {}).items()):
                    lines.append(f"{full}{_labels(key)} {value:g}")
                for key, (buckets, total, count) in sorted(self._hist.get(name, {}).items()):
                    running = 0
                    for bound, n in zip(LATENCY_BUCKETS_S + (float("inf"),), buckets):
                        running += n
                        le = "+Inf" if bound == float("inf") else f"{bound:g}"
                        lines.append(f"{full}_bucket{_labels(key + (('le', le),))} {running}")
                    lines.append(f"{full}_sum{_labels(key)} {total:g}")
                    lines.append(f"{full}_count{_labels(key)} {count}")
        return "\n".join(lines) + "\n"


def _labels(key: Tuple) -> str:
    if not key:
        return ""
    escaped = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                       for k, v in key)
    return "{" + escaped + "}"


class StatusServer:
    """GET /metrics and /healthz; the health callable returns (ok, details)."""

    def __init__(self, bind: str, port: int, metrics: Metrics, health: Callable[[], Tuple[bool, Dict]],
                 extra_routes: Optional[Dict[str, Callable]] = None):
        self.metrics, self.health = metrics, health
        handler = self._handler()
        self.server = ThreadingHTTPServer((bind, port), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="status-http", daemon=True)

    def _handler(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server naming)
                if self.path == "/metrics":
                    self._send(200, outer.metrics.render(), "text/plain; version=0.0.4")
                elif self.path == "/healthz":
                    ok, details = outer.health()
                    self._send(200 if ok else 503, json.dumps(details), "application/json")
                else:
                    self._send(404, "not found\n", "text/plain")

            def do_POST(self):  # noqa: N802
                self._send(405, "read-only endpoint\n", "text/plain")

            do_PUT = do_DELETE = do_PATCH = do_POST

            def _send(self, code: int, body: str, kind: str):
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # access logs would flood the journal
                pass

        return Handler

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
