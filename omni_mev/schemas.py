"""Marshmallow schemas of the API: validation of requests, and the OpenAPI description."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from omni_mev.errors import ValidationFailed
from omni_mev.features import FEATURE_BOUNDS, FEATURE_NAMES, MAX_HISTORY, N_FEATURES

FeatureValues = list[float]


def _describe(lo: float | None, hi: float | None, integer: bool) -> str:
    what = "an integer" if integer else "a number"
    if lo is not None and hi is not None:
        return f"{what} from {lo:g} to {hi:g}"
    if lo is not None:
        return f"{what} of at least {lo:g}"
    return what


# (name, minimum, maximum, integer, message) per feature, in order: the hot path
# walks this tuple once per vector.
_RULES = tuple(
    (name, b.minimum, b.maximum, b.integer, f"Must be {_describe(b.minimum, b.maximum, b.integer)}.")
    for name, b in FEATURE_BOUNDS.items()
)
_KNOWN = frozenset(FEATURE_NAMES)


def check_value(value: Any, lo: float | None, hi: float | None, integer: bool) -> bool:
    """Whether one feature value is acceptable: a finite number within bounds."""
    if value.__class__ is bool or not isinstance(value, (int, float)):
        return False
    if not math.isfinite(value):
        return False
    if integer and value != int(value):
        return False
    return (lo is None or value >= lo) and (hi is None or value <= hi)


class FeatureVector(fields.Field):
    """8 finite numbers: a list in feature order, or an object keyed by feature name."""

    default_error_messages = {
        "type": "Must be a list of 8 numbers or an object keyed by feature name.",
        "length": f"Must hold exactly {N_FEATURES} numbers ({', '.join(FEATURE_NAMES)}); got {{got}}.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs) -> FeatureValues:
        return parse_vector(value, self.error_messages)


def parse_vector(value: Any, messages: Mapping[str, str] = FeatureVector.default_error_messages) -> FeatureValues:
    """Validate one vector; raise ValidationError naming each bad feature."""
    if value.__class__ is list:
        if len(value) != N_FEATURES:
            raise ValidationError(messages["length"].format(got=len(value)))
        values = value
        errors: dict[str, list[str]] = {}
    elif isinstance(value, dict):
        errors = {k: ["Unknown feature."] for k in value if k not in _KNOWN}
        errors.update({n: ["Missing feature."] for n in FEATURE_NAMES if n not in value})
        if errors:
            raise ValidationError(errors)
        values = [value[n] for n in FEATURE_NAMES]
    else:
        raise ValidationError(messages["type"])
    for v, (name, lo, hi, integer, message) in zip(values, _RULES):
        if not check_value(v, lo, hi, integer):
            errors[name] = [message]
    if errors:
        raise ValidationError(errors)
    return [float(v) for v in values]


class PredictRequestSchema(Schema):
    """Body of POST /predict."""

    features = FeatureVector(required=True, metadata={"description": "the opportunity to score"})
    history = fields.List(
        FeatureVector(),
        load_default=list,
        validate=validate.Length(max=MAX_HISTORY),
        metadata={"description": f"up to {MAX_HISTORY} earlier opportunities of the stream, oldest first"},
    )
    opportunity_id = fields.String(
        validate=validate.Length(min=1, max=128),
        metadata={"description": "caller's id; idempotency key of a live dispatch"},
    )
    dispatch = fields.Boolean(
        load_default=True, metadata={"description": "false: never dispatch this one, even in LIVE mode"}
    )


class ExecutionSchema(Schema):
    """What happened to a live dispatch."""

    status = fields.String(
        required=True, validate=validate.OneOf(["dispatched", "rejected", "failed", "timeout", "skipped"])
    )
    reason = fields.String()
    engine_status = fields.Integer()


class PredictResponseSchema(Schema):
    """Body of a successful POST /predict."""

    decision = fields.Boolean(required=True, metadata={"description": "confidence >= threshold"})
    confidence = fields.Float(required=True, metadata={"description": "calibrated success probability"})
    threshold = fields.Float(required=True)
    mode = fields.String(required=True, validate=validate.OneOf(["SIMULATION", "LIVE"]))
    inference_time_ms = fields.Float(required=True, metadata={"description": "model time of this request"})
    model_type = fields.String(required=True, validate=validate.OneOf(["onnx", "pytorch"]))
    model_version = fields.String(required=True)
    cached = fields.Boolean(metadata={"description": "true when served from the Redis cache"})
    opportunity_id = fields.String()
    execution = fields.Nested(ExecutionSchema)


class ErrorSchema(Schema):
    """Body of every error response."""

    error = fields.String(required=True, metadata={"description": "machine-readable code"})
    message = fields.String(required=True, metadata={"description": "human-readable sentence"})
    fields_ = fields.Dict(data_key="fields", metadata={"description": "bad field -> messages"})


def flatten_messages(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """Marshmallow's nested messages as {"history.2.dex_count": [...]}."""
    if isinstance(messages, dict):
        flat: dict[str, list[str]] = {}
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            flat.update(flatten_messages(value, name))
        return flat
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return {prefix or "body": messages}
    return {prefix or "body": [str(messages)]}


def load_or_raise(schema: Schema, data: Any) -> dict[str, Any]:
    """schema.load(data), turning ValidationError into the API's 422."""
    try:
        return schema.load(data)
    except ValidationError as error:
        flat = flatten_messages(error.messages)
        names = ", ".join(sorted(flat))
        plural = "field is" if len(flat) == 1 else "fields are"
        raise ValidationFailed(f"{len(flat)} {plural} invalid: {names}", fields=flat) from None
