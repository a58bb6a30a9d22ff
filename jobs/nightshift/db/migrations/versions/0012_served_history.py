"""What served a night, as it was at any moment: the rows a re-run of the night replaced.

- `served_history`: a `served` row (which version held which role on a (model, ds) night) that a later
  nightly run of the same night replaced, because that role's version changed or the role is gone, with
  when it was recorded and when it was replaced (`replaced_at`: the replacing rows' `recorded_at`). A row
  whose role and version a re-run keeps stays in `served` with its first `recorded_at`. The lookup API's
  `?ds=D&as_of=T` by alias reads the version that held the role on D at T from `served` (recorded by T) or
  from here (recorded by T, replaced after T). Rows replaced before this revision have no history: such a
  moment answers from the alias as it was at T, as before.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "served_history",
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("ds", sa.Date, primary_key=True),
        sa.Column("role", sa.String(16), primary_key=True),
        sa.Column("recorded_at", TS, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("share", sa.Float, nullable=False),
        sa.Column("run_id", ID, nullable=True),
        sa.Column("replaced_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("served_history")
