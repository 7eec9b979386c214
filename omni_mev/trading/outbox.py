"""The dispatch outbox: every intent to dispatch ends in exactly one recorded outcome, and the books end with what
the engine did.

An intent is a row of the outbox's table (omni_mev.trading.intent_store),
committed before the engine hears of the order, and a `dispatch` line of the
decision log. From the request on, the outbox, not the request, owns it:

- its claimer thread takes the orders the requests hand it, claims them in
  the table (one commit for all that wait together: the claim across workers
  and, with a PostgreSQL outbox, across instances), and hands them to the
  senders. A request never waits on the database: it waits for its orders'
  executions up to its own bound, and answers `queued` for the rest;
- its sender threads (AI_DISPATCH_CONCURRENCY per process) post the orders to
  the engine. An order is never sent past its deadline, `expires_at` (the
  request's arrival + AI_DISPATCH_MAX_AGE_S: an arbitrage is stale after its
  block); one that reaches it first, in the claimer's queue or a sender's,
  ends `expired`, never sent, and is counted as made late locally;
- each answer becomes the intent's one outcome (outcomes are committed in
  groups; an intent that has one never gets a second). An answer that never
  came (a timeout, a connection closed, a crash mid-send) leaves the outcome
  unknown: `failed`, marked to be asked of the engine;
- its recovery thread takes over the open intents of this host's workers that
  died (resent with the same Idempotency-Key while before their deadline,
  `expired` and unknown after), ends those of instances that stopped, and
  reconciles: AI_RECONCILE_AFTER_S after an unknown order's deadline it sends
  the same order with the same key again. The engine, which never executes a
  key twice nor an order past its expires_at, answers with its first answer
  for a key it executed, or 404/410 for one it never did (docs/trading.md).
  The verdict is recorded once, in the table and as a `reconciled` line.
"""
from __future__ import annotations

import atexit
import functools
import logging
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from omni_mev import metrics
from omni_mev.trading.decision_log import (DISPATCH_EVENT, OUTCOME_EVENT, RECONCILED_EVENT, RESEND_EVENT,
                                           STALE_EVENT, DecisionLog)
from omni_mev.trading.engine import EngineClient, EngineReply
from omni_mev.trading.intent_store import (EXECUTED, NOT_EXECUTED, ORDER_FIELDS, REJECTED, Ending, Intent,
                                           IntentStore, OpenIntent, OutboxUnavailable)

log = logging.getLogger(__name__)
Execution = dict[str, Any]
# The `execution.status` values a response may carry: the four ends of an intent, `queued` (its end is still
# to come, in the outbox), and `skipped` (nothing was sent).
TERMINAL_STATUSES = ("dispatched", "rejected", "failed", "expired")
EXECUTION_STATUSES = (*TERMINAL_STATUSES, "queued", "skipped")
# How often a process looks for intents to take over, to end, or to reconcile.
RECOVERY_INTERVAL_S = 1.0
# A reconciliation's own bound on the engine's answer; one without an answer is tried again later, each time
# twice as late, at most this far apart.
RECONCILE_TIMEOUT_S = 2.0
RECHECK_MAX_S = 300.0
# How often settled intents older than the claims' lifetime are purged.
PURGE_INTERVAL_S = 3600.0
# A claim in hand this long means the outbox's database does not answer (/status says so).
STALLED_CLAIM_S = 1.0


@functools.cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "no-boot-id"


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_owner(pid: int | None = None) -> str:
    """Who owns an intent: boot, pid and start time, so a reused pid or a reboot never passes for the owner."""
    pid = pid or os.getpid()
    return f"{_boot_id()}:{pid}:{_start_ticks(pid)}"


def owner_alive(owner: str | None) -> bool:
    """Whether the process that owns an intent still runs (on this host)."""
    if not owner:
        return False
    boot, pid, ticks = owner.rsplit(":", 2)
    return boot == _boot_id() and pid.isdigit() and _start_ticks(int(pid)) == ticks


def this_instance() -> str:
    """The host, as the outbox's table names it: its name (a pod's own) and its boot."""
    return f"{socket.gethostname()}:{_boot_id()}"


DUPLICATE_HERE = "duplicate opportunity_id: already dispatched from this host"
DUPLICATE_ELSEWHERE = "duplicate opportunity_id: already dispatched by another instance"


def skipped(reason: str) -> Execution:
    """The `execution` field of a decision that was not acted on."""
    return {"status": "skipped", "reason": reason}


def queued(wait_s: float) -> Execution:
    """The `execution` of an order whose engine answer did not come within the request's wait."""
    return {"status": "queued",
            "reason": f"no answer from the engine within {wait_s:g} s; the order is finished in the background "
                      "under the same Idempotency-Key before its expires_at, and its outcome is logged"}


@dataclass(frozen=True)
class PendingExecution:
    """An order's `execution` as a request will report it: its outcome if known by `deadline` (time.monotonic),
    `queued` otherwise. The request waits for it without holding the worker (omni_mev.deferred)."""

    future: Future[Execution]
    deadline: float
    wait_s: float

    def settled(self) -> Execution:
        """The outcome if it is known already, else `queued`; never waits."""
        return self.future.result() if self.future.done() else queued(self.wait_s)


@dataclass
class Order:
    """An approved opportunity handed to the outbox: its decision-log record, its deadline, when this process got
    its request (time.time()), and the future of its execution."""

    record: dict[str, Any]
    expires_at: float
    arrived_at: float
    future: Future[Execution] = field(default_factory=Future)

    @property
    def opportunity_id(self) -> str:
        return str(self.record["opportunity_id"])

    def body(self) -> dict[str, Any]:
        """What the engine gets."""
        return {**{name: self.record[name] for name in ORDER_FIELDS if name != "expires_at"},
                "expires_at": round(self.expires_at, 6)}


class Refusal(NamedTuple):
    """Why a second claim store did not confirm a claim: the dispatch metric's status, and the reason."""

    status: str
    reason: str


# A second claim store, for an outbox that is this host's alone (Redis): None for each id it confirms.
CrossClaim = Callable[[list[str]], dict[str, Refusal | None]]


@dataclass
class _Finishing:
    """An outcome on its way to the table, and who waits for it."""

    ending: Ending
    execution: Execution
    future: Future[Execution] | None


def late_cause(arrived_at: float, expires_at: float) -> str:
    """Why an order is past its deadline: `upstream` if it was when its request reached this process (queued or
    replayed in front), `local` if this process made it late (a lock, a reload, the disk, the database)."""
    return "upstream" if arrived_at >= expires_at else "local"


class Outbox:
    """The claimer, the senders, the group commit of outcomes, recovery and reconciliation."""

    def __init__(self, store: IntentStore, audit: DecisionLog, engine: EngineClient, concurrency: int,
                 reconcile_after_s: float, claims_ttl_s: float, cross_claim: CrossClaim | None = None,
                 prepare: Callable[[], Any] | None = None) -> None:
        """`prepare`: work the table needs once before anything is claimed (an earlier version's log imported);
        done by the first claim or recovery pass that finds the database up, never at start-up, so that a
        database down does not stop a worker from starting."""
        self.store = store
        self.log = audit
        self.engine = engine
        self.reconcile_after_s = reconcile_after_s
        self.claims_ttl_s = claims_ttl_s
        self.cross_claim = cross_claim
        self._prepare = prepare
        self._prepare_lock = threading.Lock()
        self.owner = process_owner()
        self.instance = this_instance()
        self._senders = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="dispatch")
        self._incoming: deque[Order] = deque()
        self._claim_wake = threading.Event()
        self._claimer: threading.Thread | None = None
        self._claimer_lock = threading.Lock()
        self._claiming_since: float | None = None  # time.time() the claim in hand began, for /status
        self._finishing: list[_Finishing] = []
        self._finishing_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._recovery: threading.Thread | None = None
        self._stopping = threading.Event()
        # The first purge comes a while after the start, at a time of its own for each process: the workers a
        # reload starts do not all delete at once, while they warm up.
        self._next_purge = time.time() + random.uniform(PURGE_INTERVAL_S / 60, PURGE_INTERVAL_S / 6)
        atexit.register(self.close)

    # Claiming

    def submit(self, orders: list[Order]) -> None:
        """Hand approved orders over; each future resolves to its execution."""
        if not orders:
            return
        self._incoming.extend(orders)
        if self._claimer is None:
            with self._claimer_lock:
                if self._claimer is None:
                    self._claimer = threading.Thread(target=self._claim_loop, name="dispatch-claimer", daemon=True)
                    self._claimer.start()
        self._claim_wake.set()

    def _claim_loop(self) -> None:
        while True:
            self._claim_wake.wait()
            self._claim_wake.clear()
            while self._incoming:
                orders = [self._incoming.popleft() for _ in range(len(self._incoming))]
                try:
                    self._claim(orders)
                except Exception as error:
                    log.exception("claiming %d orders failed unexpectedly", len(orders))
                    for order in orders:
                        _resolve(order.future, skipped(f"not dispatched: the service failed to claim it "
                                                       f"({type(error).__name__})"))

    def _prepared(self) -> None:
        """Run `prepare` once (OutboxUnavailable while the database is down: tried again next time)."""
        if self._prepare is None:
            return
        with self._prepare_lock:
            if self._prepare is not None:
                self._prepare()
                self._prepare = None

    def _claim(self, orders: list[Order]) -> None:
        """Claim the orders still before their deadline, log them, and send them; settle the others."""
        now = time.time()
        fresh: list[Order] = []
        first: set[str] = set()
        for order in orders:
            if order.expires_at <= now:
                self._never_claimed(order, now)
            elif order.opportunity_id in first:  # requests claiming one id together: the first one claims it
                metrics.DISPATCHES.labels(status="duplicate").inc()
                _resolve(order.future, skipped(DUPLICATE_HERE))
            else:
                first.add(order.opportunity_id)
                fresh.append(order)
        if not fresh:
            return
        refusals: dict[str, Refusal] = {}

        def confirm(ids: list[str]) -> set[str]:
            assert self.cross_claim is not None
            answers = self.cross_claim(ids)
            refusals.update({opportunity_id: refusal for opportunity_id, refusal in answers.items() if refusal})
            return {opportunity_id for opportunity_id, refusal in answers.items() if refusal is None}

        self._claiming_since = now
        try:
            self._prepared()
            held = self.store.claim([Intent(order.opportunity_id, now, order.expires_at, order.body())
                                     for order in fresh], self.instance, self.owner,
                                    confirm if self.cross_claim is not None else None)
        except OutboxUnavailable as error:
            metrics.DISPATCHES.labels(status="unlogged").inc(len(fresh))
            log.error("outbox %s cannot be written (%s): %d orders not dispatched", self.store.name, error, len(fresh))
            for order in fresh:
                _resolve(order.future, skipped(f"the outbox cannot be written ({error}): not dispatched"))
            return
        finally:
            self._claiming_since = None
        claimed_at = time.time()
        claimed: list[Order] = []
        for order in fresh:
            holder = held[order.opportunity_id]
            if holder is None:
                claimed.append(order)
            elif order.opportunity_id in refusals:
                refusal = refusals[order.opportunity_id]
                metrics.DISPATCHES.labels(status=refusal.status).inc()
                log.warning("not dispatching %s: %s", order.opportunity_id, refusal.reason)
                _resolve(order.future, skipped(refusal.reason))
            else:
                metrics.DISPATCHES.labels(status="duplicate").inc()
                _resolve(order.future, skipped(DUPLICATE_HERE if holder == self.instance else DUPLICATE_ELSEWHERE))
        if not claimed:
            return
        metrics.observe_dispatch_delays([claimed_at - order.arrived_at for order in claimed])
        self._audit([{**order.record, "event": DISPATCH_EVENT, "expires_at": round(order.expires_at, 6),
                      "owner": self.owner, "ts": claimed_at} for order in claimed])
        for order in claimed:
            self._senders.submit(self._deliver, order)

    def _never_claimed(self, order: Order, now: float) -> None:
        """An order past its deadline before it could be claimed: never logged as an intent, never sent."""
        cause = late_cause(order.arrived_at, order.expires_at)
        metrics.DISPATCH_LATE.labels(cause=cause).inc()
        metrics.DISPATCHES.labels(status="expired").inc()
        reason = (f"stale: {now - order.arrived_at:.3f} s after its request reached this service, past its "
                  f"expires_at (AI_DISPATCH_MAX_AGE_S), before it could be claimed; never sent")
        log.warning("not dispatching %s: %s", order.opportunity_id, reason)
        self.log.append_paper({**order.record, "event": STALE_EVENT, "cause": cause, "reason": reason,
                               "expires_at": round(order.expires_at, 6)})
        _resolve(order.future, {"status": "expired", "reason": reason})

    def pending(self, orders: list[Order], wait_s: float) -> list[PendingExecution]:
        """Each order's execution as it will stand at one deadline, `wait_s` from now, for all of them."""
        deadline = time.monotonic() + wait_s
        return [PendingExecution(order.future, deadline, wait_s) for order in orders]

    # Sending

    def _deliver(self, order: Order) -> None:
        """Post one order before its deadline, then record its outcome; never raises."""
        try:
            now = time.time()
            remaining = order.expires_at - now
            if remaining <= 0:
                metrics.DISPATCH_LATE.labels(cause=late_cause(order.arrived_at, order.expires_at)).inc()
                self._finish(order.opportunity_id, order.future, {
                    "status": "expired", "reason": "stale: its expires_at passed before a sender was free "
                                                   "(AI_DISPATCH_MAX_AGE_S); never sent"}, known=True)
                return
            reply: EngineReply = self.engine.execute(order.body(), remaining)
            self._finish(order.opportunity_id, order.future, reply.to_dict(), known=reply.known)
        except Exception as error:
            log.exception("dispatch of %r failed unexpectedly", order.opportunity_id)
            self._finish(order.opportunity_id, order.future, {
                "status": "failed", "reason": f"dispatch failed in the service: {type(error).__name__}"},
                known=False)

    # Outcomes, committed in groups

    def _finish(self, opportunity_id: str, future: Future[Execution] | None, execution: Execution, known: bool) -> None:
        """Record the intent's one outcome (or learn the one already recorded), then resolve its future."""
        status = execution["status"]
        metrics.DISPATCHES.labels(status=status).inc()
        if status != "dispatched":
            log.warning("dispatch of %r: %s (%s)", opportunity_id, status, execution.get("reason"))
        ending = Ending(opportunity_id, status, known, execution.get("reason"), execution.get("engine_status"))
        with self._finishing_lock:
            self._finishing.append(_Finishing(ending, execution, future))
        try:
            self._commit()
        except OutboxUnavailable as error:  # kept: the next commit, the recovery loop's or the exit's, writes it
            log.error("outbox %s: cannot record the outcome of %r yet: %s", self.store.name, opportunity_id, error)
            if future is not None:
                _resolve(future, {**execution, "reason": f"{execution.get('reason')}; its outcome is not "
                                                         f"recorded yet ({error})"})

    def _commit(self) -> None:
        """Write every outcome waiting, in one transaction; whoever comes first writes for all."""
        with self._commit_lock:
            with self._finishing_lock:
                batch, self._finishing = self._finishing, []
            if not batch:
                return  # written by the thread before us
            try:
                recorded = self.store.finish([item.ending for item in batch], self.reconcile_after_s)
            except OutboxUnavailable:
                with self._finishing_lock:
                    self._finishing[:0] = batch
                raise
        now = time.time()
        lines, answers = [], []
        for item in batch:
            on_record = recorded.get(item.ending.opportunity_id)
            if on_record == item.ending:
                lines.append({"event": OUTCOME_EVENT, "ts": now, "opportunity_id": item.ending.opportunity_id,
                              **item.execution, "known": item.ending.known, "pid": os.getpid()})
                execution = item.execution
            elif on_record is not None:  # another worker or instance ended it first: that outcome stands
                execution = {"status": on_record.status, "reason": on_record.reason}
            else:
                execution = item.execution
            if item.future is not None:
                answers.append((item.future, execution))
        self._audit(lines)  # in the audit trail before anyone is told
        for future, execution in answers:
            _resolve(future, execution)

    def _audit(self, records: list[dict[str, Any]]) -> None:
        """The decision log's lines; the table is the record, so a log that cannot be written stops nothing."""
        try:
            self.log.append(records)
        except OSError as error:
            log.error("decision log %s cannot be written (%s): %d records missing from the audit trail",
                      self.log.path, error, len(records))

    # Recovery and reconciliation

    def start_recovery(self, interval_s: float = RECOVERY_INTERVAL_S) -> None:
        """Recover and reconcile now and every `interval_s`, in a daemon thread."""
        self._recovery = threading.Thread(target=self._recover_loop, args=(interval_s,), name="dispatch-recovery",
                                          daemon=True)
        self._recovery.start()

    def _recover_loop(self, interval_s: float) -> None:
        postponed: str | None = None  # logged once per outage, not every pass
        while not self._stopping.is_set():
            try:
                self.recover()
                if postponed is not None:
                    log.info("outbox %s: reachable again; recovery and reconciliation resume", self.store.name)
                    postponed = None
            except OutboxUnavailable as error:
                if str(error) != postponed:
                    log.warning("outbox %s: recovery postponed while the database fails: %s", self.store.name,
                                error)
                    postponed = str(error)
            except Exception:
                log.exception("recovery of dispatch intents failed")
            self._stopping.wait(interval_s)

    def recover(self) -> int:
        """One pass: outcomes still to write, this host's orphaned intents, abandoned ones, due checks, gauges and
        the purge; how many intents were taken over or ended."""
        self._prepared()
        self._commit()
        handled = self._take_over_orphans() + self._end_abandoned()
        for intent in self.store.due_checks(time.time()):
            if self._stopping.is_set():
                break
            self._check(intent)
        metrics.DISPATCH_UNRECONCILED.set(self.store.count_unreconciled())
        now = time.time()
        if now >= self._next_purge:
            self._next_purge = now + PURGE_INTERVAL_S
            horizon = now - self.claims_ttl_s
            self.store.stop_checking(horizon)
            purged = self.store.purge(horizon)
            if purged:
                log.info("outbox: %d settled intents older than AI_DISPATCH_DEDUPE_TTL_S removed", purged)
        return handled

    def _take_over_orphans(self) -> int:
        """This host's open intents whose worker died: resend the fresh (same key), end the stale as unknown."""
        now = time.time()
        orphans = [intent for intent in self.store.open_intents(instance=self.instance)
                   if intent.owner != self.owner and not owner_alive(intent.owner)]
        taken = [intent for intent in orphans if self.store.take_over(intent.opportunity_id, intent.owner,
                                                                      self.owner)]
        if not taken:
            return 0
        # With the order itself: a worker killed between its commit and its log line left no `dispatch` line, and
        # this is then the intent's first word in the audit trail.
        self._audit([{**intent.order, "event": RESEND_EVENT, "ts": now, "owner": self.owner, "pid": os.getpid()}
                     for intent in taken])
        fresh = [intent for intent in taken if intent.expires_at > now]
        for intent in taken:
            if intent.expires_at <= now:
                self._finish(intent.opportunity_id, None, {
                    "status": "expired",
                    "reason": "unfinished when its worker stopped, and past its expires_at (AI_DISPATCH_MAX_AGE_S): "
                              "not sent again; the engine is asked by its Idempotency-Key whether it executed it"},
                    known=False)
        if fresh:
            log.warning("resending %d dispatch intents left open by a stopped worker", len(fresh))
            for intent in fresh:
                order = Order({**intent.order}, intent.expires_at, arrived_at=now)
                self._senders.submit(self._deliver, order)
        return len(taken)

    def _end_abandoned(self) -> int:
        """Open intents of any instance, well past their deadline, whose owner is not a live worker here: their
        instance stopped. Each ends `expired`, unknown, to be asked of the engine."""
        abandoned = [intent for intent in self.store.open_intents(expired_before=time.time() - self.reconcile_after_s)
                     if not (intent.instance == self.instance and owner_alive(intent.owner))]
        for intent in abandoned:
            self._finish(intent.opportunity_id, None, {
                "status": "expired",
                "reason": "unfinished when its instance stopped, and past its expires_at: not sent again; the "
                          "engine is asked by its Idempotency-Key whether it executed it"}, known=False)
        return len(abandoned)

    def _check(self, intent: OpenIntent) -> None:
        """Ask the engine what became of an order by sending it again with its key, past its deadline (so the
        engine can only replay an answer, never execute); record the verdict once."""
        now = time.time()
        if now < intent.expires_at + self.reconcile_after_s:
            return
        backoff = min(RECHECK_MAX_S, self.reconcile_after_s * 2 ** (intent.checks + 1))
        if not self.store.begin_check(intent, now + backoff):
            return  # another worker asks
        reply = self.engine.execute(intent.order, RECONCILE_TIMEOUT_S)
        verdict = reconciliation_verdict(reply)
        if verdict is None:
            metrics.DISPATCH_RECONCILE_ERRORS.inc()
            log.warning("reconciliation of %r: no verdict from the engine (%s); asked again in %.0f s",
                        intent.opportunity_id, reply.reason, backoff)
            return
        if self.store.settle(intent.opportunity_id, verdict, reply.engine_status):
            metrics.DISPATCH_RECONCILED.labels(verdict=verdict).inc()
            log.info("reconciled %r: %s (engine %s)", intent.opportunity_id, verdict, reply.engine_status)
            self._audit([{"event": RECONCILED_EVENT, "ts": time.time(), "opportunity_id": intent.opportunity_id,
                          "verdict": verdict, "status": RECONCILED_STATUS[verdict],
                          "engine_status": reply.engine_status, "checks": intent.checks + 1, "pid": os.getpid()}])

    # Status

    def state(self) -> dict[str, Any]:
        """This process's view for /status: orders waiting for their claim and since when, outcomes waiting for
        the table, and the table's last problem."""
        since = self._claiming_since
        in_hand = None if since is None else round(time.time() - since, 3)
        problem = self.store.problem
        if problem is None and in_hand is not None and in_hand > STALLED_CLAIM_S:
            problem = (f"stalled: a claim has waited {in_hand:.1f} s for the outbox's database; orders past their "
                       "deadline meanwhile are never sent")
        return {"claims_waiting": len(self._incoming), "claim_in_hand_s": in_hand,
                "outcomes_waiting": len(self._finishing), "problem": problem}

    def close(self) -> None:
        """Stop the recovery; let the senders finish (each is bounded by its order's deadline); write what is
        still waiting."""
        self._stopping.set()
        self._senders.shutdown(wait=True)
        try:
            self._commit()
        except OutboxUnavailable as error:
            log.error("outbox %s: %d outcomes could not be recorded at exit: %s", self.store.name,
                      len(self._finishing), error)


# The final status a reconciliation verdict gives an intent in the books.
RECONCILED_STATUS = {EXECUTED: "dispatched", REJECTED: "rejected", NOT_EXECUTED: "not_executed"}


def reconciliation_verdict(reply: EngineReply) -> str | None:
    """What the engine's answer to a key says it did: a replayed 2xx executed it; 404 or 410 never did; another
    4xx is a replayed refusal; anything else (5xx, no answer) says nothing yet."""
    code = reply.engine_status
    if code is None:
        return None
    if 200 <= code < 300:
        return EXECUTED
    if code in (404, 410):
        return NOT_EXECUTED
    if 400 <= code < 500:
        return REJECTED
    return None


def _resolve(future: Future[Execution], execution: Execution) -> None:
    if not future.done():
        try:
            future.set_result(execution)
        except Exception:  # noqa: BLE001 - resolved by another thread in between
            pass
