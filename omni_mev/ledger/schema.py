"""The ledger's tables (SQLAlchemy Core); the engines are omni_mev.database's."""
from __future__ import annotations

import sqlalchemy as sa


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
