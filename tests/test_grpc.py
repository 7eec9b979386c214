"""The KServe V2 gRPC service of `omni-mev stream` with the stock tritonclient.grpc: unary and streaming inference,
metadata, health, auth through metadata, and requests the protocol refuses."""
from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from omni_mev.training.export import random_raw_features
from tests.servers import StreamServer

KEY = "grpc-key-0123456789abc"


@pytest.fixture(scope="module")
def stream():
    with StreamServer() as server:
        yield server


def _client(server: StreamServer) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")


def _features(windows: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("features", list(windows.shape), "FP32")
    tensor.set_data_from_numpy(windows)
    return tensor


def _rest_answer(make_app, windows: np.ndarray) -> dict:
    body = {"inputs": [{"name": "features", "shape": list(windows.shape), "datatype": "FP32",
                        "data": windows.reshape(-1).tolist()}]}
    answer = make_app(AI_LEDGER_URL="off").test_client().post("/v2/models/lstm_omni/infer", json=body).get_json()
    return {o["name"]: o["data"] for o in answer["outputs"]}


def test_unary_inference_and_metadata(stream, make_app):
    client = _client(stream)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("lstm_omni")
    assert not client.is_model_ready("other")
    assert "binary_tensor_data" in client.get_server_metadata().extensions
    metadata = client.get_model_metadata("lstm_omni")
    assert [t.name for t in metadata.outputs] == ["confidence", "decision", "plausible"]
    windows = random_raw_features(np.random.default_rng(21), 6, 2).astype(np.float32)
    result = client.infer("lstm_omni", [_features(windows)])
    expected = _rest_answer(make_app, windows)
    assert np.array_equal(result.as_numpy("confidence").reshape(-1), np.array(expected["confidence"], np.float32))
    assert result.as_numpy("decision").reshape(-1).tolist() == expected["decision"]


def test_the_triton_stream_answers_in_order_and_survives_errors(stream, make_app):
    client = _client(stream)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        windows = [random_raw_features(np.random.default_rng(30 + i), 1, 1).astype(np.float32) for i in range(5)]
        for index, window in enumerate(windows):
            if index == 2:
                bad = triton_grpc.InferInput("features", [1, 7], "FP32")
                bad.set_data_from_numpy(np.ones((1, 7), np.float32))
                client.async_stream_infer("lstm_omni", [bad], request_id="bad")
            client.async_stream_infer("lstm_omni", [_features(window)], request_id=f"r{index}")
        received = [answers.get(timeout=10) for _ in range(6)]
    finally:
        client.stop_stream()
    errors = [error for _, error in received if error is not None]
    assert len(errors) == 1 and "shape" in str(errors[0])
    results = [result for result, error in received if error is None]
    assert [r.get_response().id for r in results] == [f"r{i}" for i in range(5)]
    for result, window in zip(results, windows):
        expected = _rest_answer(make_app, window)
        assert result.as_numpy("decision").reshape(-1).tolist() == expected["decision"]


@pytest.mark.parametrize("shape, datatype, data, code", [
    ([1, 7], "FP32", np.ones((1, 7), np.float32), "StatusCode.INVALID_ARGUMENT"),
    ([1, 8], "FP64", np.ones((1, 8), np.float64), "StatusCode.INVALID_ARGUMENT"),
    ([1, 8], "FP32", np.full((1, 8), np.nan, np.float32), "StatusCode.INVALID_ARGUMENT"),
])
def test_a_wrong_shape_datatype_or_value_is_invalid_argument(stream, shape, datatype, data, code):
    tensor = triton_grpc.InferInput("features", shape, datatype)
    tensor.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException) as refused:
        _client(stream).infer("lstm_omni", [tensor])
    assert refused.value.status() == code
    with pytest.raises(InferenceServerException) as unknown:
        _client(stream).infer("other", [_features(np.ones((1, 8), np.float32))])
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    assert _client(stream).is_server_live()  # still serving


def test_keys_travel_in_metadata_and_health_stays_open():
    with StreamServer({"AI_API_KEYS": KEY}) as server:
        windows = np.array([[10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]], np.float32)
        with pytest.raises(InferenceServerException) as refused:
            _client(server).infer("lstm_omni", [_features(windows)])
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        result = _client(server).infer("lstm_omni", [_features(windows)], headers={"authorization": f"Bearer {KEY}"})
        assert result.as_numpy("confidence").shape == (1, 1)
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            checked = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=5)
        assert checked.status == health_pb2.HealthCheckResponse.SERVING


def test_the_node_grpc_client(stream, make_app):
    import shutil
    import subprocess

    from tests.servers import ROOT

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    batch = [[10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0], [2.0, 1.006, 3, 0.3, 0.95, 0.2, 2, 1.0],
             [0.4, 1.001, 6, 0.9, 0.05, 0.1, 4, 0.2]]
    expected = _rest_answer(make_app, np.array(batch, np.float32))
    one = _rest_answer(make_app, np.array(batch[:1], np.float32))
    version = make_app(AI_LEDGER_URL="off").test_client().get("/status").get_json()["model_version"]
    printed = subprocess.run([node, str(ROOT / "examples" / "node" / "grpc.mjs"), f"127.0.0.1:{stream.grpc_port}"],
                             capture_output=True, text=True, timeout=30)
    assert printed.returncode == 0, printed.stderr
    decisions = ", ".join(str(d).lower() for d in expected["decision"])
    assert printed.stdout.splitlines() == [
        f"grpc: id=1 decision={str(one['decision'][0]).lower()} confidence={one['confidence'][0]:.6f} "
        f"model=lstm_omni/{version}",
        f"grpc stream: id=2 decisions=[{str(one['decision'][0]).lower()}]",
        f"grpc stream: id=3 decisions=[{decisions}]",
    ]


def test_the_node_clients_descriptor_is_the_services():
    from omni_mev.stream import kserve
    from tests.servers import ROOT

    assert (ROOT / "examples" / "node" / "grpc_service.desc").read_bytes() == kserve.descriptor_set(), (
        "regenerate it: python -m omni_mev.stream.kserve > examples/node/grpc_service.desc")


def test_sigterm_answers_the_message_in_hand_then_ends_streams_with_a_retryable_status():
    """A drain: every message answered before SIGTERM stays answered, then the stream ends at once with UNAVAILABLE
    (which gRPC clients retry) rather than at the grace's end, cancelled; the process exits 0 and logs no
    traceback."""
    import signal

    with StreamServer() as server:
        client = _client(server)
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            window = random_raw_features(np.random.default_rng(40), 1, 1).astype(np.float32)
            for index in range(3):
                client.async_stream_infer("lstm_omni", [_features(window)], request_id=f"m{index}")
            received = [answers.get(timeout=10) for _ in range(3)]
            server.signal(signal.SIGTERM)
            _, ended = answers.get(timeout=10)
        finally:
            client.stop_stream()
        assert [result.get_response().id for result, _ in received] == ["m0", "m1", "m2"]
        assert ended.status() == "StatusCode.UNAVAILABLE" and "shutting down" in ended.message()
        assert server.proc.wait(10) == 0
        assert "Traceback" not in server.output() and "CancelledError" not in server.output()
