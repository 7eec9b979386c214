"""Scoring, whatever the transport: an opportunity or a batch decoded, scored and encoded, as /predict and
/predict/batch answer and as each stream message is answered."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import orjson

from omni_mev.core.answers import Later
from omni_mev.core.schemas import BatchRequestSchema, load_opportunity, load_or_raise
from omni_mev.errors import PayloadTooLarge
from omni_mev.jsonio import dumps
from omni_mev.predictor import BatchPrediction, Prediction, Predictor

CONFIDENCE_DECIMALS = 6
Answered = TypeVar("Answered", Prediction, BatchPrediction)

# Chosen per request by a scan of the raw body: without any `true`/`false` in
# it, no value can be a JSON boolean, and the per-value type check is skipped.
_SCHEMAS = {True: BatchRequestSchema(), False: BatchRequestSchema(body_has_booleans=False)}


def answer_when_dispatched(prediction: Answered, encode_as: Callable[[Answered], dict[str, Any]]
                           ) -> dict[str, Any] | Later:
    """The encoded answer; with dispatches still under way, an answer that waits for their outcomes (up to
    their one deadline) without holding what serves other requests."""
    pending = prediction.pending()
    if not pending:
        return encode_as(prediction)
    return Later([p.future for p in pending], pending[0].deadline, lambda: encode_as(prediction.settled()))


def score_one(predictor: Predictor, body: dict[str, Any], received_at: float | None = None,
              arrived_at: float | None = None) -> dict[str, Any] | Later:
    """One opportunity (a /predict body) scored; `received_at` and `arrived_at` start a LIVE order's deadline
    (omni_mev.trading)."""
    opportunity = load_opportunity(body)
    threshold, mode = predictor.threshold, predictor.settings.mode
    return answer_when_dispatched(predictor.predict(opportunity, received_at, arrived_at),
                                  lambda answered: encode(answered, threshold, mode))


def score_batch(predictor: Predictor, body: dict[str, Any], raw: bytes | str, received_at: float | None = None,
                arrived_at: float | None = None) -> dict[str, Any] | Later:
    """Many opportunities (a /predict/batch body, parsed from `raw`) scored; one result per item, in order."""
    items = body.get("items")
    if isinstance(items, list):
        check_batch_size(len(items), predictor.settings.max_batch_size)
    batch = load_or_raise(schema_for(raw), body)["items"]
    threshold, mode = predictor.threshold, predictor.settings.mode
    return answer_when_dispatched(predictor.predict_batch(batch, received_at, arrived_at),
                                  lambda answered: encode_batch(answered, threshold, mode))


def check_batch_size(count: int, limit: int) -> None:
    """413 before any validation work when a request holds too many items."""
    if count > limit:
        raise PayloadTooLarge(f"The batch holds {count} items; at most {limit} are accepted (AI_MAX_BATCH_SIZE).")


def may_hold_booleans(raw: bytes | str) -> bool:
    """Whether a JSON body could contain a boolean anywhere."""
    if isinstance(raw, str):
        return "true" in raw or "false" in raw
    return b"true" in raw or b"false" in raw


def schema_for(raw: bytes | str) -> BatchRequestSchema:
    """The batch schema for this raw body: the per-value type check only where a boolean could be."""
    return _SCHEMAS[may_hold_booleans(raw)]


def encode(prediction: Prediction, threshold: float, mode: str) -> dict[str, Any]:
    """The answer to one opportunity: the contract's fields, then what applies to this answer."""
    body: dict[str, Any] = {
        "decision": prediction.decision,
        "confidence": round(prediction.confidence, CONFIDENCE_DECIMALS),
        "threshold": threshold,
        "mode": mode,
        "inference_time_ms": round(prediction.inference_ms, 4),
        "model_type": prediction.model_type,
        "model_version": prediction.model_version,
    }
    body["plausible"] = not prediction.implausible
    if prediction.implausible:
        body["implausible"] = list(prediction.implausible)
    if prediction.refusal is not None:
        body["reason"] = prediction.refusal
    if prediction.cached:
        body["cached"] = True
    if prediction.opportunity_id is not None:
        body["opportunity_id"] = prediction.opportunity_id
    if prediction.execution is not None:
        body["execution"] = prediction.execution
    return body


_DECIDED_AS = {True: b'{"decision":true,"plausible":true,"confidence":',
               False: b'{"decision":false,"plausible":true,"confidence":'}


def _plain_results(decisions: list[bool], confidences: np.ndarray) -> orjson.Fragment:
    """results as JSON text, for plausible items with neither an id nor an execution (most batches).

    Building 1,024 dicts for orjson to walk again took a tenth of a 1,024-item
    request; the confidences are encoded in one call and spliced instead.
    """
    encoded = dumps(confidences)[1:-1].split(b",")
    return orjson.Fragment(b"[" + b"},".join([_DECIDED_AS[d] + c for d, c in zip(decisions, encoded)]) + b"}]")


def encode_batch(prediction: BatchPrediction, threshold: float, mode: str) -> dict[str, Any]:
    """The answer to a batch: results[i] answers items[i]."""
    confidences = np.round(prediction.confidences.astype(np.float64), CONFIDENCE_DECIMALS)
    decisions = prediction.decisions.tolist()
    if prediction.executions or any(prediction.implausible) or any(i is not None for i in prediction.ids):
        results: Any = [{"decision": d, "plausible": not checks, "confidence": c}
                        for d, checks, c in zip(decisions, prediction.implausible, confidences.tolist())]
        for index, checks in enumerate(prediction.implausible):
            if checks:
                results[index]["implausible"] = list(checks)
        for index, opportunity_id in enumerate(prediction.ids):
            if opportunity_id is not None:
                results[index]["opportunity_id"] = opportunity_id
        for index, reason in prediction.refusals.items():
            results[index]["reason"] = reason
        for index, execution in prediction.executions.items():
            results[index]["execution"] = execution
    else:
        results = _plain_results(decisions, confidences)
    return {
        "results": results,
        "count": len(decisions),
        "threshold": threshold,
        "mode": mode,
        "model_type": prediction.model_type,
        "model_version": prediction.model_version,
        "inference_time_ms": round(prediction.inference_ms, 4),
    }
