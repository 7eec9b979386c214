"""POST /predict and /predict/batch: the request's body decoded as JSON and handed to the core's scoring."""
from __future__ import annotations

from typing import Any

from omni_mev.api import predictor_of
from omni_mev.api.direct import DirectRequest
from omni_mev.core.answers import Later
from omni_mev.core.scoring import score_batch, score_one
from omni_mev.jsonio import loads_object


def predict(request: DirectRequest) -> dict[str, Any] | Later:
    """Score one opportunity, optionally with its stream's recent history."""
    return score_one(predictor_of(request.app), loads_object(request.body), request.received_at, request.arrived_at)


def predict_batch(request: DirectRequest) -> dict[str, Any] | Later:
    """Score many opportunities in one request, together; one entry per item, in order."""
    return score_batch(predictor_of(request.app), loads_object(request.body), request.body, request.received_at,
                       request.arrived_at)
