"""The lookup statements' plans on PostgreSQL: a lookup reads the one partition (run) it answers from.

`predictions` holds one LIST partition per retained run of every model. The API runs its statements as
generic plans (`plan_cache_mode=force_generic_plan`, api/db.py), so pruning happens when the plan
executes, from the run the catalog names. Joined on the catalog row's run_id, the statements once probed
the index of every partition and filtered the other runs' rows out: a batch cost as many index probes
per id as the store held runs. This checks, with EXPLAIN ANALYZE of the prepared statements, that every
kind of lookup executes at most one partition's scan, and that the store's own reads of one partition
(`Store.lookup`, `Store.read_partition`) execute no other.

What the single-lookup half can catch: the old single-lookup statement's plan depended on the tables'
statistics. Over these small partitions it pruned at run time from the catalog row; over the benchmark's
1M-row partitions it probed every partition (docs/api.md). The new form prunes whatever the statistics:
the run is a parameter of the index condition. The batch half fails on the old statements here.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

from nightshift.api.queries import _KINDS, Kind, build
from nightshift.db.engine import libpq_url
from nightshift.db.store import lookup_statement, partition_statement
from tests.api.conftest import DS1, DS2, ROWS, commit_partition, seed

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

#: The statements' parameters: their PostgreSQL types (for PREPARE) and the values asked.
TYPES = {
    "model": "text",
    "version": "integer",
    "alias": "text",
    "ds": "date",
    "at": "timestamptz",
    "entity_id": "text",
    "ids": "text[]",
}


def _scans(plan: dict[str, Any]) -> list[tuple[str, int]]:
    """(partition, loops executed) of every scan of a `predictions` partition in a JSON plan."""
    found = []
    if str(plan.get("Relation Name", "")).startswith("predictions_r"):
        found.append((plan["Relation Name"], int(plan.get("Actual Loops", 0))))
    for child in plan.get("Plans", ()):
        found += _scans(child)
    return found


def _executed(conn: psycopg.Connection[Any], name: str, text: str, values: dict[str, Any]) -> list[tuple[str, int]]:
    """EXPLAIN ANALYZE of `text` run as the API runs it: a prepared statement with a generic plan."""
    order: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in order:
            order.append(m.group(1))
        return f"${order.index(m.group(1)) + 1}"

    body = re.sub(r"(?<!:):(\w+)", number, text)
    types = ", ".join(TYPES[p] for p in order)
    conn.execute(f"PREPARE {name}({types}) AS {body}")
    args = sql.SQL(", ").join(sql.Literal(values[p]) for p in order)
    query = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {}({})").format(sql.Identifier(name), args)
    row = conn.execute(query).fetchone()
    assert row is not None
    doc = row[0] if isinstance(row[0], list) else json.loads(row[0])
    return _scans(doc[0]["Plan"])


def test_every_lookup_statement_reads_one_partition(pg_url: str, tmp_path: Path) -> None:
    seeded = seed(pg_url, tmp_path / "models")
    try:
        # More runs than any selection reads: each model's other days.
        commit_partition(seeded.store, "fraud", 1, DS1, salt=32)
        q = build("postgresql")
        values = {
            "model": "churn",
            "version": 1,
            "alias": "champion",
            "ds": DS2,
            "at": datetime.now(UTC),
            "entity_id": "42",
            "ids": ["7", "42", "499", "no-such-id"],
        }
        with psycopg.connect(libpq_url(make_url(pg_url)), autocommit=True) as conn:
            conn.execute("SET plan_cache_mode = force_generic_plan")
            partitions = conn.execute(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'predictions'::regclass"
            ).fetchone()
            assert partitions is not None
            assert partitions[0] >= 5, partitions
            statements: dict[str, dict[Kind, str]] = {
                "one": q.one,
                "many": q.many,
                "one_explain": q.one_explain,
                "many_explain": q.many_explain,
            }
            read_one = 0
            for family, by_kind in statements.items():
                for i, kind in enumerate(_KINDS):
                    scans = _executed(conn, f"s_{family}_{i}", by_kind[kind], values)
                    ran = [s for s in scans if s[1] > 0]
                    assert len(ran) <= 1, f"{family} {kind} scanned {len(ran)} partitions: {ran}"
                    read_one += len(ran)
            assert read_one >= 8, "the seeded selections answered from no partition at all"
    finally:
        seeded.store.dispose()


def test_store_reads_of_a_partition_read_only_its_run(pg_url: str, tmp_path: Path) -> None:
    """`Store.lookup` (the CLI's lookup, lineage) and `Store.read_partition` (comparisons) execute one partition's
    scan: their statements, compiled for PostgreSQL, under EXPLAIN ANALYZE."""
    seeded = seed(pg_url, tmp_path / "models")
    try:
        commit_partition(seeded.store, "fraud", 1, DS1, salt=32)
        statements = {
            "lookup": lookup_statement("churn", 1, DS1, ["7", "42", "no-such-id"]),
            "read_partition": partition_statement("churn", 1, DS1),
        }
        with psycopg.connect(libpq_url(make_url(pg_url)), autocommit=True) as conn:
            for name, statement in statements.items():
                text = str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
                row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {text}").fetchone()
                assert row is not None
                scans = _scans(row[0][0]["Plan"])
                assert len(scans) >= 5, (name, scans)  # every partition is in the plan...
                ran = [s for s in scans if s[1] > 0]
                assert ran == [(f"predictions_r{seeded.runs[('churn', 1, DS1)]}", 1)], (name, ran)  # ...one runs
        found = seeded.store.lookup("churn", 1, DS1, ["7", "42", "no-such-id"])
        assert sorted(p.entity_id for p in found) == ["42", "7"]
        whole = seeded.store.read_partition("churn", 1, DS1)
        assert whole is not None
        assert len(whole[0]) == ROWS
    finally:
        seeded.store.dispose()
