"""DAG integrity: dags/ parses cleanly and fast, one score_<model> DAG per model, conventions every DAG keeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.airflow.harness import DAGS, REPO
from tests.conftest import write_project

#: Never imported while a DAG file is parsed: heavy libraries, and anything that talks to the store.
FORBIDDEN_AT_PARSE = (
    "dask",
    "distributed",
    "onnxruntime",
    "evidently",
    "sklearn",
    "pyarrow",
    "pandas",
    "psycopg",
    "nightshift.db.store",
    "nightshift.scoring",
    "nightshift.models.registry",
)
#: A store nobody can reach: connecting to it would hang far longer than the parse budget.
UNREACHABLE_STORE = "postgresql://nightshift@10.255.255.1:5432/unreachable?connect_timeout=30"


def _dagbag(project: Path | None = None) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    old = os.environ.get("NIGHTSHIFT_CONFIG")
    if project is not None:
        os.environ["NIGHTSHIFT_CONFIG"] = str(project)
    try:
        return DagBag(dag_folder=str(DAGS), bundle_name="dags-folder")
    finally:
        if project is not None:
            if old is None:
                os.environ.pop("NIGHTSHIFT_CONFIG", None)
            else:
                os.environ["NIGHTSHIFT_CONFIG"] = old


@pytest.fixture(scope="module")
def dagbag() -> Any:
    return _dagbag()


def test_dags_import_without_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    # nightshift.toml: churn alone; spend and plan in the group customer_value (one scoring DAG for both).
    assert sorted(dagbag.dags) == [
        "quality_churn",
        "quality_plan",
        "quality_spend",
        "retrain_churn",
        "retrain_plan",
        "retrain_spend",
        "score_churn",
        "score_customer_value",
    ]


def test_every_dag_has_an_owner_tags_retries_and_a_failure_alert(dagbag: Any) -> None:
    from nightshift_airflow.runtime import alert_on_failure

    for dag_id, dag in dagbag.dags.items():
        assert dag.owner not in ("", "airflow"), dag_id
        assert "nightshift" in dag.tags, dag_id
        for task in dag.tasks:
            where = f"{dag_id}.{task.task_id}"
            assert task.retries >= 2, where
            assert task.retry_exponential_backoff > 1, where
            assert task.max_retry_delay is not None, where
            assert alert_on_failure in (task.on_failure_callback or []), where


def test_scoring_dag_shape(dagbag: Any) -> None:
    from airflow.providers.standard.operators.python import ShortCircuitOperator
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
    from airflow.sdk import CronDataIntervalTimetable

    from nightshift_airflow.sensors import PartitionReadySensor

    dag = dagbag.dags["score_churn"]
    assert isinstance(dag.timetable, CronDataIntervalTimetable)  # ds comes from the data interval
    assert dag.catchup is False
    assert 1 < dag.max_active_runs <= 16
    assert _edges(dag) == {
        ("wait_for_partition", "plan"),
        ("plan", "score"),
        ("plan", "monitor"),
        ("plan", "report"),
        ("plan", "decide"),
        ("score", "monitor"),
        ("monitor", "report"),  # a branch of its own: a failing report blocks nothing
        ("monitor", "decide"),
        ("decide", "retrain_decision"),
        ("retrain_decision", "trigger_retrain"),
    }
    assert dag.params["ds"] is None  # a manual run may name its day; empty: the data interval's
    wait = dag.get_task("wait_for_partition")
    assert isinstance(wait, PartitionReadySensor)
    assert wait.deferrable is True
    assert 0 < wait.timeout <= timedelta(hours=24).total_seconds()
    assert [a.name for a in dag.get_task("score").outlets] == ["nightshift_predictions_churn"]
    decide = dag.get_task("retrain_decision")
    assert isinstance(decide, ShortCircuitOperator)  # trigger_retrain runs only when the decision says trigger
    trigger = dag.get_task("trigger_retrain")
    assert isinstance(trigger, TriggerDagRunOperator)
    assert trigger.trigger_dag_id == "retrain_churn"
    assert trigger.skip_when_already_exists is True  # a replayed decision (same run id) is skipped, not doubled
    assert "retrain_decision" in str(trigger.trigger_run_id)


def test_retraining_dag_shape(dagbag: Any) -> None:
    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from airflow.providers.standard.operators.python import ShortCircuitOperator

    dag = dagbag.dags["retrain_churn"]
    assert type(dag.timetable).__name__ == "NullTimetable"  # schedule None: triggered by monitoring or by hand
    assert dag.max_active_runs == 1
    assert set(dag.params) == {"ds", "reason"}
    assert _edges(dag) == {
        ("retrain", "needs_approval"),
        ("needs_approval", "approval"),
        ("approval", "approve"),
        ("retrain", "approve"),  # the outcome's version
    }
    assert isinstance(dag.get_task("needs_approval"), ShortCircuitOperator)
    assert isinstance(dag.get_task("approval"), ApprovalOperator)


def _edges(dag: Any) -> set[tuple[str, str]]:
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


def test_one_dag_per_model_in_the_project_file(tmp_path: Path) -> None:
    project = write_project(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "data")
    text = project.read_text()
    churn = text[text.index("[[models]]") :]
    project.write_text(text + "\n" + churn.replace('name = "churn"', 'name = "upsell"'))

    bag = _dagbag(project)

    assert bag.import_errors == {}
    assert sorted(bag.dags) == [
        "quality_churn",
        "quality_upsell",
        "retrain_churn",
        "retrain_upsell",
        "score_churn",
        "score_upsell",
    ]
    assert bag.dags["score_upsell"].get_task("wait_for_partition").root == str((tmp_path / "data/features").resolve())


def test_a_schedule_group_is_one_dag_that_reads_once_and_judges_each_model_apart(tmp_path: Path) -> None:
    project = write_project(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "data")
    text = project.read_text()
    churn = text[text.index("[[models]]") :]
    grouped = churn.replace("\n[models.estimator]", '\n[models.schedule]\ngroup = "customers"\n\n[models.estimator]')
    project.write_text(text.replace(churn, grouped) + "\n" + grouped.replace('name = "churn"', 'name = "upsell"'))

    bag = _dagbag(project)

    assert bag.import_errors == {}
    assert sorted(bag.dags) == ["quality_churn", "quality_upsell", "retrain_churn", "retrain_upsell", "score_customers"]
    dag = bag.dags["score_customers"]
    assert {a.name for a in dag.get_task("score").outlets} == {
        "nightshift_predictions_churn",
        "nightshift_predictions_upsell",
    }
    assert ("wait_for_partition", "plan") in _edges(dag)
    assert ("plan", "score") in _edges(dag)
    for model in ("churn", "upsell"):
        assert ("score", f"{model}_night.monitor") in _edges(dag)
        assert dag.get_task(f"{model}_night.monitor").trigger_rule == "all_done"  # the others' failure is not its own
        assert (f"{model}_night.decide", f"{model}_night.retrain_decision") in _edges(dag)
        trigger = dag.get_task(f"{model}_night.trigger_retrain")
        assert trigger.trigger_dag_id == f"retrain_{model}"
        assert f"{model}_night.retrain_decision" in str(trigger.trigger_run_id)


def test_a_group_whose_models_read_different_data_is_refused_naming_both(tmp_path: Path) -> None:
    from nightshift.config import load_settings
    from nightshift.errors import ConfigError

    project = write_project(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "data")
    text = project.read_text()
    churn = text[text.index("[[models]]") :]
    grouped = churn.replace("\n[models.estimator]", '\n[models.schedule]\ngroup = "customers"\n\n[models.estimator]')
    other = grouped.replace('name = "churn"', 'name = "upsell"').replace("data/features", "other/features")
    project.write_text(text.replace(churn, grouped) + "\n" + other)
    with pytest.raises(
        ConfigError, match=r"models 'churn' and 'upsell' of schedule group 'customers' differ in dataset"
    ):
        load_settings(project)


def test_a_broken_project_file_is_a_visible_import_error(tmp_path: Path) -> None:
    project = tmp_path / "nightshift.toml"
    project.write_text('[[models]]\nname = "Bad Name"\n')

    bag = _dagbag(project)

    assert bag.dags == {}
    assert sorted(Path(f).name for f in bag.import_errors) == [
        "quality_models.py",
        "retrain_models.py",
        "score_models.py",
    ]
    for error in bag.import_errors.values():
        assert "invalid settings" in error
        assert "models[0] (Bad Name).name" in error


_PARSE_PROBE = """
import json, sys, time, importlib.util
import airflow.sdk                        # what the dag processor has loaded already: the SDK and
import airflow.dag_processing.processor   # the processor module its parsing process runs (ORM, SQLAlchemy)
from airflow.sdk import BaseSensorOperator, dag, task
before = set(sys.modules)
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("probe_dag_file", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
seconds = time.perf_counter() - t0
new = sorted(set(sys.modules) - before)
dags = sorted(
    k for k in vars(module) if k.startswith(("score_", "retrain_", "quality_")) and not callable(vars(module)[k])
)
print(json.dumps({"seconds": seconds, "new": new, "dags": dags}))
"""


def _probe(path: Path, env_extra: dict[str, str]) -> dict[str, Any]:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _PARSE_PROBE, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dag_file", "dag_ids"),
    [
        ("score_models.py", ["score_churn", "score_customer_value"]),
        ("retrain_models.py", ["retrain_churn", "retrain_plan", "retrain_spend"]),
        ("quality_models.py", ["quality_churn", "quality_plan", "quality_spend"]),
    ],
)
def test_dag_file_parses_fast_without_heavy_imports_or_a_database(dag_file: str, dag_ids: list[str]) -> None:
    # The store points at an unreachable PostgreSQL: touching it at parse time would hang or fail.
    result = _probe(DAGS / dag_file, {"NIGHTSHIFT_STORE_URL": UNREACHABLE_STORE})

    assert sorted(result["dags"]) == dag_ids
    loaded = [m for m in result["new"] if m.split(".")[0] in FORBIDDEN_AT_PARSE or m in FORBIDDEN_AT_PARSE]
    assert loaded == []
    assert result["seconds"] < 1.0, f"parsing took {result['seconds']:.3f}s (typically 0.1s)"


@pytest.mark.slow
def test_plugin_imports_cheaply_without_a_database() -> None:
    result = _probe(REPO / "jobs" / "nightshift_airflow" / "plugin.py", {"NIGHTSHIFT_STORE_URL": UNREACHABLE_STORE})

    loaded = [m for m in result["new"] if m.split(".")[0] in FORBIDDEN_AT_PARSE or m in FORBIDDEN_AT_PARSE]
    assert loaded == []
    assert "nightshift.config" not in result["new"]  # the app (and its settings) are built on first request
    assert result["seconds"] < 1.0, f"importing the plugin took {result['seconds']:.3f}s (typically 0.01s)"
