"""The trigger of retrain_<model> that score_<model> and quality_<model> share (imported by DAG files only)."""

from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator


def _decision_of(key: str, task_id: str) -> str:
    """A Jinja expression reading one key of the retrain_decision task's XCom."""
    return "{{ ti.xcom_pull(task_ids='" + task_id + "')['" + key + "'] }}"


def retrain_trigger(model: str, source: str, decision_task: str = "retrain_decision") -> TriggerDagRunOperator:
    """Trigger retrain_<model> with the decision's deterministic run id: a replayed decision finds its
    run and is skipped, never doubled. `decision_task`: the full id of the retrain_decision task (inside
    a task group, `<group>.retrain_decision`)."""

    def _decision(key: str) -> str:
        return _decision_of(key, decision_task)

    return TriggerDagRunOperator(
        task_id="trigger_retrain",
        trigger_dag_id=f"retrain_{model}",
        trigger_run_id=_decision("run_id"),
        skip_when_already_exists=True,
        conf={
            "ds": _decision("ds"),
            "reason": _decision("reason"),
            "source": source,
            "monitored_version": _decision("version"),
            "decision_run_id": _decision("run_id"),
            "requested_by": "{{ dag.dag_id }}/{{ run_id }}",
        },
    )
