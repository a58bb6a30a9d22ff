"""Monitoring: one row per monitored (model, version, ds, kind), its checks, and retraining requests.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # kind: 'data' (quality + drift of the features and scores, nightly) or 'quality' (the
    # model's quality once labels arrive). Monitoring the same partition again replaces its row.
    op.create_table(
        "monitor_runs",
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
        sa.CheckConstraint("kind IN ('data', 'quality')", name="ck_monitor_runs_kind"),
        sa.CheckConstraint("status IN ('pass', 'fail', 'insufficient_data')", name="ck_monitor_runs_status"),
        sa.UniqueConstraint("model", "version", "ds", "kind", name="uq_monitor_runs_partition"),
    )
    op.create_index("ix_monitor_runs_history", "monitor_runs", ["model", "ds"])
    op.create_table(
        "monitor_checks",
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
        sa.CheckConstraint("status IN ('pass', 'fail', 'insufficient_data')", name="ck_monitor_checks_status"),
        sa.CheckConstraint("severity IN ('fail', 'warn')", name="ck_monitor_checks_severity"),
    )
    op.create_index("ix_monitor_checks_run", "monitor_checks", ["monitor_id"])
    op.create_index("ix_monitor_checks_column", "monitor_checks", ["kind", "column_name"])
    # A retraining request: made by the nightly decision (source 'drift') or by hand. request_id
    # is the deterministic Airflow run id of the retraining DAG run it asks for.
    op.create_table(
        "retrain_requests",
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
    op.create_index("ix_retrain_requests_model", "retrain_requests", ["model", "ds"])


def downgrade() -> None:
    op.drop_index("ix_retrain_requests_model", table_name="retrain_requests")
    op.drop_table("retrain_requests")
    op.drop_index("ix_monitor_checks_column", table_name="monitor_checks")
    op.drop_index("ix_monitor_checks_run", table_name="monitor_checks")
    op.drop_table("monitor_checks")
    op.drop_index("ix_monitor_runs_history", table_name="monitor_runs")
    op.drop_table("monitor_runs")
