"""Every table of the store, in ONE SQLAlchemy Core MetaData: the schema's single source in code.

The migrations in `db/migrations` own the DDL; `tests/db/test_schema.py` compares this metadata with the
migrated schema on SQLite and PostgreSQL (Alembic's `compare_metadata`), so the two cannot drift
apart. Readable DDL generated from the migrations: `sql/`.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

TS = sa.DateTime(timezone=True)
JSON = sa.JSON()
#: A 64-bit id on PostgreSQL; SQLite's INTEGER PRIMARY KEY is its rowid (auto-increment needs exactly INTEGER).
ID_ = sa.BigInteger().with_variant(sa.Integer, "sqlite")

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
    #: binary, multiclass or regression (migration 0007).
    sa.Column("task", sa.String(16), nullable=False, server_default="binary"),
    #: How the ONNX graph is fed and read (input layout, output roles, class names); NULL: nightshift's own.
    sa.Column("signature", JSON, nullable=True),
    #: Where a model brought by its user came from (flavour, library, converter, original URI and SHA-256).
    sa.Column("source", JSON, nullable=True),
    #: How to explain this version's scores exactly (migration 0011; nightshift.models.explainers): linear parameters
    #: or a TreeSHAP booster file; NULL: no exact explainer (a kind without one, or registered before 0011).
    sa.Column("explainer", JSON, nullable=True),
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
    #: The first night the move applies to (the night after the one that decided it); NULL: no night yet.
    sa.Column("effective_ds", sa.Date, nullable=True),
    sa.Index("ix_alias_events_model", "model", "alias", "at"),
)

#: One decided night of a model (nightshift.nightly): what it scored, the verdicts, what it decided.
#: A run of an older ds than the newest row here is a backfill: it decides nothing.
nights = sa.Table(
    "nights",
    metadata,
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("ds", sa.Date, primary_key=True),
    sa.Column("decided_at", TS, nullable=False),
    sa.Column("decided_by", sa.String(128), nullable=False),
    sa.Column("run_key", sa.String(256), nullable=True),
    sa.Column("versions", JSON, nullable=False),
    sa.Column("verdicts", JSON, nullable=False),
    sa.Column("rollout", sa.Text, nullable=False),
    sa.Column("retrain", JSON, nullable=True),
)

#: Which version served which share of a model's entities on a ds, from which run's rows.
served = sa.Table(
    "served",
    metadata,
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("ds", sa.Date, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("share", sa.Float, nullable=False),
    sa.Column("run_id", ID_, nullable=True),
    sa.Column("recorded_at", TS, nullable=False),
    sa.CheckConstraint("share >= 0 AND share <= 1", name="ck_served_share"),
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
    #: When a newer run of the same (model, version, ds) took over (migration 0008); NULL while it serves.
    sa.Column("replaced_at", TS, nullable=True),
    sa.CheckConstraint(
        "status IN ('running', 'committed', 'superseded', 'failed', 'abandoned', 'expired')", name="ck_runs_status"
    ),
    sa.Index("ix_runs_partition", "model", "version", "ds"),
    sa.Index("ix_runs_served", "model", "version", "ds", "status"),
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
    sa.Column("run_id", ID_, primary_key=True),
    # PostgreSQL: TEXT COLLATE "C" (ids compare bytewise: faster index builds and lookups), REAL.
    sa.Column("entity_id", sa.String(128).with_variant(sa.Text(collation="C"), "postgresql"), primary_key=True),
    sa.Column("score", sa.Float(precision=24).with_variant(sa.REAL(), "postgresql"), nullable=False),
    # The predicted class (binary: 0/1 at the decision threshold; multiclass: the class's index);
    # NULL for a regression.
    sa.Column("label", sa.SmallInteger, nullable=True),
    # A regression's value as the model gave it (score keeps it as float4 for monitoring and ordering).
    sa.Column("value", sa.Float, nullable=True),
    # A multiclass model's probability of every class, in its recorded class order: K little-endian float32
    # values, 4K bytes, on both stores (migration 0013; PostgreSQL stored a real[] before).
    sa.Column("probs", sa.LargeBinary, nullable=True),
    # Reasons (migration 0011, `[models.explain]`): the top-k features of this score, largest |contribution|
    # first, packed: k little-endian int16 indices into the version's `model_versions.features`, then their k
    # little-endian float32 contributions (the explained output's units: log-odds, value or margin); 6k bytes.
    # NULL when the run was scored without reasons.
    sa.Column("reasons", sa.LargeBinary, nullable=True),
    sqlite_with_rowid=False,
    # The key's column order differs by store (see primary_key_columns): PostgreSQL leads with
    # entity_id (migration 0005: the index build sorts on abbreviated keys); SQLite keeps run_id
    # first, because its table is clustered on the key and a run's rows then stay together.
    info={"primary_key": {"postgresql": ("entity_id", "run_id"), "sqlite": ("run_id", "entity_id")}},
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
    sa.Index("ix_candidates_model", "model", "candidate_id"),
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
    sa.Index("ix_audit_events_model", "model", "event_id"),
)


# -- monitoring (migration 0003) ---------------------------------------------------------------

#: One monitored (model, version, ds, kind); kind 'data' (nightly) or 'quality' (labels).
monitor_runs = sa.Table(
    "monitor_runs",
    metadata,
    sa.Column("monitor_id", ID_, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("ds", sa.Date, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("run_id", ID_, nullable=True),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("sampled_rows", sa.BigInteger, nullable=False),
    sa.Column("failed_checks", sa.Integer, nullable=False),
    sa.Column("summary", sa.JSON, nullable=False),
    sa.Column("report_uri", sa.Text, nullable=True),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.UniqueConstraint("model", "version", "ds", "kind", name="uq_monitor_runs_partition"),
    sa.Index("ix_monitor_runs_history", "model", "ds"),
)

#: One check of a monitored partition: what was measured, against which threshold, on how many rows.
monitor_checks = sa.Table(
    "monitor_checks",
    metadata,
    sa.Column("check_id", ID_, primary_key=True, autoincrement=True),
    sa.Column("monitor_id", ID_, sa.ForeignKey("monitor_runs.monitor_id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("column_name", sa.String(128), nullable=True),
    sa.Column("statistic", sa.String(64), nullable=False),
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("threshold", sa.Float, nullable=True),
    sa.Column("passed", sa.Boolean, nullable=True),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("severity", sa.String(8), nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("sampled", sa.Boolean, nullable=False),
    sa.Column("detail", sa.JSON, nullable=True),
    sa.Index("ix_monitor_checks_run", "monitor_id"),
    sa.Index("ix_monitor_checks_column", "kind", "column_name"),
)

#: A request to retrain: by the nightly decision (source 'drift') or by hand; request_id is the Airflow run id.
retrain_requests = sa.Table(
    "retrain_requests",
    metadata,
    sa.Column("request_id", sa.String(250), primary_key=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("ds", sa.Date, nullable=False),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("breaches", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Index("ix_retrain_requests_model", "model", "ds"),
)


# -- the lookup API (migration 0002) -----------------------------------------------------------

#: API keys of the lookup API (nightshift.api.keys): only the SHA-256 of each secret is stored.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("models", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_api_keys_name", "name"),
)


def primary_key_columns(table: sa.Table, dialect: str) -> tuple[str, ...]:
    """The primary key's columns, in the order the migrations create them on `dialect`."""
    by_dialect = table.info.get("primary_key", {})
    if dialect in by_dialect:
        return tuple(by_dialect[dialect])
    return tuple(c.name for c in table.primary_key.columns)


# -- lineage (migration 0009) ------------------------------------------------------------------

#: Each run's input manifest (nightshift.telemetry.manifest): every file read (URI, bytes, rows, SHA-256
#: fingerprint), the partition's digest, the model version's artifact and SHA-256, the OpenLineage run id.
#: NULL for runs recorded before lineage was.
runs.append_column(sa.Column("manifest", JSON, nullable=True))


# -- decisions by outcomes (migration 0010) ------------------------------------------------------

#: Every bandit allocation decided: per (model, night it applies to, version).
bandit_allocations = sa.Table(
    "bandit_allocations",
    metadata,
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("ds", sa.Date, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("share", sa.Float, nullable=False),
    sa.Column("p_best", sa.Float, nullable=True),
    sa.Column("rewards", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("mean_reward", sa.Float, nullable=True),
    sa.Column("decided_ds", sa.Date, nullable=True),
    sa.Column("decided_at", TS, nullable=False),
    sa.CheckConstraint("share >= 0 AND share <= 1", name="ck_bandit_allocations_share"),
)

#: The label-free estimate of a version's quality on a ds (monitoring/cbpe.py), and once labels land the
#: realized values and the estimation error beside it.
performance_estimates = sa.Table(
    "performance_estimates",
    metadata,
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("ds", sa.Date, primary_key=True),
    sa.Column("run_id", ID_, nullable=True),
    sa.Column("method", sa.String(32), nullable=False),
    sa.Column("task", sa.String(16), nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("estimated", JSON, nullable=False),
    sa.Column("realized", JSON, nullable=True),
    sa.Column("error", JSON, nullable=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("labelled_at", TS, nullable=True),
)


# -- what served, as it was (migration 0012) ---------------------------------------------------------

#: A `served` row that a later nightly run of the same night replaced (that role's version changed, or
#: the role is gone): served from `recorded_at` until `replaced_at` (the replacing rows' `recorded_at`).
#: The lookup API's `?ds=&as_of=` by alias reads it (nightshift.api.queries._SERVED_BEFORE).
served_history = sa.Table(
    "served_history",
    metadata,
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("ds", sa.Date, primary_key=True),
    sa.Column("role", sa.String(16), primary_key=True),
    sa.Column("recorded_at", TS, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("share", sa.Float, nullable=False),
    sa.Column("run_id", ID_, nullable=True),
    sa.Column("replaced_at", TS, nullable=False),
)
