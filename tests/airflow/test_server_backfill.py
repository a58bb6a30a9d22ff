"""Backfills through a running Airflow (scheduler + LocalExecutor + triggerer): parallel, idempotent, exact."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tests.airflow.conftest import AF_ROWS
from tests.airflow.harness import AirflowServer, store_connection, wait_until
from tests.airflow.ol_tree import datasets, task_lineage
from tests.lineage.olspec import Recorder, Schema

pytestmark = pytest.mark.slow

DAG_ID = "score_churn"
DAYS = [date(2026, 11, 14), date(2026, 11, 15), date(2026, 11, 16)]


def _wait_for_backfill(server: AirflowServer, backfill_id: int, timeout: float) -> dict[str, Any]:
    def completed() -> dict[str, Any] | None:
        b = server.api("GET", f"/backfills/{backfill_id}")
        return b if b.get("completed_at") else None

    try:
        return wait_until(completed, timeout, f"backfill {backfill_id} to complete", 2)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n--- airflow log tail ---\n{server.log_tail()}") from None


def _latest_backfill(server: AirflowServer) -> dict[str, Any]:
    backfills = server.api("GET", f"/backfills?dag_id={DAG_ID}&limit=100")["backfills"]
    return dict(max(backfills, key=lambda b: b["id"]))


def _runs_for(server: AirflowServer, days: list[date], run_type: str = "backfill") -> dict[date, dict[str, Any]]:
    runs: dict[date, dict[str, Any]] = {}
    for r in server.dag_runs(DAG_ID):
        start = date.fromisoformat(r["data_interval_start"][:10]) if r.get("data_interval_start") else None
        if r["run_type"] == run_type and start in days:
            runs[start] = r
    return runs


def _assert_exact_partitions(settings: Any, days: list[date]) -> list[dict[str, Any]]:
    """Exactly these days are committed, each with every input row once; returns the store's runs."""
    from nightshift.db import open_store

    store = open_store(settings)
    try:
        parts = store.list_partitions("churn")
        assert sorted(p.ds for p in parts) == days
        for p in parts:
            assert p.row_count == AF_ROWS, p
            ids, _scores = store.read_partition("churn", p.version, p.ds) or ([], [])
            assert len(ids) == len(set(ids)) == AF_ROWS, f"ds={p.ds}: {len(ids)} rows, {len(set(ids))} distinct"
        return store.runs("churn", limit=100)
    finally:
        store.dispose()


def test_the_nightly_run_waits_for_its_partition_deferred_in_the_triggerer(airflow_server: AirflowServer) -> None:
    # Unpausing scheduled the latest night (ds = yesterday), whose partition never arrives in this dataset.
    def deferred() -> bool:
        scheduled = [r for r in airflow_server.dag_runs(DAG_ID) if r["run_type"] == "scheduled"]
        return any(
            ti["task_id"] == "wait_for_partition" and ti["state"] == "deferred"
            for r in scheduled
            for ti in airflow_server.task_instances(DAG_ID, r["dag_run_id"])
        )

    wait_until(deferred, 120, "the scheduled run's wait_for_partition to be deferred", 2)


@pytest.mark.postgres
@pytest.mark.timeout(420)
def test_cli_backfill_of_three_dates_with_an_overlapping_run_commits_exactly_three_partitions(
    airflow_server: AirflowServer,
    server_project: Path,
    pg_url: str,
    registered: Callable[[Any], Any],
    airflow_lineage: Recorder,
) -> None:
    from sqlalchemy.engine import make_url

    from nightshift.config import load_settings

    settings = load_settings(server_project, store_url=pg_url)
    registered(settings)
    url = make_url(pg_url)
    # The store comes from the `nightshift_store` Connection, not from the project file.
    conn = {"conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username, "schema": url.database}

    with store_connection(airflow_server, conn):
        t0 = time.monotonic()
        out = airflow_server.cli(
            "backfill", "create", "--dag-id", DAG_ID, "--from-date", "2026-11-14", "--to-date", "2026-11-16",
            "--max-active-runs", "3", "--reprocess-behavior", "completed",
        )  # fmt: skip
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        backfill = _latest_backfill(airflow_server)
        # Meanwhile a manual run scores 2026-11-16 again: two Airflow runs of one ds at the same
        # time, serialised by the store's lock; the later commit replaces the earlier one whole.
        manual = airflow_server.api(
            "POST",
            f"/dags/{DAG_ID}/dagRuns",
            {
                "dag_run_id": f"overlap__{time.time_ns()}",
                "logical_date": "2026-11-16T12:00:00Z",
                "data_interval_start": "2026-11-16T00:00:00Z",
                "data_interval_end": "2026-11-17T00:00:00Z",
            },
        )
        _wait_for_backfill(airflow_server, backfill["id"], 300)
        states = airflow_server.wait_for_runs(DAG_ID, {manual["dag_run_id"]}, 120)
        elapsed = time.monotonic() - t0

    assert states == {manual["dag_run_id"]: "success"}
    runs = _runs_for(airflow_server, DAYS)
    assert {d: r["state"] for d, r in runs.items()} == dict.fromkeys(DAYS, "success")
    store_runs = _assert_exact_partitions(settings, DAYS)
    assert all(r["status"] in ("committed", "superseded") for r in store_runs), store_runs
    by_day: dict[str, list[dict[str, Any]]] = {}
    for r in store_runs:
        by_day.setdefault(str(r["ds"]), []).append(r)
    assert {ds: len(rs) for ds, rs in by_day.items()} == {"2026-11-14": 1, "2026-11-15": 1, "2026-11-16": 2}
    assert sorted(r["status"] for r in by_day["2026-11-16"]) == ["committed", "superseded"]
    assert {r["run_key"] for r in by_day["2026-11-16"]} == {manual["dag_run_id"], runs[DAYS[2]]["dag_run_id"]}
    print(f"\n3-date CLI backfill + an overlapping manual run (PostgreSQL store) took {elapsed:.1f}s")
    _assert_lineage(airflow_lineage, settings, {r["run_key"]: str(r["ds"]) for r in store_runs}, store_runs)


def _assert_lineage(recorder: Recorder, settings: Any, days: dict[str, str], store_runs: list[dict[str, Any]]) -> None:
    """Through Airflow's OpenLineage provider: each DAG run's `score` task reports the night's partition as
    its input and the store's committed predictions as its output (rows written); nightshift's own run
    events are the task's children, the DAG run their root; every event is valid OpenLineage."""
    from nightshift.telemetry import openlineage as ol

    schema = Schema()
    features = ol.dataset_id(settings.model("churn").dataset_uri(settings))
    store = ol.store_dataset(settings.store_url)
    by_key = {r["run_key"]: r for r in store_runs}
    for run_id, ds in days.items():
        tree = task_lineage(
            recorder, schema, dag_id=DAG_ID, run_id=run_id, task_id="score", nightshift_job="score.churn"
        )
        assert (datasets(tree.complete, "inputs"), datasets(tree.complete, "outputs")) == ([features], [store])
        [source], [target] = tree.complete["inputs"], tree.complete["outputs"]
        manifest = source["facets"]["nightshift_manifest"]
        assert (manifest["ds"], sum(f["rows"] for f in manifest["files"])) == (ds, AF_ROWS), manifest
        assert target["outputFacets"]["outputStatistics"]["rowCount"] == AF_ROWS
        [done] = [e for e in tree.children if e["eventType"] == "COMPLETE"]
        facet = done["run"]["facets"]["nightshift_run"]
        assert (facet["store_run_id"], facet["run_key"]) == (by_key[run_id]["run_id"], run_id), facet
