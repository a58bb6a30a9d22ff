"""The Evidently HTML report of a night (on a nested subsample) and the drift-history plot of a model."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import date
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa

from nightshift.config import ModelSettings, Settings
from nightshift.monitoring.checks import Check, ColumnRules, score_threshold, validate_columns
from nightshift.monitoring.profile import PartitionProfile
from nightshift.monitoring.reference import SCORE, Reference

log = logging.getLogger(__name__)

#: The score column's name in the report.
REPORT_SCORE = "model_score"


def report_uri(settings: Settings, model: str, version: int, ds: date, kind: str = "data") -> str:
    """Where the night's HTML report goes: <reports>/<model>/v<version>/ds=<ds>/<kind>.html."""
    return f"{settings.reports_uri.rstrip('/')}/{model}/v{version}/ds={ds.isoformat()}/{kind}.html"


def _frame(table: pa.Table, columns: list[str], scores: np.ndarray | None) -> Any:
    frame = table.select(columns).to_pandas()
    if scores is not None:
        frame[REPORT_SCORE] = scores
    return frame


def _usable(frame: Any, column: str) -> bool:
    # Evidently raises on a column without a single value; such a column is reported by our checks.
    return bool(frame[column].notna().any())


def build_report(
    cfg: ModelSettings,
    profile: PartitionProfile,
    current_scores: np.ndarray | None,
    reference: Reference,
    checks: Sequence[Check],
) -> Any:
    """An Evidently snapshot: drift (same statistics and thresholds as the checks) and quality, on report_rows rows."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import (
        DriftedColumnsCount,
        MissingValueCount,
        OutListValueCount,
        OutRangeValueCount,
        RowCount,
        ValueDrift,
    )
    from evidently.tests import lte

    mon = cfg.monitoring
    rules: dict[str, ColumnRules] = validate_columns(cfg)
    n = mon.report_rows
    features = cfg.contract.feature_names
    # Both samples are sorted by entity hash: their first n rows are the same policy's smaller sample.
    cur = _frame(profile.sample.slice(0, n), features, None if current_scores is None else current_scores[:n])
    ref = _frame(
        reference.sample.slice(0, n),
        features,
        None if current_scores is None else reference.sample.column(SCORE).to_numpy(zero_copy_only=False)[:n],
    )
    drift_cols = [c for c in features if rules[c].drift and _usable(cur, c) and _usable(ref, c)]
    numeric = [c.name for c in cfg.contract.numeric]
    categorical = [c.name for c in cfg.contract.categorical]
    if current_scores is not None and _usable(cur, REPORT_SCORE) and _usable(ref, REPORT_SCORE):
        numeric.append(REPORT_SCORE)
        drift_cols.append(REPORT_SCORE)
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    missing_limits = {c.column: c.threshold for c in checks if c.kind == "missing_share" and c.threshold is not None}
    metrics: list[Any] = [RowCount()]
    if drift_cols:
        metrics.append(
            DriftedColumnsCount(
                columns=[c for c in drift_cols if c != REPORT_SCORE],
                drift_share=mon.drift_share,
                per_column_method={c: rules[c].method for c in drift_cols if c != REPORT_SCORE},
                per_column_threshold={c: rules[c].drift_threshold for c in drift_cols if c != REPORT_SCORE},
            )
        )
    for col in drift_cols:
        if col == REPORT_SCORE:
            metrics.append(ValueDrift(column=col, method=mon.score_method, threshold=score_threshold(mon)))
        else:
            metrics.append(ValueDrift(column=col, method=rules[col].method, threshold=rules[col].drift_threshold))
    for spec in cfg.contract.columns:
        limit = missing_limits.get(spec.name)
        metrics.append(MissingValueCount(column=spec.name, share_tests=[lte(limit)] if limit is not None else None))
        if not spec.type.is_categorical and (spec.min is not None or spec.max is not None):
            metrics.append(
                OutRangeValueCount(
                    column=spec.name,
                    left=spec.min if spec.min is not None else -math.inf,
                    right=spec.max if spec.max is not None else math.inf,
                    share_tests=[lte(rules[spec.name].max_out_of_range_share)],
                )
            )
        if spec.type.is_categorical and reference.categories(spec.name) and _usable(cur, spec.name):
            metrics.append(
                OutListValueCount(
                    column=spec.name,
                    values=sorted(reference.categories(spec.name)),
                    share_tests=[lte(rules[spec.name].max_new_category_share)],
                )
            )
    report = Report(metrics, include_tests=True)
    return report.run(
        Dataset.from_pandas(cur, data_definition=definition), Dataset.from_pandas(ref, data_definition=definition)
    )


def write_report(
    settings: Settings,
    cfg: ModelSettings,
    version: int,
    ds: date,
    profile: PartitionProfile,
    current_scores: np.ndarray | None,
    reference: Reference,
    checks: Sequence[Check],
) -> str:
    """Build the night's Evidently report and write its HTML; returns its URI."""
    snapshot = build_report(cfg, profile, current_scores, reference, checks)
    uri = report_uri(settings, cfg.name, version, ds)
    html = snapshot.get_html_str(as_iframe=False)
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w", encoding="utf-8") as f:
        f.write(html)
    return uri


def plot_drift_history(
    rows: Sequence[dict[str, Any]], model: str, out_uri: str, *, top: int = 8, title: str | None = None
) -> str:
    """A PNG of drift over time: each distance divided by its threshold (1 = the threshold), top columns only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.dates import AutoDateLocator, DateFormatter, date2num

    series: dict[str, dict[date, float]] = {}
    failing_nights: set[date] = set()
    for row in rows:
        if row.get("night_status") == "fail":
            failing_nights.add(row["ds"])
        value, threshold = row.get("value"), row.get("threshold")
        if value is None or not threshold:
            continue
        name = (
            "score"
            if row["kind"] == "score_drift"
            else ("dataset (drifted share)" if row["kind"] == "dataset_drift" else str(row["column_name"]))
        )
        series.setdefault(name, {})[row["ds"]] = float(value) / float(threshold)
    fixed = [s for s in ("score", "dataset (drifted share)") if s in series]
    columns = sorted(
        (s for s in series if s not in fixed), key=lambda s: max(series[s].values(), default=0.0), reverse=True
    )[:top]
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    for name in fixed + columns:
        points = sorted(series[name].items())
        style: dict[str, Any] = {"linewidth": 2.4} if name in fixed else {"linewidth": 1.2, "alpha": 0.85}
        ax.plot([date2num(d) for d, _ in points], [v for _, v in points], marker="o", markersize=3, label=name, **style)
    for d in sorted(failing_nights):
        ax.axvline(date2num(d), color="red", alpha=0.25, linewidth=4)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="threshold")
    ax.set_ylabel("distance / threshold")
    ax.set_title(title or f"{model}: drift history (top {len(columns)} features, score, dataset; red = failing night)")
    ax.legend(loc="upper left", fontsize=8, ncols=2)
    ax.grid(alpha=0.3)
    ax.xaxis_date()
    # Whole days only: with a few nights the default locator would repeat a date.
    locator = AutoDateLocator(minticks=2, maxticks=10, interval_multiples=True)
    locator.intervald[3] = [1, 2, 7, 14]  # DAILY: steps of whole days
    locator.intervald[4] = [24]  # HOURLY: never finer than a day
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))
    fig.autofmt_xdate()
    fs, path = fsspec.core.url_to_fs(out_uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        fig.savefig(f, format="png", bbox_inches="tight")
    plt.close(fig)
    return out_uri
