"""What the scoring DAGs share: the project file, the store Connection, the run's ds, failure alerts."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterator

    from nightshift.config import Settings

log = logging.getLogger(__name__)

#: The Airflow Connection that, when defined, overrides the project file's store URL.
STORE_CONN_ID = "nightshift_store"
#: The repository root: the project file's default folder (jobs/nightshift_airflow/ → ../..).
REPO_ROOT = Path(__file__).resolve().parents[2]


def project_file() -> Path:
    """The project file: $NIGHTSHIFT_CONFIG, else nightshift.toml at the repository root."""
    return Path(os.environ.get("NIGHTSHIFT_CONFIG") or REPO_ROOT / "nightshift.toml")


def load_project(**overrides: Any) -> Settings:
    """The project's settings from the file and NIGHTSHIFT_* variables; reads no database."""
    from nightshift.config import load_settings

    return load_settings(project_file(), **overrides)


def store_url_from_connection(conn: Any) -> str:
    """A SQLAlchemy URL from an Airflow Connection: its `url` extra, or built from a postgres/sqlite connection."""
    extra = conn.extra_dejson or {}
    if extra.get("url"):
        return str(extra["url"])
    conn_type = (conn.conn_type or "").lower()
    if conn_type in ("postgres", "postgresql"):
        from sqlalchemy.engine import URL

        return URL.create(
            "postgresql",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or None,
        ).render_as_string(hide_password=False)
    if conn_type == "sqlite" and conn.host:
        return f"sqlite:///{conn.host}"
    raise ValueError(
        f"Airflow Connection {STORE_CONN_ID!r} has type {conn_type!r}: use a postgres or sqlite connection, "
        'or put the SQLAlchemy URL in its extra as {"url": "..."}'
    )


def store_connection_url() -> str | None:
    """The store URL of the `nightshift_store` Connection inside a task, or None when it is not defined."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(STORE_CONN_ID)
    except AirflowNotFoundException:
        return None
    return store_url_from_connection(conn)


def run_settings() -> Settings:
    """Settings for a task: the project file, with the store from the `nightshift_store` Connection if defined."""
    url = store_connection_url()
    if url is None:
        return load_project()
    from nightshift.db.engine import redact

    log.info("store from Airflow Connection %r: %s", STORE_CONN_ID, redact(url))
    return load_project(store_url=url)


def ds_of(context: Any) -> date:
    """The partition a run scores: its `ds` param when given (a manual run for a chosen day), else the
    (UTC) day its data interval starts on (the nightly run at midnight scores yesterday; a backfill of
    dates A..B scores A..B)."""
    params = context.get("params") or {}
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    chosen = params.get("ds") or conf.get("ds")
    if chosen:
        try:
            return date.fromisoformat(str(chosen))
        except ValueError:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"the ds param {chosen!r} is not a date: expected YYYY-MM-DD") from None
    start = context.get("data_interval_start")
    if start is None:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(
            "this run has no data interval and no ds param, so there is no partition to score: trigger it with "
            "the ds param (YYYY-MM-DD), or with a logical date (a run at logical date D scores the day before D), "
            "or backfill a date range"
        )
    if not isinstance(start, datetime):
        raise TypeError(f"data_interval_start is {start!r}, expected a datetime")
    return start.date() if start.tzinfo is None else start.astimezone(UTC).date()


def is_backfill(context: Any) -> bool | None:
    """True for a run of an Airflow backfill (it must not change what production serves); None lets
    nightshift.nightly decide from the ds (older than the newest decided night: a backfill too)."""
    run_type = getattr(context.get("dag_run"), "run_type", None)
    return True if str(getattr(run_type, "value", run_type)) == "backfill" else None


def plan_nights(models: list[Any], dataset: str, context: Any) -> dict[str, dict[str, Any]]:
    """The `plan` task of a scoring DAG: each model's files checked against its contract (footers only),
    then its night planned (`nightly.plan_night`: mode, versions), with the partition's files and rows.
    Bad input fails without retry. model name → the plan as a dict (the task's XCom)."""
    from nightshift.data import inspect_partition
    from nightshift.nightly import plan_night

    settings, ds, backfill = run_settings(), ds_of(context), is_backfill(context)
    nights: dict[str, dict[str, Any]] = {}
    with fail_without_retry_on_bad_input():
        for m in models:
            part = inspect_partition(dataset, m.partition_key, ds, m.contract, m.success_marker)
            night = plan_night(settings, m.name, ds, backfill=backfill).as_dict()
            nights[m.name] = {**night, "files": len(part.files), "input_rows": part.rows}
    return nights


@contextmanager
def fail_without_retry_on_bad_input(*also: type[BaseException]) -> Iterator[None]:
    """Turn failures a retry cannot fix (bad data, missing model, and `also`) into AirflowFailException."""
    from nightshift.errors import (
        ArtifactIntegrityError,
        ConfigError,
        ContractError,
        ModelNotFound,
        ModelSchemaError,
        ParityError,
    )

    final: tuple[type[BaseException], ...] = (
        ContractError,
        ModelNotFound,
        ModelSchemaError,
        ArtifactIntegrityError,
        ConfigError,
        ParityError,
        *also,
    )
    try:
        yield
    except final as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


#: Tasks of score_<model> (and, in a group's score_<group>, of each `<model>_night` task group) that run after
#: the commit: their failure leaves the night's predictions serving.
AFTER_COMMIT_TASKS = frozenset({"monitor", "report", "decide", "retrain_decision", "trigger_retrain"})


def _failure_event(dag_id: str, task_id: str) -> tuple[str, str]:
    """The notifier event and the sentence on what still serves, for a failed task."""
    if dag_id.startswith("retrain_"):
        return "retrain_failed", "No alias moved: the serving model is unchanged."
    if task_id.rsplit(".", 1)[-1] in AFTER_COMMIT_TASKS:
        return "monitoring_task_failed", "The night's predictions are committed and serve; monitoring is incomplete."
    return "score_failed", "The previous predictions of this partition still serve."


def alert_on_failure(context: Any) -> None:
    """on_failure_callback: one clear log line, then the project's notifier (webhook if configured)."""
    ti = context.get("ti") or context.get("task_instance")
    dag_id = str(getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?"))
    task_id = str(getattr(ti, "task_id", "?"))
    run_id = context.get("run_id") or getattr(ti, "run_id", "?")
    exc = context.get("exception")
    start = context.get("data_interval_start")
    params = context.get("params") or {}
    if dag_id.startswith("retrain_"):
        ds = str(params.get("ds") or "") or None
    else:
        ds = ds_of(context).isoformat() if isinstance(start, datetime) else None
    error = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
    event, still = _failure_event(dag_id, task_id)
    message = (
        f"{dag_id}.{task_id} failed for ds={ds or '?'} (run {run_id}, try {getattr(ti, 'try_number', '?')}): {error}. "
        + still
    )
    log.error("%s", message)
    try:
        from nightshift.notify import notify

        settings = load_project()
        notify(
            settings,
            event,
            message,
            dag_id=dag_id,
            task_id=task_id,
            run_id=run_id,
            ds=ds,
            try_number=getattr(ti, "try_number", None),
            error=error,
        )
    except Exception:  # a broken project file must not hide the original failure
        log.exception("could not send the failure alert for %s.%s", dag_id, task_id)


#: Every task of every nightshift DAG: 2 retries with doubling backoff, and the failure alert.
DEFAULT_ARGS: dict[str, Any] = {
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=30),
    "on_failure_callback": alert_on_failure,
}
