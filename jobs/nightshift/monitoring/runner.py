"""The nightly entry point: monitor one committed (model, ds), store the verdict, write the report, alert."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from nightshift.config import ModelSettings, Settings
from nightshift.db import schema
from nightshift.db.store import PartitionInfo, Store
from nightshift.errors import NightshiftError, PartitionNotReady
from nightshift.models.registry import ModelVersion
from nightshift.monitoring.checks import FAIL, INSUFFICIENT, Check, run_checks, verdict
from nightshift.monitoring.profile import PartitionProfile, profile_files
from nightshift.monitoring.reference import Reference, ensure_reference
from nightshift.monitoring.report import (
    ReportHeader,
    load_report_sample,
    report_sample,
    report_sample_uri,
    save_report_sample,
    write_report,
)
from nightshift.monitoring.results import MonitorResult, checks_of, history, save_result, set_report_uri

log = logging.getLogger(__name__)

#: Entity ids per `IN (...)` query when fetching committed rows of the sample.
_IN_CHUNK = {"sqlite": 900, "postgresql": 5000}


def committed_rows(store: Store, run_id: int, ids: pa.Array, columns: tuple[str, ...] = ("score",)) -> pa.Table:
    """The committed rows (entity_id + `columns`) of some ids of a run, by primary key: O(len(ids)), not O(run)."""
    p = schema.predictions
    wanted = pc.cast(ids, pa.string()).to_pylist()
    step = _IN_CHUNK.get(store.dialect, 900)
    cols = [p.c.entity_id, *(p.c[c] for c in columns)]
    found: list[list[Any]] = [[] for _ in cols]
    with store.connect() as conn:
        for start in range(0, len(wanted), step):
            chunk = wanted[start : start + step]
            for row in conn.execute(sa.select(*cols).where(p.c.run_id == run_id, p.c.entity_id.in_(chunk))):
                for i, v in enumerate(row):
                    found[i].append(v)
    return pa.table({"entity_id": pa.array(found[0], pa.string()), **{c: found[i + 1] for i, c in enumerate(columns)}})


def aligned_scores(store: Store, run_id: int, ids: pa.Array) -> np.ndarray:
    """Committed scores of `ids`, in their order, NaN for an id without a committed row."""
    return aligned_predictions(store, run_id, ids)[0]


def aligned_predictions(
    store: Store, run_id: int, ids: pa.Array, *, labels: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Committed (scores, and with `labels` the predicted classes) of `ids`, in their order; NaN / -1 for an id
    without a committed row."""
    got = committed_rows(store, run_id, ids, ("score", "label") if labels else ("score",))
    key = pc.cast(ids, pa.string())
    index = pc.index_in(key, value_set=got.column("entity_id")).fill_null(-1).to_numpy(zero_copy_only=False)
    scores = np.asarray(got.column("score").to_numpy(zero_copy_only=False), dtype=np.float64)
    out = np.full(len(key), np.nan)
    hit = index >= 0
    out[hit] = scores[index[hit]]
    if not labels:
        return out, None
    found = np.asarray([-1 if v is None else int(v) for v in got.column("label").to_pylist()], dtype=np.int64)
    classes = np.full(len(key), -1, dtype=np.int64)
    classes[hit] = found[index[hit]]
    return out, classes


def volume_history(store: Store, model: str, ds: date, days: int) -> list[int]:
    """Committed row counts of the model's `days` newest days before `ds` (newest first; any version)."""
    p = schema.partitions
    q = (
        sa.select(p.c.ds, sa.func.max(p.c.row_count))
        .where(p.c.model == model, p.c.status == "committed", p.c.ds < ds)
        .group_by(p.c.ds)
        .order_by(p.c.ds.desc())
        .limit(days)
    )
    with store.connect() as conn:
        return [int(n) for _d, n in conn.execute(q)]


def _resolve(settings: Settings, store: Store, model: str, version: int | None) -> ModelVersion:
    from nightshift.models.registry import Registry

    return Registry(store, settings.artifacts_uri).resolve(model, version=version)


def _alert(settings: Settings, result: MonitorResult) -> None:
    from nightshift.notify import notify

    if result.status == FAIL:
        failed = result.failed
        shown = "; ".join(c.describe() for c in failed[:8]) + (f"; … {len(failed) - 8} more" if len(failed) > 8 else "")
        notify(
            settings,
            "monitoring_failed" if result.kind == "data" else "label_quality_failed",
            f"{result.model} v{result.version} ds={result.ds}: {len(failed)} check(s) failed: {shown}",
            model=result.model,
            version=result.version,
            ds=result.ds,
            kind=result.kind,
            failed=[c.as_dict() for c in failed],
            report_uri=result.report_uri,
        )
    elif result.status == INSUFFICIENT:
        notify(
            settings,
            "monitoring_insufficient_data",
            f"{result.model} v{result.version} ds={result.ds}: not enough data to judge {result.kind} "
            f"({result.sampled_rows} sampled row(s))",
            model=result.model,
            version=result.version,
            ds=result.ds,
            kind=result.kind,
        )


@dataclass
class _Night:
    """Everything one night's checks and report are computed from."""

    cfg: ModelSettings
    mv: ModelVersion
    part: PartitionInfo
    reference: Reference
    profile: PartitionProfile
    scores: np.ndarray
    history: list[int]
    timings: dict[str, float]
    #: A multiclass version's committed predicted classes (aligned with the sample), else None.
    labels: np.ndarray | None = None


def _gather(settings: Settings, store: Store, model: str, ds: date, version: int | None) -> _Night:
    from nightshift.data import inspect_partition

    t0 = time.perf_counter()
    cfg = settings.model(model)
    mon = cfg.monitoring
    mv = _resolve(settings, store, model, version)
    part = store.partition(model, mv.version, ds)
    if part is None:
        raise PartitionNotReady(f"model {model!r} v{mv.version} has no committed partition for ds={ds}")
    reference = ensure_reference(settings, mv)
    if mon.seasonality == "weekly":  # the night against the reference days of its own weekday
        from nightshift.monitoring.seasonal import weekday_reference

        reference = weekday_reference(settings, mv, ds, reference)
    t_ref = time.perf_counter()
    features = inspect_partition(cfg.dataset_uri(settings), cfg.partition_key, ds, cfg.contract, cfg.success_marker)
    profile = profile_files([f.uri for f in features.files], cfg.contract, cap=mon.sample_rows, seed=mon.sample_seed)
    t_profile = time.perf_counter()
    scores, labels = aligned_predictions(
        store, part.run_id, profile.sample.column(cfg.contract.entity_id), labels=mv.task == "multiclass"
    )
    history = volume_history(store, model, ds, mon.volume_window_days)
    t_scores = time.perf_counter()
    timings = {
        "reference_s": round(t_ref - t0, 4),
        "profile_s": round(t_profile - t_ref, 4),
        "scores_s": round(t_scores - t_profile, 4),
    }
    return _Night(cfg, mv, part, reference, profile, scores, history, timings, labels)


def _open(settings: Settings, store: Store | None) -> tuple[Store, bool]:
    if store is not None:
        return store, False
    from nightshift.db import open_store

    return open_store(settings), True


def monitor_partition(
    settings: Settings,
    model: str,
    ds: date,
    *,
    version: int | None = None,
    store: Store | None = None,
    report: bool | None = None,
    alert: bool = True,
) -> MonitorResult:
    """Check one committed (model, version, ds): data quality on every row, drift of features and scores on
    the hash sample against the version's reference; store the result, write the HTML report, alert on failure.

    `version` defaults to the champion; `report` to `monitoring.report` (False leaves the HTML to
    `report_partition`, e.g. a separate Airflow task). Raises PartitionNotReady when that version has no
    committed partition for `ds`. Monitoring the same partition again replaces its stored result.
    """
    t0 = time.perf_counter()
    require_monitoring(settings, model)
    store, own_store = _open(settings, store)
    try:
        night = _gather(settings, store, model, ds, version)
        cfg, mon = night.cfg, night.cfg.monitoring
        t_checks0 = time.perf_counter()
        checks = run_checks(
            night.profile,
            night.reference,
            cfg,
            current_scores=night.scores,
            volume_history=night.history,
            current_labels=night.labels,
        )
        status = verdict(checks)
        t_checks = time.perf_counter()
        report_at: str | None = None
        report_error: str | None = None
        sample_at: dict[str, Any] | None = None
        if night.profile.sampled_rows == 0:
            if mon.report if report is None else report:
                report_error = "no rows: nothing to report"
        else:
            # The report's rows are kept beside the report, so the report (here or as its own task,
            # `report_partition`) is built from what monitoring computed and never reads the partition again.
            current = report_sample(cfg, night.profile, night.scores)
            header = _header(night, status, checks, current.num_rows)
            try:
                sample_at = _save_sample(settings, night, ds, current)
            except Exception as exc:  # noqa: BLE001 - the report task then rebuilds it from the partition
                log.error("report sample of %s v%s ds=%s not saved: %s", model, night.mv.version, ds, exc)
            if mon.report if report is None else report:
                try:
                    report_at = write_report(
                        settings, cfg, night.mv.version, ds, current, night.reference, checks, header
                    )
                except Exception as exc:  # noqa: BLE001 - the verdict stands without its illustration
                    report_error = f"{type(exc).__name__}: {exc}"
                    log.error("monitoring report of %s v%s ds=%s failed: %s", model, night.mv.version, ds, report_error)
        t_report = time.perf_counter()
        drift = next((c for c in checks if c.kind == "dataset_drift"), None)
        reference = night.reference
        summary: dict[str, Any] = {
            "status": status,
            "failed": [c.describe() for c in checks if c.failing],
            "warnings": [c.describe() for c in checks if c.status == FAIL and not c.failing],
            "insufficient": [c.describe() for c in checks if c.status == INSUFFICIENT],
            "drifted_columns": (drift.detail.get("drifted", []) if drift else []),
            "drifted_share": drift.value if drift else None,
            "sample": night.profile.sample_info(),
            "committed_rows": night.part.row_count,
            "missing_scores": int(np.isnan(night.scores).sum()),
            "reference": {
                "uri": reference.uri,
                "rows": reference.stats.get("rows"),
                "sampled_rows": reference.sample.num_rows,
                "partitions": [p.get("ds") for p in reference.partitions],
            },
            "report_rows": min(mon.report_rows, night.profile.sampled_rows),
            "report_sample": sample_at,
            "report_error": report_error,
            "timings": {
                **night.timings,
                "checks_s": round(t_checks - t_checks0, 4),
                "report_s": round(t_report - t_checks, 4),
            },
        }
        result = MonitorResult(
            model=model,
            version=night.mv.version,
            ds=ds,
            kind="data",
            status=status,
            checks=checks,
            rows=night.profile.rows,
            sampled_rows=night.profile.sampled_rows,
            summary=summary,
            report_uri=report_at,
            run_id=night.part.run_id,
        )
        result.seconds = time.perf_counter() - t0
        summary["timings"]["total_s"] = round(result.seconds, 4)
        save_result(store, result)
        if alert:
            _alert(settings, result)
        return result
    finally:
        if own_store:
            store.dispose()


def _header(night: _Night, status: str, checks: list[Check], sample_rows: int) -> ReportHeader:
    return ReportHeader(
        model=night.cfg.name,
        version=night.mv.version,
        ds=night.part.ds,
        status=status,
        checks=checks,
        sample_rows=sample_rows,
        scored_rows=night.part.row_count,
        drift_sample_rows=night.profile.sampled_rows,
        run_id=night.part.run_id,
        reference_rows=night.reference.stats.get("rows"),
    )


def _save_sample(settings: Settings, night: _Night, ds: date, current: pa.Table) -> dict[str, Any]:
    """Keep the report's rows beside the report; what the stored result records about them."""
    uri = report_sample_uri(settings, night.cfg.name, night.mv.version, ds)
    token = uuid.uuid4().hex  # ties the file to this monitoring run (a later run rewrites both)
    meta = {
        "token": token,
        "run_id": night.part.run_id,
        "rows": current.num_rows,
        "scored_rows": night.part.row_count,
        "drift_sample_rows": night.profile.sampled_rows,
        "reference_rows": night.reference.stats.get("rows"),
    }
    save_report_sample(uri, current, meta)
    return {"uri": uri, **meta}


def _check(row: dict[str, Any]) -> Check:
    return Check(
        kind=row["kind"],
        column=row["column_name"],
        statistic=row["statistic"],
        value=row["value"],
        threshold=row["threshold"],
        status=row["status"],
        rows=int(row["rows"] or 0),
        sampled=bool(row["sampled"]),
        severity=row["severity"] or "fail",
        detail=row["detail"] or {},
    )


def _stored_night(
    settings: Settings, store: Store, model: str, mv: ModelVersion, ds: date
) -> tuple[pa.Table, Reference, ReportHeader] | str:
    """What monitoring stored for a night: the report's rows, the reference, the verdict and checks; else why not."""
    from nightshift.monitoring.reference import load_reference

    runs = history(store, model, kind="data", version=mv.version, since=ds, until=ds, limit=1)
    if not runs:
        return "the night was not monitored"
    run = runs[0]
    info = (run.get("summary") or {}).get("report_sample")
    if not info:
        return "monitoring kept no report sample (monitored before it did, or the sample failed to save)"
    loaded = load_report_sample(info["uri"])
    if loaded is None or loaded[1].get("token") != info.get("token"):
        return f"the report sample {info['uri']} is missing or belongs to another monitoring run"
    part = store.partition(model, mv.version, ds)
    if part is None or part.run_id != run.get("run_id"):
        return "the partition was committed again after it was monitored"
    reference = load_reference(mv)
    if reference is None:
        return "the version's reference is not stored"
    current, meta = loaded
    header = ReportHeader(
        model=model,
        version=mv.version,
        ds=ds,
        status=run["status"],
        checks=[_check(c) for c in checks_of(store, int(run["monitor_id"]))],
        sample_rows=current.num_rows,
        scored_rows=meta.get("scored_rows"),
        drift_sample_rows=meta.get("drift_sample_rows"),
        run_id=meta.get("run_id"),
        reference_rows=meta.get("reference_rows"),
    )
    return current, reference, header


def report_partition(
    settings: Settings, model: str, ds: date, *, version: int | None = None, store: Store | None = None
) -> str:
    """Write the Evidently HTML report of a monitored (model, version, ds) and record its URI on the stored result.

    Built from what `monitor_partition` computed and stored: the report's rows of the drift
    sample (kept beside the report, ≤ `report_rows`), the stored verdict and checks, and the
    version's reference. It reads no feature file. Only a night monitored without its sample (by
    an older version, or re-committed since) is rebuilt from the partition, as monitoring would.
    """
    require_monitoring(settings, model)
    store, own_store = _open(settings, store)
    try:
        mv = _resolve(settings, store, model, version)
        stored = _stored_night(settings, store, model, mv, ds)
        if isinstance(stored, str):
            log.warning("report of %s v%s ds=%s: %s; reading the partition again", model, mv.version, ds, stored)
            night = _gather(settings, store, model, ds, mv.version)
            checks = run_checks(
                night.profile,
                night.reference,
                night.cfg,
                current_scores=night.scores,
                volume_history=night.history,
                current_labels=night.labels,
            )
            current = report_sample(night.cfg, night.profile, night.scores)
            header = _header(night, verdict(checks), checks, current.num_rows)
            reference = night.reference
        else:
            current, reference, header = stored
            checks = header.checks
        uri = write_report(settings, settings.model(model), mv.version, ds, current, reference, checks, header)
        set_report_uri(store, model, mv.version, ds, "data", uri)
        return uri
    finally:
        if own_store:
            store.dispose()


def require_monitoring(settings: Settings, model: str) -> None:
    """Raise NightshiftError when monitoring is switched off for the model."""
    if not settings.model(model).monitoring.enabled:
        raise NightshiftError(f"monitoring of model {model!r} is disabled (monitoring.enabled = false)")
