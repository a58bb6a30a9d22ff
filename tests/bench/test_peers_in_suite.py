"""The peers (Ray Data, Feast) are cases of `python -m bench`: skipped with a reason without their environment, and
their results reported in the suite's summary, ratios and targets included, when they ran."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bench.common import Measurement

from bench import ray_feast, report, suite


def test_every_peer_is_a_case_of_the_suite() -> None:
    assert set(suite.PEER_CASES) <= set(suite.CASES)
    assert {name.removeprefix("peers-") for name in suite.PEER_CASES} == set(ray_feast.CASES)


def test_without_the_peers_environment_the_reason_names_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_feast, "peers_python", lambda: ray_feast.BENCH / "peers_env" / "no-such-venv" / "python")
    why = ray_feast.peers_missing()
    assert why is not None
    assert "uv sync --frozen --project bench/peers_env" in why


def _write(folder: Path, records: list[dict[str, Any]]) -> None:
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_summary_carries_the_peers_ratios_and_targets(tmp_path: Path) -> None:
    ns = Measurement(ray_feast.NS_FRESH, ray_feast.GROUP, 4_000_000, [4.0, 4.5, 5.0], model="linear", block="b")
    ray = Measurement(
        f"{ray_feast.RAY_VARIANTS['datasink']} ({ray_feast.RAY_STARTED})",
        ray_feast.GROUP,
        4_000_000,
        [20.0, 27.0, 25.0],
        model="linear",
        block="b",
    )
    lookups = [
        {"kind": "peers-lookup", "server": server, "round": rnd, "connections": 8, "requests": int(rate * 10)}
        | {"errors": 0, "seconds": 10.0, "requests_per_s": rate, "p50_ms": p99 / 2, "p99_ms": p99}
        | {"server_cpu_us_per_request": 150.0}
        for rnd in (1, 2, 3)
        for server, rate, p99 in (("nightshift", 6000.0, 2.0), ("feast-redis", 1500.0, 11.0))
    ]
    _write(
        tmp_path,
        [
            {"kind": "environment", "command": "python -m bench", "size": {"name": "default", "repeats": 3}},
            {"kind": "plan", "skipped": {}},
            ns.record(),
            ray.record(),
            *lookups,
            {"kind": "error", "case": "scale", "error": "timed out after 900 s"},
            {"kind": "error", "case": "peers-feast", "error": "timed out after 3600 s"},
            {"kind": "peers-versions", "case": "peers-ray", "versions": {"ray": "2.60.0", "feast": "0.67.0"}},
            {"kind": "finished", "seconds": 1.0},
        ],
    )
    summary = report.write(tmp_path)
    assert "## The peers users would pick instead: Ray Data, Feast (`peers.md`)" in summary
    # Paired by round: 20/4, 27/4.5, 25/5 -> 5.0, 6.0, 5.0.
    assert "| nightshift, fresh cluster / Ray Data (Ray started by the program) | **5.00× [5.00–6.00]** |" in summary
    assert "nightshift / feast-redis: **4.00×** lookups/s" in summary
    assert "lookups/s >= 2 at a lower p99: met" in summary
    assert (tmp_path / "peers.md").exists()
    # Another case's failure is the suite's note, not the peers' (it is listed once); so is each contender.
    assert summary.count("timed out after 900 s") == 1
    assert summary.count("timed out after 3600 s") == 1  # a peer's failure: in the peers' notes only
    assert "'ray': '2.60.0'" in summary
    assert summary.count("Each contender in words") == 1


def test_a_summary_without_peers_has_no_peers_section(tmp_path: Path) -> None:
    _write(tmp_path, [{"kind": "environment"}, {"kind": "plan", "skipped": {}}, {"kind": "finished", "seconds": 1}])
    assert "peers users would pick" not in report.write(tmp_path)
    assert not (tmp_path / "peers.md").exists()


def test_the_sqlite_baseline_in_nightshifts_order_stores_the_same_rows(tmp_path: Path) -> None:
    import sqlite3

    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench import limits
    from nightshift.demo import DEMO_ENTITY_ID

    paths = []
    for k in range(3):  # consecutive integer ids per file: as text they interleave across the files
        path = tmp_path / f"part-{k}.parquet"
        pq.write_table(pa.table({DEMO_ENTITY_ID: pa.array(range(k * 20 + 1, k * 20 + 21), pa.int64())}), path)
        paths.append(str(path))
    chunks = limits.sqlite_rows_by_file(paths)
    assert [len(c) for c in chunks] == [20, 20, 20]
    assert all(c == sorted(c) for c in chunks)
    assert limits.sqlite_bulk_insert_chunks(tmp_path / "chunks.db", chunks) == 60
    limits.sqlite_bulk_insert(tmp_path / "bulk.db", sorted(row for c in chunks for row in c))
    stored = [
        sqlite3.connect(tmp_path / name).execute("SELECT * FROM predictions ORDER BY run_id, entity_id").fetchall()
        for name in ("chunks.db", "bulk.db")
    ]
    assert stored[0] == stored[1]
    assert [r[1] for r in stored[0]] == sorted(str(i) for i in range(1, 61))
