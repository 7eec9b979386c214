"""The ledger's tables (SQLAlchemy Core); the engines are omni_mev.database's."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa


metadata = sa.MetaData()

def _prediction_columns(partitioned: bool) -> list[sa.Column[Any] | sa.Index]:
    """The columns and indexes of `predictions`. Partitioned (PostgreSQL), the primary key holds the partition
    key too, as PostgreSQL requires of a partitioned table's unique constraints."""
    return [
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("opportunity_id", sa.String(128), nullable=False),
        sa.Column("predicted_at", sa.Float, nullable=False, primary_key=partitioned),
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
    ]


# Every scored opportunity that carried an opportunity_id, approved or not. A
# re-scored id gets another row; its latest prediction is the one its outcome
# measures. On PostgreSQL the table is partitioned by day of predicted_at
# (omni_mev.ledger.partitions): retention drops whole days, and each day's
# indexes stay the size of a day.
predictions = sa.Table("predictions", metadata, *_prediction_columns(partitioned=False))
partitioned_predictions = sa.Table("predictions", sa.MetaData(), *_prediction_columns(partitioned=True),
                                    postgresql_partition_by="RANGE (predicted_at)")

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


def create_tables(engine: sa.Engine) -> None:
    """Create what is missing (several workers may race to do it), and add columns later versions added."""
    for attempt in range(2):
        try:
            if engine.dialect.name == "postgresql":
                # Created first, so create_all finds it and leaves it alone; a table an earlier version created
                # unpartitioned stays as it is (docs/scaling.md says how to convert it).
                partitioned_predictions.create(engine, checkfirst=True)
            metadata.create_all(engine, checkfirst=True)
            break
        except sa.exc.DBAPIError:
            if attempt:
                raise
            # Another worker created them between the check and the CREATE: the second pass finds them.
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
