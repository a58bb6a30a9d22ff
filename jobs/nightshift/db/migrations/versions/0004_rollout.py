"""Retraining candidates, rollouts and their audit trail.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "candidates",
        sa.Column("candidate_id", ID, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("ds", sa.Date, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("trigger", sa.JSON, nullable=False),
        sa.Column("training_data", sa.JSON, nullable=True),
        sa.Column("gates", sa.JSON, nullable=True),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("strategy", sa.String(16), nullable=False),
        sa.Column("approved_by", sa.String(128), nullable=True),
        sa.Column("approved_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint(
            "status IN ('training', 'rejected', 'pending_approval', 'shadow', 'canary', 'promoted', "
            "'rolled_back', 'aborted', 'superseded')",
            name="ck_candidates_status",
        ),
    )
    op.create_index("ix_candidates_model", "candidates", ["model", "candidate_id"])
    op.create_table(
        "model_rollouts",
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("candidate_id", ID, nullable=False),
        sa.Column("strategy", sa.String(16), nullable=False),
        sa.Column("champion_version", sa.Integer, nullable=True),
        sa.Column("challenger_version", sa.Integer, nullable=False),
        sa.Column("canary_share", sa.Float, nullable=True),
        sa.Column("healthy_nights", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_ds", sa.Date, nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "audit_events",
        sa.Column("event_id", ID, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("candidate_id", ID, nullable=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("by", sa.String(128), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_events_model", "audit_events", ["model", "event_id"])


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("model_rollouts")
    op.drop_table("candidates")
