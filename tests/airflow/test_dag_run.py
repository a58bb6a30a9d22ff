"""score_churn under real Airflow `dag.test()`: predictions and an asset event; a missing partition times out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.airflow.conftest import AF_ROWS, Webhook
from tests.airflow.harness import load_dag

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("airflow_db")]


def _states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


@pytest.mark.timeout(300)
def test_dag_test_scores_the_interval_start_day_emits_an_asset_event_and_monitors_the_night(
    project: Callable[..., Path],
    sqlite_url: str,
    registered: Callable[[Any], Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from nightshift.config import load_settings
    from nightshift.db import open_store
    from nightshift.monitoring import monitor_history, reference_for

    path = project(sqlite_url)
    monkeypatch.setenv("NIGHTSHIFT_CONFIG", str(path))
    settings = load_settings(path)
    mv = registered(settings)
    # Registered by hand (no training partitions recorded): its monitoring reference comes from chosen days.
    reference_for(settings, "churn", version=mv.version, days=[date(2026, 11, 12), date(2026, 11, 13)])

    # A manual run at logical date 11-17 covers the interval [11-16, 11-17): it scores ds=11-16.
    dag_run = load_dag("score_churn").test(logical_date=datetime(2026, 11, 17, tzinfo=UTC))

    assert str(dag_run.state) == "success", _states(dag_run)
    assert dag_run.data_interval_start == datetime(2026, 11, 16, tzinfo=UTC)
    states = _states(dag_run)
    for task_id in ("wait_for_partition", "plan", "score", "monitor", "report", "decide"):
        assert states[task_id] == "success", states
    # The decision ran; one failing night is below the hysteresis (2 of 3), so nothing is triggered.
    assert (states["retrain_decision"], states["trigger_retrain"]) == ("success", "skipped"), states
    history = monitor_history(settings, "churn")
    [night] = [h for h in history if h["kind"] == "data"]
    assert (night["ds"], night["version"]) == (date(2026, 11, 16), mv.version)
    # The test data's labels for 11-16 are already there: the night computes the version's label quality too.
    assert sorted(h["kind"] for h in history) == ["data", "quality"], history
    # Clean data against its own reference: every check passes; volume cannot be judged on a first night.
    assert (night["status"], night["failed_checks"]) == ("pass", 0), night["summary"]
    assert night["summary"]["insufficient"] == ["row_count: insufficient_data (0 earlier committed day(s), need 3)"]
    assert night["report_uri"]  # written by the separate report task
    store = open_store(settings)
    [part] = store.list_partitions("churn")
    assert (part.ds, part.version, part.row_count) == (date(2026, 11, 16), mv.version, AF_ROWS)
    ids, _scores = store.read_partition("churn", mv.version, date(2026, 11, 16)) or ([], [])
    assert len(ids) == len(set(ids)) == AF_ROWS
    [run] = store.runs("churn")
    assert run["run_key"] == dag_run.run_id  # the store's run is traceable to the Airflow run

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == "nightshift_predictions_churn", AssetEvent.source_run_id == dag_run.run_id)
        ).all()
        [event] = events
        timing = ("seconds", "rows_per_s")  # measured: present, not compared
        champion = {
            "version": mv.version,
            "rows": AF_ROWS,
            "files": 2,
            "store_run_id": run["run_id"],
            "replaced_run_id": None,
        }
        extra = {k: v for k, v in event.extra.items() if k not in timing}
        extra["versions"] = {r: {k: v for k, v in d.items() if k not in timing} for r, d in extra["versions"].items()}
        assert extra == {"ds": "2026-11-16", **champion, "versions": {"champion": champion}}
        assert event.extra["seconds"] > 0


@pytest.mark.timeout(300)
def test_missing_partition_times_out_with_a_clear_message_and_writes_nothing(
    project: Callable[..., Path],
    sqlite_url: str,
    registered: Callable[[Any], Any],
    webhook: Webhook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nightshift.config import load_settings
    from nightshift.db import open_store

    path = project(
        sqlite_url, webhook=webhook.url, extra_model="[models.schedule]\nwait_timeout_s = 3\npoke_interval_s = 1\n"
    )
    monkeypatch.setenv("NIGHTSHIFT_CONFIG", str(path))
    registered(load_settings(path))

    # ds=2026-11-01 was never delivered: the deferred wait must give up, not score.
    dag_run = load_dag("score_churn").test(logical_date=datetime(2026, 11, 2, tzinfo=UTC))

    assert str(dag_run.state) == "failed"
    tis = {ti.task_id: ti for ti in dag_run.get_task_instances()}
    assert str(tis["wait_for_partition"].state) == "failed"
    assert tis["wait_for_partition"].try_number == 1  # a timed-out wait is final: no retries
    assert tis["plan"].try_number == tis["score"].try_number == 0  # neither ever ran
    assert tis["monitor"].try_number == 0
    assert open_store(load_settings(path)).runs("churn") == []  # nothing started, nothing written

    [alert] = webhook.bodies
    assert alert["event"] == "score_failed"
    assert alert["details"]["ds"] == "2026-11-01"
    assert alert["details"]["task_id"] == "wait_for_partition"
    message = alert["message"]
    assert "AirflowSensorTimeout" in message
    assert "ds=2026-11-01 is not ready after waiting 3s" in message
    assert "/features/ds=2026-11-01/_SUCCESS does not exist" in message
    assert "nothing was scored" in message


#: Gates every candidate passes (any ROC AUC, any distance from the champion) or none can (ROC AUC > 1).
GATES = {
    "promoted": "[models.gates]\nmin = 0.0\nchampion_tolerance = 1.0\n",
    "rejected": "[models.gates]\nmin = 0.9999\nmax = 0.99999\n",
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("outcome", ["promoted", "rejected"])
def test_dag_test_of_retrain_records_a_gated_candidate(
    project: Callable[..., Path],
    sqlite_url: str,
    registered: Callable[[Any], Any],
    monkeypatch: pytest.MonkeyPatch,
    outcome: str,
) -> None:
    from nightshift.config import load_settings
    from nightshift.models import open_registry
    from nightshift.rollout import Rollouts

    path = project(sqlite_url, extra_model=GATES[outcome])
    monkeypatch.setenv("NIGHTSHIFT_CONFIG", str(path))
    settings = load_settings(path)
    champion = registered(settings).version

    dag_run = load_dag("retrain_churn").test(run_conf={"ds": "2026-11-16", "reason": "test: by hand"})

    assert str(dag_run.state) == "success", _states(dag_run)
    [candidate] = Rollouts(settings).candidates("churn")
    assert candidate["status"] == outcome, candidate
    assert candidate["trigger"]["reason"] == "test: by hand"
    assert candidate["trigger"]["dag_run_id"] == dag_run.run_id
    assert _states(dag_run)["approval"] == "skipped"  # require_approval is off: no human step
    aliases = open_registry(settings).aliases("churn")
    if outcome == "promoted":  # the direct strategy: the candidate serves, the old champion is kept as previous
        assert aliases == {"champion": candidate["version"], "previous": champion}
    else:
        assert aliases == {"champion": champion}
        assert "acceptable_range failed" in candidate["reason"]
