"""What happens after a positive decision: a live dispatch at most once, or a paper record.

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
from typing import Any, cast

from omni_mev import metrics
from omni_mev.cache import Cache
from omni_mev.config import Settings
from omni_mev.features import FEATURE_NAMES
from omni_mev.trading.decision_log import PAPER_EVENT, REFUSED_EVENT, DecisionLog
from omni_mev.trading.engine import EngineClient
from omni_mev.trading.intent_store import IntentStore
from omni_mev.trading.migration import import_earlier_log
from omni_mev.trading.outbox import (DUPLICATE_ELSEWHERE, DUPLICATE_HERE, Execution, Order, Outbox,
                                     PendingExecution, Refusal, late_cause, skipped)

# What a positive decision's `execution` is: settled, or an order whose outcome is still to come.
Executing = Execution | PendingExecution

log = logging.getLogger(__name__)
CLAIM_PREFIX = "ai:dispatch"
CONFIDENCE_DECIMALS = 6


# Shared answers for the common cases (a batch may produce thousands).
_OPTED_OUT = skipped("the request set dispatch: false")
_NO_ID = skipped("no opportunity_id: nothing to dispatch against")
_PAPER = skipped("SIMULATION mode: recorded as a paper trade")
_DUPLICATE_HERE = skipped(DUPLICATE_HERE)


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
    threshold: float  # the one the decision was taken at
    shadow_confidence: float | None = None
    implausible: tuple[str, ...] = ()
    # When the request reached the first server in front of the service (time.time()), where one said so: an
    # order's deadline counts from then, so a request replayed or queued on its way is never sent late.
    received_at: float | None = None
    # When this process got the request (time.time()): the deadline counts from then at the latest, so local
    # work (a lock, a reload, the disk) cannot push it back.
    arrived_at: float | None = None


class Dispatcher(ABC):
    """Turns positive decisions into something: a dispatch, or a paper record."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = DecisionLog(settings.decision_log_path, settings.decision_log_max_bytes,
                               settings.decision_log_backups)

    def after_decision(self, judged: Judged, decision: bool) -> Executing | None:
        """The `execution` field of the response, or None for a negative decision."""
        if not decision:
            return None
        return self.after_decisions([judged], self.settings.dispatch_timeout_s)[0]

    def after_decisions(self, approved: list[Judged], wait_s: float) -> list[Executing]:
        """The `execution` of each positive decision, in order; a dispatch's is pending: the request may wait
        `wait_s` in all for the outcomes."""
        executions: list[Executing | None] = [self._blocked(judged) for judged in approved]
        actable = [index for index, execution in enumerate(executions) if execution is None]
        if actable:
            for index, execution in zip(actable, self._act([approved[i] for i in actable], wait_s)):
                executions[index] = execution
        return cast(list[Executing], executions)  # every item is set by now

    def _blocked(self, judged: Judged) -> Execution | None:
        """Why a positive decision is not acted on, or None when it may be."""
        if not judged.dispatch:
            return _OPTED_OUT
        if judged.opportunity_id is None:
            return _NO_ID
        if judged.implausible:
            return skipped(self.refuse(judged))
        return None

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
            "threshold": judged.threshold,
            "model_version": judged.model_version,
            "features": dict(zip(FEATURE_NAMES, judged.features)),
            "pid": os.getpid(),
        }
        if judged.shadow_confidence is not None:
            record["shadow_confidence"] = round(judged.shadow_confidence, CONFIDENCE_DECIMALS)
        return record

    @abstractmethod
    def _act(self, approved: list[Judged], wait_s: float) -> list[Executing]:
        """Act on positive decisions that may be acted on (each has an opportunity_id)."""

    def state(self) -> dict[str, Any] | None:
        """What /status shows of the dispatch path; None without one."""
        return None


class PaperDispatcher(Dispatcher):
    """SIMULATION: what LIVE would have dispatched, recorded as paper trades; no engine client exists."""

    def _act(self, approved: list[Judged], wait_s: float) -> list[Executing]:
        for judged in approved:
            record = self._record(judged)
            record["event"] = PAPER_EVENT
            self.log.append_paper(record)
        return [_PAPER] * len(approved)


class LiveDispatcher(Dispatcher):
    """LIVE: at most one dispatch per opportunity_id, claimed and committed in the outbox's table before the engine
    hears of it, then sent by the outbox, which records exactly one outcome for it and reconciles it by key."""

    def __init__(self, settings: Settings, cache: Cache) -> None:
        super().__init__(settings)
        self.cache = cache
        self.store = IntentStore(settings.outbox_url)
        self.claims = claim_mode(self.store, cache)
        assert settings.rust_engine_url is not None  # LIVE needs it (config._check)
        engine = EngineClient(settings.rust_engine_url, settings.dispatch_connect_timeout_s,
                              settings.dispatch_concurrency)
        self.outbox = Outbox(self.store, self.log, engine, settings.dispatch_concurrency,
                             settings.reconcile_after_s, settings.dispatch_dedupe_ttl_s,
                             self._redis_claim if self.claims == "redis" else None,
                             prepare=lambda: import_earlier_log(self.store, settings.decision_log_path,
                                                                settings.dispatch_dedupe_ttl_s))
        self.outbox.start_recovery()

    def _act(self, approved: list[Judged], wait_s: float) -> list[Executing]:
        executions: list[Executing | None] = [None] * len(approved)
        orders: list[Order] = []
        positions: list[int] = []
        now = time.time()
        in_this_batch: set[str] = set()
        for index, judged in enumerate(approved):
            opportunity_id = judged.opportunity_id
            assert opportunity_id is not None  # _blocked let only those with an id through
            arrived_at = min(judged.arrived_at or now, now)
            expires_at = min(arrived_at, judged.received_at or arrived_at) + self.settings.dispatch_max_age_s
            if expires_at <= now:  # neither claimed nor logged: no intent, nothing to finish
                executions[index] = self._stale(judged, arrived_at, expires_at, now)
                continue
            if opportunity_id in in_this_batch:
                metrics.DISPATCHES.labels(status="duplicate").inc()
                executions[index] = _DUPLICATE_HERE
                continue
            in_this_batch.add(opportunity_id)
            record = self._record(judged)
            record["claim"] = self.claims
            orders.append(Order(record, expires_at, arrived_at))
            positions.append(index)
        self.outbox.submit(orders)
        for index, execution in zip(positions, self.outbox.pending(orders, wait_s)):
            executions[index] = execution
        return cast(list[Executing], executions)  # every item is set by now

    def _redis_claim(self, ids: list[str]) -> dict[str, Refusal | None]:
        """Redis's SET NX for an outbox that is this host's alone: None for the ids claimed, else why not."""
        answers = self.cache.claim_many([f"{CLAIM_PREFIX}:{opportunity_id}" for opportunity_id in ids],
                                        self.settings.dispatch_dedupe_ttl_s)
        result: dict[str, Refusal | None] = {}
        for opportunity_id, answer in zip(ids, answers):
            if answer is True:
                result[opportunity_id] = None
            elif answer is False:
                result[opportunity_id] = Refusal("duplicate", DUPLICATE_ELSEWHERE)
            elif self.settings.dispatch_claim_fail_open:
                metrics.DISPATCHES.labels(status="sent_unclaimed").inc()
                log.warning("sending %s without a cross-instance claim: Redis is unreachable and "
                            "AI_DISPATCH_CLAIM_FAIL_OPEN=true", opportunity_id)
                result[opportunity_id] = None
            else:
                result[opportunity_id] = Refusal("unclaimed", _UNCLAIMED)
        return result

    def _stale(self, judged: Judged, arrived_at: float, expires_at: float, now: float) -> Execution:
        """An opportunity already past its deadline when it was judged: its request reached the proxy longer than
        AI_DISPATCH_MAX_AGE_S ago (a replay after a failed instance, a long queue), or waited that long here.
        Never sent."""
        cause = late_cause(arrived_at, expires_at)
        metrics.DISPATCH_LATE.labels(cause=cause).inc()
        metrics.DISPATCHES.labels(status="expired").inc()
        where = "the proxy" if cause == "upstream" else "this service"
        age = now - (judged.received_at if cause == "upstream" and judged.received_at else arrived_at)
        reason = (f"stale: the request reached {where} {age:.3f} s ago, past AI_DISPATCH_MAX_AGE_S "
                  f"({self.settings.dispatch_max_age_s:g} s); never sent")
        log.warning("not dispatching %s: %s", judged.opportunity_id, reason)
        return {"status": "expired", "reason": reason}

    def state(self) -> dict[str, Any]:
        """The outbox as /status shows it."""
        return {"claims": self.claims, "database": self.store.engine.dialect.name, **self.outbox.state()}


_UNCLAIMED = ("not dispatched: the cross-instance claim cannot be made (Redis, REDIS_HOST, is unreachable), so "
              "another instance might send it too; AI_DISPATCH_CLAIM_FAIL_OPEN=true sends anyway (unsafe)")


def claim_mode(store: IntentStore, cache: Cache) -> str:
    """How an opportunity is claimed across instances: `database` when the outbox is a PostgreSQL shared by them
    (the intent's insert is the claim; Redis plays no part), `redis` when the outbox is this host's and Redis is
    configured, `host` otherwise (one host: its workers share the outbox)."""
    if store.shared:
        return "database"
    return "redis" if cache.shared else "host"


def build_dispatcher(settings: Settings, cache: Cache) -> Dispatcher:
    """LIVE dispatches; SIMULATION never builds an engine client, so it cannot contact the engine."""
    return LiveDispatcher(settings, cache) if settings.live_trading else PaperDispatcher(settings)
