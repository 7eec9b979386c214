"""The dispatch outbox's table: one row per opportunity_id that was, or is about to be, sent to the engine.

A row is an intent (committed, synced to disk, before the engine hears of the
order), its one outcome, and what the engine later says of it by key
(reconciliation, docs/trading.md). Its primary key is the claim: the first
INSERT of an id wins, so the workers and instances that share the table never
both send one opportunity. On PostgreSQL, shared by a fleet, that claim needs
no Redis; on SQLite it covers the host.

Nothing is read at start-up: workers ask the table by key and by small
indexed queries (the open intents, the checks that are due), so starting and
reloading take the same time whatever the history.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from omni_mev.database import create_engine, insert_or_ignore, sqlite_directory

log = logging.getLogger(__name__)

metadata = sa.MetaData()

intents = sa.Table(
    "dispatch_intents", metadata,
    sa.Column("opportunity_id", sa.String(128), primary_key=True),
    # Which host (hostname and boot) and which process own the intent: a live worker of the same host takes over
    # the open intents of one that died.
    sa.Column("instance", sa.String(255), nullable=False),
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Column("logged_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    # The order as the engine gets it (JSON): a resend, and a reconciliation, send it again unchanged.
    sa.Column("order_body", sa.Text, nullable=False),
    # NULL while the intent is open; then dispatched | rejected | failed | expired.
    sa.Column("status", sa.String(10)),
    # Whether the engine's answer is known: false after a timeout, a connection closed without an answer, or an
    # intent a stopped worker may have sent. Those are asked of the engine by key.
    sa.Column("known", sa.Boolean),
    sa.Column("reason", sa.Text),
    sa.Column("engine_status", sa.Integer),
    sa.Column("ended_at", sa.Float),
    # What the engine said of the key afterwards: executed | rejected | not_executed.
    sa.Column("reconciled", sa.String(16)),
    sa.Column("reconciled_at", sa.Float),
    sa.Column("checks", sa.Integer, nullable=False, server_default="0"),
    # When to ask the engine next; NULL when there is nothing to ask.
    sa.Column("next_check_at", sa.Float),
)
_OPEN = intents.c.status.is_(None)
_TO_CHECK = intents.c.next_check_at.is_not(None)
# Outcomes still unknown: the engine's answer never came and was not yet had by key.
_UNSETTLED = sa.and_(intents.c.known.is_(False), intents.c.reconciled.is_(None))
# Unsettled after the engine was asked at least once: what `omni-mev decisions` lists and the gauge counts.
_UNRECONCILED = sa.and_(_UNSETTLED, intents.c.checks >= 1)
sa.Index("ix_dispatch_intents_open", intents.c.expires_at, sqlite_where=_OPEN, postgresql_where=_OPEN)
sa.Index("ix_dispatch_intents_next_check", intents.c.next_check_at, sqlite_where=_TO_CHECK,
         postgresql_where=_TO_CHECK)
sa.Index("ix_dispatch_intents_unsettled", intents.c.checks, sqlite_where=_UNSETTLED, postgresql_where=_UNSETTLED)
sa.Index("ix_dispatch_intents_logged_at", intents.c.logged_at)

# One-time facts about the table (the import of a decision log written by an earlier version).
outbox_facts = sa.Table(
    "outbox_facts", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# What an order sent to the engine holds (the table's order_body; a resend and a reconciliation send it unchanged).
ORDER_FIELDS = ("opportunity_id", "features", "confidence", "threshold", "model_version", "expires_at")

# Verdicts of a reconciliation.
EXECUTED, REJECTED, NOT_EXECUTED = "executed", "rejected", "not_executed"


class OutboxUnavailable(Exception):
    """The outbox's database cannot be reached or written: nothing may be sent."""


@dataclass(frozen=True)
class Intent:
    """An intent to dispatch, as it is claimed."""

    opportunity_id: str
    logged_at: float
    expires_at: float
    order: dict[str, Any]


@dataclass(frozen=True)
class Ending:
    """The one outcome of an intent."""

    opportunity_id: str
    status: str
    known: bool
    reason: str | None
    engine_status: int | None = None


@dataclass(frozen=True)
class OpenIntent:
    """An intent still without an outcome, or one whose outcome is to be asked of the engine."""

    opportunity_id: str
    instance: str
    owner: str
    expires_at: float
    order: dict[str, Any]
    checks: int = 0
    next_check_at: float | None = None


class HostLock:
    """Exclusive access to a SQLite file across this host's processes and this process's threads.

    SQLite serialises writers itself, but a writer that finds the file locked
    sleeps in steps of 1 to 100 ms; a flock wakes the next writer the moment
    the last one is done, which keeps a dispatch's claim at the cost of its
    commit.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.RLock()  # a holder may write again (a one-time import)
        self._depth = 0
        self._fd: int | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
            if self._depth == 0:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)


def _cause(error: Exception) -> str:
    return type(getattr(error, "orig", None) or error).__name__


class IntentStore:
    """The table, through one engine whose commits reach the disk before they return."""

    def __init__(self, url: str) -> None:
        self.url = url
        # For logs: the URL without its password.
        self.name = sa.engine.make_url(url).render_as_string(hide_password=True)
        self.engine = create_engine(url, synced=True)
        # A PostgreSQL outbox is shared by every instance that names it: its claims hold across hosts.
        self.shared = self.engine.dialect.name == "postgresql"
        directory = sqlite_directory(url)
        database = sa.engine.make_url(url).database
        self._lock = HostLock(Path(f"{database}.lock")) if directory is not None and database else None
        self._insert = insert_or_ignore(self.engine, intents).returning(intents.c.opportunity_id)
        self._ready = False
        self._ready_lock = threading.Lock()
        self.problem: str | None = None

    def _writing(self) -> Any:
        return self._lock.held() if self._lock is not None else nullcontext()

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sa.Connection]:
        """A transaction; any database error becomes OutboxUnavailable (and is remembered for /status)."""
        try:
            self._ensure_tables()
            with self._writing() if write else nullcontext():
                with self.engine.begin() as connection:
                    yield connection
        except sa.exc.SQLAlchemyError as error:
            self.problem = f"database unreachable or refusing writes ({_cause(error)})"
            raise OutboxUnavailable(self.problem) from error
        self.problem = None

    def _ensure_tables(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            with self._writing():
                try:
                    metadata.create_all(self.engine, checkfirst=True)
                except sa.exc.DBAPIError:  # another process created them between the check and the CREATE
                    metadata.create_all(self.engine, checkfirst=True)
            self._ready = True

    # Claims

    def claim(self, wanted: Sequence[Intent], instance: str, owner: str,
              confirm: Callable[[list[str]], set[str]] | None = None) -> dict[str, str | None]:
        """Insert the intents, committed; for each id, None if it is now ours, else the instance that holds it
        (or "" when `confirm` refused it: a second claim store said it was taken, or could not be asked).

        `confirm` (Redis's claim, where the outbox is this host's alone) runs
        inside the transaction on the ids inserted; those it does not confirm
        are removed again before the commit.
        """
        if not wanted:
            return {}
        rows = [{"opportunity_id": intent.opportunity_id, "instance": instance, "owner": owner,
                 "logged_at": intent.logged_at, "expires_at": intent.expires_at,
                 "order_body": orjson.dumps(intent.order, option=orjson.OPT_SERIALIZE_NUMPY).decode(),
                 "checks": 0} for intent in wanted]
        with self._transaction() as connection:
            inserted = set(connection.execute(self._insert, rows).scalars())
            refused: set[str] = set()
            if confirm is not None and inserted:
                confirmed = confirm(sorted(inserted))
                refused = inserted - confirmed
                if refused:
                    connection.execute(intents.delete().where(intents.c.opportunity_id.in_(refused)))
                inserted -= refused
            taken = [intent.opportunity_id for intent in wanted
                     if intent.opportunity_id not in inserted and intent.opportunity_id not in refused]
            holders = dict(connection.execute(
                sa.select(intents.c.opportunity_id, intents.c.instance)
                .where(intents.c.opportunity_id.in_(taken))).all()) if taken else {}
        result: dict[str, str | None] = {}
        for intent in wanted:
            opportunity_id = intent.opportunity_id
            result[opportunity_id] = (None if opportunity_id in inserted else
                                      "" if opportunity_id in refused else holders.get(opportunity_id, ""))
        return result

    # Outcomes

    def finish(self, endings: Sequence[Ending], check_after_s: float) -> dict[str, Ending]:
        """Record each intent's one outcome, committed; returns the outcome on record for each id (the one given,
        or an earlier one: an intent never gets a second). An unknown outcome is due to be asked of the engine
        `check_after_s` after the order's expires_at."""
        if not endings:
            return {}
        ids = [ending.opportunity_id for ending in endings]
        with self._transaction() as connection:
            query = sa.select(intents.c.opportunity_id, intents.c.expires_at).where(
                intents.c.opportunity_id.in_(ids), _OPEN)
            if self.shared:
                query = query.with_for_update()
            still_open = dict(connection.execute(query).all())
            now = time.time()
            first = [ending for ending in _first_per_id(endings) if ending.opportunity_id in still_open]
            if first:
                connection.execute(_ENDING, [{
                    "b_id": ending.opportunity_id, "b_status": ending.status, "b_known": ending.known,
                    "b_reason": ending.reason, "b_engine_status": ending.engine_status, "b_ended_at": now,
                    "b_next_check_at": None if ending.known else still_open[ending.opportunity_id] + check_after_s,
                } for ending in first])
            recorded = {ending.opportunity_id: ending for ending in first}
            earlier = [opportunity_id for opportunity_id in ids if opportunity_id not in recorded]
            if earlier:
                for row in connection.execute(sa.select(
                        intents.c.opportunity_id, intents.c.status, intents.c.known, intents.c.reason,
                        intents.c.engine_status).where(intents.c.opportunity_id.in_(earlier))).all():
                    if row.status is not None:
                        recorded[row.opportunity_id] = Ending(row.opportunity_id, row.status, bool(row.known),
                                                              row.reason, row.engine_status)
        return recorded

    # Recovery

    def open_intents(self, instance: str | None = None, expired_before: float | None = None) -> list[OpenIntent]:
        """Open intents: of one instance, or those of any instance whose order expired before a time."""
        query = sa.select(*_OPEN_COLUMNS).where(_OPEN).order_by(intents.c.expires_at)
        if instance is not None:
            query = query.where(intents.c.instance == instance)
        if expired_before is not None:
            query = query.where(intents.c.expires_at < expired_before)
        with self._transaction(write=False) as connection:
            return [_open_intent(row) for row in connection.execute(query.limit(1000)).all()]

    def take_over(self, opportunity_id: str, previous_owner: str, owner: str) -> bool:
        """Become the owner of an open intent whose owner died; False if another worker was first."""
        with self._transaction() as connection:
            return connection.execute(intents.update().where(
                intents.c.opportunity_id == opportunity_id, intents.c.owner == previous_owner, _OPEN,
            ).values(owner=owner)).rowcount == 1

    # Reconciliation

    def due_checks(self, now: float, limit: int = 64) -> list[OpenIntent]:
        """Intents whose outcome is to be asked of the engine now."""
        query = (sa.select(*_OPEN_COLUMNS).where(_TO_CHECK, intents.c.next_check_at <= now)
                 .order_by(intents.c.next_check_at).limit(limit))
        with self._transaction(write=False) as connection:
            return [_open_intent(row) for row in connection.execute(query).all()]

    def begin_check(self, intent: OpenIntent, next_check_at: float) -> bool:
        """Take this check (and set the next one, should it fail); False if another worker took it."""
        with self._transaction() as connection:
            return connection.execute(intents.update().where(
                intents.c.opportunity_id == intent.opportunity_id,
                intents.c.next_check_at == intent.next_check_at,
            ).values(next_check_at=next_check_at, checks=intents.c.checks + 1)).rowcount == 1

    def settle(self, opportunity_id: str, verdict: str, engine_status: int | None) -> bool:
        """Record what the engine said of the key; False if it was recorded already."""
        with self._transaction() as connection:
            return connection.execute(intents.update().where(
                intents.c.opportunity_id == opportunity_id, intents.c.reconciled.is_(None),
            ).values(reconciled=verdict, reconciled_at=time.time(), next_check_at=None,
                     engine_status=sa.func.coalesce(engine_status, intents.c.engine_status))).rowcount == 1

    def stop_checking(self, before: float) -> int:
        """Stop asking the engine of intents logged before a time (past its keys' retention): they stay listed
        as unreconciled."""
        with self._transaction() as connection:
            return connection.execute(intents.update().where(
                _TO_CHECK, intents.c.logged_at < before).values(next_check_at=None)).rowcount

    # Reports

    def unreconciled(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Intents whose engine answer is unknown and could not be had by key: asked at least once, no verdict."""
        query = (sa.select(intents.c.opportunity_id, intents.c.status, intents.c.reason, intents.c.logged_at,
                           intents.c.checks, intents.c.next_check_at)
                 .where(_UNRECONCILED).order_by(intents.c.logged_at).limit(limit))
        with self._transaction(write=False) as connection:
            return [dict(row._mapping) for row in connection.execute(query).all()]

    def count_unreconciled(self) -> int:
        """How many intents unreconciled() lists (without the limit)."""
        with self._transaction(write=False) as connection:
            return int(connection.execute(sa.select(sa.func.count()).where(_UNRECONCILED))
                       .scalar_one())

    def counts(self) -> dict[str, Any]:
        """Intents by outcome and by reconciliation verdict; open and unreconciled counts."""
        with self._transaction(write=False) as connection:
            by_status: dict[str, int] = dict(connection.execute(
                sa.select(sa.func.coalesce(intents.c.status, "open"), sa.func.count())
                .group_by(sa.func.coalesce(intents.c.status, "open"))).all())
            by_verdict: dict[str, int] = dict(connection.execute(
                sa.select(intents.c.reconciled, sa.func.count()).where(intents.c.reconciled.is_not(None))
                .group_by(intents.c.reconciled)).all())
            awaiting = connection.execute(sa.select(sa.func.count()).where(_UNSETTLED, intents.c.checks == 0)
                                          ).scalar_one()
            unreconciled = connection.execute(sa.select(sa.func.count()).where(_UNRECONCILED)
                                              ).scalar_one()
            oldest_open = connection.execute(sa.select(sa.func.min(intents.c.logged_at)).where(_OPEN)).scalar()
        return {"outcomes": {str(k): int(v) for k, v in by_status.items()},
                "reconciled": {str(k): int(v) for k, v in by_verdict.items()},
                "awaiting_reconciliation": int(awaiting), "unreconciled": int(unreconciled),
                "oldest_open_logged_at": oldest_open}

    def purge(self, before: float, chunk: int = 500, pause_s: float = 0.05) -> int:
        """Remove settled intents logged before a time (their ids may be used again); open and unreconciled ones
        stay. In transactions of `chunk` rows, `pause_s` apart: the claims of requests never wait behind a long
        delete, nor behind one that takes the lock back at once."""
        settled = (intents.c.status.is_not(None) & (intents.c.known.is_(True) | intents.c.reconciled.is_not(None)))
        oldest = (sa.select(intents.c.opportunity_id).where(intents.c.logged_at < before, settled)
                  .order_by(intents.c.logged_at).limit(chunk))
        removed = 0
        while True:
            with self._transaction() as connection:
                gone = connection.execute(intents.delete().where(intents.c.opportunity_id.in_(oldest))).rowcount
            removed += gone
            if gone < chunk:
                return removed
            time.sleep(pause_s)

    # One-time facts

    def fact(self, name: str) -> str | None:
        with self._transaction(write=False) as connection:
            return connection.execute(sa.select(outbox_facts.c.value).where(outbox_facts.c.name == name)).scalar()

    def record_fact(self, name: str, value: str) -> None:
        with self._transaction() as connection:
            connection.execute(insert_or_ignore(self.engine, outbox_facts), [{"name": name, "value": value}])

    def import_rows(self, rows: Iterable[dict[str, Any]]) -> int:
        """Insert intents as they are (an earlier version's decision log); an id already here is kept."""
        batch = list(rows)
        if not batch:
            return 0
        with self._transaction() as connection:
            return len(list(connection.execute(self._insert, batch).scalars()))

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """This host's processes one at a time (a one-time import)."""
        with self._writing():
            yield


# Built once: building a statement costs more than the database's work for one outcome.
_ENDING = intents.update().where(intents.c.opportunity_id == sa.bindparam("b_id"), _OPEN).values(
    status=sa.bindparam("b_status"), known=sa.bindparam("b_known"), reason=sa.bindparam("b_reason"),
    engine_status=sa.bindparam("b_engine_status"), ended_at=sa.bindparam("b_ended_at"),
    next_check_at=sa.bindparam("b_next_check_at"))
_OPEN_COLUMNS = (intents.c.opportunity_id, intents.c.instance, intents.c.owner, intents.c.expires_at,
                 intents.c.order_body, intents.c.checks, intents.c.next_check_at)


def _open_intent(row: Any) -> OpenIntent:
    return OpenIntent(row.opportunity_id, row.instance, row.owner, row.expires_at, orjson.loads(row.order_body),
                      row.checks, row.next_check_at)


def _first_per_id(endings: Sequence[Ending]) -> list[Ending]:
    seen: dict[str, Ending] = {}
    for ending in endings:
        seen.setdefault(ending.opportunity_id, ending)
    return list(seen.values())

