"""retrain_<model>: one retraining DAG per model (triggered by score_<model>'s monitoring, or by hand)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, dag, get_parsing_context, task
from airflow.sdk.definitions.param import ParamsDict

from nightshift_airflow.approval import CandidateApproval
from nightshift_airflow.lineage import with_lineage
from nightshift_airflow.runtime import DEFAULT_ARGS, load_project

#: How long a candidate waits in pending_approval for a human before the approval task times out.
APPROVAL_TIMEOUT = timedelta(days=3)


def retraining_dag(model: str, owner: str) -> DAG:
    @dag(
        dag_id=f"retrain_{model}",
        description=f"Retrain {model}, gate the candidate and roll it out",
        schedule=None,
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,  # one candidate of a model at a time
        dagrun_timeout=timedelta(days=4),  # the approval may wait APPROVAL_TIMEOUT
        default_args={**DEFAULT_ARGS, "owner": owner},
        # Unpaused from creation: it runs only when score_<model> or quality_<model> triggers it (or a
        # person does), and a paused one would leave a triggered retrain queued with no word anywhere.
        is_paused_upon_creation=False,
        tags=["nightshift", "retraining", model],
        params={
            "ds": Param(
                None,
                type=["null", "string"],
                format="date",
                description="The newest labelled day to use (YYYY-MM-DD); empty: the day before the run's date",
            ),
            "reason": Param("manual", type="string", description="Why retrain (recorded on the candidate)"),
        },
        doc_md=f"Trains a candidate of **{model}** on the labelled days up to `ds`, gates it (ONNX parity, "
        "acceptable range, end-to-end, not worse than the champion) and rolls it out by the model's strategy; "
        "a candidate `pending_approval` waits for the `approval` task (Airflow's human-in-the-loop approval), "
        "then `approve` rolls it out. Triggered by `score_"
        f"{model}` with run id `retrain__{model}__<ds>__drift`, or by hand with the `ds` and `reason` params.",
    )
    def retrain_model() -> None:
        @task
        def retrain(**context: Any) -> dict[str, Any]:
            """Rollouts.retrain(model, ds, trigger={conf, dag_run_id}): train, gate, register, roll out (or wait)."""
            from nightshift.rollout import Rollouts
            from nightshift_airflow.lineage import airflow_lineage
            from nightshift_airflow.metrics import airflow_job_metrics
            from nightshift_airflow.runtime import fail_without_retry_on_bad_input, run_settings

            ds, conf = retrain_ds(context), dict(context["dag_run"].conf or {})
            params = context["params"]
            trigger = {**conf, "reason": conf.get("reason") or params.get("reason"), "dag_run_id": context["run_id"]}
            trigger.setdefault("source", "manual")
            by = conf.get("requested_by") or getattr(context["dag_run"], "triggering_user_name", None) or "airflow"
            rollouts = Rollouts(run_settings())
            try:
                with fail_without_retry_on_bad_input(), airflow_job_metrics(), airflow_lineage(context):
                    outcome = rollouts.retrain(model, ds, trigger=trigger, by=str(by))
            finally:
                rollouts.store.dispose()
            result = outcome.as_dict()
            result["ds"] = ds.isoformat()
            return result

        @task.short_circuit
        def needs_approval(outcome: Any) -> bool:
            """Only a candidate in pending_approval goes on to the human approval."""
            return bool(outcome["status"] == "pending_approval")

        approval = CandidateApproval(
            task_id="approval",
            model=model,
            subject=f"Roll out {model} v" + "{{ ti.xcom_pull(task_ids='retrain')['version'] }}?",
            body="The candidate of **"
            + model
            + "** for ds {{ ti.xcom_pull(task_ids='retrain')['ds'] }} passed every gate and waits for approval "
            "(strategy: the model's `rollout.strategy`). Approve to roll it out; reject (with a reason) to stop it "
            "for good: the rejection, who and why, is recorded on the candidate and in its audit trail.",
            params=ParamsDict(
                {"reason": Param("", type="string", description="Why (recorded in the audit trail; needed to reject)")}
            ),
            response_timeout=APPROVAL_TIMEOUT,
        )

        @task
        def approve(outcome: Any, **context: Any) -> str:
            """Rollouts.approve(model, version, by=<the approver>): record who approved, roll out by the strategy."""
            from nightshift.rollout import Rollouts
            from nightshift_airflow.runtime import run_settings

            answer = context["ti"].xcom_pull(task_ids="approval") or {}
            user = answer.get("responded_by_user") or {}
            who = str(user.get("name") or user.get("id") or "airflow-approval")
            rollouts = Rollouts(run_settings())
            try:
                return rollouts.approve(
                    model, int(outcome["version"]), by=who, note=f"approved in Airflow run {context['run_id']}"
                )
            finally:
                rollouts.store.dispose()

        outcome = with_lineage(retrain())
        needs_approval(outcome) >> approval >> approve(outcome)

    return retrain_model()


def retrain_ds(context: Any) -> Any:
    """The ds to retrain for: the `ds` param or conf, else the day before the run's logical date (or run_after)."""
    from datetime import date

    raw = context["params"].get("ds") or (context["dag_run"].conf or {}).get("ds")
    if raw:
        return date.fromisoformat(str(raw))
    when = context.get("logical_date") or context["dag_run"].run_after
    return (when.astimezone(UTC) - timedelta(days=1)).date()


_settings = load_project()
_wanted = get_parsing_context().dag_id  # a worker parsing for one DAG builds only that one
for _m in _settings.models:
    if _wanted is None or _wanted == f"retrain_{_m.name}":
        globals()[f"retrain_{_m.name}"] = retraining_dag(_m.name, _m.owner)
