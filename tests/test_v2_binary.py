"""The binary tensor data extension on V2 REST: the stock tritonclient.http with its defaults (binary in and out)
against the real gunicorn, and requests whose binary part does not match their JSON."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from omni_mev.training.export import random_raw_features
from tests.servers import Gunicorn

INFER = "/v2/models/lstm_omni/infer"
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def service():
    with Gunicorn(workers=1) as server:
        yield server


def _client(service) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(service.url.removeprefix("http://"))


def _json_answer(service, windows: np.ndarray) -> dict:
    status, body, _ = service.post(INFER, {"inputs": [{"name": "features", "shape": list(windows.shape),
                                                       "datatype": "FP32", "data": windows.reshape(-1).tolist()}]})
    assert status == 200, body
    return {o["name"]: o["data"] for o in body["outputs"]}


def test_the_stock_client_works_with_its_defaults(service):
    windows = random_raw_features(np.random.default_rng(11), 5, 3).astype(np.float32)
    features = triton_http.InferInput("features", list(windows.shape), "FP32")
    features.set_data_from_numpy(windows)  # binary_data=True by default
    ids = triton_http.InferInput("opportunity_id", [5], "BYTES")
    ids.set_data_from_numpy(np.array([f"bin-{i}".encode() for i in range(5)], dtype=object))
    client = _client(service)
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    result = client.infer("lstm_omni", [features, ids])  # no outputs named: all of them in binary
    response = result.get_response()
    assert all("data" not in o and o["parameters"]["binary_data_size"] > 0 for o in response["outputs"])
    expected = _json_answer(service, windows)
    assert np.array_equal(result.as_numpy("confidence").reshape(-1), np.array(expected["confidence"], np.float32))
    assert result.as_numpy("decision").reshape(-1).tolist() == expected["decision"]
    assert result.as_numpy("plausible").reshape(-1).tolist() == expected["plausible"]


def test_each_output_may_be_asked_for_in_json_or_binary(service):
    windows = random_raw_features(np.random.default_rng(12), 2, 1).astype(np.float32)
    features = triton_http.InferInput("features", list(windows.shape), "FP32")
    features.set_data_from_numpy(windows)
    outputs = [triton_http.InferRequestedOutput("confidence", binary_data=False),
               triton_http.InferRequestedOutput("decision", binary_data=True)]
    result = _client(service).infer("lstm_omni", [features], outputs=outputs)
    confidence, decision = result.get_response()["outputs"]
    assert "data" in confidence and "data" not in decision
    assert result.as_numpy("decision").reshape(-1).tolist() == _json_answer(service, windows)["decision"]


def _body(features: bytes, shape: list[int], extra: bytes = b"", size: int | None = None) -> tuple[bytes, dict]:
    head = (b'{"inputs":[{"name":"features","datatype":"FP32","shape":%s,"parameters":{"binary_data_size":%d}}]}'
            % (str(shape).replace(" ", "").encode(), len(features) if size is None else size))
    return head + features + extra, {HEADER: str(len(head))}


@pytest.mark.parametrize("case, message", [
    ("short", "needs 32 bytes"),
    ("trailing", "no input's binary_data_size accounts for"),
    ("nan", "invalid values"),
    ("header past the body", "the body has"),
    ("header not a number", "is not a number"),
    ("wrong size for the shape", "needs 32"),
])
def test_a_binary_part_that_does_not_match_its_json_is_400(client, case, message):
    row = np.array([10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0], "<f4").tobytes()
    body, headers = {
        "short": lambda: _body(row[:-4], [1, 8], size=32),
        "trailing": lambda: _body(row, [1, 8], extra=b"\0\0\0\0"),
        "nan": lambda: _body(np.array([np.nan] + [1.0] * 7, "<f4").tobytes(), [1, 8]),
        "header past the body": lambda: (_body(row, [1, 8])[0], {HEADER: "100000"}),
        "header not a number": lambda: (_body(row, [1, 8])[0], {HEADER: "x"}),
        "wrong size for the shape": lambda: _body(row + row[:8], [1, 8]),
    }[case]()
    response = client.post(INFER, data=body, headers=headers)
    assert response.status_code == 400 and list(response.get_json()) == ["error"]
    assert message in response.get_json()["error"], response.get_json()


def test_binary_ids_must_be_well_formed_bytes(client):
    row = np.array([10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0], "<f4").tobytes()
    for ids, message in ((struct.pack("<I", 10) + b"abc", "ends inside element 0"),
                         (struct.pack("<I", 2) + b"\xff\xfe", "not UTF-8")):
        head = (b'{"inputs":[{"name":"features","datatype":"FP32","shape":[1,8],"parameters":{"binary_data_size":32}},'
                b'{"name":"opportunity_id","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":%d}}]}'
                % len(ids))
        response = client.post(INFER, data=head + row + ids, headers={HEADER: str(len(head))})
        assert response.status_code == 400 and message in response.get_json()["error"], response.get_json()


def test_an_input_without_data_is_named(client):
    response = client.post(INFER, json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8]}]})
    assert response.status_code == 400 and "Input 'features' has no data" in response.get_json()["error"]


def test_the_stock_client_reports_the_servers_error(service):
    features = triton_http.InferInput("features", [1, 7], "FP32")
    features.set_data_from_numpy(np.ones((1, 7), np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        _client(service).infer("lstm_omni", [features])
