"""PostgreSQL: the predictions primary key leads with entity_id.

Each run is its own partition, so `run_id` is constant inside one: as the leading key column
it makes every comparison of the index build fall through to the text column. Led by
`entity_id`, the build sorts on abbreviated keys: 0.8 s instead of 1.15-1.5 s for a 4M-row run
on 2 cores, the largest cost of a commit. Lookups bind both columns by equality, so either
order serves them. SQLite keeps (run_id, entity_id): its table is clustered on the key, and
a run's rows stay together.

The upgrade rebuilds the key of every committed partition (about 0.2 s per million rows on
2 cores) while holding an exclusive lock on `predictions`: run it between nightly runs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _set_key(columns: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE predictions DROP CONSTRAINT predictions_pkey")
    op.execute(f"ALTER TABLE predictions ADD CONSTRAINT predictions_pkey PRIMARY KEY ({columns})")


def upgrade() -> None:
    _set_key("entity_id, run_id")


def downgrade() -> None:
    _set_key("run_id, entity_id")
