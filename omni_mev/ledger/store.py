"""The prediction ledger: what the service predicted for each opportunity, and what then happened.

Predictions are recorded off the hot path: a request appends a row to a
queue, and a thread per worker writes the queue in one transaction every
FLUSH_S. A process killed with SIGKILL loses at most the rows of its last
FLUSH_S (plus a transaction in flight). Outcomes are committed (synced to
disk) before they are answered, by a second thread per worker that stores the
posts waiting together in one transaction; the request's answer waits for it
without holding the worker (submit_outcomes). SQLite (the default, WAL mode)
and PostgreSQL run the same code through SQLAlchemy Core, but for the write
of predictions: on PostgreSQL (psycopg) each flush is one binary COPY into
the day's partition (partitions.py), elsewhere one executemany.

A row the database refuses (it breaks a constraint, or holds a value the
database cannot store) must not hold back the rows queued with it: the writer
splits a refused batch until it has the refused rows alone, writes the rest,
and appends those rows to the dead-letter file (dead_letters.py).
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import sqlalchemy as sa

from omni_mev import metrics
from omni_mev.errors import OmniMevError
from omni_mev.features import N_FEATURES
from omni_mev.ledger import partitions
from omni_mev.ledger.dead_letters import DeadLetters
from omni_mev.database import create_engine, insert_or_ignore
from omni_mev.ledger.schema import create_tables, outcomes, predictions

log = logging.getLogger(__name__)
FLUSH_S = 0.1
# Rows held while the database is unreachable; beyond, the oldest are dropped (and counted).
MAX_PENDING = 200_000
RETRY_S = 1.0
PURGE_EVERY_S = 3600.0
# An outcome may arrive before the prediction it answers has left its worker's queue (written every FLUSH_S):
# an unknown id is answered at once, with this hint to retry.
RETRY_UNKNOWN_AFTER_S = 1
# Clocks of bots and hosts disagree: an outcome's observed_at may lie this long before its prediction was scored,
# or ahead of the service's clock (the schema checks that side).
OBSERVED_AT_SKEW_S = 300.0


class OutcomeStatus(Enum):
    """What became of one posted outcome (the API maps each to its HTTP status)."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # the same outcome was already stored
    UNKNOWN = "unknown"  # no prediction with this id (yet)
    CONFLICT = "conflict"  # a different outcome is already stored, and kept
    INVALID = "invalid"  # not stored: observed before its prediction, or refused by the database


STORED, DUPLICATE, UNKNOWN, CONFLICT, INVALID = OutcomeStatus
GROUP_COMMIT_S = 0.01


class LedgerUnavailable(OmniMevError):
    """The ledger is off, or its database cannot be reached."""

    status = 503
    code = "ledger_unavailable"


class PredictionRow(NamedTuple):
    """One ledger row (a tuple: built on the hot path)."""

    opportunity_id: str
    predicted_at: float
    endpoint: str
    mode: str
    model_type: str
    model_version: str
    confidence: float
    shadow_confidence: float | None
    shadow_version: str | None
    threshold: float
    decision: bool
    implausible: str | None
    steps: int
    features: bytes


@dataclass(frozen=True)
class Outcome:
    """What happened to an opportunity, as its caller reports it."""

    opportunity_id: str
    executed: bool
    success: bool | None
    realised_pnl_usd: float | None
    observed_at: float

    def same_as(self, stored: Any) -> bool:
        """Whether a stored outcome says the same (the time it was observed aside)."""
        return (bool(stored.executed), stored.success, stored.realised_pnl_usd) == (
            self.executed, self.success, self.realised_pnl_usd)


@dataclass(frozen=True)
class OutcomeResult:
    """What became of one posted outcome, and why, in a sentence for the caller."""

    opportunity_id: str
    status: OutcomeStatus
    message: str
    field: str | None = None  # the outcome's field at fault, when INVALID names one


@dataclass(frozen=True)
class LedgerRecords:
    """The latest prediction of each opportunity in a window, with its outcome where one was posted."""

    opportunity_id: list[str]
    predicted_at: np.ndarray
    model_version: list[str]
    confidence: np.ndarray
    shadow_confidence: np.ndarray  # NaN where no shadow scored it
    shadow_version: list[str | None]
    threshold: np.ndarray
    decision: np.ndarray
    profit_usd: np.ndarray  # the opportunity's expected profit after gas (a feature)
    executed: np.ndarray  # bool; False also where no outcome was posted
    has_outcome: np.ndarray
    success: np.ndarray  # float: 1, 0, or NaN (no label)
    realised_pnl_usd: np.ndarray  # NaN where not reported
    windows: list[np.ndarray]  # [steps, 8] float32 each

    def __len__(self) -> int:
        return len(self.opportunity_id)


class Ledger(ABC):
    """Where predictions and outcomes are kept."""

    @abstractmethod
    def record(self, rows: Iterable[PredictionRow]) -> None:
        """Queue predictions; never waits for the database."""

    @abstractmethod
    def add_outcomes(self, posted: Sequence[Outcome]) -> list[OutcomeResult]:
        """Store outcomes, committed before returning; one result per outcome, in order."""

    def submit_outcomes(self, posted: Sequence[Outcome]) -> Future:
        """add_outcomes, done by the time the future is: its result, or its exception."""
        future: Future = Future()
        try:
            future.set_result(self.add_outcomes(posted))
        except Exception as error:  # noqa: BLE001 - the caller gets it from the future
            future.set_exception(error)
        return future

    @abstractmethod
    def records(self, since: float, until: float | None = None) -> LedgerRecords:
        """The latest prediction of each opportunity predicted in [since, until], joined to its outcome."""

    def flush(self) -> None:  # noqa: B027 - a hook: a ledger that queues nothing has nothing to write
        """Write what is queued now."""

    @property
    def pending(self) -> int:
        """Predictions queued and not yet written."""
        return 0

    @property
    def problem(self) -> str | None:
        """Why the last attempt to reach the database failed; None while it works (or nothing was tried)."""
        return None

    @property
    def oldest_pending_at(self) -> float | None:
        """When the oldest prediction not yet written was scored (time.time()); None when none waits."""
        return None


class NullLedger(Ledger):
    """AI_LEDGER_URL=off: predictions are not kept, and the endpoints that need them say so."""

    REASON = "The prediction ledger is off (AI_LEDGER_URL=off); no outcomes or quality figures are kept."

    def record(self, rows: Iterable[PredictionRow]) -> None:
        pass

    def add_outcomes(self, posted: Sequence[Outcome]) -> list[OutcomeResult]:
        raise LedgerUnavailable(self.REASON)

    def records(self, since: float, until: float | None = None) -> LedgerRecords:
        raise LedgerUnavailable(self.REASON)


class SqlLedger(Ledger):
    """The ledger in a SQL database, written by a background thread."""

    def __init__(self, url: str, retention_days: float = 0.0, dead_letters: Path | None = None) -> None:
        self.engine = create_engine(url)
        self.dead_letters = DeadLetters(dead_letters)
        # The background writer's own engine: its commits need not wait for the disk (docs/operations.md).
        self._writer_engine = create_engine(url, synced=False)
        self._write_rows = _row_writer(self._writer_engine)
        self._insert_outcome = insert_or_ignore(self.engine, outcomes).returning(outcomes.c.opportunity_id)
        self._tables_ready = False
        self._partitioned = False
        self._days_ready: set[int] = set()  # the days whose partition this ledger made or found
        self._problem: str | None = None
        try:
            self._ensure_tables()
        except LedgerUnavailable:
            pass  # logged; the writer and the endpoints try again
        self.retention_s = retention_days * 86_400.0
        self._queue: deque[PredictionRow] = deque()
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._next_purge = 0.0
        self._writing_since: float | None = None  # the oldest prediction of the batch being written
        self._writing_count = 0
        self._outcome_requests: deque[tuple[list[Outcome], Future]] = deque()
        self._outcome_wake = threading.Event()
        self._outcome_writer: threading.Thread | None = None

    def _ensure_tables(self) -> None:
        if self._tables_ready:
            return
        try:
            create_tables(self.engine)
        except sa.exc.SQLAlchemyError as error:
            log.error("ledger: database unreachable (%s): predictions are queued, outcomes refused", error)
            self._problem = f"database unreachable ({_cause(error)})"
            raise LedgerUnavailable("The ledger's database cannot be reached.") from None
        self._partitioned = partitions.is_partitioned(self.engine)
        if self.engine.dialect.name == "postgresql" and not self._partitioned:
            log.warning("ledger: predictions is not partitioned (made by an earlier version): retention deletes "
                        "rows; docs/scaling.md says how to partition it")
        self._tables_ready = True

    # Predictions

    def record(self, rows: Iterable[PredictionRow]) -> None:
        self._queue.extend(rows)
        if self._writer is None:
            self._start_writer()

    def _start_writer(self) -> None:
        with self._writer_lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="ledger-writer", daemon=True)
                self._writer.start()
                atexit.register(self._flush_at_exit)

    @property
    def pending(self) -> int:
        return len(self._queue) + self._writing_count

    @property
    def problem(self) -> str | None:
        return self._problem

    @property
    def oldest_pending_at(self) -> float | None:
        # The batch being written first (it left the queue), else the queue's head; read without a lock: a
        # stale answer is off by one flush at most.
        in_flight = self._writing_since
        queue = self._queue
        head = queue[0].predicted_at if queue else None
        if in_flight is None:
            return head
        return in_flight if head is None else min(in_flight, head)

    def _write_loop(self) -> None:
        while True:
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            try:
                self.flush()
                self._purge_if_due()
            except (sa.exc.SQLAlchemyError, LedgerUnavailable) as error:
                metrics.LEDGER_WRITE_ERRORS.inc()
                log.error("ledger: cannot write %d predictions (%s); retrying in %.0fs", self.pending,
                          type(error).__name__, RETRY_S)
                time.sleep(RETRY_S)

    def flush(self) -> None:
        """Write the queued rows in one transaction; on failure they go back to the front of the queue.

        One flush at a time: the writer thread, the exit hook and callers
        (tests, the benchmark) may all flush, and each takes what it counted.
        """
        with self._flush_lock:
            self._flush_queued()

    def _flush_queued(self) -> None:
        count = len(self._queue)
        if not count:
            # Nothing waits: the writer is level with the workers now.
            metrics.LEDGER_OLDEST_PENDING.set(time.time())
            return
        oldest = self._queue[0].predicted_at
        metrics.LEDGER_OLDEST_PENDING.set(oldest)
        self._ensure_tables()
        self._writing_since, self._writing_count = oldest, count
        try:
            self._write_batch([self._queue.popleft() for _ in range(count)])
        finally:
            self._writing_since, self._writing_count = None, 0

    def _write_batch(self, batch: list[PredictionRow]) -> None:
        try:
            self._ensure_partitions(batch)
        except sa.exc.SQLAlchemyError as error:
            self._give_back([batch], 0, error)
            raise
        # Parts still to write, last first; a refused part is split in two until its refused rows are alone.
        parts = [batch]
        written = 0
        while parts:
            part = parts.pop()
            try:
                self._insert(part)
            except (sa.exc.SQLAlchemyError, ValueError, TypeError) as error:
                if not _refused(error) or self._found_partitioned(error):
                    self._give_back(parts + [part], written, error)
                    raise
                if len(part) == 1:
                    self.dead_letters.add("predictions", part[0]._asdict(), _cause(error))
                    continue
                middle = len(part) // 2
                parts += [part[middle:], part[:middle]]
                continue
            written += len(part)
        self._problem = None
        metrics.LEDGER_RECORDS.inc(written)
        metrics.LEDGER_PENDING.set(len(self._queue))

    def _give_back(self, unwritten: list[list[PredictionRow]], written: int, error: Exception) -> None:
        """Put rows a failed write left (parts last first) back at the front of the queue, in their order."""
        self._problem = f"cannot write ({_cause(error)})"
        self._queue.extendleft(reversed([row for part in reversed(unwritten) for row in part]))
        self._drop_overflow()
        metrics.LEDGER_RECORDS.inc(written)
        metrics.LEDGER_PENDING.set(len(self._queue))

    def _found_partitioned(self, error: Exception) -> bool:
        """Whether a write found `predictions` partitioned under a writer that took it for unpartitioned (`omni-mev
        ledger partition` ran while it served): then the rows are not at fault, and the next flush makes their
        partition. A writer that knew already refuses such a row, as a time no partition can hold."""
        if self._partitioned or "no partition of relation" not in str(getattr(error, "orig", error)):
            return False
        log.info("ledger: predictions is partitioned now; the writer makes its days' partitions")
        self._partitioned, self._days_ready = True, set()
        return True

    def _ensure_partitions(self, batch: list[PredictionRow]) -> None:
        """Make the partitions of the batch's days and of tomorrow, once each (a set lookup per flush after)."""
        if not self._partitioned:
            return
        now = time.time()
        needed = partitions.days_of((row.predicted_at for row in batch), now)
        ahead = partitions.day_of(now) + 1
        for day in sorted((needed | {ahead}) - self._days_ready):
            try:
                partitions.create(self._writer_engine, day)
            except sa.exc.DBAPIError as error:
                if day in needed:
                    raise
                log.warning("ledger: cannot make tomorrow's partition yet (%s); trying again at the next flush",
                            _cause(error))
                continue
            self._days_ready.add(day)

    def _insert(self, rows: list[PredictionRow]) -> None:
        with self._writer_engine.begin() as connection:
            self._write_rows(connection, rows)

    def _flush_at_exit(self) -> None:
        try:
            self.flush()
        except (sa.exc.SQLAlchemyError, LedgerUnavailable) as error:
            log.error("ledger: %d predictions not written at exit: %s", self.pending, type(error).__name__)

    def _drop_overflow(self) -> None:
        excess = len(self._queue) - MAX_PENDING
        if excess > 0:
            for _ in range(excess):
                self._queue.popleft()
            metrics.LEDGER_DROPPED.inc(excess)
            log.error("ledger: %d unwritten predictions dropped (more than %d held)", excess, MAX_PENDING)

    def _purge_if_due(self) -> None:
        now = time.time()
        if not self.retention_s or now < self._next_purge:
            return
        self._next_purge = now + PURGE_EVERY_S
        horizon = now - self.retention_s
        # By the service's own clock: a prediction is kept from when it was scored, and its outcome as long as
        # a prediction of its id is (the client's observed_at plays no part, so it cannot purge an outcome
        # early and have another take its place). Partitioned, a day goes once all of it is past the horizon.
        if self._partitioned:
            dropped = partitions.drop_before(self._writer_engine, horizon)
            self._days_ready.difference_update(partitions.day_named(name) for name in dropped)
            gone = f"{len(dropped)} partitions ({', '.join(dropped)})" if dropped else ""
        with self._writer_engine.begin() as connection:
            if not self._partitioned:
                count = connection.execute(predictions.delete().where(predictions.c.predicted_at < horizon)).rowcount
                gone = f"{count} predictions" if count else ""
            connection.execute(outcomes.delete().where(~sa.exists().where(
                predictions.c.opportunity_id == outcomes.c.opportunity_id)))
        if gone:
            log.info("ledger: %s older than the retention removed", gone)

    # Outcomes

    def submit_outcomes(self, posted: Sequence[Outcome]) -> Future:
        """Store outcomes on the outcome thread, never in the caller's: the commit waits for the disk, and the
        worker serves other requests meanwhile. Posts that wait together are stored in one transaction (one
        sync to disk), in the order they came, so each is answered as if alone."""
        future: Future = Future()
        self._outcome_requests.append((list(posted), future))
        if self._outcome_writer is None:
            with self._writer_lock:
                if self._outcome_writer is None:
                    self._outcome_writer = threading.Thread(target=self._outcome_loop, name="ledger-outcomes",
                                                            daemon=True)
                    self._outcome_writer.start()
        self._outcome_wake.set()
        return future

    def _outcome_loop(self) -> None:
        while True:
            self._outcome_wake.wait()
            self._outcome_wake.clear()
            # Posts arriving within GROUP_COMMIT_S share one commit: one sync to disk for all of them.
            time.sleep(GROUP_COMMIT_S)
            while self._outcome_requests:
                group = [self._outcome_requests.popleft() for _ in range(len(self._outcome_requests))]
                try:
                    results = self.add_outcomes([o for posted, _ in group for o in posted])
                except Exception as error:  # noqa: BLE001 - each poster gets it (LedgerUnavailable: a 503)
                    for _, future in group:
                        future.set_exception(error)
                    continue
                start = 0
                for posted, future in group:
                    future.set_result(results[start:start + len(posted)])
                    start += len(posted)

    def add_outcomes(self, posted: Sequence[Outcome]) -> list[OutcomeResult]:
        ids = list(dict.fromkeys(o.opportunity_id for o in posted))
        self._ensure_tables()
        try:
            scored_at, stored = self._known(ids)
            if len(scored_at) < len(ids) and self._queued(set(ids) - set(scored_at)):
                # This worker's own recent predictions are written now; another worker's are a moment away, and
                # the caller is told to retry (nothing here waits for them).
                self.flush()
                scored_at, stored = self._known(ids)
            # Only what is new is written: a repeated outcome costs no write (and no wait for the disk).
            fresh = _first_per_id([o for o in posted if o.opportunity_id in scored_at and o.opportunity_id not in
                                   stored and _observed_in_time(o, scored_at[o.opportunity_id])])
            inserted, refused = self._insert_outcomes(fresh)
            stored.update((o.opportunity_id, o) for o in fresh if o.opportunity_id in inserted)
            raced = [o.opportunity_id for o in fresh if o.opportunity_id not in inserted | refused.keys()]
            if raced:  # another worker stored an outcome for the id in between: it is the first
                stored.update(self._known(raced)[1])
        except sa.exc.SQLAlchemyError as error:
            log.error("ledger: cannot store outcomes: %s", error)
            raise LedgerUnavailable("The ledger's database cannot be reached; nothing was stored, retry.") from None
        first = {id(o) for o in fresh}
        return [self._result(o, scored_at, stored, id(o) in first and o.opportunity_id in inserted, refused)
                for o in posted]

    def _insert_outcomes(self, fresh: list[Outcome]) -> tuple[set[str], dict[str, str]]:
        """Insert the outcomes not stored yet, committed; the ids inserted, and those the database refused (each
        with its error class, set aside in the dead letters). A refused batch is inserted again one outcome at a
        time, so that only the refused ones are left out."""
        if not fresh:
            return set(), {}
        received = time.time()
        rows: list[dict[str, Any]] = [{"opportunity_id": o.opportunity_id, "executed": o.executed, "success": o.success,
                 "realised_pnl_usd": o.realised_pnl_usd, "observed_at": o.observed_at, "received_at": received}
                for o in fresh]
        statement = self._insert_outcome
        try:
            with self.engine.begin() as connection:
                return set(connection.execute(statement, rows).scalars()), {}
        except (sa.exc.SQLAlchemyError, ValueError, TypeError) as error:
            if not _refused(error):
                raise
        inserted: set[str] = set()
        refused: dict[str, str] = {}
        for row in rows:
            try:
                with self.engine.begin() as connection:
                    inserted |= set(connection.execute(statement, [row]).scalars())
            except (sa.exc.SQLAlchemyError, ValueError, TypeError) as error:
                if not _refused(error):
                    raise
                refused[row["opportunity_id"]] = _cause(error)
                self.dead_letters.add("outcomes", row, _cause(error))
        return inserted, refused

    @staticmethod
    def _result(outcome: Outcome, scored_at: dict[str, float], stored: dict[str, Any], inserted: bool,
                refused: dict[str, str]) -> OutcomeResult:
        opportunity_id = outcome.opportunity_id
        if opportunity_id in refused and opportunity_id not in stored:
            return OutcomeResult(opportunity_id, INVALID, f"The ledger's database refused this outcome "
                                                          f"({refused[opportunity_id]}); it was set aside, not stored.")
        if opportunity_id not in scored_at:
            return OutcomeResult(opportunity_id, UNKNOWN,
                                 "No prediction with this opportunity_id in the ledger yet: one scored in the last "
                                 f"moment may still be on its way to the database; retry after "
                                 f"{RETRY_UNKNOWN_AFTER_S} s.")
        if not _observed_in_time(outcome, scored_at[opportunity_id]):
            return OutcomeResult(opportunity_id, INVALID,
                                 f"observed_at is before the prediction it answers was scored "
                                 f"({_utc(scored_at[opportunity_id])}, allowing {OBSERVED_AT_SKEW_S:.0f} s of clock "
                                 "skew); nothing was stored.", field="observed_at")
        if not outcome.same_as(stored[opportunity_id]):
            return OutcomeResult(opportunity_id, CONFLICT,
                                 "A different outcome for this opportunity_id is already stored; it is kept.")
        if inserted:
            return OutcomeResult(opportunity_id, STORED, "Stored.")
        return OutcomeResult(opportunity_id, DUPLICATE, "The same outcome was already stored.")

    def _queued(self, ids: set[str]) -> bool:
        """Whether a prediction of one of these ids waits in this worker's queue (a scan: the queue holds about
        FLUSH_S of predictions)."""
        return any(row.opportunity_id in ids for row in list(self._queue))

    def _known(self, ids: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
        """For the ids with a prediction: when the latest was scored (the one an outcome measures), and the
        outcome stored for those that have one, in one read."""
        with self.engine.connect() as connection:
            rows = connection.execute(_KNOWN, {"ids": ids}).all()
        return ({row.opportunity_id: row.scored_at for row in rows},
                {row.opportunity_id: row for row in rows if row.outcome_id is not None})

    # Reads

    def records(self, since: float, until: float | None = None) -> LedgerRecords:
        self._ensure_tables()
        try:
            return read_records(self.engine, since, until)
        except sa.exc.SQLAlchemyError as error:
            log.error("ledger: cannot read: %s", error)
            raise LedgerUnavailable("The ledger's database cannot be reached.") from None

    def labelled_count(self, since: float, until: float) -> int:
        """Opportunities predicted in [since, until] whose outcome carries a success label (one count, no rows
        read: the retrainer asks it every run)."""
        self._ensure_tables()
        query = (sa.select(sa.func.count(sa.distinct(predictions.c.opportunity_id)))
                 .select_from(predictions.join(outcomes, outcomes.c.opportunity_id == predictions.c.opportunity_id))
                 .where(predictions.c.predicted_at >= since, predictions.c.predicted_at <= until,
                        outcomes.c.success.is_not(None)))
        try:
            with self.engine.connect() as connection:
                return int(connection.execute(query).scalar() or 0)
        except sa.exc.SQLAlchemyError as error:
            log.error("ledger: cannot read: %s", error)
            raise LedgerUnavailable("The ledger's database cannot be reached.") from None


# Built once: building a statement costs more than the database's work for one outcome post.
_KNOWN = (sa.select(predictions.c.opportunity_id, sa.func.max(predictions.c.predicted_at).label("scored_at"),
                    outcomes.c.opportunity_id.label("outcome_id"), outcomes.c.executed, outcomes.c.success,
                    outcomes.c.realised_pnl_usd)
          .select_from(predictions.outerjoin(outcomes, outcomes.c.opportunity_id == predictions.c.opportunity_id))
          .where(predictions.c.opportunity_id.in_(sa.bindparam("ids", expanding=True)))
          .group_by(predictions.c.opportunity_id, outcomes.c.opportunity_id, outcomes.c.executed,
                    outcomes.c.success, outcomes.c.realised_pnl_usd))


def read_records(engine: sa.Engine, since: float, until: float | None = None) -> LedgerRecords:
    """The latest prediction of each opportunity predicted in [since, until], joined to its outcome."""
    in_window = predictions.c.predicted_at >= since
    if until is not None:
        in_window &= predictions.c.predicted_at <= until
    latest = sa.select(sa.func.max(predictions.c.id)).where(in_window).group_by(predictions.c.opportunity_id)
    query = (sa.select(predictions.c.opportunity_id, predictions.c.predicted_at, predictions.c.model_version,
                       predictions.c.confidence, predictions.c.shadow_confidence, predictions.c.shadow_version,
                       predictions.c.threshold, predictions.c.decision, predictions.c.steps, predictions.c.features,
                       outcomes.c.opportunity_id.label("outcome_id"), outcomes.c.executed, outcomes.c.success,
                       outcomes.c.realised_pnl_usd)
             .select_from(predictions.outerjoin(outcomes, outcomes.c.opportunity_id == predictions.c.opportunity_id))
             .where(predictions.c.id.in_(latest))
             .order_by(predictions.c.predicted_at))
    with engine.connect() as connection:
        return _records(list(connection.execute(query).all()))


def _row_writer(engine: sa.Engine) -> Any:
    """How a flush writes its rows on this engine: (connection, rows) -> None, inside the caller's transaction."""
    columns = list(PredictionRow._fields)
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        return _binary_copy(engine, columns)
    # Straight to the driver's executemany: SQLAlchemy's per-row processing cost as much as the database itself,
    # in the worker that serves requests.
    compiled = predictions.insert().inline().compile(dialect=engine.dialect, column_keys=columns)
    statement = str(compiled)
    if compiled.positional:
        order = [columns.index(name) for name in compiled.positiontup or ()]
        if order == list(range(len(order))):
            as_params: Any = list  # the rows' tuples as they are
        else:
            def as_params(rows: list[PredictionRow]) -> list[tuple[Any, ...]]:
                return [tuple(row[i] for i in order) for row in rows]
    else:
        def as_params(rows: list[PredictionRow]) -> list[dict[str, Any]]:
            return [row._asdict() for row in rows]

    def execute_many(connection: sa.Connection, rows: list[PredictionRow]) -> None:
        connection.exec_driver_sql(statement, as_params(rows))

    return execute_many


# PostgreSQL's binary COPY type of each column type of `predictions` (COPY BINARY sends each value as its type).
_COPY_TYPES = ((sa.SmallInteger, "int2"), (sa.Boolean, "bool"), (sa.Float, "float8"), (sa.LargeBinary, "bytea"),
               (sa.String, "varchar"))


def _binary_copy(engine: sa.Engine, columns: list[str]) -> Any:
    """One COPY ... FROM STDIN (FORMAT BINARY) per flush, through psycopg's copy: rows/s per PostgreSQL went up
    several times over executemany's INSERTs (docs/scaling.md). The driver's errors come back as SQLAlchemy's
    (DataError, IntegrityError...), so a refused row is told from an unreachable database as for an INSERT."""
    types = [next(name for kind, name in _COPY_TYPES if isinstance(predictions.c[column].type, kind))
             for column in columns]
    statement = f"COPY predictions ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    dbapi = engine.dialect.loaded_dbapi

    def copy(connection: sa.Connection, rows: list[PredictionRow]) -> None:
        try:
            with connection.connection.dbapi_connection.cursor() as cursor:  # type: ignore[union-attr]
                with cursor.copy(statement) as writer:
                    writer.set_types(types)
                    for row in rows:
                        writer.write_row(row)
        except dbapi.Error as error:
            raise sa.exc.DBAPIError.instance(statement, None, error, dbapi.Error, dialect=engine.dialect) from None

    return copy


def _cause(error: Exception) -> str:
    """The driver's error class behind SQLAlchemy's (OperationalError, DataError...): no message, no URL."""
    return type(getattr(error, "orig", None) or error).__name__


def _refused(error: Exception) -> bool:
    """Whether the database refused the rows themselves (a constraint, a value it cannot store), not the write.

    Such rows fail however often they are retried; an unreachable or broken
    database fails every row alike, and the rows wait for it.
    """
    if isinstance(error, (ValueError, TypeError)):  # the driver could not send the value at all
        return True
    return isinstance(error, (sa.exc.DataError, sa.exc.IntegrityError))


def _observed_in_time(outcome: Outcome, scored_at: float) -> bool:
    return outcome.observed_at >= scored_at - OBSERVED_AT_SKEW_S


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _first_per_id(posted: Sequence[Outcome]) -> list[Outcome]:
    seen: dict[str, Outcome] = {}
    for outcome in posted:
        seen.setdefault(outcome.opportunity_id, outcome)
    return list(seen.values())


def _records(rows: list[Any]) -> LedgerRecords:
    def floats(values: Iterable[Any]) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)

    windows = [np.frombuffer(r.features, dtype="<f4").reshape(r.steps, N_FEATURES) for r in rows]
    has_outcome = np.array([r.outcome_id is not None for r in rows], dtype=bool)
    return LedgerRecords(
        opportunity_id=[r.opportunity_id for r in rows],
        predicted_at=floats(r.predicted_at for r in rows),
        model_version=[r.model_version for r in rows],
        confidence=floats(r.confidence for r in rows),
        shadow_confidence=floats(r.shadow_confidence for r in rows),
        shadow_version=[r.shadow_version for r in rows],
        threshold=floats(r.threshold for r in rows),
        decision=np.array([bool(r.decision) for r in rows], dtype=bool),
        profit_usd=np.array([float(w[-1, 0]) for w in windows], dtype=np.float64),
        executed=np.array([bool(r.executed) for r in rows], dtype=bool),
        has_outcome=has_outcome,
        success=floats(r.success for r in rows),
        realised_pnl_usd=floats(r.realised_pnl_usd for r in rows),
        windows=windows,
    )


def build_ledger(url: str | None, retention_days: float, dead_letters: Path | None = None) -> Ledger:
    """The SQL ledger at `url`, or the null ledger when it is off."""
    if url is None:
        return NullLedger()
    return SqlLedger(url, retention_days, dead_letters)
