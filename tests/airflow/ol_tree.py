"""Checks of what the running Airflow's OpenLineage provider sent (tests/airflow/conftest.py points it at a
recording endpoint): one Airflow DAG run's tree of events, DAG run → task → nightshift's own runs, each event
valid against the OpenLineage schema."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.airflow.conftest import AIRFLOW_OL_NAMESPACE
from tests.airflow.harness import wait_until
from tests.lineage.olspec import Recorder, Schema


@dataclass
class TaskLineage:
    dag_run: dict[str, Any]  # the DAG run's START event (the scheduler's)
    start: dict[str, Any]  # the task's START and COMPLETE (the task runner's)
    complete: dict[str, Any]
    children: list[dict[str, Any]]  # nightshift's events of the runs the task made


def _run_id_of(event: dict[str, Any]) -> str | None:
    facets = event["run"].get("facets") or {}
    for key in ("airflowDagRun", "airflow"):
        dag_run = (facets.get(key) or {}).get("dagRun") or {}
        if dag_run.get("run_id"):
            return str(dag_run["run_id"])
    return None


def _parent(event: dict[str, Any]) -> tuple[str, str, str, str] | None:
    """(parent job, parent run id, root job, root run id) of an event's `parent` facet."""
    parent = (event["run"].get("facets") or {}).get("parent")
    if not parent:
        return None
    root = parent.get("root") or {}
    return (
        parent["job"]["name"],
        parent["run"]["runId"],
        (root.get("job") or {}).get("name", ""),
        (root.get("run") or {}).get("runId", ""),
    )


def task_lineage(
    recorder: Recorder,
    schema: Schema,
    *,
    dag_id: str,
    run_id: str,
    task_id: str,
    nightshift_job: str,
    runs: int = 1,
    timeout: float = 90,
) -> TaskLineage:
    """The events of one task of one Airflow DAG run and of the `runs` nightshift runs it made; asserts the
    tree (the task's parent is the DAG run; each nightshift run's parent is the task, its root the DAG run)
    and validates every one of those events."""
    task_job = f"{dag_id}.{task_id}"

    def found() -> TaskLineage | None:
        events = recorder.events
        dag_starts = [
            e for e in events if e["job"]["name"] == dag_id and e["eventType"] == "START" and _run_id_of(e) == run_id
        ]
        task = [e for e in events if e["job"]["name"] == task_job and _run_id_of(e) == run_id]
        done = [e for e in task if e["eventType"] == "COMPLETE"]
        if not (dag_starts and done):
            return None
        task_run = done[-1]["run"]["runId"]
        children = [e for e in events if e["job"]["name"] == nightshift_job and (_parent(e) or ("", ""))[1] == task_run]
        if len([e for e in children if e["eventType"] in ("COMPLETE", "FAIL")]) < runs:
            return None
        [start] = [e for e in task if e["eventType"] == "START" and e["run"]["runId"] == task_run]
        return TaskLineage(dag_starts[-1], start, done[-1], children)

    tree = wait_until(found, timeout, f"OpenLineage events of {task_job} in {run_id} and its nightshift runs", 1)
    dag_run = tree.dag_run["run"]["runId"]
    for event in (tree.dag_run, tree.start, tree.complete, *tree.children):
        schema.validate_event(event)
    for event in (tree.dag_run, tree.start, tree.complete):
        assert event["job"]["namespace"] == AIRFLOW_OL_NAMESPACE, event["job"]
    assert _parent(tree.complete) == (dag_id, dag_run, dag_id, dag_run), tree.complete["run"]["facets"]["parent"]
    for child in tree.children:
        assert _parent(child) == (task_job, tree.complete["run"]["runId"], dag_id, dag_run), child["run"]["facets"]
        assert child["producer"].startswith("urn:nightshift:"), child["producer"]
    assert sorted(e["eventType"] for e in tree.children) == sorted(["START", "COMPLETE"] * runs), [
        e["eventType"] for e in tree.children
    ]
    return tree


def datasets(event: dict[str, Any], io: str) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in event.get(io) or []]
