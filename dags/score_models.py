"""score_<model>: one nightly scoring DAG per model of the project file (wiring: nightshift.nightly does the work)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, Param, dag, get_parsing_context, task

from nightshift_airflow.retrain_trigger import retrain_trigger
from nightshift_airflow.runtime import DEFAULT_ARGS, load_project
from nightshift_airflow.sensors import PartitionReadySensor

#: Runs of one model at once (waiting is deferred, so cheap); scoring tasks at once, each starts a Dask cluster.
MAX_ACTIVE_RUNS = 8
MAX_PARALLEL_SCORING = 2

__all__ = ["DEFAULT_ARGS", "predictions_asset", "scoring_dag"]


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
        params={
            "ds": Param(
                None,
                type=["null", "string"],
                format="date",
                description="The day to score (YYYY-MM-DD). Empty: the day the run's data interval starts.",
            )
        },
        doc_md=f"One night of **{model}** (`nightshift.nightly`, the same code as `nightshift night`): wait for "
        f"`{cfg.partition_key}=<ds>` of `{dataset}`, check its contract, score every version the night needs "
        "(champion first), monitor each, then decide: roll back, abort or promote, and ask for retraining. "
        "ds is the `ds` param if set, else the day the data interval starts (the nightly run at midnight scores "
        "yesterday; a backfill of dates A..B scores A..B). A backfill run, or any ds older than the newest "
        "decided night, scores and monitors the versions that served that day and decides nothing: it never "
        "changes what production serves. Re-run a day by clearing its run, or trigger with the `ds` param.",
    )
    def score_model() -> None:
        wait = PartitionReadySensor(
            task_id="wait_for_partition",
            root=dataset,
            key=cfg.partition_key,
            marker=cfg.success_marker,
            poke_interval=cfg.schedule.poke_interval_s,
            timeout=cfg.schedule.wait_timeout_s,
        )

        @task
        def plan(**context: Any) -> dict[str, Any]:
            """Check every file's footer against the contract, then plan the night (mode, versions)."""
            from nightshift.data import inspect_partition
            from nightshift.nightly import plan_night
            from nightshift_airflow.runtime import ds_of, fail_without_retry_on_bad_input, is_backfill, run_settings

            settings, ds = run_settings(), ds_of(context)
            with fail_without_retry_on_bad_input():
                part = inspect_partition(dataset, cfg.partition_key, ds, cfg.contract, cfg.success_marker)
                night = plan_night(settings, model, ds, backfill=is_backfill(context)).as_dict()
            return {**night, "files": len(part.files), "input_rows": part.rows}

        @task(outlets=[predictions], max_active_tis_per_dag=MAX_PARALLEL_SCORING)
        def score(night: Any, **context: Any) -> dict[str, Any]:
            """Score and commit every planned version atomically (champion first); record what served."""
            from nightshift.nightly import NightPlan, score_night
            from nightshift_airflow.runtime import fail_without_retry_on_bad_input, run_settings

            with fail_without_retry_on_bad_input():
                scored = score_night(run_settings(), NightPlan.from_dict(night), run_key=context["run_id"])
            context["outlet_events"][predictions].extra = {"ds": night["ds"], **scored["champion"], "versions": scored}
            return scored

        @task
        def monitor(night: Any, scored: Any) -> dict[str, Any]:
            """Data quality and drift of each scored version: the verdict is data, a failing night does not fail."""
            from nightshift.nightly import NightPlan, monitor_night
            from nightshift_airflow.runtime import fail_without_retry_on_bad_input, run_settings

            with fail_without_retry_on_bad_input():
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
        scored = score(night)
        wait >> night
        monitored = monitor(night, scored)
        report(night, monitored)
        retrain_decision(decide(night, monitored)) >> retrain_trigger(model, source="drift")

    return score_model()


_settings = load_project()
_wanted = get_parsing_context().dag_id  # a worker parsing for one DAG builds only that one
for _m in _settings.models:
    if _wanted is None or _wanted == f"score_{_m.name}":
        globals()[f"score_{_m.name}"] = scoring_dag(_m.name, _m, _m.dataset_uri(_settings))
