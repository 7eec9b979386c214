"""Marshmallow schemas of the API: validation of requests, and the OpenAPI description."""
from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any

import numpy as np
from marshmallow import Schema, ValidationError, fields, post_load, validate, validates, validates_schema

from omni_mev.errors import ValidationFailed
from omni_mev.features import FEATURE_BOUNDS, FEATURE_NAMES, FLOAT32_MAX, MAX_HISTORY, N_FEATURES, FeatureBounds
from omni_mev.ledger.store import OBSERVED_AT_SKEW_S, Outcome
from omni_mev.plausibility import CHECKS
from omni_mev.predictor import Opportunity, OpportunityBatch
from omni_mev.trading.outbox import EXECUTION_STATUSES

FeatureValues = list[float]


def _describe(bounds: FeatureBounds) -> str:
    what = "an integer" if bounds.integer else "a number"
    if bounds.maximum is not None:
        return f"{what} from {bounds.minimum:g} to {bounds.maximum:g}"
    return f"{what} of at least {bounds.minimum:g} and at most {FLOAT32_MAX:.6g} (the largest float32)"


# (name, minimum, maximum, integer, message) per feature, in order: the hot path
# walks this tuple once per vector.
_RULES = tuple(
    (name, b.minimum, b.upper, b.integer, f"Must be {_describe(b)}.") for name, b in FEATURE_BOUNDS.items()
)
_KNOWN = frozenset(FEATURE_NAMES)
# The same rules as arrays, for validating many vectors at once.
_LOW = np.array([r[1] for r in _RULES])
_HIGH = np.array([r[2] for r in _RULES])
_INTEGER_COLUMNS = np.array([i for i, r in enumerate(_RULES) if r[3]])
NUMBER_TYPES = frozenset({int, float})
ID_MAX_LENGTH = 128


def valid_id(value: Any) -> bool:
    """An opportunity_id: a string of 1 to ID_MAX_LENGTH characters, without NUL (_storable_id)."""
    return value.__class__ is str and 0 < len(value) <= ID_MAX_LENGTH and "\x00" not in value


def _storable_id(value: str) -> None:
    """Every other character works end to end: the decision log, the ledger, the engine's Idempotency-Key."""
    if "\x00" in value:
        raise ValidationError("Must not contain the NUL character (U+0000): PostgreSQL cannot store it.")


ID_RULES: list[Callable[[Any], Any]] = [validate.Length(min=1, max=ID_MAX_LENGTH), _storable_id]
ID_PATTERN = "^[^\\u0000]*$"  # the same rule for the OpenAPI document


def check_value(value: Any, lo: float, hi: float, integer: bool) -> bool:
    """Whether one feature value is acceptable: a number within bounds (NaN and infinities never are)."""
    if value.__class__ is bool or not isinstance(value, (int, float)):
        return False
    if not lo <= value <= hi:  # False for NaN too; exact for integers of any size
        return False
    return not integer or value == int(value)


class FeatureVector(fields.Field[FeatureValues]):
    """8 finite numbers: a list in feature order, or an object keyed by feature name."""

    default_error_messages = {
        "type": "Must be a list of 8 numbers or an object keyed by feature name.",
        "length": f"Must hold exactly {N_FEATURES} numbers ({', '.join(FEATURE_NAMES)}); got {{got}}.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> FeatureValues:
        return parse_vector(value, self.error_messages)


def parse_vector(value: Any, messages: Mapping[str, Any] = FeatureVector.default_error_messages) -> FeatureValues:
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
        bad = ~((x >= _LOW) & (x <= _HIGH))  # NaN fails both comparisons, infinities one
        whole = x[:, _INTEGER_COLUMNS]
        bad[:, _INTEGER_COLUMNS] |= whole != np.floor(whole)
    if not bad.any():
        return []
    rows, columns = np.nonzero(bad)
    return [(int(r), _RULES[c][0], _RULES[c][4]) for r, c in zip(rows[:limit], columns[:limit])]


def float_values(values: list[Any]) -> np.ndarray | None:
    """A flat list of JSON numbers as float64; None if it holds anything but numbers and booleans.

    array.array rejects strings, nulls and out-of-range integers itself, and
    converts several times faster than np.array; booleans (ints to Python)
    are the caller's to look for.
    """
    try:
        return np.frombuffer(array("d", values), dtype=np.float64)
    except (TypeError, OverflowError):
        return None


def numeric_matrix(rows: Any, may_hold_booleans: bool = True) -> np.ndarray | None:
    """rows as a float64 [n, 8] array when every row is a list of 8 JSON numbers, else None.

    JSON booleans would pass for 1.0 and 0.0, so they are looked for, unless
    the caller knows the raw body holds no `true`/`false` at all.
    """
    if set(map(type, rows)) != {list} or set(map(len, rows)) != {N_FEATURES}:
        return None
    flat = list(chain.from_iterable(rows))
    if may_hold_booleans and not set(map(type, flat)) <= NUMBER_TYPES:
        return None
    values = float_values(flat)
    return None if values is None else values.reshape(-1, N_FEATURES)


class StrictBoolean(fields.Boolean):
    """JSON true or false, nothing else (marshmallow's Boolean also takes 0, 1, "yes", "on"...)."""

    default_error_messages = {"invalid": "Must be true or false."}

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> bool:
        if value.__class__ is not bool:
            raise self.make_error("invalid")
        return value


class StrictNumber(fields.Float):
    """A JSON number, nothing else (marshmallow's Float also takes "3.5" and true), as features are on /predict."""

    default_error_messages = {"invalid": "Must be a number."}

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> float:
        if value.__class__ is bool or not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class PredictRequestSchema(Schema):
    """Body of POST /predict; loads as an Opportunity."""

    features = FeatureVector(required=True, metadata={"description": "the opportunity to score"})
    history = fields.List(
        FeatureVector(),
        load_default=list,
        validate=validate.Length(max=MAX_HISTORY),
        metadata={"description": f"up to {MAX_HISTORY} earlier opportunities of the stream, oldest first"},
    )
    opportunity_id = fields.String(
        validate=ID_RULES,
        metadata={"description": f"caller's id, any string of 1 to {ID_MAX_LENGTH} characters but NUL; idempotency "
                                 "key of a live dispatch", "pattern": ID_PATTERN},
    )
    dispatch = StrictBoolean(
        load_default=True, metadata={"description": "false: never dispatch this one, even in LIVE mode"}
    )

    @post_load
    def _opportunity(self, data: dict[str, Any], **kwargs: Any) -> Opportunity:
        return Opportunity(**data)


ITEM_FIELDS = frozenset(PredictRequestSchema._declared_fields)
# The fields _valid_opportunity reads. A body with any other key goes to the schema: a field added to the
# schema but not here is then still validated and loaded, only slower (tests/test_schemas.py fails until it is
# added here too).
FAST_PATH_FIELDS = frozenset({"features", "history", "opportunity_id", "dispatch"})
_item_schema = PredictRequestSchema()
_ABSENT = object()


def _valid_opportunity(body: dict[str, Any]) -> Opportunity | None:
    """The body as an Opportunity when it is valid in its common shape, else None.

    The same rules as PredictRequestSchema, checked without marshmallow's
    machinery (~15 µs of a /predict); anything it does not accept, invalid
    bodies included, goes to the schema, which names what is wrong.
    """
    if not body.keys() <= FAST_PATH_FIELDS:
        return None
    try:
        features = parse_vector(body["features"])
        history = body.get("history", _ABSENT)
        if history is _ABSENT:
            history = []
        elif history.__class__ is list and len(history) <= MAX_HISTORY:
            history = [parse_vector(vector) for vector in history]
        else:
            return None
    except (KeyError, ValidationError):
        return None
    opportunity_id = body.get("opportunity_id", _ABSENT)
    if opportunity_id is _ABSENT:
        opportunity_id = None
    elif not valid_id(opportunity_id):
        return None
    dispatch = body.get("dispatch", True)
    if dispatch.__class__ is not bool:
        return None
    return Opportunity(features, history, opportunity_id, dispatch)


def load_opportunity(body: dict[str, Any]) -> Opportunity:
    """A /predict body as an Opportunity; ValidationFailed (422) naming every bad field otherwise."""
    opportunity = _valid_opportunity(body)
    if opportunity is not None:
        return opportunity
    loaded: Opportunity = load_or_raise(_item_schema, body)  # type: ignore[assignment]  # the schema's post_load
    return loaded


class BatchItems(fields.Field[OpportunityBatch]):
    """A list of /predict bodies, validated together.

    The common case (list-form features, no history) is checked with numpy in
    one pass; anything else goes item by item through PredictRequestSchema, so
    both paths enforce the same rules and name the same fields. numpy takes
    JSON booleans for 1.0 and 0.0, so the fast path types each value unless
    the schema was told that the raw body holds no `true`/`false` at all.
    """

    def __init__(self, *args: Any, may_hold_booleans: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.may_hold_booleans = may_hold_booleans

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None,
                     **kwargs: Any) -> OpportunityBatch:
        if value.__class__ is not list or not value:
            raise ValidationError("Must be a non-empty list of items, each shaped like a /predict body.")
        fast = self._fast(value, self.may_hold_booleans)
        return fast if fast is not None else self._item_by_item(value)

    @staticmethod
    def _fast(items: list[Any], may_hold_booleans: bool) -> OpportunityBatch | None:
        if not all(item.__class__ is dict for item in items):
            return None
        keys = set(chain.from_iterable(items))
        if "features" not in keys or "history" in keys or not keys <= FAST_PATH_FIELDS:
            return None
        try:
            rows = [item["features"] for item in items]
        except KeyError:
            return None
        x = numeric_matrix(rows, may_hold_booleans=may_hold_booleans)
        if x is None:
            return None
        errors = matrix_errors(x)
        if errors:
            messages: dict[int, dict[str, dict[str, list[str]]]] = {}
            for row, name, message in errors:
                messages.setdefault(row, {}).setdefault("features", {})[name] = [message]
            raise ValidationError(messages)
        ids: list[str | None] = [None] * len(items)
        dispatch = [True] * len(items)
        if "opportunity_id" in keys:
            if not all(valid_id(item["opportunity_id"]) for item in items if "opportunity_id" in item):
                return None
            ids = [item.get("opportunity_id") for item in items]
        if "dispatch" in keys:
            dispatch = [item.get("dispatch", True) for item in items]
            if not all(d.__class__ is bool for d in dispatch):
                return None
        return OpportunityBatch(x, None, ids, dispatch)

    @staticmethod
    def _item_by_item(items: list[Any]) -> OpportunityBatch:
        loaded: list[Opportunity] = []
        messages: dict[int, Any] = {}
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                messages[index] = ["Must be an object shaped like a /predict body."]
                continue
            try:
                loaded.append(_item_schema.load(item))
            except ValidationError as error:
                messages[index] = error.messages
        if messages:
            raise ValidationError(messages)
        histories = [o.history for o in loaded]
        return OpportunityBatch(
            np.array([o.features for o in loaded], dtype=np.float64),
            histories if any(histories) else None,
            [o.opportunity_id for o in loaded],
            [o.dispatch for o in loaded],
        )


class BatchRequestSchema(Schema):
    """Body of POST /predict/batch; `items` loads as an OpportunityBatch.

    body_has_booleans=False: the caller checked that the raw body holds no
    JSON `true`/`false`, which spares the per-value type check.
    """

    items = BatchItems(required=True, metadata={"description": "opportunities, each shaped like a /predict body"})

    def __init__(self, *args: Any, body_has_booleans: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["items"].may_hold_booleans = body_has_booleans  # type: ignore[attr-defined]  # BatchItems


# The answers. They are the OpenAPI document's source (omni_mev/openapi_spec.py), the fuzz test checks every answer
# the service gives against that document, and tests/test_schemas.py loads the encoders' answers with them.

class ExecutionSchema(Schema):
    """What happened to a live dispatch."""

    status = fields.String(required=True, validate=validate.OneOf(EXECUTION_STATUSES))
    reason = fields.String(metadata={"description": "why it was not sent, or what the engine said"})
    engine_status = fields.Integer(metadata={"description": "the execution engine's HTTP status"})
    latency_ms = fields.Float(validate=validate.Range(min=0), metadata={"description": "the engine's answer time"})


class ScoredItemSchema(Schema):
    """One scored opportunity: the fields a /predict answer and each batch result share."""

    decision = fields.Boolean(required=True, metadata={"description": "confidence >= threshold, unless refused "
                                                                      "(see reason)"})
    confidence = fields.Float(required=True, validate=validate.Range(min=0, max=1),
                              metadata={"description": "calibrated success probability, 6 decimals"})
    plausible = fields.Boolean(required=True, metadata={"description": "false: an opportunity the model cannot "
                                                                       "judge (docs/model.md)"})
    implausible = fields.List(fields.String(validate=validate.OneOf(CHECKS)), validate=validate.Length(min=1),
                              metadata={"description": "the plausibility checks this opportunity fails "
                                                       "(docs/model.md)"})
    reason = fields.String(metadata={"description": "why the decision is false whatever the confidence"})
    opportunity_id = fields.String()
    execution = fields.Nested(ExecutionSchema)


MODES = ("SIMULATION", "LIVE")
MODEL_TYPES = ("onnx", "pytorch")


class PredictResponseSchema(ScoredItemSchema):
    """Body of a successful POST /predict."""

    threshold = fields.Float(required=True, validate=validate.Range(min=0, max=1))
    mode = fields.String(required=True, validate=validate.OneOf(MODES))
    inference_time_ms = fields.Float(required=True, validate=validate.Range(min=0),
                                     metadata={"description": "model time of this request"})
    model_type = fields.String(required=True, validate=validate.OneOf(MODEL_TYPES))
    model_version = fields.String(required=True)
    cached = fields.Boolean(validate=validate.Equal(True),
                            metadata={"description": "present when served from the Redis cache"})


class BatchResponseSchema(Schema):
    """Body of a successful POST /predict/batch."""

    results = fields.List(fields.Nested(ScoredItemSchema), required=True,
                          metadata={"description": "results[i] answers items[i]"})
    count = fields.Integer(required=True, validate=validate.Range(min=1))
    threshold = fields.Float(required=True, validate=validate.Range(min=0, max=1))
    mode = fields.String(required=True, validate=validate.OneOf(MODES))
    inference_time_ms = fields.Float(required=True, validate=validate.Range(min=0))
    model_type = fields.String(required=True, validate=validate.OneOf(MODEL_TYPES))
    model_version = fields.String(required=True)


class ErrorSchema(Schema):
    """Body of every error response but the Open Inference Protocol's."""

    error = fields.String(required=True, metadata={"description": "machine-readable code"})
    message = fields.String(required=True, metadata={"description": "what is wrong, in a sentence"})
    fields_ = fields.Dict(keys=fields.String(), values=fields.List(fields.String()), data_key="fields",
                          metadata={"description": "bad field -> messages, e.g. features.dex_count"})


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
        loaded: dict[str, Any] = schema.load(data)
        return loaded
    except ValidationError as error:
        flat = flatten_messages(error.messages)
        names = ", ".join(sorted(flat))
        plural = "field is" if len(flat) == 1 else "fields are"
        raise ValidationFailed(f"{len(flat)} {plural} invalid: {names}", fields=flat) from None


class OutcomeSchema(Schema):
    """One realised outcome (POST /outcomes); loads as a ledger Outcome."""

    opportunity_id = fields.String(required=True, validate=ID_RULES,
                                   metadata={"description": "the id the opportunity was scored with",
                                             "pattern": ID_PATTERN})
    success = StrictBoolean(metadata={"description": "the trade landed and made a profit after gas; "
                                                     "required when executed"})
    executed = StrictBoolean(load_default=True,
                             metadata={"description": "false: the opportunity was not traded (no label)"})
    realised_pnl_usd = StrictNumber(allow_nan=False, validate=validate.Range(min=-1e12, max=1e12),
                                    metadata={"description": "profit or loss after gas, USD"})
    observed_at = fields.AwareDateTime(format="iso", metadata={
        "description": f"RFC 3339; default: when received; at most {OBSERVED_AT_SKEW_S:.0f} s ahead of the service's "
                       "clock (422 otherwise)"})

    @validates("observed_at")
    def _not_in_the_future(self, value: Any, **kwargs: Any) -> None:
        if value.timestamp() > time.time() + OBSERVED_AT_SKEW_S:
            raise ValidationError(f"Must not be in the future (more than {OBSERVED_AT_SKEW_S:.0f} s ahead of the "
                                  "service's clock).")

    @validates_schema
    def _labelled_when_executed(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("executed", True) and "success" not in data:
            raise ValidationError("Required when the opportunity was executed.", "success")
        if not data.get("executed", True) and data.get("success"):
            raise ValidationError("An opportunity that was not executed cannot have succeeded.", "success")

    @post_load
    def _outcome(self, data: dict[str, Any], **kwargs: Any) -> Outcome:
        observed = data.get("observed_at")
        executed = data.get("executed", True)
        return Outcome(data["opportunity_id"], executed, data.get("success") if executed else None,
                       data.get("realised_pnl_usd"), observed.timestamp() if observed else time.time())
