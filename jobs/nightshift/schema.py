"""The store's tables, as SQLAlchemy Core metadata (migrations in nightshift/migrations, DDL in sql/)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

TS = sa.DateTime(timezone=True)
JSON = sa.JSON()

model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("algorithm", sa.String(256), nullable=False),
    sa.Column("hyperparameters", JSON, nullable=False),
    sa.Column("libraries", JSON, nullable=False),
    sa.Column("features", JSON, nullable=False),
    sa.Column("input_schema", JSON, nullable=False),
    sa.Column("output_schema", JSON, nullable=False),
    sa.Column("training_data", JSON, nullable=False),
    sa.Column("metrics", JSON, nullable=False),
    sa.Column("parity", JSON, nullable=False),
    sa.Column("feature_importance", JSON, nullable=False),
    sa.Column("decision_threshold", sa.Float, nullable=False),
    sa.Column("artifact_uri", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
)

model_aliases = sa.Table(
    "model_aliases",
    metadata,
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("updated_by", sa.String(128), nullable=False),
    sa.ForeignKeyConstraint(["model", "version"], ["model_versions.model", "model_versions.version"]),
)

alias_events = sa.Table(
    "alias_events",
    metadata,
    sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("old_version", sa.Integer, nullable=True),
    sa.Column("new_version", sa.Integer, nullable=True),
    sa.Column("at", TS, nullable=False),
    sa.Column("by", sa.String(128), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Index("ix_alias_events_model", "model", "alias", "at"),
)

# One scoring attempt of one (model, version, ds). Its predictions are staged under its
# run_id and become visible only when `partitions` points at it.
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
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
    sa.Column("timings", JSON, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("host", sa.String(256), nullable=True),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.CheckConstraint(
        "status IN ('running', 'committed', 'superseded', 'failed', 'abandoned', 'expired')", name="ck_runs_status"
    ),
    sa.Index("ix_runs_partition", "model", "version", "ds"),
)

# Idempotent staging: a chunk (file or row-group range) is written at most once per run,
# in the same transaction as its rows, so a recomputed Dask task never duplicates rows.
run_chunks = sa.Table(
    "run_chunks",
    metadata,
    sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("chunk", sa.String(1024), primary_key=True),
    sa.Column("rows", sa.BigInteger, nullable=False),
)

# The catalog: which run is the committed truth of a (model, version, ds).
partitions = sa.Table(
    "partitions",
    metadata,
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("ds", sa.Date, primary_key=True),
    sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("row_count", sa.BigInteger, nullable=False),
    sa.Column("committed_at", TS, nullable=False),
    sa.Column("timings", JSON, nullable=True),
    sa.Index("ix_partitions_latest", "model", "version", "status", "ds"),
)

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("entity_id", sa.String(128), primary_key=True),
    sa.Column("score", sa.Float(precision=24), nullable=False),
    sa.Column("label", sa.SmallInteger, nullable=False),
    sqlite_with_rowid=False,
)


candidates = sa.Table(
    "candidates",
    metadata,
    sa.Column("candidate_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("ds", sa.Date, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("trigger", JSON, nullable=False),
    sa.Column("training_data", JSON, nullable=True),
    sa.Column("gates", JSON, nullable=True),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("strategy", sa.String(16), nullable=False),
    sa.Column("approved_by", sa.String(128), nullable=True),
    sa.Column("approved_at", TS, nullable=True),
    sa.Column("updated_at", TS, nullable=False),
)

# The rollout in progress per model (shadow or canary): what the API and the nightly
# steps read to know the challenger, its share, and how many healthy nights it has had.
model_rollouts = sa.Table(
    "model_rollouts",
    metadata,
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("candidate_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
    sa.Column("strategy", sa.String(16), nullable=False),
    sa.Column("champion_version", sa.Integer, nullable=True),
    sa.Column("challenger_version", sa.Integer, nullable=False),
    sa.Column("canary_share", sa.Float, nullable=True),
    sa.Column("healthy_nights", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_ds", sa.Date, nullable=True),
    sa.Column("started_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("candidate_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=True),
    sa.Column("at", TS, nullable=False),
    sa.Column("by", sa.String(128), nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("detail", JSON, nullable=False),
)
