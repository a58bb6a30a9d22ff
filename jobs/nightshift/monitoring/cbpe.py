"""Performance before labels arrive: confidence-based performance estimation (CBPE) from calibrated probabilities.

For a calibrated binary classifier, P(y = 1 | score s) = s, so every metric built from the confusion
matrix has an expectation computable from the scores alone (NannyML's CBPE, Kaminski 2022):

* accuracy: mean over entities of s (predicted 1) or 1 - s (predicted 0); precision, recall and F1
  from the expected TP = sum(s | predicted 1), FP = sum(1 - s | predicted 1), FN = sum(s | predicted 0);
* ROC AUC: the expected number of concordant (positive, negative) pairs over the expected number of
  pairs, sum_{i != j} s_i (1 - s_j) [s_i > s_j] (+ 1/2 for ties) / sum_{i != j} s_i (1 - s_j),
  computed in one sort (O(n log n)).

A multiclass classifier's expected accuracy is the mean probability of its predicted class. What is
not estimable: a regression's error (RMSE, MAE) needs a model of the residuals (NannyML's direct
loss estimation trains one on labelled reference data); nightshift does not estimate it and says so.
The estimate is only as good as the calibration: it is compared with the realized value once the
labels land (`label_quality` stores the error as a check), which is how a calibration gone stale shows.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

import numpy as np
import sqlalchemy as sa

from nightshift.config import Settings
from nightshift.db import schema
from nightshift.db.engine import utcnow
from nightshift.db.store import Store
from nightshift.errors import PartitionNotReady
from nightshift.monitoring.checks import INSUFFICIENT, PASS

METHOD = "CBPE"
#: The metrics estimated per task.
ESTIMATED = {"binary": ("roc_auc", "accuracy", "precision", "recall", "f1"), "multiclass": ("accuracy",)}


def expected_roc_auc(scores: np.ndarray) -> float:
    """The expected ROC AUC of a calibrated classifier from its P(1) scores alone (ties count one half)."""
    p = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    if p.size < 2:
        return float("nan")
    q = 1.0 - p
    order = np.argsort(p, kind="mergesort")
    ps, qs = p[order], q[order]
    # Group equal scores: the negatives strictly below each score, and the negatives tied with it.
    _, start, counts = np.unique(ps, return_index=True, return_counts=True)
    neg_cum = np.concatenate([[0.0], np.cumsum(qs)])
    below = neg_cum[start]  # expected negatives with a strictly lower score
    tied = neg_cum[start + counts] - below  # expected negatives with the same score
    group = np.repeat(np.arange(len(start)), counts)
    # Each entity as the positive: negatives below, half the tied ones (itself excluded from the ties).
    concordant = ps * (below[group] + 0.5 * (tied[group] - qs))
    pairs = p.sum() * q.sum() - float((p * q).sum())
    return float(concordant.sum() / pairs) if pairs > 0 else float("nan")


def expected_binary_metrics(scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Expected ROC AUC, accuracy, precision, recall and F1 at `threshold`, expected base rate and n."""
    p = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    n = int(p.size)
    if n == 0:
        nan = float("nan")
        return {"roc_auc": nan, "accuracy": nan, "precision": nan, "recall": nan, "f1": nan, "n": 0.0}
    pred = p >= threshold
    tp = float(p[pred].sum())
    fp = float((1 - p[pred]).sum())
    fn = float(p[~pred].sum())
    tn = float((1 - p[~pred]).sum())
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    return {
        "roc_auc": expected_roc_auc(p),
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0,
        "base_rate": float(p.mean()),
        "positive_rate": float(pred.mean()),
        "n": float(n),
    }


def committed_scores(store: Store, run_id: int) -> np.ndarray:
    """Every committed score of a run (streamed; float32 in the store, float64 here)."""
    p = schema.predictions
    chunks: list[np.ndarray] = []
    with store.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=100_000).execute(
            sa.select(p.c.score).where(p.c.run_id == run_id)
        )
        for part in result.partitions(100_000):
            chunks.append(np.fromiter((r[0] for r in part), dtype=np.float64, count=len(part)))
    return np.concatenate(chunks) if chunks else np.zeros(0)


@dataclass
class Estimate:
    """The label-free estimate of (model, version, ds), as stored in `performance_estimates`."""

    model: str
    version: int
    ds: date
    task: str
    rows: int
    estimated: dict[str, Any]
    run_id: int | None = None
    method: str = METHOD
    reason: str | None = None
    seconds: float = 0.0

    @property
    def status(self) -> str:
        return INSUFFICIENT if self.reason or self.rows == 0 else PASS

    def as_dict(self) -> dict[str, Any]:
        from nightshift.jsonsafe import json_safe

        out = asdict(self)
        out["status"] = self.status
        return dict(json_safe(out))


def estimate_performance(
    settings: Settings, model: str, ds: date, *, version: int | None = None, store: Store | None = None
) -> Estimate:
    """The label-free estimate of a version's quality on `ds` from its committed scores, stored in
    `performance_estimates` (replacing an earlier one of the same day). It never fails a night; a
    regression is reported as not estimable (`reason`)."""
    from nightshift.monitoring.runner import _resolve

    t0 = time.perf_counter()
    own = store is None
    if store is None:
        from nightshift.db import open_store

        store = open_store(settings)
    try:
        mv = _resolve(settings, store, model, version)
        part = store.partition(model, mv.version, ds)
        if part is None:
            raise PartitionNotReady(f"model {model!r} v{mv.version} has no committed partition for ds={ds}")
        scores = committed_scores(store, part.run_id)
        n = int(scores.size)
        reason = None
        if mv.task == "binary":
            metrics: dict[str, Any] = expected_binary_metrics(scores, mv.decision_threshold)
        elif mv.task == "multiclass":
            metrics = {"accuracy": float(scores.mean()) if n else float("nan"), "n": float(n)}
        else:
            metrics = {"n": float(n)}
            reason = (
                "a regression's error is not estimable from its predictions alone (it needs a model of the "
                "residuals); only the prediction distribution is monitored"
            )
        estimate = Estimate(model, mv.version, ds, mv.task, n, metrics, part.run_id, reason=reason)
        estimate.seconds = time.perf_counter() - t0
        _save(store, estimate)
        return estimate
    finally:
        if own:
            store.dispose()


def _save(store: Store, estimate: Estimate) -> None:
    from nightshift.jsonsafe import json_safe

    t = schema.performance_estimates
    key = (t.c.model == estimate.model, t.c.version == estimate.version, t.c.ds == estimate.ds)
    with store.begin() as conn:
        conn.execute(t.delete().where(*key))
        conn.execute(
            t.insert().values(
                model=estimate.model,
                version=estimate.version,
                ds=estimate.ds,
                run_id=estimate.run_id,
                method=estimate.method,
                task=estimate.task,
                rows=estimate.rows,
                estimated=json_safe({**estimate.estimated, **({"reason": estimate.reason} if estimate.reason else {})}),
                created_at=utcnow(),
            )
        )


def stored_estimate(store: Store, model: str, version: int, ds: date) -> dict[str, Any] | None:
    """The stored estimate's metrics of (model, version, ds), if one was made."""
    t = schema.performance_estimates
    with store.connect() as conn:
        row = conn.execute(
            sa.select(t.c.estimated).where(t.c.model == model, t.c.version == version, t.c.ds == ds)
        ).first()
    if row is None or not isinstance(row.estimated, dict):
        return None
    return dict(row.estimated)


def record_realized(
    store: Store, model: str, version: int, ds: date, realized: dict[str, Any], error: dict[str, Any]
) -> None:
    """Once the labels landed: the realized metrics and the estimation error beside the estimate."""
    from nightshift.jsonsafe import json_safe

    t = schema.performance_estimates
    with store.begin() as conn:
        conn.execute(
            t.update()
            .where(t.c.model == model, t.c.version == version, t.c.ds == ds)
            .values(realized=json_safe(realized), error=json_safe(error), labelled_at=utcnow())
        )


def estimates(store: Store, model: str, *, version: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Stored estimates of a model, newest ds first: estimated, realized and error side by side."""
    from nightshift.db.engine import as_date

    t = schema.performance_estimates
    q = sa.select(t).where(t.c.model == model).order_by(t.c.ds.desc(), t.c.version.desc()).limit(limit)
    if version is not None:
        q = q.where(t.c.version == version)
    with store.connect() as conn:
        return [{**dict(r), "ds": as_date(r["ds"])} for r in conn.execute(q).mappings()]
