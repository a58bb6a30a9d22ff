"""Initial schema: registry, runs, catalog, predictions.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("algorithm", sa.String(256), nullable=False),
        sa.Column("hyperparameters", sa.JSON, nullable=False),
        sa.Column("libraries", sa.JSON, nullable=False),
        sa.Column("features", sa.JSON, nullable=False),
        sa.Column("input_schema", sa.JSON, nullable=False),
        sa.Column("output_schema", sa.JSON, nullable=False),
        sa.Column("training_data", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("parity", sa.JSON, nullable=False),
        sa.Column("feature_importance", sa.JSON, nullable=False),
        sa.Column("decision_threshold", sa.Float, nullable=False),
        sa.Column("artifact_uri", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
    )
    op.create_table(
        "model_aliases",
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.ForeignKeyConstraint(["model", "version"], ["model_versions.model", "model_versions.version"]),
    )
    op.create_table(
        "alias_events",
        sa.Column("event_id", ID, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("old_version", sa.Integer, nullable=True),
        sa.Column("new_version", sa.Integer, nullable=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("by", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_alias_events_model", "alias_events", ["model", "alias", "at"])
    op.create_table(
        "runs",
        sa.Column("run_id", ID, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("ds", sa.Date, nullable=False),
        sa.Column("run_key", sa.String(256), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("input_rows", sa.BigInteger, nullable=True),
        sa.Column("rows", sa.BigInteger, nullable=True),
        sa.Column("files", sa.Integer, nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("timings", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("host", sa.String(256), nullable=True),
        sa.Column("pid", sa.Integer, nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'committed', 'superseded', 'failed', 'abandoned', 'expired')", name="ck_runs_status"
        ),
    )
    op.create_index("ix_runs_partition", "runs", ["model", "version", "ds"])
    op.create_table(
        "run_chunks",
        sa.Column("run_id", ID, primary_key=True),
        sa.Column("chunk", sa.String(1024), primary_key=True),
        sa.Column("rows", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "partitions",
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ds", sa.Date, primary_key=True),
        sa.Column("run_id", ID, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("row_count", sa.BigInteger, nullable=False),
        sa.Column("committed_at", TS, nullable=False),
        sa.Column("timings", sa.JSON, nullable=True),
    )
    op.create_index("ix_partitions_latest", "partitions", ["model", "version", "status", "ds"])
    if op.get_context().dialect.name == "postgresql":
        # One LIST partition per run: a run COPYs into its own unindexed table, indexes it,
        # and the commit attaches it; replacing or expiring a partition drops a table.
        # Entity ids compare bytewise (COLLATE "C"): faster index builds and lookups.
        op.execute(
            """
            CREATE TABLE predictions (
                run_id BIGINT NOT NULL,
                entity_id TEXT COLLATE "C" NOT NULL,
                score REAL NOT NULL,
                label SMALLINT NOT NULL,
                PRIMARY KEY (run_id, entity_id)
            ) PARTITION BY LIST (run_id)
            """
        )
    else:
        op.create_table(
            "predictions",
            sa.Column("run_id", ID, primary_key=True),
            sa.Column("entity_id", sa.String(128), primary_key=True),
            sa.Column("score", sa.Float(precision=24), nullable=False),
            sa.Column("label", sa.SmallInteger, nullable=False),
            sqlite_with_rowid=False,
        )
    op.execute(
        """
        CREATE VIEW committed_predictions AS
        SELECT c.model, c.version, c.ds, p.entity_id, p.score, p.label, r.started_at AS scored_at, c.run_id
        FROM partitions c
        JOIN runs r ON r.run_id = c.run_id
        JOIN predictions p ON p.run_id = c.run_id
        WHERE c.status = 'committed'
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS committed_predictions")
    for table in ("predictions", "partitions", "run_chunks", "runs", "alias_events", "model_aliases", "model_versions"):
        op.drop_table(table)
