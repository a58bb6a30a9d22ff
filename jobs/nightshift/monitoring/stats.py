"""Drift distances (the same formulas as Evidently's stattests, in plain numpy) and label-quality metrics.

Numeric columns: the Wasserstein-1 distance divided by the reference's standard deviation
(Evidently's "wasserstein", normed so one threshold fits every column's unit). Categorical
columns: the Jensen-Shannon distance (natural log, so 0 ≤ JS ≤ √ln2 ≈ 0.83) between the
category shares. PSI is offered for both. Distances, not p-values: at a million rows a
KS or chi² test rejects for differences nobody would act on (KS flags 7 of 33 undrifted
columns at 1M rows in the benchmarks); a distance grows with the size of the change, not with n.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: The statistic name stored per method.
STATISTIC = {"wasserstein": "wasserstein_normed", "jensenshannon": "jensenshannon", "psi": "psi"}
#: Numeric columns with at most this many distinct reference values are binned by value (Evidently's rule).
DISCRETE_MAX_VALUES = 20


def finite(values: np.ndarray) -> np.ndarray:
    """The values without NaN and ±inf (what Evidently drops before a drift test)."""
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def wasserstein_normed(reference: np.ndarray, current: np.ndarray) -> float:
    """W1(reference, current) / max(std(reference), 0.001); both arrays finite, non-empty."""
    norm = max(float(np.std(reference)), 0.001)
    u = np.sort(reference)
    v = np.sort(current)
    grid = np.concatenate([u, v])
    grid.sort(kind="mergesort")
    deltas = np.diff(grid)
    cdf_u = np.searchsorted(u, grid[:-1], side="right") / u.size
    cdf_v = np.searchsorted(v, grid[:-1], side="right") / v.size
    return float(np.sum(np.abs(cdf_u - cdf_v) * deltas)) / norm


def _fill_zeroes(p: np.ndarray) -> np.ndarray:
    # Evidently's PSI replaces empty bins by a small share, so log(p/q) stays finite.
    nonzero = p[p != 0]
    if nonzero.size == 0:
        return p
    small = nonzero.min() / 10**6 if nonzero.min() <= 0.0001 else 0.0001
    return np.where(p == 0, small, p)


def numeric_shares(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shares per bin: Sturges bins over both samples, or per value when the reference has ≤ 20 values."""
    ref_values = np.unique(reference)
    if ref_values.size > DISCRETE_MAX_VALUES:
        edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")
        return np.histogram(reference, edges)[0] / reference.size, np.histogram(current, edges)[0] / current.size
    keys = np.union1d(ref_values, np.unique(current))
    ref_counts = np.zeros(keys.size)
    cur_counts = np.zeros(keys.size)
    values, counts = np.unique(reference, return_counts=True)
    ref_counts[np.searchsorted(keys, values)] = counts
    values, counts = np.unique(current, return_counts=True)
    cur_counts[np.searchsorted(keys, values)] = counts
    return ref_counts / reference.size, cur_counts / current.size


def category_shares(reference: dict[str, int], current: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Shares of each category seen in either (nulls excluded), aligned."""
    keys = sorted(set(reference) | set(current))
    ref_n = sum(reference.values()) or 1
    cur_n = sum(current.values()) or 1
    return (
        np.array([reference.get(k, 0) / ref_n for k in keys], dtype=np.float64),
        np.array([current.get(k, 0) / cur_n for k in keys], dtype=np.float64),
    )


def jensenshannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (natural log) between two share vectors (scipy's definition)."""
    p = p / p.sum()
    q = q / q.sum()
    m = (p + q) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(p > 0, p * np.log(p / m), 0.0)
        right = np.where(q > 0, q * np.log(q / m), 0.0)
    js = (left.sum() + right.sum()) / 2.0
    return float(math.sqrt(max(js, 0.0)))


def psi(p: np.ndarray, q: np.ndarray) -> float:
    """Population stability index between reference shares p and current shares q."""
    p, q = _fill_zeroes(p), _fill_zeroes(q)
    return float(np.sum((p - q) * np.log(p / q)))


def numeric_distance(method: str, reference: np.ndarray, current: np.ndarray) -> float:
    """The drift distance of a numeric column (finite values only)."""
    if method == "wasserstein":
        return wasserstein_normed(reference, current)
    p, q = numeric_shares(reference, current)
    return jensenshannon(p, q) if method == "jensenshannon" else psi(p, q)


def categorical_distance(method: str, reference: dict[str, int], current: dict[str, int]) -> float:
    """The drift distance of a categorical column from category counts."""
    p, q = category_shares(reference, current)
    if method == "psi":
        return psi(p, q)
    if method == "jensenshannon":
        return jensenshannon(p, q)
    raise ValueError(f"drift method {method!r} does not apply to a categorical column")


# -- label quality --------------------------------------------------------------------------


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN with one class."""
    from scipy.stats import rankdata

    y = np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def label_metrics(labels: np.ndarray, scores: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """ROC AUC, log loss, accuracy, precision and recall of the committed labels, base rate and n."""
    y = np.asarray(labels).astype(np.int64)
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-15, 1 - 1e-15)
    pred = np.asarray(predicted).astype(np.int64)
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    n = int(y.size)
    return {
        "n": n,
        "roc_auc": roc_auc(y, p),
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if n else float("nan"),
        "accuracy": float((pred == y).mean()) if n else float("nan"),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "base_rate": float(y.mean()) if n else float("nan"),
        "positive_rate": float(pred.mean()) if n else float("nan"),
    }
