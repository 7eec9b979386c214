"""SQL engines that behave the same on SQLite and PostgreSQL, shared by the ledger and the dispatch outbox."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa

log = logging.getLogger(__name__)


def sqlite_directory(url: str) -> Path | None:
    """The directory of a SQLite database file (None for another database, or SQLite in memory)."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).parent


def prepare_location(url: str) -> None:
    """Make the directory a SQLite file goes in (a fresh clone has no logs/); OSError when it cannot be."""
    directory = sqlite_directory(url)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)


def create_engine(url: str, synced: bool = True) -> sa.Engine:
    """An engine; SQLite files in WAL mode (readers never block the writer).

    synced: every commit reaches the disk before it returns (outcomes, which
    are acknowledged to their caller). Otherwise a commit survives a crash of
    the process but may not survive one of the machine (predictions, which
    are written in the background anyway): SQLite's synchronous=NORMAL, and
    PostgreSQL's synchronous_commit=off, where a crash of the database server
    may lose its latest such commits (up to three times wal_writer_delay, by
    PostgreSQL's documentation), never its consistency.
    """
    options: dict[str, Any] = {"future": True}
    try:
        prepare_location(url)
    except OSError as error:  # the engine then reports the database as unreachable, and the log says why
        log.error("cannot create the directory of the database %s: %s", url, error)
    if url.startswith("sqlite"):
        options["connect_args"] = {"timeout": 5.0}
    else:
        options.update(pool_pre_ping=True, pool_size=2, max_overflow=2)
        if not synced and url.startswith("postgresql"):
            options["connect_args"] = {"options": "-c synchronous_commit=off"}
    engine = sa.create_engine(url, **options)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _pragmas(connection: Any, record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL" if synced else "PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA wal_autocheckpoint=10000")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

    return engine


SUPPORTED_DIALECTS = ("sqlite", "postgresql")


def first_line(error: BaseException) -> str:
    """A database error in one line: the driver's first line (it names what failed), not SQLAlchemy's text with
    its statement and parameters."""
    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def insert_or_ignore(engine: sa.Engine, table: sa.Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING in the engine's dialect (SQLite and PostgreSQL spell it alike)."""
    from sqlalchemy.dialects import postgresql, sqlite

    if engine.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise ValueError(f"{engine.dialect.name} is not supported; allowed: {', '.join(SUPPORTED_DIALECTS)}")
