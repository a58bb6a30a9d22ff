"""Decisions by outcomes: the nightly history of bandit allocations, and performance estimates before labels.

- `bandit_allocations`: every allocation decided, per (model, night it applies to, version): share,
  posterior probability of being the best arm, labelled rewards so far and their mean, which night
  decided it. Each reallocation is also an audit event. The share the lookup API routes by is the
  running rollout's `model_rollouts.canary_share` (the challenger arm's share), published when a
  nightly night records what served it, exactly as a canary's.

- `candidates.status` may be 'bandit' (a candidate in a bandit rollout).
- `performance_estimates`: the label-free estimate of a version's quality on a ds (CBPE: expected
  ROC AUC, accuracy, ... from its committed probabilities), made the night it was scored, and, once
  the labels land, the realized values and the estimation error beside it (the error is also a check
  of the 'quality' result).

The outcome tests need no table of their own: each decision, with its tests, lands in `audit_events`.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


CANDIDATE_STATUSES = (
    "'training', 'rejected', 'pending_approval', 'shadow', 'canary', 'promoted', 'rolled_back', 'aborted', 'superseded'"
)


def _candidates(statuses: str) -> sa.Table:
    """`candidates` as migration 0004 made it, with this CHECK on its status (batch mode copies from it, so the
    SQLite rebuild needs no reflection and renders in `--sql` mode too)."""
    return sa.Table(
        "candidates",
        sa.MetaData(),
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
        sa.CheckConstraint(f"status IN ({statuses})", name="ck_candidates_status"),
        sa.Index("ix_candidates_model", "model", "candidate_id"),
    )


def _candidate_statuses(old: str, new: str) -> None:
    """Replace the CHECK constraint on candidates.status (SQLite: the table is rebuilt, its rows kept)."""
    sqlite = op.get_context().dialect.name == "sqlite"
    with op.batch_alter_table("candidates", copy_from=_candidates(old), recreate="always" if sqlite else "auto") as b:
        b.drop_constraint("ck_candidates_status", type_="check")
        b.create_check_constraint("ck_candidates_status", f"status IN ({new})")


def upgrade() -> None:
    _candidate_statuses(CANDIDATE_STATUSES, CANDIDATE_STATUSES + ", 'bandit'")  # a candidate in a bandit rollout
    op.create_table(
        "bandit_allocations",
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

    op.create_table(
        "performance_estimates",
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ds", sa.Date, primary_key=True),
        sa.Column("run_id", ID, nullable=True),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("estimated", sa.JSON, nullable=False),
        sa.Column("realized", sa.JSON, nullable=True),
        sa.Column("error", sa.JSON, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("labelled_at", TS, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("performance_estimates")
    op.drop_table("bandit_allocations")
    op.execute("UPDATE candidates SET status = 'aborted' WHERE status = 'bandit'")
    _candidate_statuses(CANDIDATE_STATUSES + ", 'bandit'", CANDIDATE_STATUSES)
