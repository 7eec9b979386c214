"""POST /predict/batch: many opportunities in one request, scored together, answered in order."""
from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, current_app, request

from omni_mev import metrics
from omni_mev.api.common import count_outcomes, json_object
from omni_mev.config import Settings
from omni_mev.errors import PayloadTooLarge
from omni_mev.schemas import BODY_HAS_NO_BOOLEANS, BatchRequestSchema, ParsedBatch, load_or_raise
from omni_mev.serving import Scorer, scorer
from omni_mev.trading.trader import trader

bp = Blueprint("batch", __name__)
count_outcomes(bp)
_schema = BatchRequestSchema()


def check_batch_size(count: int, settings: Settings) -> None:
    """413 before any validation work when a request holds too many items."""
    if count > settings.max_batch_size:
        raise PayloadTooLarge(
            f"The batch holds {count} items; at most {settings.max_batch_size} are accepted (AI_MAX_BATCH_SIZE)."
        )


def score_batch(batch: ParsedBatch, model: Scorer) -> tuple[np.ndarray, Any, float]:
    """Confidences in item order; one model run per distinct history length."""
    current = batch.features.astype(np.float32)[:, None, :]
    if batch.histories is None:
        scored = model.score(current)
        return scored.confidences, scored, scored.inference_ms
    confidences = np.empty(len(current), dtype=np.float32)
    by_length: dict[int, list[int]] = {}
    for index, history in enumerate(batch.histories):
        by_length.setdefault(len(history), []).append(index)
    elapsed = 0.0
    for length, indices in by_length.items():
        if length == 0:
            windows = current[indices]
        else:
            past = np.array([batch.histories[i] for i in indices], dtype=np.float32)
            windows = np.concatenate([past, current[indices]], axis=1)
        scored = model.score(windows)
        confidences[indices] = scored.confidences
        elapsed += scored.inference_ms
    return confidences, scored, elapsed


@bp.post("/predict/batch")
def predict_batch():
    """Score many opportunities; one entry per item, in order."""
    settings: Settings = current_app.config["SETTINGS"]
    raw = request.get_data(cache=False)
    body = json_object(raw)
    items = body.get("items")
    if isinstance(items, list):
        check_batch_size(len(items), settings)
    token = BODY_HAS_NO_BOOLEANS.set(b"true" not in raw and b"false" not in raw)
    try:
        batch: ParsedBatch = load_or_raise(_schema, body)["items"]
    finally:
        BODY_HAS_NO_BOOLEANS.reset(token)
    confidences, scored, elapsed = score_batch(batch, scorer())
    decisions = confidences >= settings.threshold
    metrics.count_decisions(decisions)
    positive = int(decisions.sum())
    rounded = np.round(confidences.astype(np.float64), 6).tolist()
    results = [{"decision": d, "confidence": c} for d, c in zip(decisions.tolist(), rounded)]
    for index, opportunity_id in enumerate(batch.ids):
        if opportunity_id is not None:
            results[index]["opportunity_id"] = opportunity_id
    if positive:
        trading = trader()
        for index in np.flatnonzero(decisions).tolist():
            payload = {"features": batch.features[index].tolist(), "opportunity_id": batch.ids[index],
                       "dispatch": batch.dispatch[index]}
            execution = trading.after_decision(payload, True, rounded[index], scored.model_version)
            if execution is not None:
                results[index]["execution"] = execution
    return {
        "results": results,
        "count": len(results),
        "threshold": settings.threshold,
        "mode": settings.mode,
        "model_type": scored.model_type,
        "model_version": scored.model_version,
        "inference_time_ms": round(elapsed, 4),
    }
