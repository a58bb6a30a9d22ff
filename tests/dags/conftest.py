"""DAG integrity tests parse dags/ with a private Airflow configuration (set before airflow is imported)."""

from __future__ import annotations

from tests.airflow.harness import configure_in_process

configure_in_process()
