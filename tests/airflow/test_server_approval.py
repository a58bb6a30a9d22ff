"""Under a real scheduler: retrain_<model> with require_approval waits for Airflow's human-in-the-loop answer,
given through Airflow's REST API; "Approve" rolls the candidate out, "Reject" records who and why."""

from __future__ import annotations

import urllib.parse
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tests.airflow.conftest import NIGHT_MODEL
from tests.airflow.harness import AirflowServer, store_connection, wait_until
from tests.airflow.ol_tree import datasets, task_lineage
from tests.lineage.olspec import Recorder, Schema

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DAG_ID = f"retrain_{NIGHT_MODEL}"
#: The champion is trained on 11-14..11-15; a retrain for 11-16 trains on the same days (tested on 11-16), so the
#: candidate passes every gate (not worse than the champion) and waits for a human.
CHAMPION_UNTIL, RETRAIN_DS = date(2026, 11, 15), date(2026, 11, 16)


def _awaiting_answer(server: AirflowServer, run_id: str) -> None:
    def waiting() -> bool:
        states = {t["task_id"]: t["state"] for t in server.task_instances(DAG_ID, run_id)}
        if states.get("retrain") == "failed":
            raise AssertionError(f"retrain failed: {server.log_tail()}")
        return states.get("approval") in ("awaiting_input", "deferred")

    wait_until(waiting, 300, f"{DAG_ID} {run_id} to wait for its approval", 2)
    # Answer only once the scheduler has drained the executor's event for the worker that exited on defer():
    # an answer given before it (a human takes minutes; this test, a second) resumes the task while that stale
    # "success" is pending, and Airflow 3.3 then takes it for an external kill and retries the approval
    # (apache/airflow#67287, #72716). The scheduler logs the drain; wait for that line, not for a time.
    drained = f"TaskInstance Finished: dag_id={DAG_ID}, task_id=approval, run_id={run_id},"
    wait_until(
        lambda: drained in server.log_path.read_text(errors="replace"),
        120,
        f"the scheduler to drain {DAG_ID} {run_id}'s defer-exit event",
        1,
    )


def _answer(server: AirflowServer, run_id: str, option: str, reason: str) -> dict[str, Any]:
    path = f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/approval/-1/hitlDetails"
    return dict(server.api("PATCH", path, {"chosen_options": [option], "params_input": {"reason": reason}}))


def _retrain(server: AirflowServer, reason: str) -> str:
    run = server.api(
        "POST",
        f"/dags/{DAG_ID}/dagRuns",
        {"logical_date": None, "conf": {"ds": RETRAIN_DS.isoformat(), "reason": reason}},
    )
    return str(run["dag_run_id"])


@pytest.mark.timeout(900)
def test_a_candidate_is_approved_then_another_rejected_through_airflows_hitl_api(
    airflow_server: AirflowServer, server_project: Path, pg_url: str, airflow_lineage: Recorder
) -> None:
    from sqlalchemy.engine import make_url

    from nightshift.config import load_settings
    from nightshift.db import open_store
    from nightshift.rollout import Rollouts
    from nightshift.training import train_and_register

    settings = load_settings(server_project, store_url=pg_url)
    assert settings.model(NIGHT_MODEL).rollout.require_approval
    train_and_register(settings, NIGHT_MODEL, CHAMPION_UNTIL)  # v1, champion
    store = open_store(settings)
    rollouts = Rollouts(settings, store)
    url = make_url(pg_url)
    conn = {"conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username, "schema": url.database}
    wait_until(lambda: airflow_server.api("GET", f"/dags/{DAG_ID}")["dag_id"], 120, f"{DAG_ID} to be parsed", 2)
    try:
        with store_connection(airflow_server, conn):
            # 1. Approve: the candidate rolls out by the model's strategy (direct: promoted).
            first = _retrain(airflow_server, "test: approve me")
            _awaiting_answer(airflow_server, first)
            [waiting] = [c for c in rollouts.candidates(NIGHT_MODEL) if c["status"] == "pending_approval"]
            approved = _answer(airflow_server, first, "Approve", "looks good")
            states = airflow_server.wait_for_runs(DAG_ID, {first}, 300)
            assert states == {first: "success"}, airflow_server.log_tail()
            # 2. Reject, with a reason: the candidate never rolls out; who and why are recorded.
            second = _retrain(airflow_server, "test: reject me")
            _awaiting_answer(airflow_server, second)
            [pending] = [c for c in rollouts.candidates(NIGHT_MODEL) if c["status"] == "pending_approval"]
            rejected = _answer(airflow_server, second, "Reject", "not before the pricing change")
            states = airflow_server.wait_for_runs(DAG_ID, {second}, 300)
            assert states == {second: "success"}, airflow_server.log_tail()
            tasks = {t["task_id"]: t["state"] for t in airflow_server.task_instances(DAG_ID, second)}
            assert tasks["approve"] == "skipped"
    finally:
        store.dispose()

    store = open_store(settings)
    rollouts = Rollouts(settings, store)
    try:
        who_approved = approved["responded_by"]["name"]
        done = rollouts.candidate(waiting["candidate_id"])
        assert done["status"] == "promoted"
        assert done["approved_by"] == who_approved
        assert rollouts.registry.aliases(NIGHT_MODEL)["champion"] == done["version"]
        _assert_lineage(airflow_lineage, settings, first, rollouts.registry.get(NIGHT_MODEL, done["version"]))
        trail = rollouts.history(NIGHT_MODEL, waiting["candidate_id"])
        [approval] = [e for e in trail if e["event"] == "approved"]
        assert approval["by"] == who_approved
        assert first in approval["detail"]["note"]

        who_rejected = rejected["responded_by"]["name"]
        no = rollouts.candidate(pending["candidate_id"])
        assert no["status"] == "rejected"
        assert "not before the pricing change" in no["reason"]
        assert rollouts.registry.aliases(NIGHT_MODEL)["champion"] == done["version"]  # nothing moved
        [rejection] = [e for e in rollouts.history(NIGHT_MODEL, pending["candidate_id"]) if e["event"] == "rejected"]
        assert rejection["by"] == who_rejected
        assert rejection["detail"]["by_hand"] is True
        assert rejection["detail"]["reason"].startswith("not before the pricing change")
        assert second in rejection["detail"]["reason"]
    finally:
        store.dispose()


def _assert_lineage(recorder: Recorder, settings: Any, run_id: str, mv: Any) -> None:
    """Through Airflow's OpenLineage provider (a run without a logical date): the `retrain` task reports the
    features and labels it trained on as inputs and the model artifact it registered as output; nightshift's
    training run is its child; every event is valid OpenLineage."""
    from nightshift.telemetry import openlineage as ol

    cfg = settings.model(NIGHT_MODEL)
    tree = task_lineage(
        recorder, Schema(), dag_id=DAG_ID, run_id=run_id, task_id="retrain", nightshift_job=f"train.{NIGHT_MODEL}"
    )
    inputs = [ol.dataset_id(cfg.dataset_uri(settings)), ol.dataset_id(cfg.labels_uri(settings))]
    assert datasets(tree.complete, "inputs") == inputs
    assert datasets(tree.complete, "outputs") == [ol.dataset_id(mv.artifact_uri)]
    [artifact] = tree.complete["outputs"]
    assert artifact["facets"]["version"]["datasetVersion"] == mv.sha256
    [features, _labels] = tree.complete["inputs"]
    trained = features["facets"]["nightshift_training"]
    assert trained["days"] == ["2026-11-14", CHAMPION_UNTIL.isoformat()], trained["days"]  # tested on RETRAIN_DS
