"""The night's policy keyed by ds: decided nights, what served each day, and the night an alias move applies from.

- `nights`: one row per decided (model, ds) night: the versions it scored, their monitoring
  verdicts, what the rollout did and the retraining decision. A run of an older ds than the
  newest decided night is a backfill: it scores and monitors, and decides nothing.
- `served`: which version served which share of a model's entities on a ds (champion, canary
  challenger, shadow, previous), and the run whose rows it served.
- `alias_events.effective_ds`: the first night an alias move applies to (the night after the
  one that decided it), so a rollback window counts nights, never the wall clock.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("alias_events") as batch:
        batch.add_column(sa.Column("effective_ds", sa.Date, nullable=True))
    op.create_table(
        "nights",
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("ds", sa.Date, primary_key=True),
        sa.Column("decided_at", TS, nullable=False),
        sa.Column("decided_by", sa.String(128), nullable=False),
        sa.Column("run_key", sa.String(256), nullable=True),
        sa.Column("versions", sa.JSON, nullable=False),
        sa.Column("verdicts", sa.JSON, nullable=False),
        sa.Column("rollout", sa.Text, nullable=False),
        sa.Column("retrain", sa.JSON, nullable=True),
    )
    op.create_table(
        "served",
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("ds", sa.Date, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("share", sa.Float, nullable=False),
        sa.Column("run_id", ID, nullable=True),
        sa.Column("recorded_at", TS, nullable=False),
        sa.CheckConstraint("share >= 0 AND share <= 1", name="ck_served_share"),
    )


def downgrade() -> None:
    op.drop_table("served")
    op.drop_table("nights")
    with op.batch_alter_table("alias_events") as batch:
        batch.drop_column("effective_ds")
