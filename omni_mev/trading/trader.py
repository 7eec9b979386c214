"""What happens after a decision: live dispatch exactly once, or a paper record."""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from flask import Flask, current_app

from omni_mev import metrics
from omni_mev.cache import NullCache, cache_of
from omni_mev.config import Settings
from omni_mev.features import FEATURE_NAMES
from omni_mev.trading.decision_log import DISPATCH_EVENT, OUTCOME_EVENT, PAPER_EVENT, DecisionLog
from omni_mev.trading.engine import EngineClient

log = logging.getLogger(__name__)
EXTENSION = "omni_mev.trader"
CLAIM_PREFIX = "ai:dispatch"


def _skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


# Shared answers for the common cases (a batch may produce thousands).
_OPTED_OUT = _skipped("the request set dispatch: false")
_NO_ID = _skipped("no opportunity_id: nothing to dispatch against")
_PAPER = _skipped("SIMULATION mode: recorded as a paper trade")


class Trader:
    """Turns positive decisions into dispatches (LIVE) or paper records (SIMULATION)."""

    def __init__(self, settings: Settings, cache: NullCache) -> None:
        self.settings = settings
        self.cache = cache
        self.log = DecisionLog(settings.decision_log_path)
        # SIMULATION never builds a client: no connection to the engine, ever.
        self.engine = (
            EngineClient(settings.rust_engine_url, settings.dispatch_connect_timeout_s, settings.dispatch_timeout_s)
            if settings.live_trading else None
        )

    def _record(self, payload: dict[str, Any], confidence: float, model_version: str,
                shadow: float | None) -> dict[str, Any]:
        record = {
            "ts": time.time(),
            "mode": self.settings.mode,
            "opportunity_id": payload.get("opportunity_id"),
            "confidence": round(confidence, 6),
            "threshold": self.settings.threshold,
            "model_version": model_version,
            "features": dict(zip(FEATURE_NAMES, payload["features"])),
            "pid": os.getpid(),
        }
        if shadow is not None:
            record["shadow_confidence"] = round(shadow, 6)
        return record

    def after_decision(self, payload: dict[str, Any], decision: bool, confidence: float, model_version: str,
                       shadow: float | None = None) -> dict[str, Any] | None:
        """The `execution` field of the response, or None for a negative decision."""
        if not decision:
            return None
        if not payload.get("dispatch", True):
            return _OPTED_OUT
        opportunity_id = payload.get("opportunity_id")
        if opportunity_id is None:
            return _NO_ID
        record = self._record(payload, confidence, model_version, shadow)
        if not self.settings.live_trading:
            # What LIVE would have dispatched: the same conditions, on paper.
            record["event"] = PAPER_EVENT
            self.log.append_paper(record)
            return _PAPER
        return self._dispatch(opportunity_id, record)

    def _dispatch(self, opportunity_id: str, record: dict[str, Any]) -> dict[str, Any]:
        with self.log.locked() as decisions:
            if decisions.was_dispatched(opportunity_id):
                metrics.DISPATCHES.labels(status="duplicate").inc()
                return _skipped("duplicate opportunity_id: already dispatched from this host")
            claimed = self.cache.claim(f"{CLAIM_PREFIX}:{opportunity_id}", self.settings.dispatch_dedupe_ttl_s)
            if claimed is False:
                metrics.DISPATCHES.labels(status="duplicate").inc()
                return _skipped("duplicate opportunity_id: already dispatched by another instance")
            record["event"] = DISPATCH_EVENT
            record["cross_instance_claim"] = "redis" if claimed else "unavailable"
            # On disk before the engine hears of it: a crash after this line leaves an
            # attempt with an unknown outcome, never a trade the log does not know.
            decisions.append(record)
        order = {
            "opportunity_id": opportunity_id,
            "features": record["features"],
            "confidence": record["confidence"],
            "threshold": record["threshold"],
            "model_version": record["model_version"],
        }
        reply = self.engine.execute(order)
        metrics.DISPATCHES.labels(status=reply.status).inc()
        if reply.status != "dispatched":
            log.warning("dispatch of %s: %s (%s)", opportunity_id, reply.status, reply.reason)
        self.log.append_durably({"event": OUTCOME_EVENT, "ts": time.time(), "opportunity_id": opportunity_id,
                                 **reply.to_dict(), "pid": os.getpid()})
        return reply.to_dict()


def init_app(app: Flask) -> None:
    """One trader per app (per worker under gunicorn)."""
    app.extensions[EXTENSION] = Trader(app.config["SETTINGS"], cache_of(app))


def trader() -> Trader:
    """The current app's trader."""
    return current_app.extensions[EXTENSION]
