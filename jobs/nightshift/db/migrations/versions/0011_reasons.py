"""Reasons for each score (`[models.explain]`): the top-k feature contributions beside each prediction.

predictions:
- `reasons` (PostgreSQL `bytea`, SQLite BLOB): the top-k features of the score, largest |contribution|
  first, packed: k little-endian int16 indices into the version's `model_versions.features`, then their k
  little-endian float32 contributions, in the units of the explained output (log-odds for a linear
  classifier, the value for a regression, the raw margin for a booster); 6k bytes. Packed rather than two
  arrays: a `smallint[]` and a `real[]` cost 2x the COPY time (the server parses every element) and 40
  more bytes a row. It lives in the prediction's own row, so a reason is committed (and removed) with its
  prediction by construction. Runs scored without reasons leave it NULL: their rows and COPY stay exactly
  as before.

model_versions:
- `explainer` (JSON): how the version's scores are explained exactly (nightshift.models.explainers):
  the linear pipeline's parameters, or the TreeSHAP booster file of a LightGBM / XGBoost model. NULL:
  no exact explainer (a kind without one, or registered before this revision).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Nullable without a default: a catalog change only, whatever the table's size; the attached
        # per-run partitions get the columns with the parent.
        op.execute("ALTER TABLE predictions ADD COLUMN reasons BYTEA")
    else:
        op.execute("ALTER TABLE predictions ADD COLUMN reasons BLOB")
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("explainer", sa.JSON, nullable=True))


def downgrade() -> None:
    # A native DROP COLUMN on both dialects (SQLite >= 3.35): a batch rebuild of model_versions would drop
    # the table that model_aliases' foreign key points at, which SQLite refuses in a store with an alias.
    op.execute("ALTER TABLE model_versions DROP COLUMN explainer")
    op.execute("ALTER TABLE predictions DROP COLUMN reasons")
