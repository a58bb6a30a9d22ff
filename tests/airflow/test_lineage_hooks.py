"""nightshift_airflow.lineage without a running Airflow: off when the provider is not configured; what a task
reports from the nightshift runs it made (tests/airflow/test_server_*.py check it under a real scheduler)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest


def _ti(task_id: str = "score", run_id: str = "manual__1", map_index: int = -1) -> Any:
    return SimpleNamespace(dag_id="score_churn", task_id=task_id, run_id=run_id, map_index=map_index)


def _event(kind: str, inputs: list[tuple[str, str]], outputs: list[tuple[str, str]]) -> Any:
    from nightshift.telemetry import openlineage as ol

    return ol.run_event(
        kind,
        run_id=ol.new_run_id(),
        namespace="nightshift",
        job_name="score.churn",
        job_type="SCORING",
        inputs=[ol.dataset(ns, name) for ns, name in inputs],
        outputs=[ol.dataset(ns, name, io="output") for ns, name in outputs],
    )


def test_without_a_configured_provider_a_task_sets_no_lineage_context(monkeypatch: pytest.MonkeyPatch) -> None:
    from nightshift.telemetry import openlineage as ol
    from nightshift_airflow import lineage

    monkeypatch.delenv("OPENLINEAGE_PARENT_ID", raising=False)
    assert not lineage.provider_enabled()  # this process's Airflow has no [openlineage] transport
    with lineage.airflow_lineage({"ti": _ti()}):
        assert ol.current_context() == ol.LineageContext()
    assert lineage._EVENTS == {}


def test_a_task_reports_the_datasets_of_its_ended_runs_once_each_and_forgets_them() -> None:
    from nightshift_airflow import lineage

    store = ("postgres://db:5432", "ns.public.committed_predictions")
    part = ("file", "/data/features")
    labels = ("file", "/data/labels")
    ti = _ti()
    lineage._EVENTS[lineage._key(ti)] = [
        _event("START", [part], [store]),
        _event("COMPLETE", [part], [store]),  # one model's run
        _event("START", [part], [store]),
        _event("FAIL", [part, labels], [store]),  # another's, failed
    ]
    other = _ti(run_id="manual__2")
    lineage._EVENTS[lineage._key(other)] = [_event("COMPLETE", [labels], [])]

    reported = lineage.task_lineage(ti)
    assert [(d.namespace, d.name) for d in reported.inputs] == [part, labels]
    assert [(d.namespace, d.name) for d in reported.outputs] == [store]
    # Asked again (a second listener call), nothing is left: the first answer took them.
    assert lineage.task_lineage(ti).inputs == []
    # Another task instance's runs are its own.
    assert [(d.namespace, d.name) for d in lineage.task_lineage(other, "an error").inputs] == [labels]
    assert lineage._EVENTS == {}


def test_with_lineage_makes_the_provider_ask_the_operator() -> None:
    from airflow.providers.openlineage.extractors.manager import ExtractorManager
    from airflow.sdk import dag, task

    from nightshift_airflow.lineage import task_lineage, with_lineage

    @dag(dag_id="lineage_hooks", schedule=None)
    def lineage_hooks() -> None:
        @task
        def score() -> int:
            return 1

        @task
        def plain() -> int:
            return 2

        with_lineage(score())
        plain()

    built = lineage_hooks()
    manager = ExtractorManager()
    scored, untouched = built.get_task("score"), built.get_task("plain")
    assert scored.get_openlineage_facets_on_complete is task_lineage
    assert scored.get_openlineage_facets_on_failure is task_lineage
    assert manager.get_extractor_class(scored) is not None  # the provider's DefaultExtractor
    assert manager.get_extractor_class(untouched) is None
