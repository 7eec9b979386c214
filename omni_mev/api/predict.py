"""POST /predict: score one opportunity, optionally with its stream's recent history."""
from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, current_app

from omni_mev import metrics
from omni_mev.api.common import count_outcomes, json_object
from omni_mev.config import Settings
from omni_mev.schemas import PredictRequestSchema, load_or_raise
from omni_mev.serving import Scored, scorer
from omni_mev.trading.trader import trader

bp = Blueprint("predict", __name__)
count_outcomes(bp)
_request_schema = PredictRequestSchema()


def window(payload: dict[str, Any]) -> np.ndarray:
    """[1, len(history) + 1, 8] float32, the opportunity itself last."""
    return np.array([[*payload["history"], payload["features"]]], dtype=np.float32)


def decide(confidence: float, settings: Settings) -> dict[str, Any]:
    """The fields every scored item carries."""
    decision = confidence >= settings.threshold
    metrics.DECIDED[decision].inc()
    return {
        "decision": decision,
        "confidence": round(confidence, 6),
        "threshold": settings.threshold,
        "mode": settings.mode,
    }


def describe(scored: Scored) -> dict[str, Any]:
    """Model fields of a response."""
    fields = {
        "inference_time_ms": round(scored.inference_ms, 4),
        "model_type": scored.model_type,
        "model_version": scored.model_version,
    }
    if scored.cached:
        fields["cached"] = True
    return fields


@bp.post("/predict")
def predict():
    """Score one opportunity."""
    payload = load_or_raise(_request_schema, json_object())
    settings: Settings = current_app.config["SETTINGS"]
    scored = scorer().score_one(window(payload))
    confidence = float(scored.confidences[0])
    body = decide(confidence, settings)
    body.update(describe(scored))
    if "opportunity_id" in payload:
        body["opportunity_id"] = payload["opportunity_id"]
    shadow = None if scored.shadow_confidences is None else float(scored.shadow_confidences[0])
    execution = trader().after_decision(payload, body["decision"], confidence, scored.model_version, shadow)
    if execution is not None:
        body["execution"] = execution
    return body
