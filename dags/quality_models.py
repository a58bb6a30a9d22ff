"""quality_<model>: once a day's labels land, the model's quality on that day, and a retraining trigger if it fails."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, CronDataIntervalTimetable, dag, get_parsing_context, task

from nightshift_airflow.retrain_trigger import retrain_trigger
from nightshift_airflow.runtime import DEFAULT_ARGS, load_project
from nightshift_airflow.sensors import PartitionReadySensor


def quality_dag(model: str, cfg: Any, labels: str) -> DAG:
    """Same rhythm as score_<model> ([models.schedule] cron); labels arrive later than features (churn is
    known weeks later in real life), so the wait is long ([models.schedule] labels_timeout_s) and deferred."""
    timeout = cfg.schedule.labels_timeout_s

    @dag(
        dag_id=f"quality_{model}",
        description=f"Quality of {model} once each day's labels land",
        schedule=CronDataIntervalTimetable(cfg.schedule.cron, timezone="UTC"),
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=16,  # waiting for labels is deferred, so many days may wait at once
        dagrun_timeout=timedelta(seconds=timeout + 3600),
        default_args={**DEFAULT_ARGS, "owner": cfg.owner},
        # Unpaused from creation: it only measures, and a paused one would leave its runs queued silently.
        is_paused_upon_creation=False,
        tags=["nightshift", "monitoring", model],
        doc_md=f"Waits (deferred) for the labels of ds (the day the run's interval starts) under `{labels}`, "
        "computes the quality of every version that served or shadowed that day (champion, challenger, bandit "
        "arms, previous: recorded in `served`) from its committed predictions, next to the night's label-free "
        f"estimate (`nightshift outcomes`), and triggers `retrain_{model}` when the quality of the version that "
        "served the day as champion fails often enough (the same hysteresis, cooldown and run id as the nightly "
        "data checks) and it still is the champion.",
    )
    def quality_model() -> None:
        wait = PartitionReadySensor(
            task_id="wait_for_labels",
            root=labels,
            key=cfg.partition_key,
            marker=cfg.success_marker,
            poke_interval=cfg.schedule.labels_poke_interval_s,
            timeout=timeout,
        )

        @task
        def label_quality(**context: Any) -> dict[str, Any]:
            """The quality of every version that served the labelled day, stored with its monitoring history."""
            from nightshift.monitoring import quality_of_day
            from nightshift_airflow.runtime import ds_of, fail_without_retry_on_bad_input, run_settings

            with fail_without_retry_on_bad_input():
                return quality_of_day(run_settings(), model, ds_of(context)).as_dict()

        @task.short_circuit
        def retrain_decision(quality: Any, **context: Any) -> dict[str, Any] | bool:
            """Hysteresis + cooldown over the stored verdicts (data and quality) of the day's champion, while it
            still is the champion; trigger only when the decision says so."""
            from nightshift.models import open_registry
            from nightshift.monitoring import retrain_decision as decide
            from nightshift_airflow.runtime import ds_of, run_settings

            settings = run_settings()
            version = quality.get("version")
            registry = open_registry(settings)
            try:
                champion = registry.aliases(model).get("champion")
            finally:
                registry.store.dispose()
            if version is not None and int(version) != champion:
                return False  # a version that no longer serves: retraining would not replace it
            decision = decide(settings, model, ds_of(context), version=int(version) if version else None)
            return decision.as_dict() if decision.trigger else False

        trigger_retrain = retrain_trigger(model, source="quality")

        retrain_decision(wait >> label_quality()) >> trigger_retrain

    return quality_model()


_settings = load_project()
_wanted = get_parsing_context().dag_id  # a worker parsing for one DAG builds only that one
for _m in _settings.models:
    _labels = _m.labels_uri(_settings)
    if _labels and (_wanted is None or _wanted == f"quality_{_m.name}"):
        globals()[f"quality_{_m.name}"] = quality_dag(_m.name, _m, _labels)
