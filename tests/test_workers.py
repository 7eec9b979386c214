"""omni-mev's gunicorn worker, through the real gunicorn: keep-alive, pipelining, closing, JSON errors."""
from __future__ import annotations

import http.client
import json
import re
import socket
import time

import pytest

from omni_mev.workers import KEEPALIVE_REQUESTS
from tests.servers import EXAMPLE, Gunicorn

PREDICT = json.dumps({"features": EXAMPLE}).encode()


@pytest.fixture(scope="module")
def service():
    with Gunicorn(workers=2) as server:
        yield server


def raw_exchange(server: Gunicorn, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def predict_request(keep_alive: bool = True) -> bytes:
    connection = b"" if keep_alive else b"Connection: close\r\n"
    return (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + connection
            + b"Content-Length: %d\r\n\r\n" % len(PREDICT) + PREDICT)


def test_connection_kept_alive_across_requests(service):
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=5)
    connection.connect()
    local = connection.sock.getsockname()
    for _ in range(20):
        connection.request("POST", "/predict", body=PREDICT, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Connection") == "keep-alive"
        assert json.loads(response.read())["model_type"] == "onnx"
    assert connection.sock.getsockname() == local  # one TCP connection served all 20
    connection.close()


def test_pipelined_requests_answered_in_order(service):
    bad = json.dumps({"features": EXAMPLE[:7]}).encode()
    third = (b"POST /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(bad)) + bad
    reply = raw_exchange(service, predict_request() + predict_request() + third)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", reply) == [b"200", b"200", b"422"]


def test_connection_close_and_http10_are_honoured(service):
    reply = raw_exchange(service, predict_request(keep_alive=False))
    assert reply.startswith(b"HTTP/1.1 200") and b"Connection: close" in reply
    old = b"GET /health HTTP/1.0\r\n\r\n"
    assert raw_exchange(service, old).startswith(b"HTTP/1.0 200")  # and the server closed: recv returned b""


def test_headers_and_body_leave_in_one_segment(service):
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        sock.sendall(predict_request(keep_alive=False))
        time.sleep(0.3)
        first = sock.recv(65536)
    head, _, body = first.partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % len(body) in head and json.loads(body)["decision"] in (True, False)


def test_connection_closed_after_its_request_quota(service):
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=5)
    headers = []
    for _ in range(KEEPALIVE_REQUESTS):
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
        headers.append(response.getheader("Connection"))
    assert headers[:-1] == ["keep-alive"] * (KEEPALIVE_REQUESTS - 1) and headers[-1] == "close"
    connection.close()


def test_idle_connection_closed_after_keepalive():
    with Gunicorn({"GUNICORN_CMD_ARGS": "--keep-alive 1"}, workers=1) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert sock.recv(65536) == b""  # closed by the server, not by the recv timeout
            assert 0.5 < time.monotonic() - started < 4.0


@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET /health HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(60)) + b"\r\n", 431,
     "request_header_fields_too_large"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "bad_request"),
])
def test_gunicorns_own_errors_are_json(service, request_bytes, status, code):
    reply = raw_exchange(service, request_bytes)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode()
    assert b"Content-Type: application/json" in head
    error = json.loads(body)
    assert error["error"] == code and error["message"]
