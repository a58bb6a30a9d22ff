"""Job metrics: the node_exporter textfile (merge, failure, retention, atomic), the Pushgateway over real HTTP,
Airflow's own metrics, the peak-memory clock, and that none of it can fail a run."""

from __future__ import annotations

import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nightshift.config import MetricsSettings
from nightshift.telemetry.jobmetrics import JobClock, JobRun, read_textfile, record_job, sink, textfile_path
from tests.lineage.conftest import Recorder

DS = date(2026, 11, 18)


def _run(version: int | None = 1, *, ok: bool = True, rows: int = 3000, at: float | None = None) -> JobRun:
    return JobRun(
        "score",
        "churn",
        version,
        DS,
        ok,
        rows,
        seconds=1.5,
        peak_memory_bytes=300 * 2**20,
        worker_peak_memory_bytes=200 * 2**20,
        finished_at=at if at is not None else time.time(),
    )


def _samples(text: str) -> dict[tuple[str, str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, s.labels.get("version", ""), s.labels.get("process", ""))] = s.value
    return out


def test_the_textfile_holds_every_series_of_a_run(tmp_path: Path) -> None:
    record_job(MetricsSettings(textfile_dir=str(tmp_path)), _run())
    path = textfile_path(tmp_path, "score", "churn")
    assert path.name == "nightshift_score_churn.prom"
    text = path.read_text()
    assert "# HELP nightshift_job_rows " in text
    assert 'job_type="score"' in text
    assert 'job="' not in text  # Prometheus sets `job` to the scrape job
    v = _samples(text)
    assert v[("nightshift_job_rows", "1", "")] == 3000
    assert v[("nightshift_job_duration_seconds", "1", "")] == 1.5
    assert v[("nightshift_job_rows_per_second", "1", "")] == 2000
    assert v[("nightshift_job_peak_memory_bytes", "1", "driver")] == 300 * 2**20
    assert v[("nightshift_job_peak_memory_bytes", "1", "workers")] == 200 * 2**20
    assert v[("nightshift_job_success", "1", "")] == 1
    assert v[("nightshift_job_partition_timestamp_seconds", "1", "")] == datetime(2026, 11, 18, tzinfo=UTC).timestamp()
    assert time.time() - v[("nightshift_job_last_success_timestamp_seconds", "1", "")] < 60
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [path.name]  # no temp file left


def test_a_failed_run_keeps_the_last_success_and_other_versions_stay(tmp_path: Path) -> None:
    settings = MetricsSettings(textfile_dir=str(tmp_path))
    ok_at = time.time() - 3600
    record_job(settings, _run(1, at=ok_at))
    record_job(settings, _run(2, at=ok_at + 10))
    record_job(settings, _run(1, ok=False, rows=0))
    v = _samples(textfile_path(tmp_path, "score", "churn").read_text())
    assert v[("nightshift_job_success", "1", "")] == 0
    assert v[("nightshift_job_rows", "1", "")] == 0
    assert v[("nightshift_job_last_success_timestamp_seconds", "1", "")] == ok_at
    assert v[("nightshift_job_last_run_timestamp_seconds", "1", "")] > ok_at
    assert v[("nightshift_job_success", "2", "")] == 1  # the other version's series are kept
    # A version that has not run for RETAIN_DAYS leaves the file with the next write.
    record_job(settings, _run(3, at=ok_at + 8 * 86400))
    assert set(read_textfile(textfile_path(tmp_path, "score", "churn"))) == {"3"}


def test_metrics_that_cannot_be_written_or_pushed_never_fail_a_run(
    tmp_path: Path, closed_port: str, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    settings = MetricsSettings(textfile_dir=str(blocker / "metrics"), pushgateway_url=closed_port, timeout_s=2)

    def broken_sink(run: JobRun) -> None:
        raise RuntimeError("sink down")

    with sink(broken_sink):
        record_job(settings, _run())  # does not raise
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "could not write the job metrics textfile" in warnings
    assert "could not push the job metrics" in warnings
    assert "a job metrics sink failed: sink down" in warnings


def test_the_pushgateway_gets_the_run_grouped_by_job_type_model_and_version(endpoint: Recorder) -> None:
    record_job(MetricsSettings(pushgateway_url=endpoint.url), _run(4))
    [(method, path, _headers, body)] = endpoint.requests
    assert method == "PUT"  # replaces the group
    assert path == "/metrics/job/nightshift/job_type/score/model/churn/version/4"
    v = _samples(body.decode())
    assert v[("nightshift_job_rows", "", "")] == 3000  # the labels come from the group
    assert v[("nightshift_job_peak_memory_bytes", "", "workers")] == 200 * 2**20


def test_a_sink_gets_each_run_while_it_is_registered() -> None:
    got: list[JobRun] = []
    with sink(got.append):
        record_job(MetricsSettings(), _run())
    record_job(MetricsSettings(), _run())
    assert len(got) == 1
    assert got[0].rows_per_second == 2000


def test_the_clock_measures_this_jobs_peak_memory() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the per-job peak (VmHWM reset) is Linux only")
    clock = JobClock()
    base = clock.peak_bytes()
    block = bytearray(200 * 2**20)
    block[:: 2**12] = b"x" * len(block[:: 2**12])  # touch every page
    peak = clock.peak_bytes()
    del block
    assert peak - base >= 180 * 2**20
    # A job started after it does not inherit that peak.
    assert JobClock().peak_bytes() < peak - 150 * 2**20
    assert clock.seconds > 0


def test_airflow_metrics_get_each_job_run_inside_a_task() -> None:
    from airflow.sdk.observability import stats

    from nightshift_airflow.metrics import airflow_job_metrics

    calls: list[tuple[str, str, Any, dict[str, Any]]] = []

    class Recording:
        """A stats backend (Airflow's StatsLogger protocol) that records what it is sent."""

        def gauge(self, stat: str, value: Any, rate: Any = 1, delta: Any = False, *, tags: Any = None) -> None:
            calls.append(("gauge", stat, value, tags))

        def timing(self, stat: str, dt: Any, *, tags: Any = None) -> None:
            calls.append(("timing", stat, dt.total_seconds(), tags))

        def incr(self, stat: str, count: int = 1, rate: Any = 1, *, tags: Any = None) -> None:
            calls.append(("incr", stat, count, tags))

    stats.initialize(factory=Recording, export_legacy_names=False)
    try:
        with airflow_job_metrics():
            record_job(MetricsSettings(), _run(2))
    finally:
        from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger

        stats.initialize(factory=NoStatsLogger, export_legacy_names=False)
    sent = {(kind, stat): value for kind, stat, value, _tags in calls}
    assert sent[("gauge", "nightshift.score.churn.rows")] == 3000
    assert sent[("gauge", "nightshift.score.churn.rows_per_second")] == 2000
    assert sent[("gauge", "nightshift.score.churn.peak_memory_bytes")] == 300 * 2**20
    assert sent[("gauge", "nightshift.score.churn.workers_peak_memory_bytes")] == 200 * 2**20
    assert sent[("timing", "nightshift.score.churn.duration")] == 1.5
    assert ("incr", "nightshift.score.churn.success") in sent
    assert all(tags == {"job_type": "score", "model": "churn", "version": "2"} for *_x, tags in calls)
