"""/health, /status, /metrics_summary and /openapi.json through the test client."""
from __future__ import annotations

from omni_mev.features import EXAMPLE_FEATURES

EXAMPLE = list(EXAMPLE_FEATURES)


def test_health_ok_with_model(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json()["model_type"] == "onnx"


def test_health_503_without_any_model(make_app, tmp_path):
    app = make_app(AI_MODEL_PATH=tmp_path / "missing.onnx")
    response = app.test_client().get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["error"] == "model_unavailable"
    assert "onnx: its file cannot be read" in body["message"] and "pytorch: its file cannot be read" in body["message"]
    assert str(tmp_path) not in body["message"]
    # Scoring says the same instead of failing obscurely.
    predict = app.test_client().post("/predict", json={"features": EXAMPLE})
    assert predict.status_code == 503 and predict.get_json()["error"] == "model_unavailable"


def test_status_fields_and_request_count(client):
    from omni_mev import metrics

    metrics.snapshot.reset()  # the counts are cached for a second: an earlier test's requests may be in flight
    before = client.get("/status").get_json()
    assert {"ai_engine", "mode", "model_type", "model_version", "redis_connected", "total_requests",
            "uptime_s"} <= before.keys()
    assert before["ai_engine"] == "online" and before["mode"] == "SIMULATION"
    assert before["redis_connected"] is False
    for _ in range(3):
        client.post("/predict", json={"features": EXAMPLE})
    client.post("/predict", json={"features": [1]})
    from omni_mev import metrics

    metrics.snapshot.reset()
    after = client.get("/status").get_json()
    assert after["total_requests"] - before["total_requests"] == 4


def test_live_mode_reported(make_app):
    app = make_app(LIVE_TRADING="true", RUST_ENGINE_URL="http://127.0.0.1:9")
    assert app.test_client().get("/status").get_json()["mode"] == "LIVE"


def test_metrics_summary(client):
    from omni_mev import metrics

    client.post("/predict", json={"features": EXAMPLE})
    client.post("/predict", json={"features": "bad"})
    metrics.snapshot.reset()
    body = client.get("/metrics_summary").get_json()
    assert body["requests"]["/predict"]["ok"] >= 1 and body["requests"]["/predict"]["invalid"] >= 1
    assert body["errors"] >= 1
    assert 0.0 <= body["last_confidence"] <= 1.0
    latency = body["inference_latency"]
    assert latency["count"] >= 1 and latency["p50_ms"] <= latency["p99_ms"]
    assert body["model_type"] == "onnx"


def test_openapi_describes_predict(client):
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    request_schema = doc["components"]["schemas"]["PredictRequest"]
    assert request_schema["properties"]["features"]["$ref"] == "#/components/schemas/FeatureVector"
    assert doc["components"]["schemas"]["FeatureVector"]["oneOf"][0]["minItems"] == 8
    assert {"/predict", "/predict/batch", "/health", "/v2/models/lstm_omni/infer"} <= set(doc["paths"])
    batch_items = doc["components"]["schemas"]["BatchRequest"]["properties"]["items"]
    assert batch_items["items"] == {"$ref": "#/components/schemas/PredictRequest"}
