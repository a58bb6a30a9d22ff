"""score_<model>: one nightly scoring DAG per model of the project file, and score_<group>: one for each
[models.schedule] group, whose models share one read of each night's partition (wiring: nightshift.nightly
does the work)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, Param, TaskGroup, dag, get_parsing_context, task

from nightshift_airflow.lineage import with_lineage
from nightshift_airflow.retrain_trigger import retrain_trigger
from nightshift_airflow.runtime import DEFAULT_ARGS, load_project
from nightshift_airflow.sensors import wait_for_partition

#: Runs of one model at once (waiting is deferred, so cheap); scoring tasks at once, each starts a Dask cluster.
MAX_ACTIVE_RUNS = 8
MAX_PARALLEL_SCORING = 2

__all__ = ["DEFAULT_ARGS", "group_scoring_dag", "predictions_asset", "scoring_dag"]


def predictions_asset(model: str) -> Asset:
    """The model's committed predictions; each event's extra carries ds, rows, version and the store run."""
    return Asset(name=f"nightshift_predictions_{model}", uri=f"x-nightshift://predictions/{model}", group="nightshift")


def scoring_dag(model: str, cfg: Any, dataset: str) -> DAG:
    predictions = predictions_asset(model)

    @dag(
        dag_id=f"score_{model}",
        description=cfg.description or f"Nightly scoring of {model}",
        schedule=CronDataIntervalTimetable(cfg.schedule.cron, timezone="UTC"),
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=MAX_ACTIVE_RUNS,
        dagrun_timeout=timedelta(hours=12),
        default_args={**DEFAULT_ARGS, "owner": cfg.owner},
        tags=["nightshift", "scoring", model],
        params={"ds": ds_param()},
        doc_md=f"One night of **{model}** (`nightshift.nightly`, the same code as `nightshift night`): wait for "
        f"`{cfg.partition_key}=<ds>` of `{dataset}`, check its contract, score every version the night needs "
        "(champion first), monitor each, then decide: roll back, abort or promote, and ask for retraining. "
        "ds is the `ds` param if set, else the day the data interval starts (the nightly run at midnight scores "
        "yesterday; a backfill of dates A..B scores A..B). A backfill run, or any ds older than the newest "
        "decided night, scores and monitors the versions that served that day and decides nothing: it never "
        "changes what production serves. Re-run a day by clearing its run, or trigger with the `ds` param.",
    )
    def score_model() -> None:
        wait = wait_for_partition(cfg, dataset)

        @task
        def plan(**context: Any) -> dict[str, Any]:
            """Check every file's footer against the contract, then plan the night (mode, versions)."""
            from nightshift_airflow.runtime import plan_nights

            return plan_nights([cfg], dataset, context)[model]

        @task(outlets=[predictions], max_active_tis_per_dag=MAX_PARALLEL_SCORING)
        def score(night: Any, **context: Any) -> dict[str, Any]:
            """Score and commit every planned version atomically (champion first); record what served."""
            from nightshift.nightly import NightPlan, score_night
            from nightshift_airflow.lineage import airflow_lineage
            from nightshift_airflow.metrics import airflow_job_metrics
            from nightshift_airflow.runtime import fail_without_retry_on_bad_input, run_settings

            with fail_without_retry_on_bad_input(), airflow_job_metrics(), airflow_lineage(context):
                scored = score_night(run_settings(), NightPlan.from_dict(night), run_key=context["run_id"])
            context["outlet_events"][predictions].extra = {"ds": night["ds"], **scored["champion"], "versions": scored}
            return scored

        @task
        def monitor(night: Any, scored: Any) -> dict[str, Any]:
            """Data quality and drift of each scored version: the verdict is data, a failing night does not fail."""
            from nightshift.nightly import NightPlan, monitor_night
            from nightshift_airflow.metrics import airflow_job_metrics
            from nightshift_airflow.runtime import fail_without_retry_on_bad_input, run_settings

            with fail_without_retry_on_bad_input(), airflow_job_metrics():
                return monitor_night(run_settings(), NightPlan.from_dict(night))

        @task
        def report(night: Any, monitored: Any) -> dict[str, str]:
            """The Evidently HTML report of the champion and challenger (a branch of its own, blocking nothing)."""
            from airflow.sdk.exceptions import AirflowSkipException

            from nightshift.nightly import NightPlan, report_night, reportable
            from nightshift_airflow.runtime import run_settings

            if not cfg.monitoring.report or not reportable(monitored):
                raise AirflowSkipException(f"no HTML report for {model}: monitoring.report off, or nothing judged")
            return report_night(run_settings(), NightPlan.from_dict(night), monitored)

        @task
        def decide(night: Any, monitored: Any, **context: Any) -> dict[str, Any]:
            """Roll back, abort or promote, and the retraining decision: once per night, never for a backfill."""
            from nightshift.nightly import NightPlan, decide_night
            from nightshift_airflow.runtime import run_settings

            decision = decide_night(
                run_settings(),
                NightPlan.from_dict(night),
                monitored,
                run_key=context["run_id"],
                by=f"airflow:{context['dag'].dag_id}",
            )
            return decision.as_dict()

        @task.short_circuit
        def retrain_decision(decision: Any) -> dict[str, Any] | bool:
            """Go on to trigger_retrain only when the night's decision says so (it carries the run id)."""
            return dict(decision["retrain"]) if decision["trigger_retrain"] else False

        night = plan()
        scored = with_lineage(score(night))
        wait >> night
        monitored = monitor(night, scored)
        report(night, monitored)
        retrain_decision(decide(night, monitored)) >> retrain_trigger(model, source="drift")

    return score_model()


def night_group(model: str) -> str:
    """The task group of one model's night in a group DAG: `<model>_night`, which no shared task id
    (wait_for_partition, plan, score) can equal, whatever the model is called."""
    return f"{model}_night"


def ds_param() -> Param:
    return Param(
        None,
        type=["null", "string"],
        format="date",
        description="The day to score (YYYY-MM-DD). Empty: the day the run's data interval starts.",
    )


def group_scoring_dag(group: str, members: list[Any], dataset: str) -> DAG:
    """score_<group>: the nights of several models that read the same dataset, scored in ONE read of each
    partition; each model is then monitored and decided in its own task group, and fails alone."""
    names = [m.name for m in members]
    first = members[0]
    assets = {m.name: predictions_asset(m.name) for m in members}

    @dag(
        dag_id=f"score_{group}",
        description=f"Nightly scoring of {', '.join(names)} in one read",
        schedule=CronDataIntervalTimetable(first.schedule.cron, timezone="UTC"),
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=MAX_ACTIVE_RUNS,
        dagrun_timeout=timedelta(hours=12),
        default_args={**DEFAULT_ARGS, "owner": first.owner},
        tags=["nightshift", "scoring", *names],
        params={"ds": ds_param()},
        doc_md=f"One night of **{', '.join(names)}** (schedule group `{group}`; `nightshift night --group {group}` "
        f"runs the same code): wait for `{first.partition_key}=<ds>` of `{dataset}`, check each model's contract, "
        "then score every version of every model in ONE read of the partition, each committed atomically on its "
        "own. Each model is then monitored and decided in its own group of tasks, as score_<model> does. A model "
        "whose scoring failed fails its own `monitor` task (with the error) and leaves the others alone; the "
        "`score` task fails too, so a retry or a cleared run re-scores the night (committing is idempotent).",
    )
    def score_group() -> None:
        wait = wait_for_partition(first, dataset)

        @task
        def plan(**context: Any) -> dict[str, Any]:
            """Check every file's footer against each model's contract, then plan each model's night."""
            from nightshift_airflow.runtime import plan_nights

            return plan_nights(members, dataset, context)

        @task(outlets=list(assets.values()), max_active_tis_per_dag=MAX_PARALLEL_SCORING)
        def score(nights: Any, **context: Any) -> dict[str, Any]:
            """Score every version of every model in one read; each commits on its own. What committed is
            pushed (key `scored`) before a failure of any model fails this task."""
            from nightshift.nightly import NightPlan, score_nights
            from nightshift_airflow.lineage import airflow_lineage
            from nightshift_airflow.metrics import airflow_job_metrics
            from nightshift_airflow.runtime import fail_without_retry_on_bad_input, run_settings

            plans = [NightPlan.from_dict(n) for n in nights.values()]
            with fail_without_retry_on_bad_input(), airflow_job_metrics(), airflow_lineage(context):
                results = score_nights(run_settings(), plans, run_key=context["run_id"])
            scored = {m: r for m, r in results.items() if not isinstance(r, BaseException)}
            failed = {m: r for m, r in results.items() if isinstance(r, BaseException)}
            context["ti"].xcom_push(
                key="scored",
                value={**scored, **{m: {"error": f"{type(r).__name__}: {r}"} for m, r in failed.items()}},
            )
            for m, r in scored.items():
                context["outlet_events"][assets[m]].extra = {"ds": nights[m]["ds"], **r["champion"], "versions": r}
            if failed:
                raise next(iter(failed.values()))
            return scored

        nights = plan()
        scored = with_lineage(score(nights))
        wait >> nights
        for m in members:
            with TaskGroup(group_id=night_group(m.name)):
                _judge(m.name, m, nights, scored)

    return score_group()


def _judge(model: str, cfg: Any, nights: Any, scored: Any) -> None:
    """Monitor, report and decide one model of a group's night (its tasks are `<model>.<task>`)."""

    @task(trigger_rule="all_done")
    def monitor(nights: Any, **context: Any) -> dict[str, Any]:
        """Data quality and drift of each scored version of this model (fails when its scoring failed)."""
        from airflow.sdk.exceptions import AirflowFailException

        from nightshift.nightly import NightPlan, monitor_night
        from nightshift_airflow.metrics import airflow_job_metrics
        from nightshift_airflow.runtime import fail_without_retry_on_bad_input, run_settings

        mine = (context["ti"].xcom_pull(task_ids="score", key="scored") or {}).get(model)
        if not mine or "error" in mine:
            why = mine["error"] if mine else "the score task did not run to the end"
            raise AirflowFailException(f"{model} was not scored on this night: {why}")
        with fail_without_retry_on_bad_input(), airflow_job_metrics():
            return monitor_night(run_settings(), NightPlan.from_dict(nights[model]))

    @task
    def report(nights: Any, monitored: Any) -> dict[str, str]:
        """The Evidently HTML report of this model's champion and challenger (blocking nothing)."""
        from airflow.sdk.exceptions import AirflowSkipException

        from nightshift.nightly import NightPlan, report_night, reportable
        from nightshift_airflow.runtime import run_settings

        if not cfg.monitoring.report or not reportable(monitored):
            raise AirflowSkipException(f"no HTML report for {model}: monitoring.report off, or nothing judged")
        return report_night(run_settings(), NightPlan.from_dict(nights[model]), monitored)

    @task
    def decide(nights: Any, monitored: Any, **context: Any) -> dict[str, Any]:
        """Roll back, abort or promote this model, and its retraining decision (never for a backfill)."""
        from nightshift.nightly import NightPlan, decide_night
        from nightshift_airflow.runtime import run_settings

        decision = decide_night(
            run_settings(),
            NightPlan.from_dict(nights[model]),
            monitored,
            run_key=context["run_id"],
            by=f"airflow:{context['dag'].dag_id}",
        )
        return decision.as_dict()

    @task.short_circuit
    def retrain_decision(decision: Any) -> dict[str, Any] | bool:
        """Go on to trigger_retrain only when the night's decision says so."""
        return dict(decision["retrain"]) if decision["trigger_retrain"] else False

    monitored = monitor(nights)
    scored >> monitored
    report(nights, monitored)
    retrain_decision(decide(nights, monitored)) >> retrain_trigger(
        model, source="drift", decision_task=f"{night_group(model)}.retrain_decision"
    )


_settings = load_project()
_wanted = get_parsing_context().dag_id  # a worker parsing for one DAG builds only that one
for _m in _settings.models:
    if _m.schedule.group is None and (_wanted is None or _wanted == f"score_{_m.name}"):
        globals()[f"score_{_m.name}"] = scoring_dag(_m.name, _m, _m.dataset_uri(_settings))
for _group, _members in _settings.groups().items():
    if _wanted is None or _wanted == f"score_{_group}":
        globals()[f"score_{_group}"] = group_scoring_dag(_group, _members, _members[0].dataset_uri(_settings))
