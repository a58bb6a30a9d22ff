"""Lineage: each run's input manifest and what it read.

`runs.manifest` (JSON, NULL for runs before this migration): every input file of the run with its URI, size in
bytes, row count and SHA-256 fingerprint (of its Parquet footer by default, `[lineage] fingerprint`), the
partition's digest over them, the model version's artifact URI and SHA-256, and the run's OpenLineage run id
(nightshift.telemetry.manifest). `nightshift lineage` walks from a prediction through it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both stores (SQLite >= 3.35 drops a column in place): a batch operation would rebuild
# `runs` on SQLite, which the `committed_predictions` view that reads it does not survive.


def upgrade() -> None:
    op.add_column("runs", sa.Column("manifest", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "manifest")
