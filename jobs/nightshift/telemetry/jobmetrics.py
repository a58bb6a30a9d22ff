"""Job metrics for operators: rows, seconds, rows/s and peak memory of each scoring, monitoring and training run.

Where they go, each optional, none ever failing a run:

* `[metrics] textfile_dir`: a file per job type and model, `nightshift_<job_type>_<model>.prom`, for
  node_exporter's textfile collector. It holds the latest run of each version of the model that ran in the
  last RETAIN_DAYS days, is merged under a file lock and replaced atomically (prometheus_client's
  `write_to_textfile`: a temporary file, then a rename), so the collector never reads half a file.
* `[metrics] pushgateway_url`: the run's metrics pushed (PUT, replacing the group) to a Prometheus Pushgateway,
  grouped by job=nightshift, job_type, model and version.
* sinks a caller registers with `sink(...)`: nightshift_airflow forwards every run to Airflow's own metrics.

Series (gauges), labelled job_type (score, monitor, train), model and version — not `job`, which Prometheus
sets to the scrape job:
nightshift_job_rows, nightshift_job_duration_seconds, nightshift_job_rows_per_second,
nightshift_job_peak_memory_bytes{process="driver"|"workers"}, nightshift_job_success (1/0),
nightshift_job_partition_timestamp_seconds (the ds the run was about, 00:00 UTC),
nightshift_job_last_run_timestamp_seconds, nightshift_job_last_success_timestamp_seconds (kept across failures).

Peak memory of the driver is this process's peak resident set size during the job: on Linux the kernel's
high-water mark (VmHWM) is reset when the job starts (/proc/self/clear_refs) and read when it ends; where that is
not possible, the process's peak since it started (getrusage). Jobs running at once in one process (a parallel
backfill) share that mark. Scoring also reports its Dask workers' peak (the largest worker RSS a task saw).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from nightshift.config import MetricsSettings

log = logging.getLogger(__name__)

#: A version's series leave the textfile when it has not run for this many days.
RETAIN_DAYS = 7
PREFIX = "nightshift_job_"
#: name → help of each series (all gauges).
SERIES = {
    "rows": "Rows the job's last run processed (scored, monitored, trained on)",
    "duration_seconds": "Wall-clock seconds of the job's last run",
    "rows_per_second": "Rows per second of the job's last run",
    "peak_memory_bytes": "Peak resident memory of the job's last run, by process (driver, workers)",
    "success": "1 when the job's last run succeeded, 0 when it failed",
    "partition_timestamp_seconds": "The day (ds, 00:00 UTC) the job's last run was about, as a Unix time",
    "last_run_timestamp_seconds": "When the job's last run ended, as a Unix time",
    "last_success_timestamp_seconds": "When the job last ended successfully, as a Unix time",
}
LABELS = ("job_type", "model", "version")
_NAME = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True)
class JobRun:
    """One finished run of a job, as operators see it."""

    job_type: str  # score, monitor, train
    model: str
    version: int | None
    ds: date | None
    ok: bool
    rows: int
    seconds: float
    peak_memory_bytes: int
    worker_peak_memory_bytes: int | None = None
    finished_at: float = field(default_factory=time.time)
    #: Identifiers for logs and sinks (store run id, run key, candidate id, ...); not Prometheus labels.
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def labels(self) -> dict[str, str]:
        return {
            "job_type": self.job_type,
            "model": self.model,
            "version": "" if self.version is None else str(self.version),
        }


# -- peak memory and time ------------------------------------------------------------------------------


def _vm_hwm() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # 5: reset the peak RSS to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _ru_maxrss() -> int:
    import resource
    import sys

    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


class JobClock:
    """The seconds and this process's peak memory of one job, from its start."""

    def __init__(self) -> None:
        self._exact = _reset_hwm() and _vm_hwm() is not None
        self._t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._t0

    def peak_bytes(self) -> int:
        if self._exact:
            hwm = _vm_hwm()
            if hwm is not None:
                return hwm
        return _ru_maxrss()


# -- sinks ---------------------------------------------------------------------------------------------

_sinks: list[Callable[[JobRun], None]] = []
_sinks_lock = threading.Lock()


@contextlib.contextmanager
def sink(forward: Callable[[JobRun], None]) -> Iterator[None]:
    """Also hand every JobRun recorded meanwhile to `forward` (nightshift_airflow: Airflow's metrics)."""
    with _sinks_lock:
        _sinks.append(forward)
    try:
        yield
    finally:
        with _sinks_lock:
            _sinks.remove(forward)


# -- recording -----------------------------------------------------------------------------------------


def record_job(settings: MetricsSettings, run: JobRun) -> None:
    """Write `run` wherever metrics are configured. Never raises: a failure is a warning."""
    log.info(
        "%s %s v%s ds=%s %s: %s rows in %.2fs (%s rows/s), peak memory %.0f MiB%s",
        run.job_type,
        run.model,
        run.version if run.version is not None else "-",
        run.ds or "-",
        "ok" if run.ok else "FAILED",
        f"{run.rows:,}",
        run.seconds,
        f"{run.rows_per_second:,.0f}",
        run.peak_memory_bytes / 2**20,
        f" (workers {run.worker_peak_memory_bytes / 2**20:.0f} MiB)" if run.worker_peak_memory_bytes else "",
    )
    if settings.textfile_dir:
        try:
            write_textfile(Path(settings.textfile_dir), run)
        except Exception as exc:  # noqa: BLE001 - metrics never fail a run
            log.warning("could not write the job metrics textfile in %s: %s", settings.textfile_dir, exc)
    if settings.pushgateway_url:
        try:
            push(settings.pushgateway_url, run, settings.timeout_s)
        except Exception as exc:  # noqa: BLE001 - metrics never fail a run
            log.warning("could not push the job metrics to %s: %s", settings.pushgateway_url, exc)
    with _sinks_lock:
        sinks = list(_sinks)
    for forward in sinks:
        try:
            forward(run)
        except Exception as exc:  # noqa: BLE001 - metrics never fail a run
            log.warning("a job metrics sink failed: %s", exc)


def _values(run: JobRun, last_success: float | None) -> dict[str, float]:
    values = {
        "rows": float(run.rows),
        "duration_seconds": float(run.seconds),
        "rows_per_second": float(run.rows_per_second),
        "success": 1.0 if run.ok else 0.0,
        "last_run_timestamp_seconds": run.finished_at,
    }
    if run.ds is not None:
        values["partition_timestamp_seconds"] = datetime(run.ds.year, run.ds.month, run.ds.day, tzinfo=UTC).timestamp()
    success = run.finished_at if run.ok else last_success
    if success is not None:
        values["last_success_timestamp_seconds"] = success
    return values


def _registry(samples: list[tuple[dict[str, str], dict[str, float], dict[str, int]]], grouped: bool) -> Any:
    """A prometheus_client registry holding each (labels, values, peaks) triple; `grouped`: the labels come from
    a Pushgateway's grouping key, so the series carry only `process`."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    names = () if grouped else LABELS
    gauges = {
        name: Gauge(
            PREFIX + name, text, [*names, "process"] if name == "peak_memory_bytes" else names, registry=registry
        )
        for name, text in SERIES.items()
    }
    for labels, values, peaks in samples:
        own = {k: labels[k] for k in names}
        for name, value in values.items():
            (gauges[name].labels(**own) if own else gauges[name]).set(value)
        for process, peak in peaks.items():
            gauges["peak_memory_bytes"].labels(**own, process=process).set(peak)
    return registry


def _peaks(run: JobRun) -> dict[str, int]:
    peaks = {"driver": int(run.peak_memory_bytes)}
    if run.worker_peak_memory_bytes:
        peaks["workers"] = int(run.worker_peak_memory_bytes)
    return peaks


def textfile_path(folder: Path, job_type: str, model: str) -> Path:
    return folder / f"nightshift_{_NAME.sub('_', job_type)}_{_NAME.sub('_', model)}.prom"


def read_textfile(path: Path) -> dict[str, tuple[dict[str, str], dict[str, float], dict[str, int]]]:
    """version → (labels, values, peaks) of a textfile this module wrote; {} when there is none."""
    from prometheus_client.parser import text_string_to_metric_families

    if not path.exists():
        return {}
    out: dict[str, tuple[dict[str, str], dict[str, float], dict[str, int]]] = {}
    for family in text_string_to_metric_families(path.read_text()):
        name = family.name.removeprefix(PREFIX)
        for sample in family.samples:
            labels = dict(sample.labels)
            version = labels.get("version", "")
            entry = out.setdefault(version, ({k: labels.get(k, "") for k in LABELS}, {}, {}))
            if name == "peak_memory_bytes":
                entry[2][labels.get("process", "driver")] = int(sample.value)
            elif name in SERIES:
                entry[1][name] = float(sample.value)
    return out


def write_textfile(folder: Path, run: JobRun) -> Path:
    """Merge `run` into its job type's and model's textfile (replacing its version's series) atomically."""
    from filelock import FileLock
    from prometheus_client import write_to_textfile

    folder.mkdir(parents=True, exist_ok=True)
    path = textfile_path(folder, run.job_type, run.model)
    with FileLock(str(path) + ".lock", timeout=30):
        existing = read_textfile(path)
        mine = run.labels["version"]
        previous = existing.pop(mine, None)
        last_success = previous[1].get("last_success_timestamp_seconds") if previous else None
        horizon = run.finished_at - RETAIN_DAYS * 86400
        kept = [e for e in existing.values() if e[1].get("last_run_timestamp_seconds", 0.0) >= horizon]
        samples = [*kept, (run.labels, _values(run, last_success), _peaks(run))]
        samples.sort(key=lambda e: (len(e[0]["version"]), e[0]["version"]))
        write_to_textfile(str(path), _registry(samples, grouped=False))
        os.chmod(path, 0o644)  # the collector may run as another user
    return path


def push(url: str, run: JobRun, timeout_s: float) -> None:
    """PUT the run's metrics to a Pushgateway, replacing its group (job=nightshift, job_type, model, version)."""
    from prometheus_client import push_to_gateway

    registry = _registry([(run.labels, _values(run, None), _peaks(run))], grouped=True)
    push_to_gateway(url, job="nightshift", registry=registry, grouping_key=run.labels, timeout=timeout_s)
