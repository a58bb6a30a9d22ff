"""The monitoring tables as SQLAlchemy Core metadata (created by migration 0003)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
TS = sa.DateTime(timezone=True)

#: One monitored (model, version, ds, kind); kind 'data' (nightly) or 'quality' (labels).
monitor_runs = sa.Table(
    "monitor_runs",
    metadata,
    sa.Column("monitor_id", ID, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("ds", sa.Date, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("run_id", ID, nullable=True),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("sampled_rows", sa.BigInteger, nullable=False),
    sa.Column("failed_checks", sa.Integer, nullable=False),
    sa.Column("summary", sa.JSON, nullable=False),
    sa.Column("report_uri", sa.Text, nullable=True),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.UniqueConstraint("model", "version", "ds", "kind", name="uq_monitor_runs_partition"),
)

#: One check of a monitored partition: what was measured, against which threshold, on how many rows.
monitor_checks = sa.Table(
    "monitor_checks",
    metadata,
    sa.Column("check_id", ID, primary_key=True, autoincrement=True),
    sa.Column("monitor_id", ID, sa.ForeignKey("monitor_runs.monitor_id", ondelete="CASCADE"), nullable=False),
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
)
