"""One retrainer at a time, across every host that shares the ledger and the registry.

`omni-mev retrain` runs from a timer on each host; only one run may gate or
train at once, or two hosts could train two challengers from the same
outcomes, or promote one while the other rejects it. The first run to take
the lock does the work; any other run meanwhile says who holds it and exits
cleanly.

- With the registry's database (AI_MODEL_REGISTRY_DB) or a PostgreSQL ledger
  (a fleet): a session-level advisory lock in that database. The database releases it when the holder's connection ends, so a
  retrainer that dies (even on a host that loses power) never leaves it held.
- Otherwise (one host): an exclusive `flock` on a file in the registry, which
  the kernel releases when the holder exits. Not for registries on NFS.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

LOCK_FILE = "retrain.lock"
# The advisory lock's key: the same 64-bit number on every host, taken from a name, so it cannot collide with
# another application's small integers.
ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"omni-mev retrain").digest()[:8], "big", signed=True)


def holder_name() -> str:
    """Who is retraining, as the other hosts are told."""
    return f"omni-mev retrain on {socket.gethostname()} (pid {os.getpid()})"


@contextmanager
def sole_retrainer(database_url: str | None, registry_root: Path) -> Iterator[str | None]:
    """Hold the retrainer's lock for the block: yields None when this process holds it, or who else does.
    `database_url`: the database the hosts share, when it is PostgreSQL."""
    if database_url is not None and sa.engine.make_url(database_url).get_backend_name() == "postgresql":
        with _advisory_lock(database_url) as other:
            yield other
    else:
        with _file_lock(registry_root / LOCK_FILE) as other:
            yield other


@contextmanager
def _advisory_lock(url: str) -> Iterator[str | None]:
    engine = sa.create_engine(url, poolclass=NullPool, connect_args={"application_name": holder_name()[:63]})
    try:
        with engine.connect() as connection:
            taken = connection.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY}).scalar()
            connection.commit()
            if not taken:
                yield _advisory_holder(connection)
                return
            try:
                yield None
            finally:
                connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
                connection.commit()
    finally:
        engine.dispose()


def _advisory_holder(connection: sa.Connection) -> str:
    """The holder's application name (holder_name() on its host), as PostgreSQL's activity view shows it."""
    # An advisory lock on a bigint key is stored as two 32-bit halves: classid the high, objid the low.
    high, low = (ADVISORY_KEY >> 32) & 0xFFFFFFFF, ADVISORY_KEY & 0xFFFFFFFF
    name = connection.execute(sa.text(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :high AND l.objid = :low AND l.objsubid = 1"),
        {"high": high, "low": low}).scalar()
    connection.commit()
    return name or "another omni-mev retrain"


@contextmanager
def _file_lock(path: Path) -> Iterator[str | None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            yield lock.read().strip() or "another omni-mev retrain"
            return
        try:
            lock.seek(0)
            lock.truncate()
            lock.write(holder_name() + "\n")
            lock.flush()
            yield None
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)
