"""A multiclass model's probabilities packed as bytes on PostgreSQL too (`predictions.probs`).

predictions:
- `probs` (PostgreSQL `real[]` → `bytea`): K little-endian float32 values in the version's recorded class
  order, 4K bytes, the layout SQLite has stored since 0007 (one format on both stores, like `reasons`). A
  `real[]` costs the server a parse of every element on COPY: a 4-class row took 1.8x a binary row's COPY
  time and 56 more bytes, the bytes 1.3x and 20 more (bench: multiclass-commit).

The upgrade rewrites the predictions table (every run's partition) under an exclusive lock: run it with no
scoring run or API in flight. The downgrade converts back, exactly (every finite float32 value).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# The view reads p.probs: PostgreSQL refuses to change the type of a column a view uses. Its text as 0007 made it.
_VIEW = """
CREATE VIEW committed_predictions AS
SELECT c.model, c.version, c.ds, p.entity_id, p.score, p.label, p.value, p.probs, r.started_at AS scored_at, c.run_id
FROM partitions c
JOIN runs r ON r.run_id = c.run_id
JOIN predictions p ON p.run_id = c.run_id
WHERE c.status = 'committed'
"""

# float4send gives an element's big-endian bytes; each is reversed to little-endian. Session-local
# (pg_temp) helpers: nothing stays in the schema.
_PACK = """
CREATE FUNCTION pg_temp.nightshift_pack_probs(a real[]) RETURNS bytea LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT string_agg(
    substring(b from 4 for 1) || substring(b from 3 for 1) || substring(b from 2 for 1) || substring(b from 1 for 1),
    ''::bytea ORDER BY i)
  FROM (SELECT float4send(e) AS b, i FROM unnest(a) WITH ORDINALITY AS t(e, i)) AS elements
$$
"""

# Each little-endian float32 decoded from its sign, exponent and mantissa (exact in float8); NaN and the
# infinities by their bit patterns. (PostgreSQL gives |, & and << one precedence: every shift is bracketed.)
_UNPACK = """
CREATE FUNCTION pg_temp.nightshift_unpack_probs(b bytea) RETURNS real[] LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT coalesce(array_agg(
    CASE
      WHEN (w >> 23) & 255 = 255 AND w & 8388607 <> 0 THEN 'NaN'::real
      WHEN (w >> 23) & 255 = 255 THEN (CASE WHEN w >> 31 = 1 THEN '-Infinity' ELSE 'Infinity' END)::real
      ELSE ((CASE WHEN w >> 31 = 1 THEN -1 ELSE 1 END) * (CASE
        WHEN (w >> 23) & 255 = 0 THEN (w & 8388607)::float8 * 2.0::float8 ^ (-149)
        ELSE (8388608 + (w & 8388607))::float8 * 2.0::float8 ^ (((w >> 23) & 255) - 150)
      END))::real
    END ORDER BY i), '{}'::real[])
  FROM (
    SELECT i, (get_byte(b, 4 * i)::bigint | (get_byte(b, 4 * i + 1)::bigint << 8)
               | (get_byte(b, 4 * i + 2)::bigint << 16) | (get_byte(b, 4 * i + 3)::bigint << 24)) AS w
    FROM generate_series(0, length(b) / 4 - 1) AS i
  ) AS words
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite has stored the packed bytes since 0007
    op.execute("DROP VIEW IF EXISTS committed_predictions")
    op.execute(_PACK)
    op.execute("ALTER TABLE predictions ALTER COLUMN probs TYPE bytea USING pg_temp.nightshift_pack_probs(probs)")
    op.execute("DROP FUNCTION pg_temp.nightshift_pack_probs(real[])")
    op.execute(_VIEW)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP VIEW IF EXISTS committed_predictions")
    op.execute(_UNPACK)
    op.execute("ALTER TABLE predictions ALTER COLUMN probs TYPE real[] USING pg_temp.nightshift_unpack_probs(probs)")
    op.execute("DROP FUNCTION pg_temp.nightshift_unpack_probs(bytea)")
    op.execute(_VIEW)
