"""The HTTP endpoints against hostile and broken clients, with plain sockets and urllib
(no browser needed, so these always run): path traversal, missing tokens, oversized,
malformed, slow and idle requests, and more connections than allowed."""
import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from edge.errors import ConfigError
from edge.service import http
from tests.conftest import TOKEN, free_port, line_config, operator_line, running, simulated_sorter, wait_for


@pytest.fixture
def web(tmp_path, trained_run, monkeypatch):
    monkeypatch.setattr(http, "HEADER_TIMEOUT_S", 0.5)
    monkeypatch.setattr(http, "BODY_TIMEOUT_S", 0.5)
    monkeypatch.setattr(http, "MAX_CONNECTIONS", 6)
    _, run = trained_run
    sorter = operator_line(tmp_path, run)
    with running(sorter):
        yield sorter, sorter.web.port


def status(url, data=None, headers=None, method=None):
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def raw(port, data: bytes, wait: float = 5.0) -> bytes:
    """Send raw bytes; return what comes back until a response head is complete, the server
    closes, or `wait` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        reply = b""
        try:
            while b"\r\n\r\n" not in reply and (chunk := sock.recv(65536)):
                reply += chunk
        except socket.timeout:
            reply += b"<timeout>"
        return reply


def test_traversal_is_refused_but_real_captures_are_served(web):
    sorter, port = web
    base = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: any(sorter.audit.captures.folder.rglob("*.jpg")), timeout=30)
    capture = next(sorter.audit.captures.folder.rglob("*.jpg"))
    name = capture.relative_to(sorter.audit.captures.folder).as_posix()
    code, body = status(f"{base}/captures/{name}")
    assert code == 200 and body.startswith(b"\xff\xd8")           # the route itself works
    assert (sorter.audit.captures.folder / ".." / "audit.db").is_file()
    for path in ("/captures/%2e%2e/audit.db", "/captures/..%2faudit.db", "/captures/" + "..%2f" * 30 + "etc%2fpasswd",
                 "/captures/%2fetc%2fpasswd"):
        code, body = status(base + path)
        assert code == 404 and b"root:" not in body and b"SQLite" not in body, path


def test_control_needs_the_token(web):
    sorter, port = web
    url = f"http://127.0.0.1:{port}/api/control"
    for headers in ({}, {"X-Scrapsort-Token": "wrong"}):
        code, _ = status(url, b'{"action": "pause"}', headers)
        assert code == 403 and sorter.controls.state() == (False, None)
    code, body = status(url, b'{"action": "pause"}', {"X-Scrapsort-Token": TOKEN})
    assert code == 200 and json.loads(body)["paused"] is True and sorter.controls.state()[0] is True


def test_model_swaps_need_the_token_and_load_nothing_outside_the_models_folder(web):
    sorter, port = web
    url, token = f"http://127.0.0.1:{port}/api/model", {"X-Scrapsort-Token": TOKEN}
    first = sorter.model.sha256
    assert status(url, b'{"action": "swap", "file": "model.onnx"}')[0] == 403
    for name in ("../model.onnx", "/etc/passwd", "..%2f..%2fmodel.onnx", "audit.db", "nothing.onnx"):
        code, body = status(url, json.dumps({"action": "swap", "file": name}).encode(), token)
        assert code == 404 and b"no model file" in body, name
    code, body = status(url, b'{"action": "rollback"}', token)
    assert code == 409 and b"nothing to roll back to" in body
    assert status(url, b'{"action": "melt"}', token)[0] == 400
    assert json.loads(status(url, method="GET")[1])["running"]["sha256"] == first == sorter.model.sha256


def test_fault_malformed_requests_get_4xx(web):
    sorter, port = web
    base = f"http://127.0.0.1:{port}"
    token = {"X-Scrapsort-Token": TOKEN}
    assert status(base + "/api/control", b"{not json", token)[0] == 400
    assert status(base + "/api/control", b"[1, 2]", token)[0] == 400
    assert status(base + "/api/control", b'{"action": "explode"}', token)[0] == 400
    assert status(base + "/api/review/abc", b"{}", token)[0] == 404
    assert status(base + "/api/classify", b"not an image", token)[0] == 400
    assert status(base + "/captures/%00", method="GET")[0] in (400, 404)      # answered, not dropped
    assert status(base + "/api/review/1%00", b"{}", token)[0] in (400, 404)
    assert status(base + "/api/control", method="GET")[0] == 405
    assert b" 400 " in raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")[:20]
    assert b" 400 " in raw(port, b"NONSENSE\r\n\r\n")[:20]
    assert b" 411 " in raw(port, b"POST /api/classify HTTP/1.1\r\nHost: x\r\nX-Scrapsort-Token: " + TOKEN.encode()
                           + b"\r\n\r\n")[:20]
    endless_head = raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000)  # never buffered whole
    assert endless_head[9:12] in (b"400", b"431"), endless_head[:40]
    assert sorter.health()[0]  # nothing of this disturbed the line


def test_oversized_upload_is_refused_before_reading(web):
    _, port = web
    started = time.monotonic()
    reply = raw(port, b"POST /api/classify HTTP/1.1\r\nHost: x\r\nX-Scrapsort-Token: " + TOKEN.encode()
                + b"\r\nContent-Length: 999999999\r\n\r\n")
    assert b" 413 " in reply[:20] and time.monotonic() - started < 2  # answered without waiting for the body


def test_fault_idle_and_slow_clients_are_dropped(web):
    _, port = web
    started = time.monotonic()
    assert raw(port, b"") == b""                                        # connected, sent nothing: closed
    assert raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n") == b""           # a head that never ends: closed
    assert time.monotonic() - started < 3
    slow_body = raw(port, b"POST /api/classify HTTP/1.1\r\nHost: x\r\nX-Scrapsort-Token: " + TOKEN.encode()
                    + b"\r\nContent-Length: 1000\r\n\r\nabc")
    assert b" 408 " in slow_body[:20]                                   # a body that never comes: 408


def test_connections_beyond_the_limit_get_503(web):
    _, port = web
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(http.MAX_CONNECTIONS)]
    try:
        time.sleep(0.1)
        assert b" 503 " in raw(port, b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")[:20]
    finally:
        for sock in idle:
            sock.close()
    assert wait_for(lambda: status(f"http://127.0.0.1:{port}/api/status")[0] == 200, timeout=3)


def test_exposed_web_without_token_is_refused(tmp_path, trained_run):
    _, run = trained_run
    config = line_config(tmp_path, run, web={"bind": "0.0.0.0", "port": free_port()})
    with pytest.raises(ConfigError, match="no web.token_file"):
        simulated_sorter(config)


def test_token_file_errors_name_the_key_being_read(tmp_path, trained_run):
    _, run = trained_run
    token = tmp_path / "token"
    token.write_text("x\n")
    token.chmod(0o644)
    config = line_config(tmp_path, run, web={"port": free_port(), "token_file": str(token)})
    with pytest.raises(ConfigError, match=r"^web.token_file: .* chmod 600") as err:
        simulated_sorter(config)
    assert "password_file" not in str(err.value)


def test_fault_classify_and_controls_need_the_token_and_the_page_is_view_only_without_one(tmp_path, trained_run):
    """Before: /api/classify needed no token, and with no token configured (the example
    config) a cross-site text/plain form post could pause the line or force every item into
    one bin."""
    _, run = trained_run
    config = line_config(tmp_path, run, simulator={"items": 20}, web={"port": free_port()})   # no token_file
    sorter = simulated_sorter(config)
    image = next((run.parent / "data" / "glass").glob("*.jpg")).read_bytes()
    with running(sorter):
        base = f"http://127.0.0.1:{sorter.web.port}"
        assert status(base + "/api/status")[0] == 200                               # the view works
        for body, kind in ((b'{"action": "pause"}', "text/plain"), (b'{"action": "force", "bin": "trash"}',
                                                                   "application/json")):
            code, reply = status(base + "/api/control", body, {"Content-Type": kind})
            assert code == 403 and b"view-only" in reply
        assert status(base + "/api/classify", image)[0] == 403
        assert sorter.controls.state() == (False, None)


def test_fault_an_image_bomb_is_refused_from_its_header(web):
    """A 12000x12000 PNG is a few hundred kB on the wire and 430 MB decoded: refused before decoding."""
    import io
    import resource

    from PIL import Image

    _, port = web
    buffer = io.BytesIO()
    Image.new("L", (12000, 12000)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 1_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, reply = status(f"http://127.0.0.1:{port}/api/classify", buffer.getvalue(), {"X-Scrapsort-Token": TOKEN})
    assert code == 400 and b"megapixels" in reply
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000     # kB: nothing was decoded


def test_batch_tests_camera_frames_and_exports_refuse_what_they_must(web, tmp_path):
    sorter, port = web
    base = f"http://127.0.0.1:{port}"
    auth = {"X-Scrapsort-Token": TOKEN}
    zip_headers = {**auth, "Content-Type": "application/zip"}
    assert status(f"{base}/api/batch", b"PK", {"Content-Type": "application/zip"})[0] == 403       # no token
    assert status(f"{base}/api/batch", b"not a zip", zip_headers)[0] == 400
    code, body = status(f"{base}/api/batch", json.dumps({"folder": "/etc"}).encode(),
                        {**auth, "Content-Type": "application/json"})
    assert code == 403 and b"web.batch_root" in body                          # server folders are off here
    huge = {**zip_headers, "Content-Length": str((200 << 20) + 1)}
    assert b" 413 " in raw(port, f"POST /api/batch HTTP/1.1\r\nHost: x\r\n{_head(huge)}\r\n".encode())
    assert status(f"{base}/api/batch/99")[0] == 404
    assert status(f"{base}/api/review/camera?label=glass", b"\xff\xd8", {"Content-Type": "image/jpeg"})[0] == 403
    assert status(f"{base}/api/review/camera?label=rocks", b"\xff\xd8", auth)[0] == 400
    assert status(f"{base}/api/review/camera?label=glass", b"<html>", auth)[0] == 400
    assert not (tmp_path / "line" / "review").exists() or not any((tmp_path / "line" / "review").rglob("*"))
    for query in ("since=abc", "since=nan", "until=inf"):
        assert status(f"{base}/api/audit.csv?{query}")[0] == 400


def _head(headers):
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items())


def test_batch_folders_stay_inside_the_allowed_root(tmp_path, trained_run):
    _, run = trained_run
    root = tmp_path / "sets"
    (root / "ok" / "glass").mkdir(parents=True)
    (tmp_path / "secret" / "glass").mkdir(parents=True)
    (root / "link").symlink_to(tmp_path / "secret")
    sorter = operator_line(tmp_path, run, batch_root=str(root))
    with running(sorter):
        base, auth = f"http://127.0.0.1:{sorter.web.port}", {"X-Scrapsort-Token": TOKEN, "Content-Type": "application/json"}
        for folder in ("../secret", "/etc", "link", "ok/../../secret"):
            code, body = status(f"{base}/api/batch", json.dumps({"folder": folder}).encode(), auth)
            assert code == 403 and b"outside web.batch_root" in body, folder
        code, body = status(f"{base}/api/batch", json.dumps({"folder": "ok"}).encode(), auth)
        assert code == 400 and b"no images of the model's classes" in body     # inside: read (and empty)
