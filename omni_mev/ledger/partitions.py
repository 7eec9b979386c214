"""The ledger's daily partitions of `predictions` on PostgreSQL.

The table is partitioned by range of predicted_at (seconds since the epoch),
a partition per UTC day named predictions_pYYYYMMDD. The ledger's writer
creates the partition of each day it is about to write, and the next day's
ahead of midnight; retention drops the partitions wholly older than its
horizon, so removing a day is one DROP TABLE instead of a DELETE of every
row. The DDL waits at most LOCK_TIMEOUT_MS for the parent's lock: a long
report holding it makes the writer retry, never wait for the report.
"""
from __future__ import annotations

import calendar
import math
import time
from collections.abc import Iterable

import sqlalchemy as sa

from omni_mev.ledger.schema import partitioned_predictions, predictions

DAY_S = 86_400
LOCK_TIMEOUT_MS = 2_000
PREFIX = "predictions_p"
# Partitions are made for days from the epoch to a week ahead: the service stamps rows with its own clock, and a
# value outside that range cannot come from it (such a row finds no partition and is refused, as a bad value is).
DAYS_AHEAD = 7


def is_partitioned(engine: sa.Engine) -> bool:
    """Whether `predictions` is a partitioned table (False for one an earlier version created, and off PostgreSQL)."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as connection:
        return connection.exec_driver_sql(
            "SELECT relkind FROM pg_class WHERE oid = to_regclass('predictions')").scalar() == "p"


def day_of(timestamp: float) -> int:
    return int(timestamp // DAY_S)


def days_of(predicted_at: Iterable[float | None], now: float) -> set[int]:
    """The days these prediction times fall on, within the range partitions are made for (a time that is no
    number is left to the database to refuse, with its row)."""
    last = day_of(now) + DAYS_AHEAD
    times = (t for t in predicted_at if isinstance(t, (int, float)) and math.isfinite(t) and t >= 0)
    return {day for day in {day_of(t) for t in times} if day <= last}


def name_of(day: int) -> str:
    return PREFIX + time.strftime("%Y%m%d", time.gmtime(day * DAY_S))


def day_named(name: str) -> int | None:
    """The day of a partition's name; None for a table not named as this module names them."""
    try:
        return day_of(calendar.timegm(time.strptime(name.removeprefix(PREFIX), "%Y%m%d")))
    except ValueError:
        return None


def _create_sql(day: int) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {name_of(day)} PARTITION OF predictions "
            f"FOR VALUES FROM ({day * DAY_S}) TO ({(day + 1) * DAY_S})")


def create(engine: sa.Engine, day: int) -> None:
    """Make the partition of `day` unless it exists (another worker or host may be making it at the same time)."""
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
            connection.exec_driver_sql(_create_sql(day))
    except sa.exc.DBAPIError:
        if not _exists(engine, name_of(day)):
            raise
        # Two sessions passed IF NOT EXISTS together and the other one made it.


def drop_before(engine: sa.Engine, horizon: float) -> list[str]:
    """Drop the partitions whose every row is older than `horizon`; the names dropped."""
    with engine.connect() as connection:
        names = connection.exec_driver_sql(
            "SELECT child.relname FROM pg_inherits JOIN pg_class child ON child.oid = pg_inherits.inhrelid "
            "WHERE pg_inherits.inhparent = to_regclass('predictions')").scalars().all()
    dropped = []
    for name in sorted(names):
        day = day_named(name)
        if day is None or (day + 1) * DAY_S > horizon:
            continue
        with engine.begin() as connection:
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        dropped.append(name)
    return dropped


def _exists(engine: sa.Engine, name: str) -> bool:
    with engine.connect() as connection:
        return bool(connection.exec_driver_sql("SELECT to_regclass(%(name)s) IS NOT NULL", {"name": name}).scalar())


def convert(engine: sa.Engine) -> int | None:
    """Partition a `predictions` table an earlier version made unpartitioned, in one transaction: the old table is
    renamed, the partitioned one made with a partition per day its rows fall on, the rows copied with their ids
    (the id sequence moved past them, so the latest prediction of an id stays the latest) and the old table
    dropped. The service's writers wait on the table's lock meanwhile, their rows queued, and a failure changes
    nothing. The rows moved; None when the table is partitioned already."""
    old = "predictions_unpartitioned"
    with engine.begin() as connection:
        connection.exec_driver_sql("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
        if connection.exec_driver_sql("SELECT relkind FROM pg_class WHERE oid = to_regclass('predictions')"
                                      ).scalar() != "r":
            return None
        connection.exec_driver_sql(f"ALTER TABLE predictions RENAME TO {old}")
        # Index and constraint names are the schema's: the new table's would collide with the old table's.
        for index in predictions.indexes:
            connection.exec_driver_sql(f"ALTER INDEX IF EXISTS {index.name} RENAME TO {index.name}_old")
        connection.exec_driver_sql(f"ALTER TABLE {old} RENAME CONSTRAINT predictions_pkey TO {old}_pkey")
        partitioned_predictions.create(connection)
        days = connection.exec_driver_sql(f"SELECT DISTINCT floor(predicted_at / {DAY_S})::bigint FROM {old}")
        for day in days.scalars().all():
            connection.exec_driver_sql(_create_sql(int(day)))
        columns = ", ".join(column.name for column in predictions.columns)
        moved = connection.exec_driver_sql(f"INSERT INTO predictions ({columns}) SELECT {columns} FROM {old}").rowcount
        connection.exec_driver_sql("SELECT setval(pg_get_serial_sequence('predictions', 'id'), "
                                   f"(SELECT coalesce(max(id), 0) + 1 FROM {old}), false)")
        connection.exec_driver_sql(f"DROP TABLE {old}")
    return int(moved)
