"""Marshmallow schemas of the API: validation of requests, and the OpenAPI description."""
from __future__ import annotations

import math
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
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
# The same rules as arrays, for validating many vectors at once.
_LOW = np.array([-np.inf if r[1] is None else r[1] for r in _RULES])
_HIGH = np.array([np.inf if r[2] is None else r[2] for r in _RULES])
_INTEGER = np.array([r[3] for r in _RULES])
NUMBER_TYPES = frozenset({int, float})


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


def matrix_errors(x: np.ndarray, limit: int = 50) -> list[tuple[int, str, str]]:
    """(row, feature, message) for each bad value of x [n, 8] (float64), at most `limit`."""
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(x) | (x < _LOW) | (x > _HIGH) | (_INTEGER & (x != np.floor(x)))
    if not bad.any():
        return []
    rows, columns = np.nonzero(bad)
    return [(int(r), _RULES[c][0], _RULES[c][4]) for r, c in zip(rows[:limit], columns[:limit])]


def numeric_matrix(rows: Any, may_hold_booleans: bool = True) -> np.ndarray | None:
    """rows as a float64 [n, 8] array when every row is a list of 8 JSON numbers, else None.

    JSON booleans would pass for 1.0 and 0.0 in numpy, so they are looked for,
    unless the caller knows the raw body holds no `true`/`false` at all.
    """
    try:
        x = np.array(rows)
    except ValueError:  # ragged
        return None
    if x.ndim != 2 or x.shape[1] != N_FEATURES or x.dtype.kind not in "fi":
        return None
    if may_hold_booleans and not set(map(type, chain.from_iterable(rows))) <= NUMBER_TYPES:
        return None
    return x.astype(np.float64, copy=False)


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


ITEM_FIELDS = frozenset(PredictRequestSchema._declared_fields)
# Set by a view that has checked the raw body for `true`/`false`: numpy would
# take JSON booleans for 1.0 and 0.0, so without that check each value is typed.
BODY_HAS_NO_BOOLEANS: ContextVar[bool] = ContextVar("body_has_no_booleans", default=False)
_item_schema = PredictRequestSchema()


@dataclass
class ParsedBatch:
    """A validated batch: current vectors, per-item histories, ids and dispatch flags."""

    features: np.ndarray  # [n, 8] float64
    histories: list[list[FeatureValues]] | None  # None when no item has a history
    ids: list[str | None]
    dispatch: list[bool]


class BatchItems(fields.Field):
    """A list of /predict bodies, validated together.

    The common case (list-form features, no history) is checked with numpy in
    one pass; anything else goes item by item through PredictRequestSchema, so
    both paths enforce the same rules and name the same fields.
    """

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs) -> ParsedBatch:
        if value.__class__ is not list or not value:
            raise ValidationError("Must be a non-empty list of items, each shaped like a /predict body.")
        fast = self._fast(value, BODY_HAS_NO_BOOLEANS.get())
        return fast if fast is not None else self._item_by_item(value)

    @staticmethod
    def _fast(items: list, no_booleans: bool) -> ParsedBatch | None:
        if not all(item.__class__ is dict for item in items):
            return None
        keys = set(chain.from_iterable(items))
        if "features" not in keys or "history" in keys or not keys <= ITEM_FIELDS:
            return None
        try:
            rows = [item["features"] for item in items]
        except KeyError:
            return None
        x = numeric_matrix(rows, may_hold_booleans=not no_booleans)
        if x is None:
            return None
        errors = matrix_errors(x)
        if errors:
            messages: dict[int, dict[str, dict[str, list[str]]]] = {}
            for row, name, message in errors:
                messages.setdefault(row, {}).setdefault("features", {})[name] = [message]
            raise ValidationError(messages)
        ids = [item.get("opportunity_id") for item in items] if "opportunity_id" in keys else [None] * len(items)
        dispatch = [item.get("dispatch", True) for item in items] if "dispatch" in keys else [True] * len(items)
        if "opportunity_id" in keys and not all(i is None or (i.__class__ is str and 0 < len(i) <= 128) for i in ids):
            return None
        if "dispatch" in keys and not all(d.__class__ is bool for d in dispatch):
            return None
        return ParsedBatch(x, None, ids, dispatch)

    @staticmethod
    def _item_by_item(items: list) -> ParsedBatch:
        loaded, messages = [], {}
        for index, item in enumerate(items):
            try:
                loaded.append(_item_schema.load(item) if isinstance(item, dict) else None)
                if loaded[-1] is None:
                    messages[index] = ["Must be an object shaped like a /predict body."]
            except ValidationError as error:
                messages[index] = error.messages
        if messages:
            raise ValidationError(messages)
        histories = [p["history"] for p in loaded]
        return ParsedBatch(
            np.array([p["features"] for p in loaded], dtype=np.float64),
            histories if any(histories) else None,
            [p.get("opportunity_id") for p in loaded],
            [p["dispatch"] for p in loaded],
        )


class BatchRequestSchema(Schema):
    """Body of POST /predict/batch."""

    items = BatchItems(required=True, metadata={"description": "opportunities, each shaped like a /predict body"})


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
