"""Any task's outputs: regression values and every class's probability beside the score; what a version is.

predictions:
- `label` may be NULL (a regression predicts no class);
- `value` (double precision): a regression's prediction, exactly as the model gave it (`score`
  keeps it as float4 for monitoring and ordering);
- `probs`: a multiclass model's probability of every class, in the order of its recorded classes
  (PostgreSQL `real[]`; SQLite a BLOB of little-endian float32). Binary models leave both NULL,
  so their rows and their COPY stay exactly as before.

model_versions:
- `task` ('binary', 'multiclass', 'regression'; existing versions are binary);
- `signature` (JSON): how the ONNX graph is fed and read: its inputs' layout and its outputs'
  roles and class names (NULL: nightshift's own layout, one [N,1] input per contract column and a
  `probabilities` output);
- `source` (JSON): where a model brought by its user came from: flavour, library and version,
  converter, the original artifact's URI and SHA-256 (NULL: trained by nightshift).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_VIEW = """
CREATE VIEW committed_predictions AS
SELECT c.model, c.version, c.ds, p.entity_id, p.score, p.label, {extra}r.started_at AS scored_at, c.run_id
FROM partitions c
JOIN runs r ON r.run_id = c.run_id
JOIN predictions p ON p.run_id = c.run_id
WHERE c.status = 'committed'
"""


def _sqlite_rebuild(label_nullable: bool, with_outputs: bool) -> None:
    """SQLite cannot drop NOT NULL in place: rebuild the (WITHOUT ROWID) table, rows and all."""
    label = "SMALLINT" if label_nullable else "SMALLINT NOT NULL"
    outputs = ", value FLOAT, probs BLOB" if with_outputs else ""
    columns = "run_id, entity_id, score, label" + (", value, probs" if with_outputs else "")
    source = "run_id, entity_id, score, label" + (", NULL, NULL" if with_outputs else "")
    op.execute(
        f"CREATE TABLE predictions_new (run_id INTEGER NOT NULL, entity_id VARCHAR(128) NOT NULL, "
        f"score FLOAT NOT NULL, label {label}{outputs}, PRIMARY KEY (run_id, entity_id)) WITHOUT ROWID"
    )
    op.execute(f"INSERT INTO predictions_new ({columns}) SELECT {source} FROM predictions")
    op.execute("DROP TABLE predictions")
    op.execute("ALTER TABLE predictions_new RENAME TO predictions")


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS committed_predictions")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE predictions ALTER COLUMN label DROP NOT NULL")
        op.execute("ALTER TABLE predictions ADD COLUMN value DOUBLE PRECISION")
        op.execute("ALTER TABLE predictions ADD COLUMN probs REAL[]")
    else:
        _sqlite_rebuild(label_nullable=True, with_outputs=True)
    op.execute(_VIEW.format(extra="p.value, p.probs, "))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("task", sa.String(16), nullable=False, server_default="binary"))
        batch.add_column(sa.Column("signature", sa.JSON, nullable=True))
        batch.add_column(sa.Column("source", sa.JSON, nullable=True))


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS committed_predictions")
    # Native DROP COLUMN (SQLite >= 3.35): a batch rebuild of model_versions would drop the table that
    # model_aliases' foreign key points at, which SQLite refuses in a store with an alias.
    for column in ("source", "signature", "task"):
        op.execute(f"ALTER TABLE model_versions DROP COLUMN {column}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DELETE FROM predictions WHERE label IS NULL")
        op.execute("ALTER TABLE predictions DROP COLUMN probs")
        op.execute("ALTER TABLE predictions DROP COLUMN value")
        op.execute("ALTER TABLE predictions ALTER COLUMN label SET NOT NULL")
    else:
        op.execute("DELETE FROM predictions WHERE label IS NULL")
        _sqlite_rebuild(label_nullable=False, with_outputs=False)
    op.execute(_VIEW.format(extra=""))
