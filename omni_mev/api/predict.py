"""POST /predict: score one opportunity, optionally with its stream's recent history."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar


from omni_mev.api.direct import DirectRequest, Later
from omni_mev.api import predictor_of
from omni_mev.jsonio import loads_object
from omni_mev.predictor import BatchPrediction, Prediction
from omni_mev.schemas import load_opportunity

CONFIDENCE_DECIMALS = 6


Answered = TypeVar("Answered", Prediction, BatchPrediction)


def answer_when_dispatched(prediction: Answered, encode_as: Callable[[Answered], dict[str, Any]]
                           ) -> dict[str, Any] | Later:
    """The encoded answer; with dispatches still under way, an answer that waits for their outcomes (up to
    their one deadline) without holding the worker."""
    pending = prediction.pending()
    if not pending:
        return encode_as(prediction)
    return Later([p.future for p in pending], pending[0].deadline, lambda: encode_as(prediction.settled()))


def encode(prediction: Prediction, threshold: float, mode: str) -> dict[str, Any]:
    """The response body: the contract's fields, then what applies to this answer."""
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


def predict(request: DirectRequest) -> dict[str, Any] | Later:
    """Score one opportunity."""
    opportunity = load_opportunity(loads_object(request.body))
    predictor = predictor_of(request.app)
    return answer_when_dispatched(predictor.predict(opportunity, request.received_at, request.arrived_at),
                                  lambda answered: encode(answered, predictor.threshold, predictor.settings.mode))
