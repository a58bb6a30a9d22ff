"""Smoke benchmark: nightshift's PostgreSQL path keeps within a generous ratio of the pipelined limit.

Tiny data (200k rows), one run of each per round, three rounds round-robin on the session's Dask
cluster: a ratio measured in the same process, never an absolute time. The full suite is
`make bench` (docs/performance.md).
"""

from __future__ import annotations

import pickle
import statistics
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from bench.common import Contender, interleave, reset_plain_table, scratch_database
from bench.data import Dataset, ModelArtifacts
from bench.limits import LimitWorkers, pipelined
from bench.nightshift_path import NightshiftRunner

ROWS = 200_000
FILES = 4
#: Generous: the full suite's target is 0.9; this catches a path that became several times slower.
MIN_RATIO = 0.25

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    from nightshift.demo import generate

    root = tmp_path_factory.mktemp("bench-data")
    ds = date(2026, 11, 20)
    generate(root / "features", root / "labels", start=ds, days=1, rows_per_day=ROWS, files_per_day=FILES, seed=3)
    return Dataset(name="smoke", root=root, rows=ROWS, files=FILES, ds=ds)


def _artifacts(trained: Any, folder: Path) -> ModelArtifacts:
    art = ModelArtifacts(
        kind="logistic_regression",
        label="linear",
        onnx_path=folder / "model.onnx",
        pipeline_path=folder / "pipeline.pkl",
        train_rows=trained.train_rows,
    )
    art.onnx_path.write_bytes(trained.onnx_bytes)
    art.pipeline_path.write_bytes(pickle.dumps(trained.pipeline))
    (folder / "trained.pkl").write_bytes(pickle.dumps(trained))
    return art


def test_nightshift_keeps_within_a_ratio_of_the_pipelined_limit(
    pg_admin_url: str, trained_model: Any, dask_client: Any, smoke_data: Dataset, tmp_path: Path
) -> None:
    art = _artifacts(trained_model, tmp_path)
    runner = NightshiftRunner("postgresql", tmp_path / "ns", art, pg_admin_url)
    try:
        with scratch_database(pg_admin_url) as url, LimitWorkers(2) as workers:
            results = interleave(
                {
                    "limit": Contender(
                        lambda: {"rows": pipelined(smoke_data.paths, art.onnx_bytes, url, "plain", workers=workers)},
                        setup=lambda: reset_plain_table(url, "plain"),
                    ),
                    "nightshift": Contender(
                        lambda: runner.score(smoke_data, client=dask_client),
                        setup=runner.setup,
                        after=runner.teardown,
                    ),
                },
                repeats=3,
            )
    finally:
        runner.close()
    assert all(e["rows"] == ROWS for e in results["limit"][1])
    # Rates over the same rows: the ratio of rates is the inverse ratio of times, paired by round.
    ratios = [lim / ns for lim, ns in zip(results["limit"][0], results["nightshift"][0], strict=True)]
    ratio = statistics.median(ratios)
    print(f"nightshift / pipelined limit, per round: {', '.join(f'{r:.2f}' for r in ratios)}; median {ratio:.2f}")
    assert ratio >= MIN_RATIO, (
        f"nightshift ran at {ratio:.2f}x the pipelined limit's rate (rounds: {', '.join(f'{r:.2f}' for r in ratios)}); "
        f"expected at least {MIN_RATIO}x. Run `make bench SIZE=small` and see docs/performance.md."
    )


# -- the suite's newer cases (many-models, brought-lightgbm, multiclass-commit, explain-linear, scale), each tiny ----

TINY_ROWS = 40_000


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str) -> Any:
    """A whole suite plan at a tiny size (its own data root): what `python -m bench` builds, 40k rows in 4 files."""
    import dataclasses

    from bench.cases import SIZES, Plan
    from bench.data import dataset, train_brought, train_model

    root = tmp_path_factory.mktemp("bench-tiny")
    size = dataclasses.replace(
        SIZES["small"],
        name="tiny",
        rows=TINY_ROWS,
        files=4,
        repeats=1,
        train_rows=4_000,
        scale_rows=(TINY_ROWS // 2, TINY_ROWS * 2),
        scale_rows_per_file=TINY_ROWS // 4,
        scale_files=40,
        models_in_pass=5,
    )
    quiet = lambda *_: None  # noqa: E731
    main = dataset(size.rows, size.files, root=root, log=quiet)
    scale = tuple(dataset(rows, rows // size.scale_rows_per_file, root=root, log=quiet) for rows in size.scale_rows)
    out = root / "results"
    out.mkdir()
    return Plan(
        size=size,
        out=out,
        main=main,
        quarter=main,
        few_files=main,
        many_files=main,
        models={"linear": train_model("linear", size.train_rows, root=root, log=quiet)},
        pg_url=pg_admin_url,
        dask_ml_missing="not needed",
        profile=False,
        extra_models={"multiclass": train_model("multiclass", size.train_rows, root=root, log=quiet)},
        brought={"lightgbm": train_brought("lightgbm", size.train_rows, root=root, log=quiet)},
        scale=scale,
        scale_files=dataset(size.rows, size.scale_files, root=root, log=quiet),
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("case", "group", "names"),
    [
        ("many-models", "many-models", 3),
        ("brought-lightgbm", "brought", 4),
        ("multiclass-commit", "multiclass", 2),
        ("explain-linear", "explain", 2),
        ("scale", "scale", 4),
    ],
)
def test_each_new_case_runs_and_reports_its_target(tiny_plan: Any, case: str, group: str, names: int) -> None:
    """The case runs in its own spawned process as the suite runs it, records one measurement per contender, no
    error, and the report states its target."""
    import json

    from bench.suite import run_case

    from bench import report

    assert run_case(case, tiny_plan, timeout_s=600)
    records = [json.loads(line) for line in (tiny_plan.out / "results.jsonl").read_text().splitlines()]
    errors = [r for r in records if r.get("kind") == "error" and r.get("case") == case]
    assert not errors, errors
    measured = [r for r in records if r.get("kind") == "measurement" and r["group"] == group]
    assert len(measured) == names, [r["name"] for r in measured]
    assert all(r["runs"] == 1 and r["median_s"] > 0 for r in measured)
    summary = report.write(tiny_plan.out)
    expected = {
        "many-models": "5 models in one pass ≤ 1.5× one model's time",
        "brought-lightgbm": "brought lightgbm ≥ 0.9× the limit + primary key, same ONNX graph",
        "multiclass-commit": "multiclass (4 classes): write + commit per row ≤ 1.3× binary",
        "explain-linear": "explain on (top 3 reasons) ≤ 1.5× explain off, end to end",
        "scale": "files ≤ 1.1× the time of",
    }[case]
    assert expected in summary
    if case == "many-models":
        one_pass = next(r for r in measured if r["name"].endswith("in one pass"))
        assert all(set(e["rows_committed"].values()) == {TINY_ROWS} for e in one_pass["extras"])
        assert all(len(e["rows_committed"]) == 5 for e in one_pass["extras"])
    if case == "multiclass-commit":
        assert all(e["store_bytes"] > 0 and e["timings"]["commit_s"] > 0 for r in measured for e in r["extras"])
    if case == "explain-linear":
        on = next(r for r in measured if r["name"].startswith("explain on"))
        off = next(r for r in measured if r["name"].startswith("explain off"))
        assert all(e["timings"]["tasks_explain_s"] > 0 for e in on["extras"])
        assert all("tasks_explain_s" not in e["timings"] for e in off["extras"])
        assert "## Reasons for each score (explain-linear)" in summary
    if case == "scale":
        assert "cost linear: t(0.08M)" in summary
        assert all(e["store_bytes"] > 0 and e["peak_worker_rss_bytes"] > 0 for r in measured for e in r["extras"])


def test_the_sqlite_bulk_insert_baseline_writes_nightshifts_table_shape(tmp_path: Path) -> None:
    """The baseline's table is the predictions table of a migrated store: the same columns with their declared
    types, NOT NULLs and key positions, and WITHOUT ROWID (a baseline of another shape measures another thing: it
    drifted once, 4 columns against nightshift's 7)."""
    import sqlite3

    from bench.limits import SQLITE_DDL

    from nightshift.db.store import Store

    def shape(conn: sqlite3.Connection) -> tuple[list[tuple[str, str, int, int]], int]:
        columns = [(r[1], str(r[2]).upper(), r[3], r[5]) for r in conn.execute("PRAGMA table_xinfo(predictions)")]
        [without_rowid] = conn.execute("SELECT wr FROM pragma_table_list WHERE name = 'predictions'").fetchone()
        return columns, int(without_rowid)

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.upgrade()
    store.dispose()
    migrated = sqlite3.connect(tmp_path / "store.db")
    baseline = sqlite3.connect(tmp_path / "baseline.db")
    baseline.execute(SQLITE_DDL)
    try:
        assert shape(baseline) == shape(migrated)
        assert shape(baseline)[1] == 1
    finally:
        migrated.close()
        baseline.close()
