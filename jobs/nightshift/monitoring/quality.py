"""The model's quality on a day once its labels arrive: committed predictions joined with the labels partition."""

from __future__ import annotations

import math
import time
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nightshift.config import Settings
from nightshift.db.store import Store
from nightshift.errors import ConfigError, PartitionNotReady
from nightshift.monitoring.checks import FAIL, INSUFFICIENT, PASS, Check, verdict
from nightshift.monitoring.profile import file_rows
from nightshift.monitoring.results import MonitorResult, save_result
from nightshift.monitoring.runner import _alert, _resolve, committed_rows, require_monitoring
from nightshift.monitoring.sampling import HashSampler, SamplePolicy
from nightshift.monitoring.stats import label_metrics


def _bound_check(
    kind: str, value: float, n: int, *, low: float | None = None, high: float | None = None, detail: dict[str, Any]
) -> Check:
    if not math.isfinite(value):
        return Check(kind, None, kind, None, low if high is None else high, INSUFFICIENT, n, False, detail=detail)
    if low is not None:
        return Check(kind, None, kind, value, low, PASS if value >= low else FAIL, n, False, detail=detail)
    if high is not None:
        return Check(kind, None, kind, value, high, PASS if value <= high else FAIL, n, False, detail=detail)
    return Check(kind, None, kind, value, None, PASS, n, False, detail={**detail, "informational": True})


def label_quality(
    settings: Settings,
    model: str,
    ds: date,
    *,
    version: int | None = None,
    store: Store | None = None,
    alert: bool = True,
) -> MonitorResult:
    """ROC AUC, log loss, precision and recall (at the committed decisions), base rate and n for one ds.

    Joins the committed predictions of (model, version, ds) with the labels partition of ds
    (hash-sampled to `monitoring.label_rows` entities), checks the quality thresholds, stores the
    result as kind 'quality' (it counts towards the retraining decision) and alerts on failure.
    Raises PartitionNotReady while the labels (or the predictions) are not there.
    """
    from nightshift.data import list_partition_files, open_parquet

    t0 = time.perf_counter()
    require_monitoring(settings, model)
    cfg = settings.model(model)
    mon = cfg.monitoring
    labels_root = cfg.labels_uri(settings)
    if labels_root is None:
        raise ConfigError(f"model {model!r} declares no labels location: its quality cannot be measured")
    own_store = store is None
    if store is None:
        from nightshift.db import open_store

        store = open_store(settings)
    try:
        mv = _resolve(settings, store, model, version)
        part = store.partition(model, mv.version, ds)
        if part is None:
            raise PartitionNotReady(f"model {model!r} v{mv.version} has no committed partition for ds={ds}")
        files = list_partition_files(labels_root, cfg.partition_key, ds, cfg.success_marker)
        eid, label_col = cfg.contract.entity_id, cfg.label_column
        sampler = HashSampler(mon.label_rows, file_rows(files), mon.sample_seed)
        for uri in files:
            for batch in open_parquet(uri).iter_batches(batch_size=65_536, columns=[eid, label_col]):
                sampler.offer(batch, batch.column(eid))
        labels, _ = sampler.finish(
            pa.schema(
                [
                    pa.field(eid, pa.int64() if cfg.contract.entity_id_type == "int64" else pa.string()),
                    pa.field(label_col, pa.int8()),
                ]
            )
        )
        labels = labels.filter(pc.is_valid(labels.column(label_col))) if labels.num_rows else labels
        ids = pc.cast(labels.column(eid), pa.string()) if labels.num_rows else pa.array([], pa.string())
        got = committed_rows(
            store,
            part.run_id,
            ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids,
            columns=("score", "label"),
        )
        truth = pa.table({"entity_id": ids, "truth": pc.cast(labels.column(label_col), pa.int8())})
        joined = got.join(truth, keys="entity_id", join_type="inner")
        n = joined.num_rows
        policy = SamplePolicy(cap=mon.label_rows, seed=mon.sample_seed, key=eid)
        checks: list[Check] = [
            Check(
                "labelled_rows",
                None,
                "n",
                float(n),
                float(mon.min_labelled_rows),
                PASS if n >= mon.min_labelled_rows else INSUFFICIENT,
                n,
                labels.num_rows < sampler.seen,
                detail={"labels": labels.num_rows, "without_prediction": labels.num_rows - n}
                | (
                    {}
                    if n >= mon.min_labelled_rows
                    else {"reason": f"{n} labelled row(s), need {mon.min_labelled_rows}"}
                ),
            )
        ]
        metrics: dict[str, Any] = {"n": n}
        if n >= mon.min_labelled_rows:
            y = np.asarray(joined.column("truth").to_numpy(zero_copy_only=False))
            p = np.asarray(joined.column("score").to_numpy(zero_copy_only=False), dtype=np.float64)
            pred = np.asarray(joined.column("label").to_numpy(zero_copy_only=False))
            metrics = label_metrics(y, p, pred)
            trained = mv.metrics or {}
            auc_bounds = [b for b in (mon.min_roc_auc,) if b is not None]
            val_auc = trained.get("roc_auc")
            if mon.max_roc_auc_drop is not None and isinstance(val_auc, int | float) and math.isfinite(val_auc):
                auc_bounds.append(float(val_auc) - mon.max_roc_auc_drop)
            sampled = labels.num_rows < sampler.seen
            base = {"validation": val_auc}
            checks += [
                _bound_check(
                    "roc_auc",
                    metrics["roc_auc"],
                    n,
                    low=max(auc_bounds) if auc_bounds else None,
                    detail=base | ({"reason": "one class only"} if not math.isfinite(metrics["roc_auc"]) else {}),
                ),
                _bound_check(
                    "log_loss",
                    metrics["log_loss"],
                    n,
                    high=mon.max_log_loss,
                    detail={"validation": trained.get("log_loss")},
                ),
                _bound_check(
                    "precision",
                    metrics["precision"],
                    n,
                    low=mon.min_precision,
                    detail={"validation": trained.get("precision"), "threshold": mv.decision_threshold},
                ),
                _bound_check(
                    "recall",
                    metrics["recall"],
                    n,
                    low=mon.min_recall,
                    detail={"validation": trained.get("recall"), "threshold": mv.decision_threshold},
                ),
                _bound_check("base_rate", metrics["base_rate"], n, detail={"training": trained.get("base_rate")}),
            ]
            for c in checks:
                c.sampled = sampled
        status = verdict(checks)
        result = MonitorResult(
            model=model,
            version=mv.version,
            ds=ds,
            kind="quality",
            status=status,
            checks=checks,
            rows=sampler.seen,
            sampled_rows=n,
            summary={
                "status": status,
                "metrics": metrics,
                "validation_metrics": {k: (mv.metrics or {}).get(k) for k in ("roc_auc", "log_loss", "base_rate")},
                "failed": [c.describe() for c in checks if c.failing],
                "sample": policy.describe(sampler.seen, labels.num_rows),
                "decision_threshold": mv.decision_threshold,
            },
            run_id=part.run_id,
        )
        result.seconds = time.perf_counter() - t0
        save_result(store, result)
        if alert:
            _alert(settings, result)
        return result
    finally:
        if own_store:
            store.dispose()
