"""nginx in front of two gunicorn instances, and the systemd unit: the shipped files, really run."""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.servers import EXAMPLE, ROOT, Gunicorn, Nginx, free_port, http

BODY = {"features": EXAMPLE}


@pytest.fixture(scope="module")
def instances():
    with Gunicorn(workers=1) as first, Gunicorn(workers=1) as second:
        yield first, second


@pytest.fixture(scope="module")
def nginx(instances, tmp_path_factory):
    server = Nginx(tmp_path_factory.mktemp("nginx"), [i.port for i in instances])
    with server:
        yield server


def test_shipped_nginx_config_passes_nginx_t(tmp_path):
    result = Nginx(tmp_path, [8001, 8002]).check_config()
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_https_predictions(nginx):
    status, body, headers = http("POST", nginx.https + "/predict", BODY, context=nginx.ssl_context())
    assert status == 200 and body["model_type"] == "onnx"
    assert headers["Strict-Transport-Security"].startswith("max-age=")


def test_plain_http_redirects_but_health_answers(nginx):
    request = b"GET /predict HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", nginx.http_port), timeout=5) as sock:
        sock.sendall(request)
        reply = sock.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 301")
    assert "Location: https://api.example.com/predict" in reply
    status, body, _ = http("GET", nginx.http + "/health")
    assert status == 200 and body["status"] == "ok"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_protocols(nginx):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(nginx.cert))
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        with socket.create_connection(("127.0.0.1", nginx.https_port), timeout=5) as sock:
            context.wrap_socket(sock, server_hostname="127.0.0.1")
    modern = nginx.ssl_context()
    with socket.create_connection(("127.0.0.1", nginx.https_port), timeout=5) as sock:
        with modern.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_metrics_not_exposed(nginx):
    status, body, _ = http("GET", nginx.https + "/metrics", context=nginx.ssl_context())
    assert status == 404 and body["error"] == "not_found"


def test_burst_gets_429_paced_requests_pass(instances, tmp_path):
    # The shipped limits (200 r/s, burst 100) lowered so the test needs few requests.
    with Nginx(tmp_path, [i.port for i in instances], rate="10r/s", burst="5") as server:
        context = server.ssl_context()
        with ThreadPoolExecutor(8) as pool:
            burst = list(pool.map(lambda _: http("POST", server.https + "/predict", BODY, context=context)[0],
                                  range(40)))
        assert burst.count(429) >= 20 and burst.count(200) >= 5
        assert set(burst) <= {200, 429}
        refused = next(answer for answer in (http("POST", server.https + "/predict", BODY, context=context)
                                             for _ in range(20)) if answer[0] == 429)
        assert refused[1]["error"] == "too_many_requests" and refused[2]["Retry-After"] == "1"
        assert refused[2]["Content-Type"] == "application/json"
        status, body, _ = http("POST", server.https + "/predict", BODY, context=context)
        time.sleep(1.0)  # let the bucket refill
        paced = []
        for _ in range(8):
            paced.append(http("POST", server.https + "/predict", BODY, context=context)[0])
            time.sleep(0.15)
        assert paced == [200] * 8
        # Health checks are never rate limited.
        assert all(http("GET", server.https + "/health", context=context)[0] == 200 for _ in range(30))


def test_what_nginx_answers_itself_is_json(nginx, tmp_path):
    """A body over client_max_body_size, and no instance up: nginx's own answers in the API's JSON shape, never
    its HTML pages."""
    context = nginx.ssl_context()
    status, body, headers = http("POST", nginx.https + "/predict", b"x" * (3 * 1024 * 1024), context=context)
    assert status == 413 and body["error"] == "payload_too_large" and headers["Content-Type"] == "application/json"
    with Nginx(tmp_path, [free_port()]) as orphan:
        status, body, headers = http("POST", orphan.https + "/predict", BODY, context=orphan.ssl_context())
        assert status == 503 and body["error"] == "service_unavailable" and headers["Retry-After"] == "1"


def test_slow_clients_do_not_block_workers(nginx):
    context = nginx.ssl_context()
    slow = []
    try:
        for index in range(200):
            sock = socket.create_connection(("127.0.0.1", nginx.https_port), timeout=5)
            tls = context.wrap_socket(sock, server_hostname="127.0.0.1")
            if index < 80:
                # A body that never finishes arriving (80: inside the rate limiter's burst).
                tls.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 4000\r\n\r\n{\"features\": [")
            else:
                tls.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # headers that never end
            slow.append(tls)
        time.sleep(0.6)  # the rate limiter's bucket refills
        # Each instance has a single sync worker: without nginx buffering the body,
        # the first two slow clients would hold both of them.
        for _ in range(20):
            status, body, _ = http("POST", nginx.https + "/predict", BODY, context=context, timeout=5)
            assert status == 200
    finally:
        for tls in slow:
            tls.close()


def test_one_instance_killed_traffic_continues(tmp_path):
    first, second = Gunicorn(workers=1), Gunicorn(workers=1)
    with first, second, Nginx(tmp_path, [first.port, second.port]) as server:
        context = server.ssl_context()
        assert http("POST", server.https + "/predict", BODY, context=context)[0] == 200
        first.stop()
        statuses = [http("POST", server.https + "/predict", BODY, context=context)[0] for _ in range(30)]
        assert statuses == [200] * 30


def _verified_unit(tmp_path, name: str) -> str:
    """The shipped unit, checked by systemd-analyze verify and security (exposure at most 2.0 of 10)."""
    systemd_analyze = shutil.which("systemd-analyze")
    if systemd_analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (ROOT / "systemd" / name).read_text()
    assert "/opt/omni-mev" in unit
    # verify checks that ExecStart exists: point the install path at this checkout.
    (tmp_path / name).write_text(unit.replace("/opt/omni-mev/.venv", str(ROOT / ".venv"))
                                 .replace("/opt/omni-mev", str(ROOT)))
    result = subprocess.run([systemd_analyze, "verify", str(tmp_path / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    security = subprocess.run([systemd_analyze, "security", "--offline=true", str(tmp_path / name)],
                              capture_output=True, text=True)
    exposure = [line for line in security.stdout.splitlines() if "Overall exposure level" in line]
    assert exposure and float(exposure[0].split(":")[1].split()[0]) <= 2.0, security.stdout[-500:]
    return unit


def test_systemd_unit_verifies(tmp_path):
    unit = _verified_unit(tmp_path, "omni-mev.service")
    for directive in ("ExecReload=/bin/kill -s HUP $MAINPID", "Restart=on-failure", "DynamicUser=yes",
                      "RuntimeDirectory=omni-mev", "Environment=PROMETHEUS_MULTIPROC_DIR=/run/omni-mev/metrics"):
        assert directive in unit


def test_the_stream_servers_unit_verifies_and_shares_the_services_state(tmp_path):
    unit = _verified_unit(tmp_path, "omni-mev-stream.service")
    service = (ROOT / "systemd" / "omni-mev.service").read_text()
    for directive in ("ExecStart=/opt/omni-mev/.venv/bin/omni-mev stream", "User=omni-mev", "DynamicUser=yes",
                      "StateDirectory=omni-mev"):
        assert directive in unit
    shared = [line for line in service.splitlines() if line.startswith(("Environment=AI_DECISION_LOG",
                                                                         "Environment=AI_LEDGER_URL"))]
    assert len(shared) == 2 and all(line in unit.splitlines() for line in shared)


def test_websocket_streams_through_nginx(instances, tmp_path):
    """The shipped site's /stream location: TLS, the upgrade, messages both ways, and the stream server's close."""
    import json

    from websockets.sync.client import connect

    from tests.servers import StreamServer

    with StreamServer() as stream, Nginx(tmp_path, [i.port for i in instances], stream_port=stream.port) as proxy:
        url = f"wss://127.0.0.1:{proxy.https_port}/stream"
        with connect(url, ssl=proxy.ssl_context()) as ws:
            for index in range(3):
                ws.send(json.dumps({"id": index, "features": EXAMPLE}))
            answers = [json.loads(ws.recv(timeout=10)) for _ in range(3)]
            assert [a["id"] for a in answers] == [0, 1, 2] and all(a["confidence"] > 0 for a in answers)
            ws.send("not json")
            assert json.loads(ws.recv(timeout=10))["error"] == "bad_request"
        status, body, _ = http("GET", proxy.https + "/stream", context=proxy.ssl_context())
        assert status == 426 and body["error"] == "upgrade_required"  # no upgrade asked: refused, in JSON


def test_grpc_through_nginx_over_tls(instances, tmp_path):
    """The shipped site's gRPC server block: TLS and HTTP/2 to the stock tritonclient.grpc, unary and streaming."""
    import queue

    import numpy as np
    import tritonclient.grpc as triton_grpc

    from tests.servers import StreamServer

    with StreamServer() as stream, Nginx(tmp_path, [i.port for i in instances],
                                         grpc_port=stream.grpc_port) as proxy:
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{proxy.grpc_tls_port}", ssl=True,
                                                   root_certificates=str(proxy.cert))
        features = triton_grpc.InferInput("features", [1, 8], "FP32")
        features.set_data_from_numpy(np.array([EXAMPLE], np.float32))
        assert client.is_server_live()
        assert client.infer("lstm_omni", [features]).as_numpy("confidence").shape == (1, 1)
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            for index in range(3):
                client.async_stream_infer("lstm_omni", [features], request_id=str(index))
            received = [answers.get(timeout=10) for _ in range(3)]
        finally:
            client.stop_stream()
        assert [error for _, error in received] == [None] * 3
        assert [result.get_response().id for result, _ in received] == ["0", "1", "2"]
