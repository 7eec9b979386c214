"""Hostile and careless input through the real gunicorn: never a null, a 5xx, an HTML page or a cut body."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.servers import EXAMPLE, ROOT, Gunicorn

V2_INFER = "/v2/models/lstm_omni/infer"
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def service():
    with Gunicorn({"AI_MAX_BODY_BYTES": str(LIMIT)}, workers=2) as server:
        yield server


def exchange(server: Gunicorn, head: bytes, body: bytes = b"", close_after_send: bool = False) -> tuple[int, dict, bytes]:
    """Send raw bytes; (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body)
        if close_after_send:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head_part, _, rest = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head_part.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(rest) >= length:
                    break
    head_part, _, rest = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    return int(lines[0].split()[1]), headers, rest


def chunked(path: str, chunks: list[bytes], terminator: bytes = b"0\r\n\r\n") -> tuple[bytes, bytes]:
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n").encode()
    return head, b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + terminator


def assert_json_error(status: int, headers: dict, body: bytes, expected: int) -> dict:
    assert status == expected, body
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["error"] and (error.get("message") or set(error) == {"error"})  # the API's shape, or V2's
    return error


# Values float32 cannot hold: the model would answer NaN, and the client would see null.

@pytest.mark.parametrize("value", [1e39, 1e308, -1e39, 10**40])
def test_values_beyond_float32_refused_on_every_endpoint(service, value):
    vector = [*EXAMPLE[:3], value, *EXAMPLE[4:]]
    status, body, _ = service.post("/predict", {"features": vector})
    assert status == 422 and list(body["fields"]) == ["features.gas_millions"]
    status, body, _ = service.post("/predict", {"features": EXAMPLE, "history": [vector]})
    assert status == 422 and list(body["fields"]) == ["history.0.gas_millions"]
    status, body, _ = service.post("/predict/batch", {"items": [{"features": EXAMPLE}, {"features": vector}]})
    assert status == 422 and list(body["fields"]) == ["items.1.features.gas_millions"]
    status, body, _ = service.post(V2_INFER, {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8],
                                                          "data": vector}]})
    assert status == 400 and "gas_millions" in body["error"]


def test_largest_float32_is_scored_and_never_null(service):
    status, body, _ = service.post("/predict", {"features": [3.4028234663852886e38, *EXAMPLE[1:]]})
    assert status == 200 and isinstance(body["confidence"], float) and body["plausible"] is False


# Chunked bodies: malformed ones are 400, oversized ones 413, none a 500 or a traceback.

@pytest.mark.parametrize("case", ["bad chunk size", "missing terminator", "cut off"])
def test_malformed_chunked_body_is_400(service, case):
    body = json.dumps({"features": EXAMPLE}).encode()
    head, encoded = chunked("/predict", [body])
    if case == "bad chunk size":
        encoded = b"zz\r\n" + body + b"\r\n0\r\n\r\n"
    elif case == "missing terminator":
        encoded = b"%x\r\n%sXX0\r\n\r\n" % (len(body), body)
    else:
        encoded = b"%x\r\n%s" % (len(body) + 50, body)
    error = assert_json_error(*exchange(service, head, encoded, close_after_send=case == "cut off"), 400)
    assert error["error"] == "bad_request"


SMUGGLED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


@pytest.mark.parametrize("case", ["bad chunk size", "chunk without its CRLF", "bad chunk extension"])
def test_a_framing_error_is_answered_once_and_the_connection_closed(service, case):
    """A kept-alive connection whose chunked body is malformed, followed by bytes that look like a request: one
    JSON 400 with Connection: close, then the connection closes; the rest is never read as a request (the
    request-smuggling pattern)."""
    body = json.dumps({"features": EXAMPLE}).encode()
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    encoded = {"bad chunk size": b"zz\r\n" + body + b"\r\n0\r\n\r\n",
               "chunk without its CRLF": b"%x\r\n%sXX0\r\n\r\n" % (len(body), body),
               "bad chunk extension": b"%x;a=\x01\r\n%s\r\n0\r\n\r\n" % (len(body), body)}[case]
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(head + encoded + SMUGGLED)
        data = read_until_closed(sock)
    assert data.count(b"HTTP/1.1 ") == 1, data
    head_part, _, rest = data.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 400") and b"Connection: close" in head_part
    error = json.loads(rest)
    assert error["error"] == "bad_request" and "connection is closed" in error["message"].lower()


@pytest.mark.parametrize("path", ["/predict", "/predict/batch", V2_INFER])
def test_chunked_body_over_the_limit_is_413_not_cut(service, path):
    valid = json.dumps({"features": EXAMPLE}).encode()
    padding = [b" " * 8192] * (LIMIT // 8192 + 2) + [b"garbage"]
    error = assert_json_error(*exchange(service, *chunked(path, [valid, *padding])), 413)
    assert "AI_MAX_BODY_BYTES" in (error.get("message") or error["error"])


def test_declared_length_over_the_limit_is_413_before_reading(service):
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % (LIMIT + 1))
    error = assert_json_error(*exchange(service, head, b"{"), 413)
    assert error["error"] == "payload_too_large"


def test_chunked_body_within_the_limit_is_scored(service):
    body = json.dumps({"features": EXAMPLE}).encode()
    status, _, answer = exchange(service, *chunked("/predict", [body[:10], body[10:]]))
    assert status == 200 and json.loads(answer)["confidence"] > 0


@pytest.mark.parametrize("request_head", [
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET /health?" + b"q" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
])
def test_requests_gunicorn_refuses_are_answered_in_json(service, request_head):
    status, headers, body = exchange(service, request_head)
    assert 400 <= status < 500
    assert_json_error(status, headers, body, status)


# Types: JSON booleans are not numbers anywhere.

@pytest.mark.parametrize("data", [[*EXAMPLE[:7], True], [[*EXAMPLE[:7], False]]])
def test_v2_refuses_booleans_among_numbers(service, data):
    shape = [1, 8]
    status, body, _ = service.post(V2_INFER, {"inputs": [{"name": "features", "datatype": "FP32", "shape": shape,
                                                          "data": data}]})
    assert status == 400 and "numbers only" in body["error"]


@pytest.mark.parametrize("flag", [0, 1, "yes", "true", None])
def test_dispatch_flag_must_be_a_json_boolean(service, flag):
    status, body, _ = service.post("/predict", {"features": EXAMPLE, "dispatch": flag})
    assert status == 422 and list(body["fields"]) == ["dispatch"]
    status, body, _ = service.post("/predict/batch", {"items": [{"features": EXAMPLE, "dispatch": flag}]})
    assert status == 422 and list(body["fields"]) == ["items.0.dispatch"]


def test_v2_health_answers_json_and_empty_answers_carry_no_content_type(service):
    for path, body in (("/v2/health/live", b'{"live":true}'), ("/v2/health/ready", b'{"ready":true}')):
        status, headers, answered = exchange(service,
                                             f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert (status, answered, headers["content-type"]) == (200, body, "application/json")
    for path, allowed in (("/status", {"GET", "HEAD", "OPTIONS"}), ("/predict", {"POST", "OPTIONS"})):
        status, headers, body = exchange(service, f"OPTIONS {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                                         .encode())
        assert (status, body) == (204, b"") and "content-type" not in headers
        assert set(headers["allow"].replace(" ", "").split(",")) == allowed


def test_json_is_read_whatever_the_declared_content_type(service):
    body = json.dumps({"features": EXAMPLE})
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        status, answer, _ = service.post("/predict", body.encode(), headers={"Content-Type": content_type})
        assert status == 200 and answer["confidence"] > 0


def test_model_unavailable_names_no_server_path(tmp_path):
    with Gunicorn({"AI_MODEL_PATH": str(tmp_path / "missing.onnx")}, workers=1) as server:
        status, body, _ = server.post("/predict", {"features": EXAMPLE})
        log = server.output()
    assert status == 503 and body["error"] == "model_unavailable"
    assert "onnx" in body["message"] and "cannot be read" in body["message"]
    assert str(tmp_path) not in body["message"] and "/" not in body["message"]
    assert str(tmp_path / "missing.onnx") in log  # operators still get the path


def test_refused_start_leaves_no_directories(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "AI_THRESHOLD": "1.5", "OMNI_MEV_ENV_FILE": "/nonexistent",
           "PYTHONPATH": str(ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("AI_LAST_GOOD_DIR", None)
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "wsgi:app"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "AI_THRESHOLD='1.5' is out of range" in result.stderr
    assert list(scratch.iterdir()) == []


def test_keys_sent_by_mistake_never_reach_the_access_log():
    key = "secret-key-0123456789abcdef"
    with Gunicorn({"AI_API_KEYS": key, "GUNICORN_ACCESSLOG": "-"}, workers=1) as server:
        import base64

        basic = base64.b64encode(f"bot:{key}".encode()).decode()
        assert server.get("/status", headers={"Authorization": f"Basic {basic}"})[0] == 401
        assert server.get(f"/status?api_key={key}")[0] == 401
        assert server.post(f"/predict?key={key}", {"features": EXAMPLE})[0] == 401
        assert server.get("/status", headers={"Authorization": f"Bearer {key}"})[0] == 200
        server.stop()
        log = server.output()
    assert '"GET /status HTTP/1.1" 401' in log and '"POST /predict HTTP/1.1" 401' in log
    assert key not in log and basic not in log and "bot" not in log.split("Booting")[-1]


def test_no_client_error_left_a_traceback(service):
    """Runs last in this module: everything above was a client's error, answered without a traceback."""
    log = service.output()
    assert "Invalid request from ip=" in log  # gunicorn's refusals are logged, as one line each
    assert "Traceback" not in log
