"""omni-mev's gunicorn worker, through the real gunicorn: keep-alive, pipelining, closing, JSON errors."""
from __future__ import annotations

import fcntl
import http.client
import json
import random
import re
import select
import signal
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable

import pytest

from omni_mev.workers import KEEPALIVE_REQUESTS
from tests.servers import EXAMPLE, ROOT, Gunicorn, wait_until

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


# struct tcp_info (linux/tcp.h): tcpi_data_segs_in, the segments with data this socket received (Linux >= 4.6).
TCP_INFO_DATA_SEGS_IN = 152


def test_headers_and_body_leave_in_one_segment(service):
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        sock.sendall(predict_request(keep_alive=True))
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < int(
                re.search(rb"Content-Length: (\d+)", reply).group(1)):
            reply += sock.recv(65536)  # until the whole response is here, however it arrived
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    (data_segments,) = struct.unpack_from("I", info, TCP_INFO_DATA_SEGS_IN)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % len(body) in head and json.loads(body)["decision"] in (True, False)
    assert data_segments == 1, f"the response came in {data_segments} segments"


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


def read_reply(sock: socket.socket) -> bytes:
    """Read until the server closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def json_error(reply: bytes) -> tuple[bytes, dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head
    return head.split(b"\r\n")[0], json.loads(body)


@pytest.fixture(scope="module")
def short_deadline():
    with Gunicorn({"AI_REQUEST_READ_TIMEOUT_S": "1.5"}, workers=2) as server:
        yield server


def test_trickling_clients_cost_no_worker_and_get_408(short_deadline):
    """Four connections sending a head a byte at a time: every /health in the meantime is answered at once,
    and each trickler gets 408 at the request read deadline."""
    tricklers = [socket.create_connection(("127.0.0.1", short_deadline.port), timeout=5) for _ in range(4)]
    head = predict_request()
    answered = 0
    for step in range(12):  # 1.2 s of trickling, inside the 1.5 s deadline
        for sock in tricklers:
            sock.sendall(head[step:step + 1])
        status, body, _ = short_deadline.get("/health", timeout=1.0)
        answered += status == 200 and body["status"] == "ok"
        time.sleep(0.1)
    assert answered == 12
    for sock in tricklers:
        with sock:
            status_line, error = json_error(read_reply(sock))
        assert status_line == b"HTTP/1.1 408 Request Timeout" and error["error"] == "request_timeout"
        assert "AI_REQUEST_READ_TIMEOUT_S" in error["message"]


def test_short_body_then_silence_is_408_and_then_close_is_400(short_deadline):
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    with socket.create_connection(("127.0.0.1", short_deadline.port), timeout=5) as sock:
        sock.sendall(head % len(PREDICT) + PREDICT[:10])
        status_line, error = json_error(read_reply(sock))
    assert status_line.startswith(b"HTTP/1.1 408") and error["error"] == "request_timeout"
    with socket.create_connection(("127.0.0.1", short_deadline.port), timeout=5) as sock:
        sock.sendall(head % len(PREDICT) + PREDICT[:10])
        sock.shutdown(socket.SHUT_WR)
        status_line, error = json_error(read_reply(sock))
    assert status_line.startswith(b"HTTP/1.1 400") and error["error"] == "bad_request"
    assert f"10 of the body's {len(PREDICT)} bytes" in error["message"]
    assert "Traceback" not in short_deadline.output() and "BlockingIOError" not in short_deadline.output()


def test_100_continue_only_for_a_body_that_can_be_accepted(service):
    expect = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        sock.sendall(expect + b"Content-Length: %d\r\n\r\n" % (64 * 1024 * 1024))
        status_line, error = json_error(read_reply(sock))
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large" and error["error"] == "payload_too_large"
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        sock.sendall(expect + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(PREDICT))
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(PREDICT)
        reply = read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 200 ") and b"100 Continue" not in reply


def test_unknown_transfer_coding_is_501_not_implemented(service):
    reply = raw_exchange(service, b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n")
    status_line, error = json_error(reply)
    assert status_line == b"HTTP/1.1 501 Not Implemented" and error["error"] == "not_implemented"
    assert "xchunked" in error["message"]


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes this socket sent that the peer has not yet acknowledged (Linux SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def test_requests_sent_on_kept_alive_connections_while_the_worker_is_busy_are_answered():
    """One worker with a 1 s keep-alive, busy past it with a 4,096-item batch with history: requests sent
    meanwhile on connections idle since before are answered, not closed as expired."""
    history = [[*EXAMPLE[:5], 0.5 - 0.001 * (31 - k), *EXAMPLE[6:]] for k in range(31)]
    big = json.dumps({"items": [{"features": EXAMPLE, "history": history}] * 4096}).encode()
    env = {"AI_MAX_BODY_BYTES": str(16 * 1024 * 1024), "GUNICORN_CMD_ARGS": "--keep-alive 1"}
    with Gunicorn(env, workers=1) as server:
        waiting = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=20) for _ in range(4)]
        for connection in waiting:
            connection.request("GET", "/health")
            assert connection.getresponse().read()
        busy = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        busy.request("POST", "/predict/batch", body=big, headers={"Content-Type": "application/json"})
        wait_until(lambda: unsent_bytes(busy.sock) == 0, 10, what="the worker has read the whole batch")
        for connection in waiting:
            connection.request("POST", "/predict", body=PREDICT, headers={"Content-Type": "application/json"})
        response = busy.getresponse()
        assert response.status == 200 and json.loads(response.read())["count"] == 4096
        for connection in waiting:
            response = connection.getresponse()
            assert response.status == 200 and "confidence" in json.loads(response.read())
            connection.close()
        busy.close()


def test_scoring_does_not_wait_on_a_dispatch(vectors):
    """One worker, a LIVE batch waiting up to 2.5 s on a 2.5 s engine: requests on other connections are
    answered meanwhile, and the batch at its wait, with its order queued."""
    from tests.conftest import THRESHOLD
    from tests.engine_stub import EngineStub

    with EngineStub(delay_s=2.5) as engine, Gunicorn({
            "LIVE_TRADING": "true", "RUST_ENGINE_URL": engine.url, "AI_THRESHOLD": str(THRESHOLD),
            "AI_BATCH_DISPATCH_WAIT_S": "2.5", "AI_DISPATCH_MAX_AGE_S": "5"}, workers=1) as server:
        dispatching = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        dispatching.request("POST", "/predict/batch", body=json.dumps(
            {"items": [{"features": vectors[True][0], "opportunity_id": "parked-1"}]}),
            headers={"Content-Type": "application/json"})
        wait_until(lambda: engine.orders, 5, what="the order at the engine")
        for _ in range(20):
            assert server.post("/predict", {"features": EXAMPLE})[0] == 200
        # All 20 were answered while the batch's answer still waits on the engine: nothing of it has come.
        assert select.select([dispatching.sock], [], [], 0)[0] == []
        response = dispatching.getresponse()
        body = json.loads(response.read())
        assert response.status == 200 and int(response.getheader("Content-Length")) > 0
        assert body["results"][0]["execution"]["status"] in ("queued", "dispatched")
        dispatching.close()


def test_the_workers_keep_alive_outlasts_nginxs_upstream_idle_timeout_as_shipped():
    """nginx closes an idle upstream connection before the worker would: it never sends on one the worker is
    closing. Read from the shipped files, so changing either keeps them ordered."""
    site = (ROOT / "nginx" / "omni-mev.conf").read_text()
    upstream = site[site.index("upstream omni_mev {"):site.index("}", site.index("upstream omni_mev {"))]
    nginx_idle_s = float(re.search(r"keepalive_timeout (\d+)s;", upstream).group(1))
    worker_idle_s = float(re.search(r"^keepalive = (\d+)$", (ROOT / "gunicorn.conf.py").read_text(), re.M).group(1))
    assert nginx_idle_s < worker_idle_s
    assert re.search(r"keepalive_requests (\d+);", upstream).group(1) == str(KEEPALIVE_REQUESTS)
    assert 'proxy_set_header Connection "";' in site  # nginx asks the workers to keep connections open


def paced(send: Callable[[int], int], clients: int, rounds: int, gap_s: tuple[float, float]) -> list[int]:
    """`clients` threads, each sending `rounds` requests (send(i) -> status, 0 for a failure) with pauses drawn
    from `gap_s`; every status."""
    statuses: list[int] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        for _ in range(rounds):
            status = send(index)
            with lock:
                statuses.append(status)
            time.sleep(random.uniform(*gap_s))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return statuses


def test_requests_at_the_keep_alive_boundary_through_nginx_are_never_lost(tmp_path):
    """Through the real nginx with upstream keep-alive, the idle timeouts ordered as shipped (nginx below the
    worker; here 0.8 s and 1 s): 16 clients pausing 0.97-1.03 s between requests, right at the worker's close, and
    a reload in the middle. Every request is answered."""
    from tests.servers import Nginx

    with Gunicorn({"GUNICORN_CMD_ARGS": "--keep-alive 1"}, workers=2) as server, \
            Nginx(tmp_path, [server.port], overrides={"keepalive_timeout 4s;": "keepalive_timeout 800ms;"}) as proxy:
        context = proxy.ssl_context()
        connections = [http.client.HTTPSConnection("127.0.0.1", proxy.https_port, context=context, timeout=10)
                       for _ in range(16)]

        def send(index: int) -> int:
            connection = connections[index]
            try:
                connection.request("POST", "/predict", PREDICT, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                return response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                return 0

        reload = threading.Timer(2.0, lambda: server.signal(signal.SIGHUP))
        reload.start()
        statuses = paced(send, 16, 6, (0.97, 1.03))
        reload.join()
        assert statuses.count(200) == len(statuses) == 96, statuses


def test_the_python_client_never_races_the_workers_idle_close():
    """Straight to the worker: a client pausing right at its keep-alive (1 s here) sends on a connection the worker
    may be closing; omni_mev.client retires connections before the server's Keep-Alive hint, so none is lost."""
    from omni_mev.client import Client

    with Gunicorn({"GUNICORN_CMD_ARGS": "--keep-alive 1"}, workers=2) as server:
        reply = raw_exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"Keep-Alive" not in reply  # no hint on a connection that closes
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"Keep-Alive: timeout=1\r\n" in sock.recv(65536)
        clients = [Client(server.url, timeout=5) for _ in range(16)]

        def send(index: int) -> int:
            try:
                clients[index].predict(EXAMPLE)
                return 200
            except Exception:  # noqa: BLE001 - counted as lost
                return 0

        statuses = paced(send, 16, 6, (0.97, 1.03))
        assert statuses.count(200) == len(statuses) == 96


@pytest.mark.parametrize(("path", "keys"), [("/predict", {"error", "message"}),
                                            ("/v2/models/lstm_omni/infer", {"error"})])
def test_the_workers_own_errors_take_the_routes_shape(short_deadline, path, keys):
    """408 (a body that stops arriving), 413 (a declared body over the limit) and 400 (a connection closed
    mid-body) are answered by the worker before the application sees the request, in the error shape of the
    route it was for: the V2 protocol's {"error"} on /v2, the API's elsewhere."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    with socket.create_connection(("127.0.0.1", short_deadline.port), timeout=5) as sock:
        sock.sendall((head % len(PREDICT)).encode() + PREDICT[:10])
        timed_out, timeout_error = json_error(read_reply(sock))
    with socket.create_connection(("127.0.0.1", short_deadline.port), timeout=5) as sock:
        sock.sendall((head % (1 << 30)).encode())
        too_large, too_large_error = json_error(read_reply(sock))
    with socket.create_connection(("127.0.0.1", short_deadline.port), timeout=5) as sock:
        sock.sendall((head % len(PREDICT)).encode() + PREDICT[:10])
        sock.shutdown(socket.SHUT_WR)
        cut, cut_error = json_error(read_reply(sock))
    assert [timed_out[:12], too_large[:12], cut[:12]] == [b"HTTP/1.1 408", b"HTTP/1.1 413", b"HTTP/1.1 400"]
    assert set(timeout_error) == set(too_large_error) == set(cut_error) == keys
    assert "AI_REQUEST_READ_TIMEOUT_S" in str(timeout_error) and "AI_MAX_BODY_BYTES" in str(too_large_error)
