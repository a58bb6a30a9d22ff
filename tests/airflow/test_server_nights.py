"""Under a real scheduler: a backfill, and a manual re-run of an old day, never change what production serves."""

from __future__ import annotations

import shutil
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tests.airflow.conftest import AF_ROWS, NIGHT_MODEL
from tests.airflow.harness import AirflowServer, store_connection, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DAG_ID = f"score_{NIGHT_MODEL}"
D_OLD, D_PROMOTE, D_NEXT = date(2026, 11, 14), date(2026, 11, 17), date(2026, 11, 18)


def _night(server: AirflowServer, ds: date, timeout: float = 240) -> dict[str, Any]:
    """Trigger one night with the `ds` param (no logical date: any day, any number of times) and wait for it."""
    run = server.api("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {"ds": ds.isoformat()}})
    states = server.wait_for_runs(DAG_ID, {run["dag_run_id"]}, timeout)
    assert states == {run["dag_run_id"]: "success"}, server.log_tail()
    # The run's note (runs list, run page, REST) says what the night did (nightshift_airflow.run_notes).
    note = server.api("GET", f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}")["note"] or ""
    assert note.startswith(f"nightshift · ds {ds.isoformat()} ("), note
    assert f"{NIGHT_MODEL}: champion v" in note, note
    assert f"{AF_ROWS:,} rows" in note, note
    return dict(run)


def _redeliver_drifted(project: Path, ds: date) -> None:
    """Upstream re-delivers day `ds` of NIGHT_MODEL's features with monthly_charges shifted by 3σ."""
    from nightshift.config import load_settings
    from nightshift.demo import generate, parse_drift
    from tests.airflow.conftest import AF_START

    features = Path(load_settings(project).model(NIGHT_MODEL).dataset_uri(load_settings(project)))
    with tempfile.TemporaryDirectory() as tmp:
        drift = parse_drift(f"mean_shift:monthly_charges:3.0@{ds.isoformat()}")
        days = (ds - AF_START).days + 1
        generate(Path(tmp) / "f", Path(tmp) / "l", start=AF_START, days=days, rows_per_day=AF_ROWS, files_per_day=2,
                 seed=11, drift=[drift])  # fmt: skip
        target = features / f"ds={ds.isoformat()}"
        shutil.rmtree(target)
        shutil.copytree(Path(tmp) / "f" / f"ds={ds.isoformat()}", target)


@pytest.mark.timeout(600)
def test_backfill_and_manual_rerun_of_an_old_failing_day_leave_aliases_and_rollouts_unchanged(
    airflow_server: AirflowServer, server_project: Path, pg_url: str
) -> None:
    from sqlalchemy.engine import make_url

    from nightshift.config import load_settings
    from nightshift.db import open_store
    from nightshift.monitoring import monitor_history
    from nightshift.nightly import decided_night
    from nightshift.rollout import Rollouts
    from nightshift.training import train_and_register

    settings = load_settings(server_project, store_url=pg_url)
    store = open_store(settings)
    train_and_register(settings, NIGHT_MODEL, date(2026, 11, 13))  # v1 champion, trained (and referenced) on 11-12..13
    train_and_register(settings, NIGHT_MODEL, date(2026, 11, 13), promote="never")  # v2
    rollouts = Rollouts(settings, store)
    url = make_url(pg_url)
    conn = {"conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username, "schema": url.database}
    airflow_server.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    try:
        with store_connection(airflow_server, conn):
            _night(airflow_server, D_PROMOTE)  # night D: v1 serves
            rollouts.promote(NIGHT_MODEL, 2, by="test", reason="v2 promoted after the night of 11-17", ds=D_PROMOTE)
            _night(airflow_server, D_NEXT)  # v2's first night, v1 scored beside it (rollback window)
            served_now = (rollouts.registry.aliases(NIGHT_MODEL), rollouts.registry.alias_history(NIGHT_MODEL))
            assert served_now[0] == {"champion": 2, "previous": 1}

            # An old day comes back drifted. Its re-scoring fails monitoring; before nightshift.nightly, the
            # wall-clock rollback window then rolled v2 back (the run stayed green).
            _redeliver_drifted(server_project, D_OLD)
            out = airflow_server.cli(
                "backfill", "create", "--dag-id", DAG_ID, "--from-date", D_OLD.isoformat(),
                "--to-date", D_OLD.isoformat(), "--reprocess-behavior", "completed",
            )  # fmt: skip
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
            backfill = max(
                airflow_server.api("GET", f"/backfills?dag_id={DAG_ID}&limit=100")["backfills"], key=lambda b: b["id"]
            )
            wait_until(
                lambda: airflow_server.api("GET", f"/backfills/{backfill['id']}").get("completed_at"), 300,
                "the backfill of the old day to complete", 2,
            )  # fmt: skip
            [bf_run] = [r for r in airflow_server.dag_runs(DAG_ID) if r["run_type"] == "backfill"]
            assert bf_run["state"] == "success"
            _night(airflow_server, D_OLD)  # and a manual re-run of the same old day, not flagged as a backfill
    finally:
        airflow_server.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": True})

    # Production is exactly as the promotion left it.
    assert (rollouts.registry.aliases(NIGHT_MODEL), rollouts.registry.alias_history(NIGHT_MODEL)) == served_now
    assert rollouts.active(NIGHT_MODEL) is None
    # The old day was scored and judged (it failed), but decided nothing.
    old = [h for h in monitor_history(settings, NIGHT_MODEL, store=store) if h["ds"] == D_OLD]
    assert [(h["version"], h["status"]) for h in old] == [(2, "fail")]  # never served: today's champion scores it
    assert decided_night(store, NIGHT_MODEL, D_OLD) is None
    assert decided_night(store, NIGHT_MODEL, D_NEXT)["rollout"] == "unchanged"  # type: ignore[index]
    runs = [r for r in store.runs(NIGHT_MODEL, limit=50) if r["ds"] == D_OLD]
    assert sorted(r["status"] for r in runs) == ["committed", "superseded"]
    store.dispose()
