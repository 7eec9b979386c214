"""POST /predict through the Flask test client: answers, and every kind of bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest

from omni_mev.features import EXAMPLE_FEATURES, FEATURE_NAMES
from omni_mev.runtime.onnx_runtime import OnnxModel

EXAMPLE = list(EXAMPLE_FEATURES)
RESPONSE_FIELDS = {"decision", "confidence", "threshold", "mode", "inference_time_ms", "model_type", "model_version"}


@pytest.fixture(scope="module")
def reference_model():
    """The shipped ONNX model, loaded outside the service, to check its answers."""
    from tests.conftest import MODELS

    model = OnnxModel(MODELS / "lstm_omni.onnx")
    model.load()
    return model


def test_example_vector_scored(client, reference_model):
    response = client.post("/predict", json={"features": EXAMPLE})
    assert response.status_code == 200
    body = response.get_json()
    assert RESPONSE_FIELDS <= body.keys()
    expected = float(reference_model.predict(np.array([[EXAMPLE]], np.float32))[0])
    assert body["confidence"] == pytest.approx(expected, abs=1e-6)
    assert body["decision"] is (body["confidence"] >= 0.78)
    assert body["threshold"] == 0.78
    assert body["mode"] == "SIMULATION"
    assert body["model_type"] == "onnx"
    assert body["model_version"] == reference_model.version
    assert body["inference_time_ms"] > 0


def test_object_form_equals_list_form(client):
    as_list = client.post("/predict", json={"features": EXAMPLE}).get_json()
    as_object = client.post("/predict", json={"features": dict(zip(FEATURE_NAMES, EXAMPLE))}).get_json()
    assert as_object["confidence"] == as_list["confidence"]


def test_history_changes_the_score_and_is_ordered(client, reference_model):
    history = [[v * (1 + 0.1 * k) if i in (0, 4) else v for i, v in enumerate(EXAMPLE)] for k in range(5)]
    history = [[*h[:4], min(h[4], 1.0), 0.45 + 0.01 * k, *h[6:]] for k, h in enumerate(history)]
    body = client.post("/predict", json={"features": EXAMPLE, "history": history}).get_json()
    expected = reference_model.predict(np.array([[*history, EXAMPLE]], np.float32))[0]
    reversed_order = reference_model.predict(np.array([[*history[::-1], EXAMPLE]], np.float32))[0]
    assert body["confidence"] == pytest.approx(float(expected), abs=1e-6)
    assert abs(expected - reversed_order) > 1e-6  # order matters, so the service must keep it
    single = client.post("/predict", json={"features": EXAMPLE}).get_json()
    assert single["confidence"] != body["confidence"]


def test_threshold_setting_drives_decision(make_app):
    low = make_app(AI_THRESHOLD=0.0).test_client().post("/predict", json={"features": EXAMPLE}).get_json()
    high = make_app(AI_THRESHOLD=1.0).test_client().post("/predict", json={"features": EXAMPLE}).get_json()
    assert (low["decision"], low["threshold"]) == (True, 0.0)
    assert (high["decision"], high["threshold"]) == (False, 1.0)


def test_opportunity_id_echoed(client):
    body = client.post("/predict", json={"features": EXAMPLE, "opportunity_id": "opp-42"}).get_json()
    assert body["opportunity_id"] == "opp-42"


def test_large_but_physical_values_accepted(client):
    big = [5000.0, 1.2, 6, 2.0, 1.0, 0.0, 4, 100.0]
    response = client.post("/predict", json={"features": big})
    assert response.status_code == 200
    assert 0.0 <= response.get_json()["confidence"] <= 1.0


def _error(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) >= {"error", "message"} and body["message"]
    return body


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (2, 3.5),  # route_complexity must be an integer
        (2, 7),  # route_complexity 2..6
        (6, 0),  # dex_count 1..4
        (4, 1.5),  # confidence_score in [0, 1]
        (5, -0.1),  # time_of_day in [0, 1]
        (0, -1.0),  # amounts are non-negative
        (7, -2.0),
        (1, "1.01"),  # strings are not numbers
        (3, True),  # nor are booleans
        (3, None),
    ],
)
def test_bad_feature_named(client, index, value):
    features = list(EXAMPLE)
    features[index] = value
    body = _error(client.post("/predict", json={"features": features}), 422)
    assert body["error"] == "validation_error"
    assert list(body["fields"]) == [f"features.{FEATURE_NAMES[index]}"]


def test_every_bad_field_reported_at_once(client):
    features = dict(zip(FEATURE_NAMES, EXAMPLE), dex_count=9, time_of_day=2)
    body = _error(client.post("/predict", json={"features": features, "history": [EXAMPLE, [1]]}), 422)
    assert set(body["fields"]) == {"features.dex_count", "features.time_of_day", "history.1"}


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_rejected(client, literal):
    raw = f'{{"features": [{literal}, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]}}'
    body = _error(client.post("/predict", data=raw, content_type="application/json"), 400)
    assert "JSON" in body["message"]


def test_overflowing_number_rejected(client):
    raw = '{"features": [1e999, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]}'
    response = client.post("/predict", data=raw, content_type="application/json")
    assert response.status_code in (400, 422)
    assert response.is_json


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"features": EXAMPLE[:7]}, "features"),
        ({"features": EXAMPLE + [1.0]}, "features"),
        ({"features": "10.5,1.012"}, "features"),
        ({}, "features"),
        ({"features": dict(zip(FEATURE_NAMES[:7], EXAMPLE))}, "features.input_amount_thousands"),
        ({"features": {**dict(zip(FEATURE_NAMES, EXAMPLE)), "gas": 1}}, "features.gas"),
        ({"features": EXAMPLE, "history": [EXAMPLE] * 32}, "history"),
        ({"features": EXAMPLE, "opportunity_id": "x" * 129}, "opportunity_id"),
        ({"features": EXAMPLE, "opportunity_id": 5}, "opportunity_id"),
        ({"features": EXAMPLE, "feature": EXAMPLE}, "feature"),
    ],
)
def test_schema_violations(client, payload, field):
    body = _error(client.post("/predict", json=payload), 422)
    assert field in body["fields"]


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2, 3]", b'"text"', b"", b"{"])
def test_not_a_json_object(client, raw):
    body = _error(client.post("/predict", data=raw, content_type="application/json"), 400)
    assert body["error"] == "bad_request"


def test_json_without_content_type_accepted(client):
    response = client.post("/predict", data='{"features": [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]}')
    assert response.status_code == 200


def test_body_over_limit(make_app):
    client = make_app(AI_MAX_BODY_BYTES=2048).test_client()
    body = _error(client.post("/predict", json={"features": EXAMPLE, "opportunity_id": "x" * 4000}), 413)
    assert body["error"] == "payload_too_large"


def test_wrong_method_and_unknown_route(client):
    body = _error(client.get("/predict"), 405)
    assert "POST" in body["message"]
    _error(client.post("/health"), 405)
    body = _error(client.get("/nowhere"), 404)
    assert body["error"] == "not_found"


def test_unexpected_failure_is_json_without_trace(make_app, monkeypatch):
    app = make_app()
    predictor = app.extensions["omni_mev.predictor"]
    monkeypatch.setattr(predictor, "predict", lambda opportunity: 1 / 0)
    response = app.test_client().post("/predict", json={"features": EXAMPLE})
    body = _error(response, 500)
    assert "Traceback" not in response.get_data(as_text=True)
    assert body["error"] == "internal_error"


def test_confidence_is_a_probability(client):
    rng = np.random.default_rng(0)
    for _ in range(20):
        features = [float(rng.uniform(0, 500)), float(rng.uniform(0.95, 1.1)), int(rng.integers(2, 7)),
                    float(rng.uniform(0.1, 2)), float(rng.uniform()), float(rng.uniform()), int(rng.integers(1, 5)),
                    float(rng.uniform(0.1, 100))]
        confidence = client.post("/predict", json={"features": features}).get_json()["confidence"]
        assert 0.0 <= confidence <= 1.0 and math.isfinite(confidence)


def test_the_threshold_in_force_is_the_served_models_unless_set(make_app, model_copy):
    """A model's card carries its decision threshold: served unless AI_THRESHOLD is set; /predict and /status say
    which is in force, and where it comes from."""
    import json

    card_path = model_copy.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["thresholds"]["decision"] = 0.31
    card_path.write_text(json.dumps(card))
    own = make_app(AI_MODEL_PATH=str(model_copy)).test_client()
    status = own.get("/status").json
    assert (status["threshold"], status["threshold_source"]) == (0.31, "model card")
    answer = own.post("/predict", json={"features": [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]}).json
    assert answer["threshold"] == 0.31 and answer["decision"] is (answer["confidence"] >= 0.31)
    overridden = make_app(AI_MODEL_PATH=str(model_copy), AI_THRESHOLD="0.9").test_client().get("/status").json
    assert (overridden["threshold"], overridden["threshold_source"]) == (0.9, "AI_THRESHOLD")
    shipped = make_app().test_client().get("/status").json
    assert (shipped["threshold"], shipped["threshold_source"]) == (0.78, "model card")
