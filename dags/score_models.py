"""score_<model>: one nightly scoring DAG per model of the project file (wiring only; nightshift does the work)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, dag, get_parsing_context, task

from nightshift_airflow.retrain_trigger import retrain_trigger
from nightshift_airflow.runtime import DEFAULT_ARGS, load_project
from nightshift_airflow.sensors import PartitionReadySensor

#: Every day at midnight UTC the run for yesterday's interval starts; ds = the interval's start day.
SCHEDULE = "0 0 * * *"
#: How long a run waits for its partition's _SUCCESS marker, and how often the triggerer looks.
WAIT_TIMEOUT_S = float(os.environ.get("NIGHTSHIFT_AIRFLOW_WAIT_TIMEOUT_S", 6 * 3600))
POKE_INTERVAL_S = float(os.environ.get("NIGHTSHIFT_AIRFLOW_POKE_INTERVAL_S", 60))
#: Runs of one model at once (waiting is deferred, so cheap); scoring tasks at once, each starts a Dask cluster.
MAX_ACTIVE_RUNS = 8
MAX_PARALLEL_SCORING = 2
#: The order the versions of a night are scored in: the served champion first.
ALIAS_ORDER = ("champion", "challenger", "previous")

__all__ = ["DEFAULT_ARGS", "predictions_asset", "scoring_dag"]


def predictions_asset(model: str) -> Asset:
    """The model's committed predictions; each event's extra carries ds, rows, version and the store run."""
    return Asset(name=f"nightshift_predictions_{model}", uri=f"x-nightshift://predictions/{model}", group="nightshift")


def scoring_dag(model: str, dataset: str, partition_key: str, marker: str, owner: str, description: str) -> DAG:
    predictions = predictions_asset(model)

    @dag(
        dag_id=f"score_{model}",
        description=description or f"Nightly scoring of {model}",
        schedule=CronDataIntervalTimetable(SCHEDULE, timezone="UTC"),
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=MAX_ACTIVE_RUNS,
        dagrun_timeout=timedelta(hours=12),
        default_args={**DEFAULT_ARGS, "owner": owner},
        tags=["nightshift", "scoring", model],
        doc_md=f"Scores partition `{partition_key}=<ds>` of `{dataset}` with every version of **{model}** the "
        "rollout serves or watches (champion first, then a shadow/canary challenger, then `previous` during a "
        "rollback window or under blue/green), where ds is the day the run's data interval starts (a backfill "
        "of dates A..B scores ds A..B; the nightly run at midnight scores yesterday). Re-running a date replaces "
        "its predictions atomically. Then it monitors the night, moves the rollout along (or rolls back) and "
        f"triggers `retrain_{model}` when the retraining decision says so.",
    )
    def score_model() -> None:
        wait = PartitionReadySensor(
            task_id="wait_for_partition",
            root=dataset,
            key=partition_key,
            marker=marker,
            poke_interval=POKE_INTERVAL_S,
            timeout=WAIT_TIMEOUT_S,
        )

        @task
        def check_contract(**context: Any) -> dict[str, Any]:
            """Read every file's footer and check it against the feature contract: fail fast, before Dask."""
            from nightshift.data import inspect_partition
            from nightshift_airflow.runtime import ds_of, fail_without_retry_on_bad_input, load_project

            cfg = load_project().model(model)
            with fail_without_retry_on_bad_input():
                part = inspect_partition(dataset, partition_key, ds_of(context), cfg.contract, marker)
            return {"uri": part.uri, "files": len(part.files), "rows": part.rows}

        @task(outlets=[predictions], max_active_tis_per_dag=MAX_PARALLEL_SCORING)
        def score(**context: Any) -> dict[str, Any]:
            """Score the partition with every version the rollout needs (champion first) and commit each atomically."""
            from nightshift.rollout import Rollouts
            from nightshift.scoring import score_partition
            from nightshift_airflow.runtime import ds_of, fail_without_retry_on_bad_input, run_settings

            settings, ds = run_settings(), ds_of(context)
            rollouts = Rollouts(settings)
            try:
                versions: dict[str, int | None] = dict(rollouts.versions_to_score(model, ds))
            finally:
                rollouts.store.dispose()
            if "champion" not in versions:  # no champion: score_partition says so, without retrying
                versions = {"champion": None, **versions}
            order = sorted(versions, key=lambda a: ALIAS_ORDER.index(a) if a in ALIAS_ORDER else len(ALIAS_ORDER))
            scored: dict[str, dict[str, Any]] = {}
            for alias in order:
                with fail_without_retry_on_bad_input():
                    summary = score_partition(settings, model, ds, version=versions[alias], run_key=context["run_id"])
                scored[alias] = {
                    "version": summary.version,
                    "rows": summary.rows,
                    "store_run_id": summary.run_id,
                    "replaced_run_id": summary.replaced_run_id,
                }
            champion = scored["champion"]
            context["outlet_events"][predictions].extra = {"ds": ds.isoformat(), **champion, "versions": scored}
            return {"ds": ds.isoformat(), "versions": scored}

        @task
        def monitor(scored: Any, **context: Any) -> dict[str, Any]:
            """Monitor the night's champion (and challenger, and previous during a rollback window): the verdict is
            data, a failing night does not fail. The previous version's verdict tells advance_rollout whether the
            data moved (both fail: no rollback) or the new champion did (only it fails: roll back)."""
            from airflow.sdk.exceptions import AirflowSkipException

            from nightshift.monitoring import ReferenceUnavailable, monitor_partition
            from nightshift_airflow.runtime import ds_of, fail_without_retry_on_bad_input, run_settings

            settings, ds = run_settings(), ds_of(context)
            if not settings.model(model).monitoring.enabled:
                raise AirflowSkipException(f"monitoring of {model} is disabled (monitoring.enabled = false)")
            night: dict[str, Any] = {"ds": ds.isoformat()}
            for alias in ALIAS_ORDER:
                version = scored["versions"].get(alias, {}).get("version")
                if version is None:
                    night[alias], night[f"{alias}_ok"] = None, None
                    continue
                # monitor_partition stores the verdict and notifies on a failing or unjudgeable night itself.
                try:
                    with fail_without_retry_on_bad_input():
                        result = monitor_partition(settings, model, ds, version=int(version), report=False)
                except ReferenceUnavailable as exc:
                    # A version without recorded training days cannot be judged: say so loudly, but the
                    # night's predictions are committed and serving, so the scoring run does not fail.
                    from nightshift.notify import notify

                    notify(settings, "monitoring_unavailable", f"{model} v{version} ds={ds}: {exc}", model=model)
                    if alias == "champion":
                        raise AirflowSkipException(f"{model} v{version} cannot be monitored: {exc}") from None
                    night[alias], night[f"{alias}_ok"] = None, None
                    continue
                night[alias], night[f"{alias}_ok"] = result.as_dict(), result.ok
            return night

        @task
        def report(night: Any, **context: Any) -> dict[str, str]:
            """The Evidently HTML report of each monitored version (slow; a branch of its own, blocking nothing)."""
            from airflow.sdk.exceptions import AirflowSkipException

            from nightshift.monitoring import report_partition
            from nightshift_airflow.runtime import ds_of, run_settings

            settings, ds = run_settings(), ds_of(context)
            if not settings.model(model).monitoring.report:
                raise AirflowSkipException(f"HTML reports of {model} are off (monitoring.report = false)")
            uris: dict[str, str] = {}
            for alias in ("champion", "challenger"):
                result = night.get(alias)
                if result and result["sampled_rows"] > 0:  # an empty night has nothing to show
                    uris[alias] = report_partition(settings, model, ds, version=int(result["version"]))
            return uris

        @task
        def advance_rollout(night: Any, **context: Any) -> str:
            """Roll back a failing new champion, or count/abort/promote a shadow or canary rollout."""
            from nightshift.rollout import Rollouts
            from nightshift_airflow.runtime import ds_of, run_settings

            rollouts = Rollouts(run_settings())
            try:
                return rollouts.advance(
                    model,
                    ds_of(context),
                    champion_ok=night["champion_ok"],
                    challenger_ok=night["challenger_ok"],
                    previous_ok=night.get("previous_ok"),
                    by=f"airflow:{context['dag'].dag_id}",
                )
            finally:
                rollouts.store.dispose()

        @task.short_circuit
        def retrain_decision(night: Any, advanced: Any, **context: Any) -> dict[str, Any] | bool:
            """Hysteresis + cooldown over the stored verdicts; trigger_retrain runs only when this says trigger."""
            from nightshift.monitoring import retrain_decision as decide
            from nightshift_airflow.runtime import ds_of, run_settings

            champion = night.get("champion") or {}
            version = champion.get("version")
            decision = decide(run_settings(), model, ds_of(context), version=int(version) if version else None)
            return decision.as_dict() if decision.trigger else False

        trigger_retrain = retrain_trigger(model, source="drift")

        night = monitor(wait >> check_contract() >> score())
        report(night)
        retrain_decision(night, advance_rollout(night)) >> trigger_retrain

    return score_model()


_settings = load_project()
_wanted = get_parsing_context().dag_id  # a worker parsing for one DAG builds only that one
for _m in _settings.models:
    if _wanted is None or _wanted == f"score_{_m.name}":
        globals()[f"score_{_m.name}"] = scoring_dag(
            _m.name, _m.dataset_uri(_settings), _m.partition_key, _m.success_marker, _m.owner, _m.description
        )
