"""`nightshift night` and `nightshift backfill` as a cron job runs them: subprocesses, on a running cluster."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

from tests.conftest import DEMO_ROWS, SCORE_DS, write_project

D16, D17, D18 = date(2026, 11, 16), date(2026, 11, 17), SCORE_DS


def _project(tmp_path: Path, data_root: Path, sqlite_url: str, dask_client: Any) -> tuple[Path, Any]:
    from nightshift.config import load_settings
    from nightshift.training import train_and_register

    address = dask_client.scheduler.address  # the session's cluster: no cluster start per command
    path = write_project(tmp_path, sqlite_url, data_root, dask=f'scheduler_address = "{address}"')
    settings = load_settings(path)
    train_and_register(settings, "churn", D17)  # v1, the champion
    train_and_register(settings, "churn", D17, promote="never")  # v2
    return path, settings


def _production(settings: Any) -> tuple[dict[str, int], list[tuple[str, int | None]], Any]:
    from nightshift.db import open_store
    from nightshift.rollout import Rollouts

    store = open_store(settings)
    try:
        rollouts = Rollouts(settings, store)
        events = [(e["alias"], e["new_version"]) for e in rollouts.registry.alias_history("churn")]
        return rollouts.registry.aliases("churn"), events, rollouts.active("churn")
    finally:
        store.dispose()


def test_night_then_a_parallel_backfill_leave_production_as_the_night_left_it(
    cli: Callable[..., CompletedProcess[str]], tmp_path: Path, data_root: Path, sqlite_url: str, dask_client: Any
) -> None:
    from nightshift.db import open_store
    from nightshift.nightly import decided_night, served_on
    from nightshift.rollout import Rollouts

    path, settings = _project(tmp_path, data_root, sqlite_url, dask_client)
    c = ("--config", str(path))

    night = cli("night", "-m", "churn", "--ds", D18.isoformat(), *c, "--json")
    assert night.returncode == 0, night.stderr
    report = json.loads(night.stdout)
    assert (report["plan"]["mode"], report["plan"]["versions"]) == ("nightly", {"champion": 1})
    assert report["scored"]["champion"]["rows"] == DEMO_ROWS
    assert report["decision"]["rollout"] == "unchanged"
    assert report["cluster"] == f"on {dask_client.scheduler.address}"

    store = open_store(settings)
    try:
        Rollouts(settings, store).promote("churn", 2, by="test", reason="after the night of 11-18", ds=D18)
        assert decided_night(store, "churn", D18) is not None
    finally:
        store.dispose()
    before = _production(settings)
    assert before[0] == {"champion": 2, "previous": 1}

    out = cli("backfill", "-m", "churn", "--from", D16.isoformat(), "--to", D18.isoformat(), "--parallel", "2", *c)
    assert out.returncode == 0, out.stderr
    assert "backfilled 3 of 3 night(s)" in out.stdout
    assert _production(settings) == before  # no alias, no rollout moved

    store = open_store(settings)
    try:
        # Each day was re-scored with the version that served it: 11-18 by v1 (its night), the days no night
        # served by today's champion; none was decided.
        assert served_on(store, "churn", D18) == {"champion": (1, 1.0)}
        assert {(p.version, p.ds) for p in store.list_partitions("churn")} >= {(2, D16), (2, D17), (1, D18)}
        assert all(p.row_count == DEMO_ROWS for p in store.list_partitions("churn"))
        assert [decided_night(store, "churn", d) for d in (D16, D17)] == [None, None]
        runs = [r for r in store.runs("churn", limit=20) if r["run_key"] == "cli:backfill"]
        assert sorted(str(r["ds"]) for r in runs) == ["2026-11-16", "2026-11-17", "2026-11-18"]
    finally:
        store.dispose()


def test_a_backfill_with_a_missing_day_exits_1_naming_it_and_scores_the_others(
    cli: Callable[..., CompletedProcess[str]], tmp_path: Path, data_root: Path, sqlite_url: str, dask_client: Any
) -> None:
    import shutil

    path, _settings = _project(tmp_path, data_root, sqlite_url, dask_client)
    shutil.rmtree(data_root / "features" / f"ds={D16.isoformat()}")  # a day deleted upstream
    out = cli(
        "backfill", "-m", "churn", "--from", D16.isoformat(), "--to", D17.isoformat(), "--config", str(path), "--json"
    )
    assert out.returncode == 1, out.stdout + out.stderr
    results = json.loads(out.stdout)
    assert set(results) == {"2026-11-16", "2026-11-17"}
    assert results["2026-11-16"]["error"] == "PartitionNotReady"
    assert "ds=2026-11-16 does not exist" in results["2026-11-16"]["message"]
    night = results["2026-11-17"]
    assert (night["plan"]["mode"], night["decision"]["rollout"]) == ("backfill", "backfill: nothing decided")
    assert night["scored"]["champion"]["rows"] == DEMO_ROWS
    # v1's monitoring reference is built from its training days, one of which is now gone: the night is
    # scored and committed, its monitoring unavailable (an alert), not a failed night.
    assert night["monitored"] == {"champion": None}
