"""Operational endpoints: /health for load balancers, /status and /metrics_summary for people."""
from __future__ import annotations

import os
import time
from typing import Any

from flask import current_app

from omni_mev import metrics
from omni_mev.api import predictor_of
from omni_mev.config import Settings
from omni_mev.core.health import health_body
from omni_mev.ledger.store import Ledger
from omni_mev.started import STARTED_AT



def health():
    """200 when this worker has a model; 503 with the reason otherwise. No I/O."""
    return health_body(predictor_of(current_app).status())


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
        # Where the threshold in force comes from: AI_THRESHOLD, the served model's card, or the default.
        "threshold_source": predictor.threshold_source,
        "redis_connected": predictor.cache.ping(),
        "total_requests": metrics.snapshot.get()["total_requests"],
        "uptime_s": round(time.time() - STARTED_AT, 3),
        "worker_pid": os.getpid(),
        "ledger": ledger_state(predictor.ledger, predictor.settings),
        "outbox": predictor.dispatcher.state(),
        # From the served model's own card: a promotion brings its card with it.
        "model_family": predictor.card.get("family", "lstm") if predictor.card else None,
        "recommended_threshold": predictor.card.get("thresholds", {}).get("recommended"),
        "shadow_version": predictor.shadow_version,
        "registry": str(predictor.settings.model_registry) if predictor.settings.model_registry else None,
    }


def ledger_state(ledger: Ledger, settings: Settings) -> dict[str, Any]:
    """The ledger as /status shows it. `writable` is the last attempt's, and false while the writer is stalled:
    a ledger whose database cannot be reached, or does not answer, is not claimed as working."""
    enabled = settings.ledger_url is not None
    oldest = ledger.oldest_pending_at
    age = None if oldest is None else max(0.0, time.time() - oldest)
    problem = ledger.problem
    if problem is None and age is not None and age > settings.ledger_stall_s:
        problem = (f"stalled: the oldest prediction not yet written waits {age:.1f} s, over AI_LEDGER_STALL_S "
                   f"({settings.ledger_stall_s:g} s); the database does not answer")
    return {"enabled": enabled, "writable": enabled and problem is None, "problem": problem,
            "pending": ledger.pending, "oldest_pending_age_s": None if age is None else round(age, 3)}


def metrics_summary():
    """A JSON digest of the Prometheus metrics, exact across workers, at most ~1 s old."""
    status = predictor_of(current_app).status()
    return {**metrics.snapshot.get(), "model_type": status.kind, "model_version": status.version}
