"""What happens after a positive decision: a live dispatch exactly once, or a paper record.

`LiveDispatcher` (LIVE) and `PaperDispatcher` (SIMULATION) share one interface
and the rules that come before either acts: a negative decision, a request
that opted out, or one without an `opportunity_id` is never acted on, and an
implausible opportunity (omni_mev.plausibility) is refused, with a `refused`
record in the decision log; paper trading mirrors what LIVE would do.
"""
from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from omni_mev import metrics
from omni_mev.cache import Cache
from omni_mev.config import Settings
from omni_mev.features import FEATURE_NAMES
from omni_mev.trading.decision_log import DISPATCH_EVENT, OUTCOME_EVENT, PAPER_EVENT, REFUSED_EVENT, DecisionLog
from omni_mev.trading.engine import EngineClient

log = logging.getLogger(__name__)
CLAIM_PREFIX = "ai:dispatch"
CONFIDENCE_DECIMALS = 6

Execution = dict[str, Any]


def skipped(reason: str) -> Execution:
    """The `execution` field of a decision that was not acted on."""
    return {"status": "skipped", "reason": reason}


# Shared answers for the common cases (a batch may produce thousands).
_OPTED_OUT = skipped("the request set dispatch: false")
_NO_ID = skipped("no opportunity_id: nothing to dispatch against")
_PAPER = skipped("SIMULATION mode: recorded as a paper trade")


def implausible_reason(checks: tuple[str, ...]) -> str:
    """Why an implausible opportunity is not acted on."""
    return f"implausible opportunity ({', '.join(checks)}): the model cannot judge it; never dispatched"


@dataclass(frozen=True)
class Judged:
    """One scored opportunity, as the dispatcher sees it."""

    opportunity_id: str | None
    features: list[float]
    dispatch: bool
    confidence: float
    model_version: str
    shadow_confidence: float | None = None
    implausible: tuple[str, ...] = ()


class Dispatcher(ABC):
    """Turns positive decisions into something: a dispatch, or a paper record."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = DecisionLog(settings.decision_log_path)

    def after_decision(self, judged: Judged, decision: bool) -> Execution | None:
        """The `execution` field of the response, or None for a negative decision."""
        if not decision:
            return None
        if not judged.dispatch:
            return _OPTED_OUT
        if judged.opportunity_id is None:
            return _NO_ID
        if judged.implausible:
            return skipped(self.refuse(judged))
        return self._act(judged.opportunity_id, self._record(judged))

    def refuse(self, judged: Judged) -> str:
        """Record that a positive model decision on an implausible opportunity was refused; the reason."""
        reason = implausible_reason(judged.implausible)
        log.info("refused %s: %s", judged.opportunity_id, reason)
        record = self._record(judged)
        record.update(event=REFUSED_EVENT, implausible=list(judged.implausible), reason=reason)
        self.log.append_paper(record)
        return reason

    def _record(self, judged: Judged) -> dict[str, Any]:
        record = {
            "ts": time.time(),
            "mode": self.settings.mode,
            "opportunity_id": judged.opportunity_id,
            "confidence": round(judged.confidence, CONFIDENCE_DECIMALS),
            "threshold": self.settings.threshold,
            "model_version": judged.model_version,
            "features": dict(zip(FEATURE_NAMES, judged.features)),
            "pid": os.getpid(),
        }
        if judged.shadow_confidence is not None:
            record["shadow_confidence"] = round(judged.shadow_confidence, CONFIDENCE_DECIMALS)
        return record

    @abstractmethod
    def _act(self, opportunity_id: str, record: dict[str, Any]) -> Execution:
        """Act on a positive decision that may be acted on."""


class PaperDispatcher(Dispatcher):
    """SIMULATION: what LIVE would have dispatched, recorded as paper trades; no engine client exists."""

    def _act(self, opportunity_id: str, record: dict[str, Any]) -> Execution:
        record["event"] = PAPER_EVENT
        self.log.append_paper(record)
        return _PAPER


class LiveDispatcher(Dispatcher):
    """LIVE: at most one dispatch per opportunity_id, logged durably before the engine hears of it."""

    def __init__(self, settings: Settings, cache: Cache) -> None:
        super().__init__(settings)
        self.cache = cache
        self.engine = EngineClient(settings.rust_engine_url, settings.dispatch_connect_timeout_s,
                                   settings.dispatch_timeout_s)

    def _act(self, opportunity_id: str, record: dict[str, Any]) -> Execution:
        with self.log.locked() as decisions:
            if decisions.was_dispatched(opportunity_id):
                metrics.DISPATCHES.labels(status="duplicate").inc()
                return skipped("duplicate opportunity_id: already dispatched from this host")
            claimed = self.cache.claim(f"{CLAIM_PREFIX}:{opportunity_id}", self.settings.dispatch_dedupe_ttl_s)
            if claimed is False:
                metrics.DISPATCHES.labels(status="duplicate").inc()
                return skipped("duplicate opportunity_id: already dispatched by another instance")
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


def build_dispatcher(settings: Settings, cache: Cache) -> Dispatcher:
    """LIVE dispatches; SIMULATION never builds an engine client, so it cannot contact the engine."""
    return LiveDispatcher(settings, cache) if settings.live_trading else PaperDispatcher(settings)
