"""nightshift_airflow.lineage without a running Airflow: off when the provider is not configured; what a task
reports from the nightshift runs it made (tests/airflow/test_server_*.py check it under a real scheduler)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_events_left() -> Any:
    """Each test starts and ends with no task's events kept (a failing test does not leak into the next)."""
    from nightshift_airflow import lineage

    lineage._EVENTS.clear()
    yield
    lineage._EVENTS.clear()


def _ti(task_id: str = "score", run_id: str = "manual__1", map_index: int = -1) -> Any:
    return SimpleNamespace(dag_id="score_churn", task_id=task_id, run_id=run_id, map_index=map_index)


def _event(kind: str, inputs: list[tuple[str, str]], outputs: list[tuple[str, str]], rows: int = 0) -> Any:
    from nightshift.telemetry import openlineage as ol

    out_facets = {
        "version": ol.facet("version", datasetVersion=f"run-{rows}"),
        "lifecycleStateChange": ol.facet("lifecycleStateChange", lifecycleStateChange="OVERWRITE"),
    }
    io = {"outputStatistics": ol.facet("outputStatistics", rowCount=rows)} if kind != "START" else None
    return ol.run_event(
        kind,
        run_id=ol.new_run_id(),
        namespace="nightshift",
        job_name="score.churn",
        job_type="SCORING",
        inputs=[ol.dataset(ns, name) for ns, name in inputs],
        outputs=[ol.dataset(ns, name, out_facets, io="output", io_facets=io) for ns, name in outputs],
    )


STORE = ("postgres://db:5432", "ns.public.committed_predictions")
PART = ("file", "/data/features")
LABELS = ("file", "/data/labels")


def _ids(datasets: list[Any]) -> list[tuple[str, str]]:
    return [(d.namespace, d.name) for d in datasets]


def test_without_a_configured_provider_a_task_sets_no_lineage_context(monkeypatch: pytest.MonkeyPatch) -> None:
    from nightshift.telemetry import openlineage as ol
    from nightshift_airflow import lineage

    monkeypatch.delenv("OPENLINEAGE_PARENT_ID", raising=False)
    assert not lineage.provider_enabled()  # this process's Airflow has no [openlineage] transport
    with lineage.airflow_lineage({"ti": _ti(), "task": object()}):
        assert ol.current_context() == ol.LineageContext()
    assert lineage._EVENTS == {}


def test_one_run_is_reported_as_it_is() -> None:
    from nightshift_airflow import lineage

    ti = _ti()
    lineage._EVENTS[lineage._key(ti)] = [_event("START", [PART], [STORE]), _event("COMPLETE", [PART], [STORE], 1000)]
    reported = lineage.task_lineage(ti)
    assert (_ids(reported.inputs), _ids(reported.outputs)) == ([PART], [STORE])
    [out] = reported.outputs
    assert out.outputFacets["outputStatistics"].rowCount == 1000
    assert out.facets["version"].datasetVersion == "run-1000"


def test_champion_and_challenger_report_every_row_written_and_no_single_runs_version() -> None:
    from nightshift_airflow import lineage

    ti = _ti()
    lineage._EVENTS[lineage._key(ti)] = [
        _event("START", [PART], [STORE]),
        _event("COMPLETE", [PART], [STORE], 1000),
        _event("START", [PART], [STORE]),
        _event("COMPLETE", [PART], [STORE], 1000),
    ]
    [out] = lineage.task_lineage(ti).outputs
    assert _ids([out]) == [STORE]
    assert out.outputFacets["outputStatistics"].rowCount == 2000
    assert not {"version", "lifecycleStateChange"} & set(out.facets or {})


def test_a_group_with_a_failed_model_reports_what_was_read_and_only_what_committed() -> None:
    from nightshift_airflow import lineage

    ti = _ti()
    lineage._EVENTS[lineage._key(ti)] = [
        _event("START", [PART], [STORE]),
        _event("FAIL", [PART, LABELS], [STORE], 300),  # the first model failed after writing some rows
        _event("START", [PART], [STORE]),
        _event("COMPLETE", [PART], [STORE], 700),  # the second committed
    ]
    reported = lineage.task_lineage(ti)
    assert _ids(reported.inputs) == [PART, LABELS]
    [out] = reported.outputs
    assert out.outputFacets["outputStatistics"].rowCount == 700  # the failed run's 300 rows rolled back
    assert out.facets["version"].datasetVersion == "run-700"  # the committed run's own output, unmerged


def test_a_task_that_failed_before_or_during_its_runs_reports_no_output() -> None:
    from nightshift_airflow import lineage

    before, during = _ti(run_id="manual__1"), _ti(run_id="manual__2")
    lineage._EVENTS[lineage._key(during)] = [_event("START", [PART], [STORE])]  # killed mid-run
    for ti in (before, during):
        reported = lineage.task_lineage(ti)
        assert (reported.inputs, reported.outputs) == ([], [])


def test_each_task_instance_reports_its_own_runs_once() -> None:
    from nightshift_airflow import lineage

    mine, other = _ti(), _ti(run_id="manual__2")
    lineage._EVENTS[lineage._key(mine)] = [_event("COMPLETE", [PART], [STORE], 5)]
    lineage._EVENTS[lineage._key(other)] = [_event("COMPLETE", [LABELS], [], 0)]
    assert _ids(lineage.task_lineage(mine).inputs) == [PART]
    assert lineage.task_lineage(mine).inputs == []  # asked again: the first answer took them
    assert _ids(lineage.task_lineage(other).inputs) == [LABELS]
    assert lineage._EVENTS == {}


def test_a_task_the_emission_policy_mutes_sets_no_context(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.openlineage.utils import emission_policy

    from nightshift.telemetry import openlineage as ol
    from nightshift_airflow import lineage

    monkeypatch.delenv("OPENLINEAGE_PARENT_ID", raising=False)
    monkeypatch.setattr(lineage, "provider_enabled", lambda: True)
    muted = SimpleNamespace(emit=False)
    monkeypatch.setattr(emission_policy, "resolve_task_emission_policy", lambda **_: muted)
    with lineage.airflow_lineage({"ti": _ti(), "task": object()}):
        assert ol.current_context() == ol.LineageContext()
    assert lineage._EVENTS == {}


def test_a_task_whose_run_cannot_be_named_still_sends_and_keeps_its_runs_without_a_parent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The provider's macros fail (say, no DAG run to read): one warning; nightshift's events go out through
    the provider's client with no parent facet, and the task still reports their datasets."""
    from airflow.providers.openlineage.plugins import macros
    from airflow.providers.openlineage.utils import emission_policy

    from nightshift.telemetry import openlineage as ol
    from nightshift_airflow import lineage

    def broken(_ti: Any) -> str:
        raise RuntimeError("no dag run")

    monkeypatch.setattr(lineage, "provider_enabled", lambda: True)
    monkeypatch.setattr(emission_policy, "resolve_task_emission_policy", lambda **_: SimpleNamespace(emit=True))
    monkeypatch.setattr(macros, "lineage_parent_id", broken)
    ti = _ti()
    with (
        caplog.at_level(logging.WARNING, logger="nightshift_airflow.lineage"),
        lineage.airflow_lineage({"ti": ti, "task": object()}),
    ):
        context = ol.current_context()
        assert (context.parent, context.root) == (None, None)
        assert context.client_factory is lineage._provider_client
        assert context.on_event is not None
        context.on_event(_event("COMPLETE", [PART], [STORE], 10))
    assert "could not be named" in caplog.text
    assert _ids(lineage.task_lineage(ti).outputs) == [STORE]


def test_a_broken_emission_policy_adds_nothing_and_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow.providers.openlineage.utils import emission_policy

    from nightshift.telemetry import openlineage as ol
    from nightshift_airflow import lineage

    def broken(**_: Any) -> Any:
        raise ValueError("bad emission_policy")

    monkeypatch.delenv("OPENLINEAGE_PARENT_ID", raising=False)
    monkeypatch.setattr(lineage, "provider_enabled", lambda: True)
    monkeypatch.setattr(emission_policy, "resolve_task_emission_policy", broken)
    with (
        caplog.at_level(logging.WARNING, logger="nightshift_airflow.lineage"),
        lineage.airflow_lineage({"ti": _ti(), "task": object()}),
    ):
        assert ol.current_context() == ol.LineageContext()
    assert "emission policy could not be read" in caplog.text
    assert "bad emission_policy" in caplog.text


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


def test_with_lineage_refuses_a_mapped_task() -> None:
    from airflow.sdk import dag, task

    from nightshift_airflow.lineage import with_lineage

    @dag(dag_id="lineage_mapped", schedule=None)
    def lineage_mapped() -> None:
        @task
        def score(x: int) -> int:
            return x

        with pytest.raises(TypeError, match="mapped task"):
            with_lineage(score.expand(x=[1, 2]))

    lineage_mapped()
