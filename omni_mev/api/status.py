"""Operational endpoints: /health for load balancers, /status and /metrics_summary for people."""
from __future__ import annotations

import os
import time

from flask import Blueprint, current_app

from omni_mev import metrics
from omni_mev.cache import cache_of
from omni_mev.config import Settings
from omni_mev.errors import ModelUnavailable, error_response
from omni_mev.serving import scorer

bp = Blueprint("status", __name__)
STARTED_AT_VARIABLE = "OMNI_MEV_STARTED_AT"


def _started_at() -> float:
    # gunicorn's master records its start; workers and reloads inherit it.
    return float(os.environ.get(STARTED_AT_VARIABLE) or current_app.config["STARTED_AT"])


@bp.get("/health")
def health():
    """200 when this worker has a model; 503 with the reason otherwise. No I/O."""
    runtime = scorer().serving
    if runtime is None:
        return error_response(ModelUnavailable(scorer().chain.unavailable_reason))
    return {"status": "ok", "model_type": runtime.kind, "model_version": runtime.version}


@bp.get("/status")
def status():
    """Engine state; total_requests counts scoring requests across all workers."""
    settings: Settings = current_app.config["SETTINGS"]
    runtime = scorer().serving
    summary = metrics.snapshot.get()
    return {
        "ai_engine": "online" if runtime is not None else "degraded",
        "mode": settings.mode,
        "model_type": runtime.kind if runtime else None,
        "model_version": runtime.version if runtime else None,
        "threshold": settings.threshold,
        "redis_connected": cache_of(current_app).ping(),
        "total_requests": summary["total_requests"],
        "uptime_s": round(time.time() - _started_at(), 3),
        "worker_pid": os.getpid(),
    }


@bp.get("/metrics_summary")
def metrics_summary():
    """A JSON digest of the Prometheus metrics, exact across workers, at most ~1 s old."""
    runtime = scorer().serving
    return {
        **metrics.snapshot.get(),
        "model_type": runtime.kind if runtime else None,
        "model_version": runtime.version if runtime else None,
    }
