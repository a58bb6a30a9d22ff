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
