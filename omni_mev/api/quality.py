"""GET /quality: how good the confidence is on the outcomes callers reported."""
from __future__ import annotations

import threading
import time
from typing import Any

from flask import Blueprint, current_app, request

from omni_mev.api import predictor_of
from omni_mev.errors import ValidationFailed
from omni_mev.ledger.quality import MODELS, quality_report

bp = Blueprint("quality", __name__)
# Dashboards poll; the report reads the whole window from the database.
CACHE_S = 2.0
_cache: dict[tuple[str, tuple[str, ...]], tuple[float, dict[str, Any]]] = {}
_cache_lock = threading.Lock()


@bp.get("/quality")
def quality():
    """?window=1h|24h|7d (default 1h) &model=champion|shadow (default: both, side by side)."""
    window = request.args.get("window", "1h")
    model = request.args.get("model")
    if model is not None and model not in MODELS:
        raise ValidationFailed(f"model={model!r} is not a model; use champion or shadow.",
                               fields={"model": ["Must be champion or shadow."]})
    models = (model,) if model else MODELS
    key = (window, models)
    now = time.monotonic()
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None and now - cached[0] < CACHE_S:
        return cached[1]
    predictor = predictor_of(current_app)
    report = quality_report(predictor.ledger, window, predictor.threshold, models)
    with _cache_lock:
        _cache[key] = (now, report)
    return report
