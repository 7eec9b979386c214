"""The Open Inference Protocol (KServe V2) REST API through the test client."""
from __future__ import annotations

import numpy as np
import pytest

from omni_mev.training.export import random_raw_features

EXAMPLE = [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]
INFER = "/v2/models/lstm_omni/infer"


def features_input(shape, data, datatype="FP32", name="features"):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def test_server_metadata_and_health(client):
    assert client.get("/v2").get_json() == {"name": "omni-mev", "version": "1.0.0", "extensions": ["binary_tensor_data"]}
    live, ready = client.get("/v2/health/live"), client.get("/v2/health/ready")
    # KServe's client reads the body; Triton's the status.
    assert (live.status_code, live.get_json(), ready.status_code, ready.get_json()) == (
        200, {"live": True}, 200, {"ready": True})


def test_model_metadata_and_versions(client):
    meta = client.get("/v2/models/lstm_omni").get_json()
    version = client.get("/status").get_json()["model_version"]
    assert meta["name"] == "lstm_omni" and meta["versions"] == [version] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, -1, 8]}]
    assert {o["name"] for o in meta["outputs"]} == {"confidence", "decision", "plausible"}
    assert client.get(f"/v2/models/lstm_omni/versions/{version}").get_json() == meta
    model_ready = client.get("/v2/models/lstm_omni/ready")
    assert (model_ready.status_code, model_ready.get_json()) == (200, {"name": "lstm_omni", "ready": True})
    assert client.get(f"/v2/models/lstm_omni/versions/{version}/ready").status_code == 200
    missing = client.get("/v2/models/lstm_omni/versions/000000000000")
    assert missing.status_code == 404 and "000000000000" in missing.get_json()["error"]
    other = client.get("/v2/models/resnet")
    assert other.status_code == 404 and set(other.get_json()) == {"error"}


def test_infer_flat_and_nested_match_predict(client):
    windows = random_raw_features(np.random.default_rng(4), 3, 4)
    flat = client.post(INFER, json={"id": "42", "inputs": [features_input([3, 4, 8], windows.reshape(-1).tolist())]})
    nested = client.post(INFER, json={"inputs": [features_input([3, 4, 8], windows.tolist())]})
    assert flat.status_code == nested.status_code == 200
    a, b = flat.get_json(), nested.get_json()
    assert a["id"] == "42" and a["model_name"] == "lstm_omni"
    confidence = next(o for o in a["outputs"] if o["name"] == "confidence")
    assert confidence["shape"] == [3, 1] and confidence["datatype"] == "FP32"
    assert confidence["data"] == next(o for o in b["outputs"] if o["name"] == "confidence")["data"]
    for window, value in zip(windows, confidence["data"]):
        expected = client.post("/predict", json={"features": window[-1].tolist(),
                                                 "history": window[:-1].tolist()}).get_json()["confidence"]
        assert value == expected
    decision = next(o for o in a["outputs"] if o["name"] == "decision")
    assert decision["datatype"] == "BOOL" and decision["data"] == [c >= 0.78 for c in confidence["data"]]


def test_infer_two_dimensional_shape_and_output_selection(client):
    body = client.post(INFER, json={"inputs": [features_input([2, 8], EXAMPLE + EXAMPLE)],
                                    "outputs": [{"name": "decision"}]}).get_json()
    assert [o["name"] for o in body["outputs"]] == ["decision"] and body["outputs"][0]["shape"] == [2, 1]


@pytest.mark.parametrize(
    ("request_body", "fragment"),
    [
        ({"inputs": [features_input([1, 8], EXAMPLE, datatype="INT64")]}, "datatype 'INT64'"),
        ({"inputs": [features_input([1, 8], EXAMPLE, datatype="FP64")]}, "must be 'FP32'"),
        ({"inputs": [features_input([8], EXAMPLE)]}, "shape [8]"),
        ({"inputs": [features_input([1, 7], EXAMPLE[:7])]}, "shape [1, 7]"),
        ({"inputs": [features_input([2, 8], EXAMPLE)]}, "holds 8 values; shape [2, 8] needs 16"),
        ({"inputs": [features_input([1, 1, 8], [EXAMPLE, EXAMPLE])]}, "nested as [2, 8]"),
        ({"inputs": [features_input([1, 8], EXAMPLE[:7] + ["x"])]}, "numbers only"),
        ({"inputs": [features_input([1, 8], EXAMPLE[:6] + [9, 1.0])]}, "dex_count"),
        ({"inputs": [features_input([1, 40, 8], [EXAMPLE] * 40)]}, "sequence length 40"),
        ({"inputs": []}, "inputs"),
        ({}, "inputs"),
        ({"inputs": [features_input([1, 8], EXAMPLE, name="x")]}, "Unknown input 'x'"),
        ({"inputs": [features_input([1, 8], EXAMPLE)] * 2}, "given 2 times"),
        ({"inputs": [features_input([1, 8], EXAMPLE)], "outputs": [{"name": "logits"}]}, "Unknown output 'logits'"),
        ({"inputs": [{"name": "features", "datatype": "FP32", "data": EXAMPLE}]}, "shape"),
    ],
)
def test_bad_requests_are_400_with_a_clear_error(client, request_body, fragment):
    response = client.post(INFER, json=request_body)
    assert response.status_code == 400
    body = response.get_json()
    assert set(body) == {"error"} and fragment in body["error"], body


def test_not_json_is_400_in_protocol_shape(client):
    response = client.post(INFER, data=b"{", content_type="application/json")
    assert response.status_code == 400 and set(response.get_json()) == {"error"}


def test_not_ready_without_a_model(make_app, tmp_path):
    client = make_app(AI_MODEL_PATH=tmp_path / "none.onnx").test_client()
    assert client.get("/v2/health/live").status_code == 200
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 400 and "onnx: its file cannot be read" in ready.get_json()["error"]
    infer = client.post(INFER, json={"inputs": [features_input([1, 8], EXAMPLE)]})
    assert infer.status_code == 503 and set(infer.get_json()) == {"error"}
