"""The stream server's WebSocket protocol against the real `omni-mev stream` process: the answers /predict gives,
in order, errors per message, and each bound and close code of docs/streaming.md."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import signal
import socket
import struct
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.conftest import THRESHOLD
from tests.engine_stub import EngineStub
from tests.servers import StreamServer, http, wait_until

EXAMPLE = [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]
KEY = "stream-key-0123456789"


@pytest.fixture(scope="module")
def stream():
    with StreamServer() as server:
        yield server


def _timing_free(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "inference_time_ms"}


def test_answers_are_what_the_http_routes_answer(stream, make_app, vectors):
    client = make_app(AI_LEDGER_URL="off").test_client()
    history = [[*EXAMPLE[:5], 0.4, 2, 1.0], EXAMPLE]
    messages = [{"features": EXAMPLE}, {"features": vectors[True][0]}, {"features": EXAMPLE, "history": history},
                {"features": {"profit_usd": 3.0, "profit_ratio": 1.004, "route_complexity": 2, "gas_millions": 0.3,
                              "confidence_score": 0.7, "time_of_day": 0.5, "dex_count": 2,
                              "input_amount_thousands": 1.0}}]
    with connect(stream.url) as ws:
        for index, message in enumerate(messages):
            ws.send(json.dumps({"id": index, **message}))
            answer = json.loads(ws.recv(timeout=10))
            expected = client.post("/predict", json=message).get_json()
            assert answer.pop("id") == index
            assert _timing_free(answer) == _timing_free(expected)
        ws.send(json.dumps({"id": "many", "items": messages}))
        answer = json.loads(ws.recv(timeout=10))
        expected = client.post("/predict/batch", json={"items": messages}).get_json()
        assert answer.pop("id") == "many" and _timing_free(answer) == _timing_free(expected)


def test_pipelined_messages_are_answered_in_order(stream):
    with connect(stream.url) as ws:
        for index in range(200):
            ws.send(json.dumps({"id": f"m{index}", "features": EXAMPLE}))
        assert [json.loads(ws.recv(timeout=10))["id"] for _ in range(200)] == [f"m{i}" for i in range(200)]


def test_an_error_answers_its_message_and_the_connection_goes_on(stream):
    with connect(stream.url) as ws:
        for frame, expected in (("not json", {"error": "bad_request"}),
                                (b"\x00\x01binary", {"error": "bad_request"}),
                                ("[1, 2]", {"error": "bad_request"}),
                                (json.dumps({"id": 7, "features": [1, 2]}), {"id": 7, "error": "validation_error"}),
                                (json.dumps({"id": {"no": 1}, "features": EXAMPLE}), {"error": "validation_error"}),
                                (json.dumps({"id": 8, "items": [{"features": EXAMPLE}, {}]}),
                                 {"id": 8, "error": "validation_error"})):
            ws.send(frame)
            answer = json.loads(ws.recv(timeout=10))
            assert expected.items() <= answer.items() and answer["message"], (frame, answer)
        ws.send(json.dumps({"id": 9, "features": EXAMPLE}))
        assert json.loads(ws.recv(timeout=10))["confidence"] > 0


def test_an_oversized_message_closes_with_1009():
    with StreamServer({"AI_STREAM_MAX_MESSAGE_BYTES": "2048"}) as server, connect(server.url) as ws:
        ws.send(json.dumps({"id": 1, "features": EXAMPLE, "opportunity_id": "x" * 4000}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1009


def test_the_handshake_needs_a_key_when_keys_are_configured():
    with StreamServer({"AI_API_KEYS": KEY}) as server:
        with pytest.raises(InvalidStatus) as refused:
            connect(server.url)
        response = refused.value.response
        assert response.status_code == 401
        assert json.loads(response.body) == {"error": "unauthorized", "message": "Missing or invalid API key."}
        with pytest.raises(InvalidStatus):
            connect(server.url, additional_headers={"X-API-Key": "wrong-key-0123456789"})
        for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
            with connect(server.url, additional_headers=headers) as ws:
                ws.send(json.dumps({"features": EXAMPLE}))
                assert json.loads(ws.recv(timeout=10))["confidence"] > 0
        # /metrics shares the clients' port: it needs a key as well.
        assert http("GET", server.http_url + "/metrics")[0] == 401
        status, exposition = http("GET", server.http_url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})[:2]
        assert status == 200 and "ai_requests_total" in str(exposition)
        assert http("GET", server.http_url + "/health")[0] == 200  # probes stay open


def _handshake(port: int, receive_buffer: int | None = None) -> socket.socket:
    """A raw WebSocket client connection, upgraded."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _text_frame(payload: bytes) -> bytes:
    """A masked text frame, as a client sends it."""
    mask = os.urandom(4)
    length = len(payload)
    header = bytes([0x81]) + (bytes([0x80 | length]) if length < 126 else
                              bytes([0x80 | 126]) + struct.pack(">H", length) if length < 65536 else
                              bytes([0x80 | 127]) + struct.pack(">Q", length))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_a_client_that_never_reads_is_closed_and_the_others_are_served():
    with StreamServer({"AI_STREAM_SEND_TIMEOUT_S": "0.5"}) as server:
        stalled = _handshake(server.port, receive_buffer=4096)
        stalled.settimeout(0.2)
        frame = _text_frame(json.dumps({"items": [{"features": EXAMPLE}] * 1000}).encode())
        sent = 0
        try:
            while sent < 200:
                stalled.sendall(frame)
                sent += 1
        except (TimeoutError, OSError):
            pass  # the server stopped reading: its answers are not taken
        with connect(server.url) as other:
            other.send(json.dumps({"id": "other", "features": EXAMPLE}))
            assert json.loads(other.recv(timeout=10))["id"] == "other"
        wait_until(lambda: "was not taken within 0.5 s" in server.output(), 20, what="the stalled client closed")
        stalled.close()


def test_a_thousand_idle_connections_are_held_and_a_new_one_is_served():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
    try:
        with StreamServer() as server:
            idle = [_handshake(server.port) for _ in range(1000)]
            with connect(server.url) as ws:
                ws.send(json.dumps({"id": "after-1000", "features": EXAMPLE}))
                assert json.loads(ws.recv(timeout=10))["id"] == "after-1000"
            idle[0].sendall(_text_frame(json.dumps({"id": "first", "features": EXAMPLE}).encode()))
            idle[0].settimeout(10)
            assert b'"first"' in idle[0].recv(65536)
            for sock in idle:
                sock.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_sigterm_finishes_the_message_in_hand_then_closes_with_1001():
    with StreamServer() as server, connect(server.url) as ws:
        ws.send(json.dumps({"id": 1, "features": EXAMPLE}))
        assert json.loads(ws.recv(timeout=10))["id"] == 1
        server.signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1001
        assert server.proc.wait(10) == 0


def test_live_dispatch_over_a_stream_is_exactly_once(vectors):
    live = {"LIVE_TRADING": "true", "AI_THRESHOLD": str(THRESHOLD)}
    with EngineStub() as engine, StreamServer({**live, "RUST_ENGINE_URL": engine.url}) as server, \
            connect(server.url) as ws:
        ws.send(json.dumps({"id": 1, "features": vectors[True][0], "opportunity_id": "ws-live-1"}))
        answer = json.loads(ws.recv(timeout=15))
        assert answer["mode"] == "LIVE" and answer["execution"]["status"] == "dispatched"
        ws.send(json.dumps({"id": 2, "features": vectors[True][0], "opportunity_id": "ws-live-1"}))
        again = json.loads(ws.recv(timeout=15))
        assert again["execution"]["status"] != "dispatched"
        ws.send(json.dumps({"id": 3, "features": vectors[False][0], "opportunity_id": "ws-live-2"}))
        assert "execution" not in json.loads(ws.recv(timeout=15))
        assert engine.ids() == ["ws-live-1"]


def test_the_python_stream_client_pipelines_and_reports_errors(stream):
    from omni_mev.client import OmniMevError, StreamClient

    with StreamClient(stream.url, timeout=10) as client:
        sent = [client.send(EXAMPLE, opportunity_id=f"py-{i}") for i in range(20)]
        answers = [client.receive() for _ in sent]
        assert [a.opportunity_id for a in answers] == [f"py-{i}" for i in range(20)]
        assert client.predict(EXAMPLE).confidence == answers[0].confidence
        with pytest.raises(OmniMevError) as refused:
            client.predict([1, 2])
        assert refused.value.code == "validation_error" and "features" in refused.value.fields


@pytest.fixture(scope="module")
def example_lines(stream) -> list[str]:
    """What the Node and Rust stream examples must print, from the Python client and the HTTP batch route."""
    from omni_mev import create_app
    from omni_mev.client import StreamClient

    with StreamClient(stream.url, timeout=10) as client:
        one = client.predict(EXAMPLE)
    batch = [EXAMPLE, [2.0, 1.006, 3, 0.3, 0.95, 0.2, 2, 1.0], [0.4, 1.001, 6, 0.9, 0.05, 0.1, 4, 0.2]]
    many = create_app({"AI_LEDGER_URL": "off"}).test_client().post(
        "/predict/batch", json={"items": [{"features": f} for f in batch]}).get_json()
    return [
        f"stream: id=1 decision={str(one.decision).lower()} confidence={one.confidence} "
        f"model={one.model_type}/{one.model_version}",
        "stream batch: id=2 decisions=[" + ", ".join(str(r["decision"]).lower() for r in many["results"]) + "]",
    ]


def _run_example(argv: list[str], url: str) -> list[str]:
    import subprocess

    printed = subprocess.run([*argv, url], capture_output=True, text=True, timeout=30)
    assert printed.returncode == 0, printed.stderr
    return printed.stdout.splitlines()


def test_the_node_stream_client(stream, example_lines):
    import shutil

    from tests.servers import ROOT

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    assert _run_example([node, str(ROOT / "examples" / "node" / "stream.mjs")], stream.url) == example_lines


def test_the_rust_stream_client_built_with_the_standard_library_alone(stream, example_lines, tmp_path):
    """examples/rust/src/bin/stream.rs, compiled here with rustc and no crates: the same lines as the Node
    client; a handshake without the key is refused with the server's 401."""
    import shutil
    import subprocess

    from tests.servers import ROOT

    rustc = shutil.which("rustc")
    if rustc is None:
        pytest.skip("rustc is not installed (make test installs it with apt)")
    binary = tmp_path / "stream"
    source = ROOT / "examples" / "rust" / "src" / "bin" / "stream.rs"
    build = subprocess.run([rustc, "--edition", "2021", "-O", str(source), "-o", str(binary)], capture_output=True,
                           text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    assert _run_example([str(binary)], stream.url) == example_lines
    with StreamServer({"AI_API_KEYS": KEY}) as guarded:
        refused = subprocess.run([str(binary), guarded.url], capture_output=True, text=True, timeout=30)
        assert refused.returncode == 1 and "handshake refused: HTTP/1.1 401" in refused.stderr
        allowed = subprocess.run([str(binary), guarded.url], capture_output=True, text=True, timeout=30,
                                 env={**os.environ, "OMNI_MEV_API_KEY": KEY})
        assert allowed.stdout.splitlines() == example_lines, allowed.stderr


def test_http_without_an_upgrade_is_answered_in_json(stream):
    from tests.servers import http

    status, body, headers = http("GET", stream.http_url + "/stream")
    assert status == 426 and body["error"] == "upgrade_required" and headers["Upgrade"] == "websocket"
    status, body, _ = http("GET", stream.http_url + "/elsewhere")
    assert status == 404 and body["error"] == "not_found" and "/stream" in body["message"]
    status, body, _ = http("GET", stream.http_url + "/health")
    assert status == 200 and body["status"] == "ok"


def test_a_promotion_reaches_the_stream_between_messages_and_loses_none(tmp_path):
    """The stream follows the registry as the HTTP service does: the new champion answers within seconds; every
    message is answered and recorded in the one ledger, across the swap; the stream's own /metrics counts them."""
    from omni_mev.registry.store import Registry
    from tests.conftest import MODELS
    from tests.servers import http
    from tests.test_registry import SHIPPED, uninformative_model

    registry = Registry(tmp_path / "registry")
    registry.register(MODELS, user="test")
    weak = uninformative_model(tmp_path / "weak")
    registry.register(tmp_path / "weak", user="test")
    registry.assign("champion", weak, user="test")
    with StreamServer({"AI_MODEL_REGISTRY": str(registry.root)}) as server, connect(server.url) as ws:
        sent: list[str] = []

        def version_answering() -> str:
            sent.append(f"swap-{len(sent)}")
            ws.send(json.dumps({"id": sent[-1], "features": EXAMPLE, "opportunity_id": sent[-1]}))
            answer = json.loads(ws.recv(timeout=10))
            assert answer["id"] == sent[-1], answer
            return answer["model_version"]

        assert version_answering() == weak
        registry.assign("champion", SHIPPED, user="test")
        wait_until(lambda: version_answering() == SHIPPED, 30, what="the promoted champion answering on the stream")
        assert http("GET", server.http_url + "/health")[1]["model_version"] == SHIPPED
        assert version_answering() == SHIPPED

        from omni_mev.ledger.store import SqlLedger

        ledger = SqlLedger(server.env["AI_LEDGER_URL"])
        wait_until(lambda: set(ledger.records(0).opportunity_id) >= set(sent), 20,
                   what="every message's prediction in the ledger")
        assert set(ledger.records(0).model_version) == {weak, SHIPPED}
        wait_until(lambda: stream_messages_counted(server) == len(sent), 10,
                   what="the stream's /metrics counting every message")


def stream_messages_counted(server: StreamServer) -> float:
    """ai_requests_total of answered WebSocket messages, read from the stream server's /metrics."""
    exposition = urllib.request.urlopen(server.http_url + "/metrics", timeout=10).read().decode()
    counted = [float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
               if line.startswith('ai_requests_total{endpoint="ws:/stream"') and 'outcome="ok"' in line]
    return sum(counted)


def _children(pid: int) -> set[int]:
    """The stream processes a supervising `omni-mev stream` spawned (not multiprocessing's resource tracker)."""
    found = set()
    for child in open(f"/proc/{pid}/task/{pid}/children").read().split():
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(int(child))
        except FileNotFoundError:
            pass  # ended meanwhile
    return found


def test_several_processes_share_the_ports_count_together_and_drain_on_sigterm():
    """AI_STREAM_PROCESSES=2: both serve the one port (connections spread over them), /metrics totals every
    message whichever process answers the scrape, a process that dies is replaced, SIGTERM stops them all."""
    with StreamServer({"AI_STREAM_PROCESSES": "2"}) as server:
        wait_until(lambda: len(_children(server.pid)) == 2, 30, what="two stream processes")
        with contextlib.ExitStack() as stack:
            sockets = [stack.enter_context(connect(server.url)) for _ in range(16)]
            for index, ws in enumerate(sockets):
                ws.send(json.dumps({"id": index, "features": EXAMPLE}))
            assert [json.loads(ws.recv(timeout=10))["id"] for ws in sockets] == list(range(16))
        wait_until(lambda: stream_messages_counted(server) == 16, 10, what="both processes' messages counted")
        first, second = sorted(_children(server.pid))
        environ = dict(item.split("=", 1) for item in open(f"/proc/{first}/environ").read().split("\0") if "=" in item)
        metrics_dir = Path(environ["PROMETHEUS_MULTIPROC_DIR"])
        # 16 connections spread by the kernel: both processes counted some (all on one: a 2**-15 chance).
        assert {path.name for path in metrics_dir.glob("counter_*.db")} == {f"counter_{first}.db",
                                                                            f"counter_{second}.db"}

        os.kill(first, signal.SIGKILL)
        wait_until(lambda: first not in _children(server.pid) and len(_children(server.pid)) == 2, 30,
                   what="the killed process replaced")
        with connect(server.url) as ws:
            ws.send(json.dumps({"id": "after", "features": EXAMPLE}))
            assert json.loads(ws.recv(timeout=10))["id"] == "after"
        # The dead process's counts stay in the total.
        wait_until(lambda: stream_messages_counted(server) == 17, 10, what="counts kept across the restart")
        children = _children(server.pid)
        server.signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0, server.output()
        assert not any(os.path.exists(f"/proc/{child}") for child in children)
        assert not metrics_dir.exists()
