"""Operational endpoints: /health for load balancers, /status and /metrics_summary for people."""
from __future__ import annotations

import os
import time

from flask import current_app

from omni_mev import metrics
from omni_mev.api import predictor_of
from omni_mev.cache import cache_of
from omni_mev.errors import ModelUnavailable
from omni_mev.started import STARTED_AT



def health():
    """200 when this worker has a model; 503 with the reason otherwise. No I/O."""
    status = predictor_of(current_app).status()
    if not status.ready:
        raise ModelUnavailable(status.problem)
    return {"status": "ok", "model_type": status.kind, "model_version": status.version}


def engine_status():
    """Engine state; total_requests counts the counted routes' requests (scoring, outcomes, quality), all workers."""
    predictor = predictor_of(current_app)
    status = predictor.status()
    return {
        "ai_engine": "online" if status.ready else "degraded",
        "mode": predictor.settings.mode,
        "model_type": status.kind,
        "model_version": status.version,
        "model_device": status.device,
        "threshold": predictor.threshold,
        "redis_connected": cache_of(current_app).ping(),
        "total_requests": metrics.snapshot.get()["total_requests"],
        "uptime_s": round(time.time() - STARTED_AT, 3),
        "worker_pid": os.getpid(),
        # `writable` is the last attempt's: a ledger whose database cannot be reached is not claimed as working.
        "ledger": {"enabled": predictor.settings.ledger_url is not None,
                   "writable": predictor.settings.ledger_url is not None and predictor.ledger.problem is None,
                   "problem": predictor.ledger.problem, "pending": predictor.ledger.pending},
        # From the served model's own card: a promotion brings its card with it.
        "model_family": predictor.card.get("family", "lstm") if predictor.card else None,
        "recommended_threshold": predictor.card.get("thresholds", {}).get("recommended"),
        "shadow_version": predictor.shadow_version,
        "registry": str(predictor.settings.model_registry) if predictor.settings.model_registry else None,
    }


def metrics_summary():
    """A JSON digest of the Prometheus metrics, exact across workers, at most ~1 s old."""
    status = predictor_of(current_app).status()
    return {**metrics.snapshot.get(), "model_type": status.kind, "model_version": status.version}
