"""The DAG's run-time helpers: store URL from a Connection, ds from the data interval, which failures retry."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest


def _conn(**kwargs: Any) -> Any:
    from airflow.sdk import Connection

    return Connection(conn_id="nightshift_store", **kwargs)


def test_store_url_from_a_postgres_connection() -> None:
    from nightshift_airflow.runtime import store_url_from_connection

    conn = _conn(conn_type="postgres", host="db", port=5433, login="ns", password="p@ss", schema="nightshift")

    assert store_url_from_connection(conn) == "postgresql://ns:p%40ss@db:5433/nightshift"


def test_store_url_from_a_connection_uri_as_in_airflow_conn_env_vars() -> None:
    from airflow.sdk import Connection

    from nightshift_airflow.runtime import store_url_from_connection

    conn = Connection.from_uri("postgresql://root@127.0.0.1:5432/nightshift", conn_id="nightshift_store")

    assert store_url_from_connection(conn) == "postgresql://root@127.0.0.1:5432/nightshift"


def test_store_url_from_a_sqlite_connection_or_a_url_extra() -> None:
    from nightshift_airflow.runtime import store_url_from_connection

    assert store_url_from_connection(_conn(conn_type="sqlite", host="/data/store.db")) == "sqlite:////data/store.db"
    extra = json.dumps({"url": "postgresql+psycopg://a@b/c"})
    assert store_url_from_connection(_conn(conn_type="generic", extra=extra)) == "postgresql+psycopg://a@b/c"


def test_an_unusable_connection_says_what_to_do() -> None:
    from nightshift_airflow.runtime import store_url_from_connection

    with pytest.raises(ValueError, match=r"use a postgres or sqlite connection, or put the SQLAlchemy URL"):
        store_url_from_connection(_conn(conn_type="http", host="example.com"))


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (datetime(2026, 11, 18, tzinfo=UTC), date(2026, 11, 18)),
        (datetime(2026, 11, 18, 23, 30, tzinfo=UTC), date(2026, 11, 18)),
        # An interval that starts at 01:00 in UTC+2 starts on the previous UTC day.
        (datetime(2026, 11, 18, 1, 0, tzinfo=timezone(timedelta(hours=2))), date(2026, 11, 17)),
    ],
)
def test_ds_is_the_utc_day_the_data_interval_starts(start: datetime, expected: date) -> None:
    from nightshift_airflow.runtime import ds_of

    assert ds_of({"data_interval_start": start}) == expected


def test_a_run_without_a_data_interval_fails_without_retrying() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from nightshift_airflow.runtime import ds_of

    with pytest.raises(AirflowFailException, match="no data interval"):
        ds_of({"data_interval_start": None})


def test_the_ds_param_wins_over_the_data_interval_and_a_bad_one_is_named() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from nightshift_airflow.runtime import ds_of

    interval = {"data_interval_start": datetime(2026, 11, 20, tzinfo=UTC)}
    assert ds_of({**interval, "params": {"ds": "2026-11-03"}}) == date(2026, 11, 3)
    assert ds_of({"data_interval_start": None, "params": {"ds": "2026-11-03"}}) == date(2026, 11, 3)
    assert ds_of({**interval, "params": {"ds": None}}) == date(2026, 11, 20)
    with pytest.raises(AirflowFailException, match="the ds param '2026-13-01' is not a date"):
        ds_of({**interval, "params": {"ds": "2026-13-01"}})


def test_only_an_airflow_backfill_run_is_a_backfill_by_its_type() -> None:
    from types import SimpleNamespace

    from nightshift_airflow.runtime import is_backfill

    assert is_backfill({"dag_run": SimpleNamespace(run_type="backfill")}) is True
    # Any other run lets nightshift.nightly decide from its ds (older than the newest decided night: backfill).
    for run_type in ("scheduled", "manual", "asset_triggered"):
        assert is_backfill({"dag_run": SimpleNamespace(run_type=run_type)}) is None


def test_the_local_airflow_starts_no_log_server_unless_asked() -> None:
    from nightshift_airflow.local import component_commands

    quiet = component_commands()
    assert sorted(quiet) == ["api-server", "dag-processor", "scheduler", "triggerer"]
    assert "--skip-serve-logs" in quiet["scheduler"]
    assert "--skip-serve-logs" in quiet["triggerer"]
    served = component_commands(serve_logs=True)
    assert not any("--skip-serve-logs" in cmd for cmd in served.values())


def test_bad_input_fails_at_once_while_other_errors_retry() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from nightshift.errors import ContractError, RunLockTimeout
    from nightshift_airflow.runtime import fail_without_retry_on_bad_input

    with pytest.raises(AirflowFailException, match=r"ContractError: column 'age' is missing"):  # noqa: SIM117
        with fail_without_retry_on_bad_input():
            raise ContractError("column 'age' is missing")
    with pytest.raises(RunLockTimeout):  # noqa: SIM117 - transient: Airflow retries it with backoff
        with fail_without_retry_on_bad_input():
            raise RunLockTimeout("another run holds the lock")


@pytest.mark.parametrize(
    ("dag_id", "task_id", "event"),
    [
        ("score_churn", "score", "score_failed"),
        ("score_churn", "wait_for_partition", "score_failed"),
        ("score_churn", "monitor", "monitoring_task_failed"),
        ("score_churn", "decide", "monitoring_task_failed"),
        ("score_customer_value", "score", "score_failed"),
        ("score_customer_value", "spend_night.monitor", "monitoring_task_failed"),
        ("score_customer_value", "plan_night.decide", "monitoring_task_failed"),
        ("score_customer_value", "plan_night.trigger_retrain", "monitoring_task_failed"),
        ("retrain_churn", "retrain", "retrain_failed"),
    ],
)
def test_a_failure_alert_says_what_still_serves_by_the_task_that_failed(dag_id: str, task_id: str, event: str) -> None:
    from nightshift_airflow.runtime import _failure_event

    assert _failure_event(dag_id, task_id)[0] == event
