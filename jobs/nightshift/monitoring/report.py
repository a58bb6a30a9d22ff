"""The Evidently HTML report of a night (on a nested subsample) and the drift-history plot of a model."""

from __future__ import annotations

import html
import io
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nightshift.config import ModelSettings, Settings
from nightshift.monitoring.checks import FAIL, INSUFFICIENT, Check, ColumnRules, score_threshold, validate_columns
from nightshift.monitoring.profile import PartitionProfile
from nightshift.monitoring.reference import SCORE, Reference, write_atomic

log = logging.getLogger(__name__)

#: The score column's name in the report.
REPORT_SCORE = "model_score"
#: The Parquet metadata key of a stored report sample's description (JSON).
_SAMPLE_META = b"nightshift.report_sample"
#: Format of the stored report sample; another one is not read (the report is rebuilt from the partition).
REPORT_SAMPLE_FORMAT = 1


def report_uri(settings: Settings, model: str, version: int, ds: date, kind: str = "data") -> str:
    """Where the night's HTML report goes: <reports>/<model>/v<version>/ds=<ds>/<kind>.html."""
    return f"{settings.reports_uri.rstrip('/')}/{model}/v{version}/ds={ds.isoformat()}/{kind}.html"


def report_sample_uri(settings: Settings, model: str, version: int, ds: date, kind: str = "data") -> str:
    """Where monitoring keeps the rows the night's report shows: beside the HTML, <kind>.sample.parquet."""
    return report_uri(settings, model, version, ds, kind).removesuffix(".html") + ".sample.parquet"


def report_sample(cfg: ModelSettings, profile: PartitionProfile, current_scores: np.ndarray | None) -> pa.Table:
    """The rows the report shows: the first `report_rows` rows of the night's hash sample (the same policy's
    smaller sample), its features and, when given, the committed scores as `model_score`."""
    n = cfg.monitoring.report_rows
    table = profile.sample.slice(0, n).select(cfg.contract.feature_names)
    if current_scores is not None:
        scores = np.asarray(current_scores[: table.num_rows], dtype=np.float64)
        table = table.append_column(REPORT_SCORE, pa.array(scores, pa.float64()))
    return table


@dataclass
class ReportHeader:
    """What the report says first: which night, its verdict, the checks that failed, what the rows are."""

    model: str
    version: int
    ds: date
    status: str
    checks: list[Check] = field(default_factory=list)
    #: Rows the report's widgets are computed on (the first rows of the drift sample).
    sample_rows: int = 0
    #: Rows scored and committed that night (what the checks' exact counts cover).
    scored_rows: int | None = None
    #: Rows of the night's drift sample (what the drift checks were computed on).
    drift_sample_rows: int | None = None
    run_id: int | None = None
    reference_rows: int | None = None


def save_report_sample(uri: str, table: pa.Table, meta: dict[str, Any]) -> str:
    """Write the report's rows (≤ report_rows) with a description of the night, atomically; returns the URI."""
    described = table.replace_schema_metadata({_SAMPLE_META: json.dumps({**meta, "format": REPORT_SAMPLE_FORMAT})})
    buf = io.BytesIO()
    pq.write_table(described, buf, compression="zstd")
    write_atomic(uri, buf.getvalue())
    return uri


def load_report_sample(uri: str) -> tuple[pa.Table, dict[str, Any]] | None:
    """A stored report sample and its description; None when absent or of another format."""
    try:
        with fsspec.open(uri, "rb") as f:
            table = pq.read_table(io.BytesIO(f.read()))
    except FileNotFoundError:
        return None
    meta = json.loads((table.schema.metadata or {}).get(_SAMPLE_META, b"{}"))
    if meta.get("format") != REPORT_SAMPLE_FORMAT:
        return None
    return table.replace_schema_metadata(None), meta


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
    """An Evidently snapshot of a night from its profile (see `build_report_from`)."""
    return build_report_from(cfg, report_sample(cfg, profile, current_scores), reference, checks)


def build_report_from(cfg: ModelSettings, current: pa.Table, reference: Reference, checks: Sequence[Check]) -> Any:
    """An Evidently snapshot: drift (same statistics and thresholds as the checks) and quality, on the report's
    rows (`report_sample`) against as many rows of the reference sample.

    No "Row count" widget: it would show the sample's size as if it were the night's; the header
    (`ReportHeader`) says how many sample rows of how many scored rows the report shows.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import (
        DriftedColumnsCount,
        MissingValueCount,
        OutListValueCount,
        OutRangeValueCount,
        ValueDrift,
    )
    from evidently.tests import lte

    mon = cfg.monitoring
    rules: dict[str, ColumnRules] = validate_columns(cfg)
    features = cfg.contract.feature_names
    with_scores = REPORT_SCORE in current.column_names
    cur = current.select(features + ([REPORT_SCORE] if with_scores else [])).to_pandas()
    # Both samples are sorted by entity hash: their first n rows are the same policy's smaller sample.
    ref_rows = reference.sample.slice(0, current.num_rows)
    ref = ref_rows.select(features).to_pandas()
    if with_scores:
        ref[REPORT_SCORE] = ref_rows.column(SCORE).to_numpy(zero_copy_only=False)
    drift_cols = [c for c in features if rules[c].drift and _usable(cur, c) and _usable(ref, c)]
    numeric = [c.name for c in cfg.contract.numeric]
    categorical = [c.name for c in cfg.contract.categorical]
    if with_scores and _usable(cur, REPORT_SCORE) and _usable(ref, REPORT_SCORE):
        numeric.append(REPORT_SCORE)
        drift_cols.append(REPORT_SCORE)
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    missing_limits = {c.column: c.threshold for c in checks if c.kind == "missing_share" and c.threshold is not None}
    metrics: list[Any] = []
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


def _fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    return f"{v:,.4g}"


def _check_rows(checks: Sequence[Check]) -> str:
    rows = []
    for c in checks:
        reason = c.detail.get("reason") if isinstance(c.detail, dict) else None
        rows.append(
            "<tr>"
            f"<td>{html.escape(c.kind)}</td><td>{html.escape(c.column or '')}</td>"
            f"<td>{html.escape(c.statistic)}</td><td>{_fmt(c.value)}</td><td>{_fmt(c.threshold)}</td>"
            f"<td>{html.escape(str(reason or ''))}</td>"
            "</tr>"
        )
    return (
        "<table><thead><tr><th>check</th><th>column</th><th>statistic</th><th>value</th><th>threshold</th>"
        "<th>note</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


_STATUS_COLOUR = {"pass": "#1b7f3b", "fail": "#b3261e", "insufficient_data": "#8a6d00"}


def header_html(h: ReportHeader) -> str:
    """The report's first section: model, version, ds, the verdict, the failed checks, then what the rows are."""
    failed = [c for c in h.checks if c.failing]
    warnings = [c for c in h.checks if c.status == FAIL and not c.failing]
    insufficient = [c for c in h.checks if c.status == INSUFFICIENT]
    colour = _STATUS_COLOUR.get(h.status, "#333")
    title = f"{h.model} v{h.version} · ds={h.ds.isoformat()}"
    parts = [
        '<section id="nightshift-verdict" style="font-family:system-ui,sans-serif;margin:16px 24px;'
        'padding:12px 16px;border:1px solid #ddd;border-radius:8px">',
        "<style>#nightshift-verdict table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}"
        "#nightshift-verdict td,#nightshift-verdict th{border-bottom:1px solid #eee;padding:2px 10px;text-align:left}"
        "</style>",
        f'<h1 style="margin:0 0 6px;font-size:22px">{html.escape(title)}: '
        f'<span style="color:{colour}">{html.escape(h.status.upper())}</span></h1>',
    ]
    if failed:
        parts.append(f'<h2 style="font-size:16px;margin:8px 0 0">{len(failed)} failed check(s)</h2>')
        parts.append(_check_rows(failed))
    else:
        parts.append('<p style="margin:4px 0">No check failed.</p>')
    if warnings:
        parts.append(f'<h2 style="font-size:15px;margin:8px 0 0">{len(warnings)} warning(s)</h2>')
        parts.append(_check_rows(warnings))
    if insufficient:
        parts.append(f'<h2 style="font-size:15px;margin:8px 0 0">{len(insufficient)} check(s) without enough data</h2>')
        parts.append(_check_rows(insufficient))
    scored = f"{h.scored_rows:,}" if h.scored_rows is not None else "?"
    rows_line = f"<b>{h.sample_rows:,} sample rows vs {scored} scored rows</b>"
    if h.drift_sample_rows is not None:
        rows_line += (
            f": the widgets below are computed on the first {h.sample_rows:,} rows of the night's "
            f"{h.drift_sample_rows:,}-row drift sample (a deterministic hash sample), against as many rows of the "
            "reference sample"
        )
    if h.reference_rows is not None:
        rows_line += f" (drawn from {h.reference_rows:,} training rows)"
    rows_line += (
        ". The verdict and the checks above come from monitoring: exact counts on every scored row, drift on the "
        "whole drift sample."
    )
    parts.append(f'<p style="margin:6px 0;font-size:13px">{rows_line}</p>')
    if h.run_id is not None:
        parts.append(f'<p style="margin:0;font-size:12px;color:#666">predictions run {h.run_id}</p>')
    parts.append("</section>")
    return "".join(parts)


_BODY = re.compile(r"</head>\s*<body[^>]*>", re.IGNORECASE)


def with_header(page: str, header: ReportHeader | None) -> str:
    """Evidently's HTML page with the header section as the first thing in its body."""
    if header is None:
        return page
    section = header_html(header)
    match = _BODY.search(page)
    if match is None:
        return section + page
    return page[: match.end()] + section + page[match.end() :]


def write_report(
    settings: Settings,
    cfg: ModelSettings,
    version: int,
    ds: date,
    current: pa.Table,
    reference: Reference,
    checks: Sequence[Check],
    header: ReportHeader | None = None,
) -> str:
    """Build the night's Evidently report on its report rows (`report_sample`) and write its HTML; returns its URI."""
    snapshot = build_report_from(cfg, current, reference, checks)
    uri = report_uri(settings, cfg.name, version, ds)
    page = with_header(snapshot.get_html_str(as_iframe=False), header)
    write_atomic(uri, page.encode("utf-8"))  # a reader (the reports view) never sees half a page
    return uri


_LINE_STYLES = (("-", "solid"), ("--", "dashed"), (":", "dotted"), ("-.", "dash-dot"))


@dataclass(frozen=True)
class DriftLine:
    """One line of the drift-history plot: a column (or the score, or the dataset) of one model version."""

    name: str
    version: int | None
    label: str
    linestyle: str
    emphasis: bool
    points: list[tuple[date, float]]


def drift_lines(rows: Sequence[dict[str, Any]], *, top: int = 8) -> list[DriftLine]:
    """The lines of the drift-history plot: each distance / its threshold, per (column, version).

    A night scored by several versions (shadow, canary, a new champion) gives one point per version, never
    one overwriting another; with more than one version each draws in its own line style and its label
    says which (`monthly_charges (v2)`). The score and the dataset always show, then the `top` columns
    that drifted most.
    """
    series: dict[tuple[str, int | None], dict[date, float]] = {}
    for row in rows:
        value, threshold = row.get("value"), row.get("threshold")
        if value is None or not threshold:
            continue
        name = (
            "score"
            if row["kind"] == "score_drift"
            else ("dataset (drifted share)" if row["kind"] == "dataset_drift" else str(row["column_name"]))
        )
        version = None if row.get("version") is None else int(row["version"])
        series.setdefault((name, version), {})[row["ds"]] = float(value) / float(threshold)
    versions = sorted({v for _, v in series if v is not None})
    style = {v: _LINE_STYLES[i % len(_LINE_STYLES)][0] for i, v in enumerate(versions)}
    fixed = ("score", "dataset (drifted share)")
    peak: dict[str, float] = {}
    for (name, _), points in series.items():
        if name not in fixed:
            peak[name] = max(peak.get(name, 0.0), max(points.values(), default=0.0))
    names = [n for n in fixed if any(k[0] == n for k in series)] + sorted(peak, key=lambda n: -peak[n])[:top]
    return [
        DriftLine(
            name=name,
            version=version,
            label=name if len(versions) < 2 or version is None else f"{name} (v{version})",
            linestyle="-" if version is None else style[version],
            emphasis=name in fixed,
            points=sorted(series[(name, version)].items()),
        )
        for name in names
        for version in sorted((v for n, v in series if n == name), key=lambda v: -1 if v is None else v)
    ]


def plot_drift_history(
    rows: Sequence[dict[str, Any]], model: str, out_uri: str, *, top: int = 8, title: str | None = None
) -> str:
    """A PNG of drift over time: each distance divided by its threshold (1 = the threshold), top columns only,
    one line style per model version (see drift_lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.dates import AutoDateLocator, DateFormatter, date2num

    lines = drift_lines(rows, top=top)
    failing_nights = {row["ds"] for row in rows if row.get("night_status") == "fail"}
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    colours: dict[str, Any] = {}
    for line in lines:
        style: dict[str, Any] = {"linewidth": 2.4} if line.emphasis else {"linewidth": 1.2, "alpha": 0.85}
        if line.name in colours:
            style["color"] = colours[line.name]  # a column keeps its colour across versions; the style differs
        (drawn,) = ax.plot(
            [date2num(d) for d, _ in line.points],
            [v for _, v in line.points],
            marker="o",
            markersize=3,
            label=line.label,
            linestyle=line.linestyle,
            **style,
        )
        colours.setdefault(line.name, drawn.get_color())
    versions = sorted({(line.version, line.linestyle) for line in lines if line.version is not None})
    named = dict(_LINE_STYLES)
    shown = "" if len(versions) < 2 else "; " + ", ".join(f"v{v} {named[ls]}" for v, ls in versions)
    columns = len({line.name for line in lines if not line.emphasis})
    for d in sorted(failing_nights):
        ax.axvline(date2num(d), color="red", alpha=0.25, linewidth=4)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="threshold")
    ax.set_ylabel("distance / threshold")
    ax.set_title(
        title or f"{model}: drift history (top {columns} features, score, dataset; red = failing night{shown})"
    )
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
    png = io.BytesIO()
    fig.savefig(png, format="png", bbox_inches="tight")
    plt.close(fig)
    write_atomic(out_uri, png.getvalue())
    return out_uri
