"""The ledger's tables (SQLAlchemy Core), and engines that behave the same on SQLite and PostgreSQL."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa

log = logging.getLogger(__name__)

metadata = sa.MetaData()

# Every scored opportunity that carried an opportunity_id, approved or not. A
# re-scored id gets another row; its latest prediction is the one its outcome
# measures.
predictions = sa.Table(
    "predictions", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("opportunity_id", sa.String(128), nullable=False),
    sa.Column("predicted_at", sa.Float, nullable=False),
    sa.Column("endpoint", sa.String(16), nullable=False),
    sa.Column("mode", sa.String(10), nullable=False),
    sa.Column("model_type", sa.String(10), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("shadow_confidence", sa.Float),
    sa.Column("shadow_version", sa.String(64)),  # the model that gave shadow_confidence (the challenger)
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("decision", sa.Boolean, nullable=False),
    sa.Column("implausible", sa.String(200)),
    # The input window as the model read it: steps x 8 float32, little-endian,
    # oldest first, the opportunity itself last.
    sa.Column("steps", sa.SmallInteger, nullable=False),
    sa.Column("features", sa.LargeBinary, nullable=False),
    sa.Index("ix_predictions_opportunity_id", "opportunity_id"),
    sa.Index("ix_predictions_predicted_at", "predicted_at"),
)

# What happened, reported by the caller; one per opportunity.
outcomes = sa.Table(
    "outcomes", metadata,
    sa.Column("opportunity_id", sa.String(128), primary_key=True),
    sa.Column("executed", sa.Boolean, nullable=False),
    sa.Column("success", sa.Boolean),
    sa.Column("realised_pnl_usd", sa.Float),
    sa.Column("observed_at", sa.Float, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Index("ix_outcomes_observed_at", "observed_at"),
)


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
    are written in the background anyway).
    """
    options: dict[str, Any] = {"future": True}
    try:
        prepare_location(url)
    except OSError as error:  # the engine then reports the database as unreachable, and the log says why
        log.error("ledger: cannot create the directory of %s: %s", url, error)
    if url.startswith("sqlite"):
        options["connect_args"] = {"timeout": 5.0}
    else:
        options.update(pool_pre_ping=True, pool_size=2, max_overflow=2)
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


def insert_or_ignore(engine: sa.Engine, table: sa.Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING in the engine's dialect (SQLite and PostgreSQL spell it alike)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[engine.dialect.name](table).on_conflict_do_nothing()


def create_tables(engine: sa.Engine) -> None:
    """Create what is missing (several workers may race to do it), and add columns later versions added."""
    try:
        metadata.create_all(engine, checkfirst=True)
    except sa.exc.DBAPIError:
        # Another worker created them between the check and the CREATE.
        metadata.create_all(engine, checkfirst=True)
    _add_missing_columns(engine)


def _add_missing_columns(engine: sa.Engine) -> None:
    """ALTER TABLE ... ADD COLUMN for nullable columns a ledger created by an earlier version lacks."""
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present or not column.nullable:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as connection:
                    connection.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")
            except sa.exc.DBAPIError:
                pass  # another worker added it first
