"""Job metrics through Airflow's own metrics: what a task's scoring, monitoring or training run recorded.

Airflow 3.3's Task SDK metrics (`airflow.sdk.observability.stats`; `airflow.stats.Stats` is its deprecated
alias) go to the backend Airflow is configured with ([metrics] statsd_on, otel_on, ...; nothing when none is).
Inside `airflow_job_metrics()`, every JobRun the library records (nightshift.telemetry.jobmetrics) is also sent
there, named with the model (plain StatsD has no tags):

    nightshift.<job_type>.<model>.rows              gauge
    nightshift.<job_type>.<model>.rows_per_second   gauge
    nightshift.<job_type>.<model>.peak_memory_bytes gauge (driver; .workers_peak_memory_bytes for scoring)
    nightshift.<job_type>.<model>.duration          timer
    nightshift.<job_type>.<model>.success|failure   counter

with tags version, job_type and model for backends that keep tags (OpenTelemetry, Datadog, StatsD with
influxdb tags).

OpenLineage: see nightshift_airflow.lineage (Airflow's OpenLineage provider, with nightshift's datasets and
runs added to its task events).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from nightshift.telemetry.jobmetrics import JobRun


def send_to_airflow(run: JobRun) -> None:
    """One JobRun as Airflow metrics."""
    from airflow.sdk.observability import stats

    name = f"nightshift.{run.job_type}.{run.model}"
    tags = {"job_type": run.job_type, "model": run.model, "version": "" if run.version is None else str(run.version)}
    stats.gauge(f"{name}.rows", run.rows, tags=tags)
    stats.gauge(f"{name}.rows_per_second", run.rows_per_second, tags=tags)
    stats.gauge(f"{name}.peak_memory_bytes", run.peak_memory_bytes, tags=tags)
    if run.worker_peak_memory_bytes:
        stats.gauge(f"{name}.workers_peak_memory_bytes", run.worker_peak_memory_bytes, tags=tags)
    stats.timing(f"{name}.duration", timedelta(seconds=run.seconds), tags=tags)
    stats.incr(f"{name}.{'success' if run.ok else 'failure'}", tags=tags)


@contextmanager
def airflow_job_metrics() -> Iterator[None]:
    """Inside a task: also send every job run the library records to Airflow's metrics."""
    from nightshift.telemetry import sink

    with sink(send_to_airflow):
        yield
