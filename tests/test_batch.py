"""POST /predict/batch through the test client: equal to single requests, sizes, errors."""
from __future__ import annotations

import numpy as np
import pytest

from omni_mev.features import FEATURE_NAMES
from omni_mev.training.export import random_raw_features


@pytest.fixture(scope="module")
def windows():
    return random_raw_features(np.random.default_rng(7), 40, 6)


def single(client, features, history=None):
    body = {"features": features}
    if history:
        body["history"] = history
    return client.post("/predict", json=body).get_json()


def test_batch_equals_single_requests_item_by_item(client, windows):
    items = []
    for k, window in enumerate(windows):
        length = k % 6  # histories of 0..5 earlier opportunities in one batch
        item = {"features": window[-1].tolist(), "opportunity_id": f"o{k}"}
        if length:
            item["history"] = window[-1 - length:-1].tolist()
        items.append(item)
    response = client.post("/predict/batch", json={"items": items})
    assert response.status_code == 200
    body = response.get_json()
    assert body["count"] == len(items) and len(body["results"]) == len(items)
    for item, result in zip(items, body["results"]):
        expected = single(client, item["features"], item.get("history"))
        assert result["confidence"] == expected["confidence"]
        assert result["decision"] == expected["decision"]
        assert result["opportunity_id"] == item["opportunity_id"]
    assert body["model_type"] == "onnx" and body["mode"] == "SIMULATION"


def test_object_form_items_and_plain_lists_agree(client, windows):
    as_lists = [{"features": w[-1].tolist()} for w in windows[:5]]
    as_objects = [{"features": dict(zip(FEATURE_NAMES, w[-1].tolist()))} for w in windows[:5]]
    a = client.post("/predict/batch", json={"items": as_lists}).get_json()["results"]
    b = client.post("/predict/batch", json={"items": as_objects}).get_json()["results"]
    assert [r["confidence"] for r in a] == [r["confidence"] for r in b]


def test_large_batch(client):
    x = random_raw_features(np.random.default_rng(1), 4096, 1)[:, 0, :]
    response = client.post("/predict/batch", json={"items": [{"features": row} for row in x.tolist()]})
    assert response.status_code == 200
    confidences = [r["confidence"] for r in response.get_json()["results"]]
    assert len(confidences) == 4096 and all(0.0 <= c <= 1.0 for c in confidences)


def test_over_the_limit_is_413(make_app):
    client = make_app(AI_MAX_BATCH_SIZE=10).test_client()
    item = {"features": [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]}
    assert client.post("/predict/batch", json={"items": [item] * 10}).status_code == 200
    response = client.post("/predict/batch", json={"items": [item] * 11})
    assert response.status_code == 413
    assert "AI_MAX_BATCH_SIZE" in response.get_json()["message"]


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"features": [10.5, 1.012, 3, 0.35, 0.87, 0.5, 9, 1.0]}, "items.2.features.dex_count"),
        ({"features": [10.5, 1.012, 3, 0.35, 0.87, 0.5, True, 1.0]}, "items.2.features.dex_count"),
        ({"features": [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2]}, "items.2.features"),
        ({"features": [10.5, 1.012, 3, 0.35, "x", 0.5, 2, 1.0]}, "items.2.features.confidence_score"),
        ({"feature": [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]}, "items.2.feature"),
        ({"features": [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0], "opportunity_id": 7}, "items.2.opportunity_id"),
        ({"features": [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0], "history": [[1]]}, "items.2.history.0"),
        ([1, 2, 3], "items.2"),
    ],
)
def test_one_bad_item_names_index_and_field_and_nothing_is_scored(client, bad, field):
    from omni_mev import metrics

    good = {"features": [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]}
    before = metrics.INFERENCE_LATENCY_MS._sum.get()
    response = client.post("/predict/batch", json={"items": [good, good, bad, good]})
    assert response.status_code == 422
    body = response.get_json()
    assert field in body["fields"], body
    assert metrics.INFERENCE_LATENCY_MS._sum.get() == before  # the model never ran


@pytest.mark.parametrize("body", [{}, {"items": []}, {"items": "x"}, {"items": {"features": [1]}}])
def test_bad_envelope(client, body):
    response = client.post("/predict/batch", json=body)
    assert response.status_code == 422 and "items" in response.get_json()["fields"]
