"""score_<model>: one nightly scoring DAG per model of the project file (wiring only; nightshift does the work)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, dag, get_parsing_context, task

from nightshift_airflow.runtime import alert_on_failure, load_project
from nightshift_airflow.sensors import PartitionReadySensor

#: Every day at midnight UTC the run for yesterday's interval starts; ds = the interval's start day.
SCHEDULE = "0 0 * * *"
#: How long a run waits for its partition's _SUCCESS marker, and how often the triggerer looks.
WAIT_TIMEOUT_S = float(os.environ.get("NIGHTSHIFT_AIRFLOW_WAIT_TIMEOUT_S", 6 * 3600))
POKE_INTERVAL_S = float(os.environ.get("NIGHTSHIFT_AIRFLOW_POKE_INTERVAL_S", 60))
#: Runs of one model at once (waiting is deferred, so cheap); scoring tasks at once, each starts a Dask cluster.
MAX_ACTIVE_RUNS = 8
MAX_PARALLEL_SCORING = 2

DEFAULT_ARGS: dict[str, Any] = {
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=30),
    "on_failure_callback": alert_on_failure,
}


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
        doc_md=f"Scores partition `{partition_key}=<ds>` of `{dataset}` with the champion of **{model}**, where "
        "ds is the day the run's data interval starts (a backfill of dates A..B scores ds A..B; the nightly "
        "run at midnight scores yesterday). Re-running a date replaces its predictions atomically.",
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
            """Score the partition on Dask with ONNX Runtime and commit it atomically, then emit the asset event."""
            from nightshift.scoring import score_partition
            from nightshift_airflow.runtime import ds_of, fail_without_retry_on_bad_input, run_settings

            with fail_without_retry_on_bad_input():
                summary = score_partition(run_settings(), model, ds_of(context), run_key=context["run_id"])
            context["outlet_events"][predictions].extra = {
                "ds": summary.ds.isoformat(),
                "rows": summary.rows,
                "version": summary.version,
                "store_run_id": summary.run_id,
                "replaced_run_id": summary.replaced_run_id,
            }
            return summary.as_dict()

        wait >> check_contract() >> score()

    return score_model()


_settings = load_project()
_wanted = get_parsing_context().dag_id  # a worker parsing for one DAG builds only that one
for _m in _settings.models:
    if _wanted is None or _wanted == f"score_{_m.name}":
        globals()[f"score_{_m.name}"] = scoring_dag(
            _m.name, _m.dataset_uri(_settings), _m.partition_key, _m.success_marker, _m.owner, _m.description
        )
