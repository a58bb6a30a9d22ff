"""Served history: when a run stopped serving.

`runs.replaced_at`: when a newer run of the same (model, version, ds) took over (the run's own
`finished_at` is when it started serving). A replaced run's rows are kept for the model's
`history_days`, so "what did we serve for entity X at time T" has an exact answer (the lookup API's
`?as_of=`); `nightshift gc` removes them after that.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both stores (SQLite >= 3.35 drops a column in place): a batch operation would rebuild
# `runs` on SQLite, which the `committed_predictions` view that reads it does not survive.


def upgrade() -> None:
    op.add_column("runs", sa.Column("replaced_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_runs_served", "runs", ["model", "version", "ds", "status"])


def downgrade() -> None:
    op.drop_index("ix_runs_served", table_name="runs")
    op.drop_column("runs", "replaced_at")
