"""Validation rules: the /predict fast path accepts exactly what the marshmallow schema accepts."""
from __future__ import annotations

import random

import numpy as np
import pytest
from marshmallow import ValidationError

from omni_mev.features import EXAMPLE_FEATURES, FEATURE_NAMES, FLOAT32_MAX
from omni_mev.core.schemas import (BatchRequestSchema, PredictRequestSchema, _valid_opportunity, load_opportunity,
                              matrix_errors, numeric_matrix, parse_vector)

EXAMPLE = list(EXAMPLE_FEATURES)
ODD_VALUES = [None, True, False, "1.0", -1, 0, 1, 2.5, 7, 1e39, FLOAT32_MAX, 10**400, [], {}, "x" * 129, "", "id-1"]


def _mutated(rng: random.Random) -> dict:
    body: dict = {"features": list(EXAMPLE)}
    for _ in range(rng.randint(0, 3)):
        kind = rng.randrange(7)
        if kind == 0 and isinstance(body.get("features"), list) and len(body["features"]) == 8:
            body["features"][rng.randrange(8)] = rng.choice(ODD_VALUES)
        elif kind == 1:
            body["history"] = [list(EXAMPLE) for _ in range(rng.choice([0, 1, 3, 31, 32]))]
            if body["history"] and rng.random() < 0.5:
                body["history"][rng.randrange(len(body["history"]))][rng.randrange(8)] = rng.choice(ODD_VALUES)
        elif kind == 2:
            body["opportunity_id"] = rng.choice(ODD_VALUES)
        elif kind == 3:
            body["dispatch"] = rng.choice(ODD_VALUES)
        elif kind == 4:
            body[rng.choice(["feature", "label", "extra"])] = 1
        elif kind == 5:
            body["features"] = rng.choice([EXAMPLE[:7], EXAMPLE + [1.0], dict(zip(FEATURE_NAMES, EXAMPLE)), "x", None])
        elif kind == 6:
            body.pop("features", None)
    return body


def test_the_fast_path_reads_every_field_of_the_schema():
    """A field added to PredictRequestSchema must be read by the fast paths too (until then bodies carrying it
    go to the schema, so nothing is dropped)."""
    from omni_mev.core.schemas import FAST_PATH_FIELDS, ITEM_FIELDS

    assert ITEM_FIELDS == FAST_PATH_FIELDS
    body = {"features": list(EXAMPLE_FEATURES), "a_field_not_in_the_schema": 1}
    assert _valid_opportunity(body) is None  # not taken by the fast path: the schema names the unknown field
    with pytest.raises(Exception) as refused:
        load_opportunity(body)
    assert "a_field_not_in_the_schema" in str(getattr(refused.value, "fields", refused.value))


def test_fast_path_accepts_exactly_what_the_schema_accepts():
    rng = random.Random(11)
    schema = PredictRequestSchema()
    accepted_fast = 0
    for _ in range(3000):
        body = _mutated(rng)
        fast = _valid_opportunity(body)
        try:
            slow = schema.load(body)
        except ValidationError:
            assert fast is None, body
            continue
        if fast is not None:
            accepted_fast += 1
            assert fast == slow, body
        assert load_opportunity(body) == slow
    assert accepted_fast > 300  # the generator reaches the fast path


@pytest.mark.parametrize("value", [1e39, -1e39, 10**400, float("nan"), float("inf")])
def test_values_float32_cannot_hold_are_refused(value):
    vector = [value, *EXAMPLE[1:]]
    with pytest.raises(ValidationError) as raised:
        parse_vector(vector)
    assert list(raised.value.messages) == ["profit_usd"]
    if isinstance(value, float):
        assert [name for _, name, _ in matrix_errors(np.array([vector]))] == ["profit_usd"]


def test_largest_float32_accepted():
    assert parse_vector([FLOAT32_MAX, *EXAMPLE[1:]])[0] == FLOAT32_MAX


@pytest.mark.parametrize("rows", [[EXAMPLE, EXAMPLE[:7]], [EXAMPLE, "x"], [EXAMPLE, [*EXAMPLE[:7], "1"]],
                                  [EXAMPLE, [*EXAMPLE[:7], None]], [[*EXAMPLE[:7], 10**400]]])
def test_numeric_matrix_declines_what_is_not_eight_numbers(rows):
    assert numeric_matrix(rows) is None


def test_numeric_matrix_finds_booleans_unless_told_there_are_none():
    rows = [EXAMPLE, [*EXAMPLE[:7], True]]
    assert numeric_matrix(rows) is None
    assert numeric_matrix(rows, may_hold_booleans=False) is not None  # the caller's promise is trusted


def test_batch_schema_rejects_boolean_feature_and_null_id():
    schema = BatchRequestSchema()
    for items in ([{"features": [*EXAMPLE[:7], True]}], [{"features": EXAMPLE, "opportunity_id": None}],
                  [{"features": EXAMPLE, "dispatch": 0}]):
        with pytest.raises(ValidationError):
            schema.load({"items": items})


def _every_optional_prediction():
    from omni_mev.predictor import Prediction

    return Prediction(confidence=0.9, decision=False, model_type="onnx", model_version="v1", inference_ms=0.2,
                      opportunity_id="op-1", execution={"status": "dispatched", "engine_status": 200,
                                                        "reason": "accepted", "latency_ms": 3.2},
                      cached=True, implausible=("profit_usd",), refusal="implausible opportunity")


def test_the_response_schemas_describe_every_field_the_encoders_write():
    """The schemas are the OpenAPI source: an answer field they lack, or type differently, fails here."""
    import numpy as np

    from omni_mev.core.schemas import BatchResponseSchema, PredictResponseSchema
    from omni_mev.core.scoring import encode, encode_batch
    from omni_mev.predictor import BatchPrediction

    full = encode(_every_optional_prediction(), 0.78, "LIVE")
    assert {"execution", "cached", "implausible", "reason", "opportunity_id"} <= set(full)
    assert PredictResponseSchema().validate(full) == {}
    answers = BatchPrediction(np.array([0.9, 0.1], np.float32), np.array([False, False]), "onnx", "v1", 0.3,
                              ids=["a", None], implausible=[("history",), ()],
                              executions={0: {"status": "skipped", "reason": "refused"}}, refusals={0: "refused"})
    encoded = encode_batch(answers, 0.78, "SIMULATION")
    assert {"execution", "reason", "implausible", "opportunity_id"} <= set(encoded["results"][0])
    assert BatchResponseSchema().validate(encoded) == {}
    assert PredictResponseSchema().validate({**full, "undocumented": 1}) == {"undocumented": ["Unknown field."]}
