"""The dispatch outbox: every logged intent to dispatch ends in exactly one recorded outcome.

An intent is a `dispatch` line of the decision log, fsynced before the engine
hears of the order. From then on the outbox, not the request, owns it:

- its sender threads (AI_DISPATCH_CONCURRENCY per worker) post the orders to
  the engine, so a batch's orders go out concurrently and a request only waits
  for their answers up to its own bound, and answers `queued` for the rest;
- an order is never sent past its deadline, `expires_at` (logged time +
  AI_DISPATCH_MAX_AGE_S): an arbitrage is stale after its block. One still
  waiting for a sender then ends `expired`; the engine's answer is awaited at
  most until the deadline;
- each answer becomes one `outcome` line; outcomes are fsynced in groups, and
  an intent that already has one never gets a second;
- intents left open by a worker that died (killed, or the host crashed) are
  taken over by a live worker of the host: resent with the same
  Idempotency-Key while younger than the deadline, recorded `expired` after.
"""
from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omni_mev import metrics
from omni_mev.trading.decision_log import OUTCOME_EVENT, RESEND_EVENT, DecisionLog
from omni_mev.trading.engine import EngineClient, EngineReply

log = logging.getLogger(__name__)
Execution = dict[str, Any]
# The `execution.status` values a response may carry: the four ends of an intent, `queued` (its end is still
# to come, in the decision log), and `skipped` (nothing was sent).
TERMINAL_STATUSES = ("dispatched", "rejected", "failed", "expired")
EXECUTION_STATUSES = (*TERMINAL_STATUSES, "queued", "skipped")
# How often a worker looks for intents that a dead worker left open.
RECOVERY_INTERVAL_S = 1.0
ORDER_FIELDS = ("opportunity_id", "features", "confidence", "threshold", "model_version", "expires_at")


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
    """Whether the process that owns an intent still runs."""
    if not owner:
        return False
    boot, pid, ticks = owner.rsplit(":", 2)
    return boot == _boot_id() and pid.isdigit() and _start_ticks(int(pid)) == ticks


@dataclass
class Intent:
    """One logged intent: its dispatch record, and the future of its outcome."""

    record: dict[str, Any]
    future: Future

    @property
    def opportunity_id(self) -> str:
        return self.record["opportunity_id"]


def queued(wait_s: float) -> Execution:
    """The `execution` of an order whose engine answer did not come within the request's wait."""
    return {"status": "queued",
            "reason": f"no answer from the engine within {wait_s:g} s; the order is finished in the background "
                      "under the same Idempotency-Key before its expires_at, and its outcome is logged"}


@dataclass(frozen=True)
class PendingExecution:
    """An order's `execution` as a request will report it: its outcome if logged by `deadline` (time.monotonic),
    `queued` otherwise. The request waits for it without holding the worker (omni_mev.deferred)."""

    future: Future
    deadline: float
    wait_s: float

    def settled(self) -> Execution:
        """The outcome if it is logged already, else `queued`; never waits."""
        return self.future.result() if self.future.done() else queued(self.wait_s)


class Outbox:
    """Sender threads, the group commit of outcomes, and the recovery of dead workers' intents."""

    def __init__(self, decisions: DecisionLog, engine: EngineClient, concurrency: int) -> None:
        self.log = decisions
        self.engine = engine
        self.owner = process_owner()
        self._senders = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="dispatch")
        self._pending: list[dict[str, Any]] = []  # outcome records not yet written
        self._pending_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._recovery: threading.Thread | None = None
        self._stopping = threading.Event()
        atexit.register(self.close)

    # Sending

    def send(self, records: list[dict[str, Any]]) -> list[Intent]:
        """Send logged intents in the background; their futures resolve to the `execution` once logged."""
        intents = [Intent(record, Future()) for record in records]
        for intent in intents:
            self._senders.submit(self._deliver, intent)
        return intents

    def _deliver(self, intent: Intent) -> None:
        """Post one order before its deadline, then record its outcome; never raises."""
        try:
            remaining = intent.record["expires_at"] - time.time()
            if remaining <= 0:
                self._finish(intent, {"status": "expired", "reason": "stale: its expires_at passed before a "
                                                                    "sender was free (AI_DISPATCH_MAX_AGE_S); "
                                                                    "never sent"})
                return
            order = {name: intent.record[name] for name in ORDER_FIELDS}
            reply: EngineReply = self.engine.execute(order, remaining)
            self._finish(intent, reply.to_dict())
        except Exception as error:  # noqa: BLE001 - the intent must still end in one outcome
            log.exception("dispatch of %r failed unexpectedly", intent.opportunity_id)
            self._finish(intent, {"status": "failed", "reason": f"dispatch failed in the service: "
                                                                f"{type(error).__name__}"})

    def pending(self, intents: list[Intent], wait_s: float) -> list[PendingExecution]:
        """Each intent's execution as it will stand at one deadline, `wait_s` from now, for all of them."""
        deadline = time.monotonic() + wait_s
        return [PendingExecution(intent.future, deadline, wait_s) for intent in intents]

    # Outcomes, fsynced in groups

    def _finish(self, intent: Intent, execution: Execution) -> None:
        """Log the intent's one outcome (or keep the one already logged), then resolve its future."""
        status = execution["status"]
        metrics.DISPATCHES.labels(status=status).inc()
        if status != "dispatched":
            log.warning("dispatch of %r: %s (%s)", intent.opportunity_id, status, execution.get("reason"))
        record = {"event": OUTCOME_EVENT, "ts": time.time(), "opportunity_id": intent.opportunity_id, **execution,
                  "pid": os.getpid()}
        with self._pending_lock:
            self._pending.append(record)
        try:
            self._commit()
        except OSError as error:  # kept pending: the next outcome's commit (or the exit's) writes it
            log.error("decision log %s: cannot record the outcome of %r yet: %s", self.log.path,
                      intent.opportunity_id, error)
            execution = {**execution, "reason": f"{execution.get('reason')}; its outcome is not logged yet "
                                                f"({error.strerror or error})"}
        if not intent.future.done():
            intent.future.set_result(execution)

    def _commit(self) -> None:
        """Write every pending outcome in one write and one fsync; whoever comes first writes for all."""
        with self._commit_lock:
            with self._pending_lock:
                batch, self._pending = self._pending, []
            if not batch:
                return  # written by the thread before us
            try:
                with self.log.locked() as decisions:
                    decisions.append_many([record for record in batch
                                           if not decisions.has_outcome(record["opportunity_id"])])
            except OSError:
                with self._pending_lock:
                    self._pending[:0] = batch
                raise

    # Recovery of intents a dead worker left open

    def start_recovery(self, interval_s: float = RECOVERY_INTERVAL_S) -> None:
        """Look for orphaned intents now and every `interval_s`, in a daemon thread."""
        self._recovery = threading.Thread(target=self._recover_loop, args=(interval_s,), name="dispatch-recovery",
                                          daemon=True)
        self._recovery.start()

    def _recover_loop(self, interval_s: float) -> None:
        while not self._stopping.is_set():
            try:
                self.recover()
            except Exception:  # noqa: BLE001 - try again next time
                log.exception("recovery of open dispatch intents failed")
            self._stopping.wait(interval_s)

    def recover(self) -> int:
        """Take over the open intents whose owner is dead: resend the fresh, expire the stale; how many."""
        now = time.time()
        with self.log.locked() as decisions:
            orphans = [record for record in decisions.open_intents() if record.get("owner") != self.owner
                       and not owner_alive(record.get("owner"))]
            if not orphans:
                return 0
            fresh = [record for record in orphans if record.get("expires_at", 0) > now]
            stale = [record for record in orphans if record.get("expires_at", 0) <= now]
            decisions.append_many([{"event": RESEND_EVENT, "ts": now, "opportunity_id": record["opportunity_id"],
                                    "owner": self.owner, "pid": os.getpid()} for record in fresh])
        for record in stale:
            self._finish(Intent(record, Future()), {
                "status": "expired",
                "reason": "unfinished when its worker stopped, and past its expires_at (AI_DISPATCH_MAX_AGE_S): "
                          "not sent again; whether the engine executed it is the engine's to tell, by its "
                          "Idempotency-Key"})
        if fresh:
            log.warning("resending %d dispatch intents left open by a stopped worker", len(fresh))
            self.send(fresh)
        return len(orphans)

    def close(self) -> None:
        """Stop the recovery; let the senders finish (each is bounded by its order's deadline); write what
        is still pending."""
        self._stopping.set()
        self._senders.shutdown(wait=True)
        try:
            self._commit()
        except OSError as error:
            log.error("decision log %s: %d outcomes could not be written at exit: %s", self.log.path,
                      len(self._pending), error)
