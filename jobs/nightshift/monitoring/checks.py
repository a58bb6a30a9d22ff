"""The checks of one night, as pure functions of a partition profile, the reference and the thresholds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nightshift.config import ColumnMonitoring, ModelSettings, MonitoringSettings
from nightshift.contracts import Column
from nightshift.errors import ConfigError
from nightshift.monitoring.profile import PartitionProfile, category_counts, numeric_values
from nightshift.monitoring.reference import LABEL, SCORE, Reference
from nightshift.monitoring.stats import STATISTIC, categorical_distance, finite, numeric_distance

PASS, FAIL, INSUFFICIENT = "pass", "fail", "insufficient_data"
#: Unseen categories listed per check (the counts are exact; the list is capped).
MAX_LISTED_CATEGORIES = 10


@dataclass
class Check:
    """One measured value against its threshold. `severity` 'warn' records a breach without failing the night."""

    kind: str
    column: str | None
    statistic: str
    value: float | None
    threshold: float | None
    status: str
    rows: int
    sampled: bool
    severity: str = "fail"
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        return None if self.status == INSUFFICIENT else self.status == PASS

    @property
    def failing(self) -> bool:
        """A breach that fails the night."""
        return self.status == FAIL and self.severity == "fail"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        return out

    def describe(self) -> str:
        where = f"{self.kind}[{self.column}]" if self.column else self.kind
        if self.value is None:
            return f"{where}: {self.status} ({self.detail.get('reason', 'no value')})"
        bound = f" (threshold {self.threshold:.4g})" if self.threshold is not None else ""
        return f"{where}: {self.statistic} = {self.value:.4g}{bound}"


@dataclass(frozen=True)
class ColumnRules:
    """The thresholds that apply to one column after the per-column overrides."""

    drift: bool
    method: str
    drift_threshold: float
    max_missing_share: float | None
    max_missing_increase: float
    max_out_of_range_share: float
    max_new_category_share: float


def column_rules(mon: MonitoringSettings, spec: Column) -> ColumnRules:
    over = mon.columns.get(spec.name) or ColumnMonitoring()
    method = over.method or (mon.cat_method if spec.type.is_categorical else mon.num_method)
    if spec.type.is_categorical and method == "wasserstein":
        raise ConfigError(
            f"monitoring.columns.{spec.name}.method: 'wasserstein' needs a numeric column; "
            f"{spec.name!r} is categorical (use 'jensenshannon' or 'psi')"
        )
    return ColumnRules(
        drift=over.drift,
        method=method,
        drift_threshold=over.drift_threshold or mon.drift_thresholds.get(method, 0.1),
        max_missing_share=over.max_missing_share if over.max_missing_share is not None else mon.max_missing_share,
        max_missing_increase=(
            over.max_missing_increase if over.max_missing_increase is not None else mon.max_missing_increase
        ),
        max_out_of_range_share=(
            over.max_out_of_range_share if over.max_out_of_range_share is not None else mon.max_out_of_range_share
        ),
        max_new_category_share=(
            over.max_new_category_share if over.max_new_category_share is not None else mon.max_new_category_share
        ),
    )


def validate_columns(cfg: ModelSettings) -> dict[str, ColumnRules]:
    """Every feature's rules; ConfigError for overrides naming a column the contract lacks."""
    known = set(cfg.contract.feature_names)
    unknown = sorted(set(cfg.monitoring.columns) - known)
    if unknown:
        raise ConfigError(
            f"model {cfg.name!r}: monitoring.columns names column(s) {', '.join(map(repr, unknown))} "
            "that the contract does not declare"
        )
    if SCORE in known:
        raise ConfigError(f"model {cfg.name!r}: a feature may not be named {SCORE!r} (the monitoring's score column)")
    return {c.name: column_rules(cfg.monitoring, c) for c in cfg.contract.columns}


def score_threshold(mon: MonitoringSettings) -> float:
    return mon.score_threshold or mon.drift_thresholds.get(mon.score_method, 0.1)


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


# -- data quality: exact, on every row ---------------------------------------------------------


def volume_check(rows: int, history: Sequence[int], mon: MonitoringSettings) -> Check:
    """Row count against the median of the last committed days."""
    recent = list(history)[: mon.volume_window_days]
    if len(recent) < mon.volume_min_history:
        return Check(
            "row_count",
            None,
            "volume_ratio",
            None,
            None,
            INSUFFICIENT,
            rows,
            False,
            detail={"reason": f"{len(recent)} earlier committed day(s), need {mon.volume_min_history}"},
        )
    usual = float(statistics.median(recent))
    ratio = rows / usual if usual else (math.inf if rows else 1.0)
    low, high = mon.min_volume_ratio, mon.max_volume_ratio
    ok = low <= ratio <= high
    return Check(
        "row_count",
        None,
        "volume_ratio",
        ratio if math.isfinite(ratio) else None,
        low if ratio < 1 else high,
        PASS if ok else FAIL,
        rows,
        False,
        detail={"usual_rows": usual, "days": len(recent), "min_ratio": low, "max_ratio": high},
    )


def quality_checks(
    profile: PartitionProfile, reference: Reference, cfg: ModelSettings, rules: dict[str, ColumnRules]
) -> list[Check]:
    """Missing share, out-of-range share and unseen-category share of each feature, on every row."""
    out: list[Check] = []
    for spec in cfg.contract.columns:
        prof = profile.columns[spec.name]
        rule = rules[spec.name]
        ref_missing = reference.missing_share(spec.name)
        limit = ref_missing + rule.max_missing_increase
        if rule.max_missing_share is not None:
            limit = min(limit, rule.max_missing_share)
        limit = min(limit, 1.0)
        if prof.rows == 0:
            out.append(
                Check(
                    "missing_share",
                    spec.name,
                    "share",
                    None,
                    limit,
                    INSUFFICIENT,
                    0,
                    False,
                    detail={"reason": "no rows"},
                )
            )
            continue
        share = _share(prof.missing, prof.rows)
        out.append(
            Check(
                "missing_share",
                spec.name,
                "share",
                share,
                limit,
                PASS if share <= limit else FAIL,
                prof.rows,
                False,
                detail={"missing": prof.missing, "reference_share": ref_missing},
            )
        )
        present = prof.present
        if not spec.type.is_categorical and (spec.min is not None or spec.max is not None):
            bad = prof.below_min + prof.above_max
            value = _share(bad, present) if present else None
            out.append(
                Check(
                    "out_of_range",
                    spec.name,
                    "share",
                    value,
                    rule.max_out_of_range_share,
                    INSUFFICIENT if value is None else (PASS if value <= rule.max_out_of_range_share else FAIL),
                    present,
                    False,
                    detail={"below_min": prof.below_min, "above_max": prof.above_max, "min": spec.min, "max": spec.max}
                    | ({} if present else {"reason": "no values"}),
                )
            )
        if spec.type.is_categorical:
            known = reference.categories(spec.name)
            unseen = {k: v for k, v in prof.categories.items() if k not in known}
            count = sum(unseen.values())
            value = _share(count, present) if present else None
            listed = dict(sorted(unseen.items(), key=lambda kv: -kv[1])[:MAX_LISTED_CATEGORIES])
            out.append(
                Check(
                    "new_category",
                    spec.name,
                    "share",
                    value,
                    rule.max_new_category_share,
                    INSUFFICIENT if value is None else (PASS if value <= rule.max_new_category_share else FAIL),
                    present,
                    False,
                    detail={"unseen_rows": count, "unseen": listed, "unseen_values": len(unseen)}
                    | ({} if present else {"reason": "no values"}),
                )
            )
    return out


# -- drift: on the hash sample -----------------------------------------------------------------


def _drift(
    kind: str,
    column: str | None,
    method: str,
    threshold: float,
    reference: Any,
    current: Any,
    categorical: bool,
    mon: MonitoringSettings,
    severity: str,
) -> Check:
    n_cur = int(sum(current.values()) if categorical else current.size)
    n_ref = int(sum(reference.values()) if categorical else reference.size)
    if n_cur < mon.min_rows or n_ref < mon.min_rows:
        return Check(
            kind,
            column,
            STATISTIC[method],
            None,
            threshold,
            INSUFFICIENT,
            n_cur,
            True,
            severity,
            detail={
                "reason": f"{n_cur} current / {n_ref} reference value(s) present, need {mon.min_rows}",
                "reference_rows": n_ref,
            },
        )
    value = (
        categorical_distance(method, reference, current)
        if categorical
        else numeric_distance(method, reference, current)
    )
    detail: dict[str, Any] = {"reference_rows": n_ref, "method": method}
    if not categorical:
        detail.update(mean=float(current.mean()), reference_mean=float(reference.mean()))
    return Check(
        kind,
        column,
        STATISTIC[method],
        value,
        threshold,
        FAIL if value >= threshold else PASS,
        n_cur,
        True,
        severity,
        detail=detail,
    )


def drift_checks(
    profile: PartitionProfile,
    reference: Reference,
    cfg: ModelSettings,
    rules: dict[str, ColumnRules],
    current_scores: np.ndarray | None,
    current_labels: np.ndarray | None = None,
) -> list[Check]:
    """Per-feature drift, dataset drift (share of drifted features), score drift (a binary model's P(1), a
    regression's value, a multiclass model's top probability) and, for a multiclass model, drift of the
    predicted-class mix (Jensen-Shannon of the class shares), on the samples."""
    mon = cfg.monitoring
    out: list[Check] = []
    for spec in cfg.contract.columns:
        rule = rules[spec.name]
        if not rule.drift:
            continue
        if spec.type.is_categorical:
            ref_c: Any = category_counts(reference.sample, spec.name)
            cur_c: Any = category_counts(profile.sample, spec.name)
        else:
            ref_c = finite(numeric_values(reference.sample, spec.name))
            cur_c = finite(numeric_values(profile.sample, spec.name))
        out.append(
            _drift(
                "drift",
                spec.name,
                rule.method,
                rule.drift_threshold,
                ref_c,
                cur_c,
                spec.type.is_categorical,
                mon,
                mon.column_drift,
            )
        )
    assessed = [c for c in out if c.status != INSUFFICIENT]
    drifted = [c.column for c in assessed if c.status == FAIL]
    n = profile.sampled_rows
    if n < mon.min_rows or not assessed:
        out.append(
            Check(
                "dataset_drift",
                None,
                "drifted_share",
                None,
                mon.drift_share,
                INSUFFICIENT,
                n,
                True,
                detail={"reason": f"{n} sampled row(s), need {mon.min_rows}"},
            )
        )
    else:
        share = len(drifted) / len(assessed)
        out.append(
            Check(
                "dataset_drift",
                None,
                "drifted_share",
                share,
                mon.drift_share,
                FAIL if share >= mon.drift_share else PASS,
                n,
                True,
                detail={"drifted": drifted, "assessed": len(assessed)},
            )
        )
    if current_scores is not None:
        n_scores = int(current_scores.size)
        unscored = int(np.isnan(current_scores).sum()) if n_scores else 0
        out.append(
            Check(
                "score_coverage",
                None,
                "unscored_share",
                unscored / n_scores if n_scores else None,
                0.0,
                (PASS if unscored == 0 else FAIL) if n_scores else INSUFFICIENT,
                n_scores,
                True,
                detail={"unscored": unscored}
                | ({} if n_scores else {"reason": "no sampled rows"})
                | (
                    {"reason": "sampled entities without a committed score: features changed after scoring"}
                    if unscored
                    else {}
                ),
            )
        )
        out.append(
            _drift(
                "score_drift",
                None,
                mon.score_method,
                score_threshold(mon),
                finite(reference.sample.column(SCORE).to_numpy(zero_copy_only=False)),
                finite(current_scores),
                False,
                mon,
                "fail",
            )
        )
    if current_labels is not None and LABEL in reference.sample.column_names:
        ref_labels = reference.sample.column(LABEL).to_numpy(zero_copy_only=False)
        cur_labels = current_labels[current_labels >= 0]
        out.append(
            _drift(
                "class_drift",
                None,
                "jensenshannon",
                mon.drift_thresholds.get("jensenshannon", 0.1),
                _class_counts(ref_labels),
                _class_counts(cur_labels),
                True,
                mon,
                "fail",
            )
        )
    return out


def _class_counts(labels: np.ndarray) -> dict[str, int]:
    """Predicted-class counts as a categorical column's counts (class index → count)."""
    values, counts = np.unique(np.asarray(labels, dtype=np.int64), return_counts=True)
    return {str(v): int(c) for v, c in zip(values.tolist(), counts.tolist(), strict=True)}


def run_checks(
    profile: PartitionProfile,
    reference: Reference,
    cfg: ModelSettings,
    *,
    current_scores: np.ndarray | None,
    volume_history: Sequence[int] | None,
    current_labels: np.ndarray | None = None,
) -> list[Check]:
    """Every nightly check: quality on every row, drift on the sample, volume against recent days."""
    rules = validate_columns(cfg)
    checks: list[Check] = []
    if volume_history is not None:
        checks.append(volume_check(profile.rows, volume_history, cfg.monitoring))
    checks += quality_checks(profile, reference, cfg, rules)
    checks += drift_checks(profile, reference, cfg, rules, current_scores, current_labels)
    return checks


def verdict(checks: Sequence[Check]) -> str:
    """fail if any failing-severity check fails; insufficient_data if drift could not be assessed; else pass."""
    if any(c.failing for c in checks):
        return FAIL
    if any(c.kind in ("dataset_drift", "labelled_rows") and c.status == INSUFFICIENT for c in checks):
        return INSUFFICIENT
    return PASS
