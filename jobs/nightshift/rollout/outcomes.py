"""The outcome evidence a night decides on: who served which entities (`served`), their labels, the tests.

For the night of `ds` (never the wall clock), over the labelled days up to ds:

* **champion vs previous** — while `ds` lies within the champion's rollback window (plus
  `rollout.label_delay_days`), on the days of the window both were scored: the champion's gate
  metric on those days against its acceptable range (`gates.min`/`gates.max`), and paired tests
  on the per-entity outcome metrics against `previous` (both scored every entity);
* **challenger vs champion** — during a shadow or canary rollout, on its consecutive nights up to ds:
  shadow paired (the challenger scored the same entities, never served), canary two-sample (the
  challenger on the entities it served, the champion on the others: who served whom is the canary's
  stable hash at that night's recorded share);
* **bandit** — the labelled reward of each arm on the entities it served, Thompson sampling's next
  allocation, and the candidate arm's two-sample tests against the champion arm.

Drift never enters here: it alerts and triggers retraining (monitoring), it does not decide a rollout.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

from nightshift.config import ModelSettings, Settings
from nightshift.db import schema
from nightshift.db.engine import as_date
from nightshift.db.store import Store
from nightshift.errors import PartitionNotReady
from nightshift.monitoring.quality import LabelledDay, labelled_day
from nightshift.rollout.bandit import Allocation, ArmStats, allocate, night_seed
from nightshift.rollout.canary import serves_challenger
from nightshift.rollout.stats import (
    DEFAULT_METRICS,
    LOSS_METRICS,
    RATE_METRICS,
    Comparison,
    TestResult,
    decide,
    paired_tests,
    proportion_tests,
    required_paired,
    required_two_sample,
    welch_tests,
)

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"


def outcome_metrics(cfg: ModelSettings, task: str) -> list[str]:
    """The configured outcome metrics, or the task's defaults; 'reward' only with a reward column."""
    metrics = list(cfg.rollout.outcomes.metrics or DEFAULT_METRICS[task])
    if task == "regression":
        metrics = [m for m in metrics if m not in ("log_loss", "brier", "accuracy")] or list(DEFAULT_METRICS[task])
    else:
        metrics = [m for m in metrics if m not in ("squared_error", "absolute_error")] or list(DEFAULT_METRICS[task])
    if cfg.rollout.bandit.reward == "correct":
        metrics = [m for m in metrics if m != "reward"] or list(DEFAULT_METRICS[task])
    return metrics


def reward_column(cfg: ModelSettings) -> str | None:
    return None if cfg.rollout.bandit.reward == "correct" else cfg.rollout.bandit.reward


def served_days(store: Store, model: str, first: date, last: date) -> dict[date, dict[str, tuple[int, float]]]:
    """ds → role → (version, share) recorded in `served` for the model's days in [first, last]."""
    t = schema.served
    out: dict[date, dict[str, tuple[int, float]]] = {}
    with store.connect() as conn:
        rows = conn.execute(
            sa.select(t.c.ds, t.c.role, t.c.version, t.c.share).where(
                t.c.model == model, t.c.ds >= first, t.c.ds <= last
            )
        )
        for r in rows:
            out.setdefault(as_date(r.ds), {})[str(r.role)] = (int(r.version), float(r.share))
    return out


def labels_ready(settings: Settings, cfg: ModelSettings, ds: date) -> bool:
    from nightshift.data import partition_ready

    root = cfg.labels_uri(settings)
    return bool(root) and partition_ready(str(root), cfg.partition_key, ds, cfg.success_marker)


def _oriented(metric: str, values: np.ndarray) -> np.ndarray:
    """Larger is better."""
    return -values if metric in LOSS_METRICS else values


def compare_paired(
    cfg: ModelSettings, days: list[LabelledDay], baseline: int, candidate: int, metrics: list[str]
) -> Comparison:
    """Paired tests of `candidate` against `baseline` on the entities both scored (see rollout/stats.py)."""
    o = cfg.rollout.outcomes
    diffs: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for day in days:
        for m in metrics:
            a, b = day.per_entity(baseline, m), day.per_entity(candidate, m)
            ok = np.isfinite(a) & np.isfinite(b)
            diffs[m].append(_oriented(m, b[ok]) - _oriented(m, a[ok]))
    difference: list[TestResult] = []
    non_inferiority: list[TestResult] = []
    sizes = []
    for m in metrics:
        d = np.concatenate(diffs[m]) if diffs[m] else np.zeros(0)
        sizes.append(int(d.size))
        two, ni = paired_tests(m, d, margin_effect=o.effect_size, test=o.paired_test)
        difference.append(two)
        non_inferiority.append(ni)
    n = min(sizes) if sizes else 0
    required = required_paired(o.effect_size, o.alpha, o.power, len(metrics), o.paired_test)
    return decide(
        "paired",
        baseline,
        candidate,
        [d.ds.isoformat() for d in days],
        difference,
        non_inferiority,
        n=n,
        n_required=required,
        alpha=o.alpha,
        settings={**o.model_dump(), "metrics": metrics},
    )


def compare_split(
    cfg: ModelSettings,
    days: list[LabelledDay],
    served_by: list[np.ndarray],
    baseline: int,
    candidate: int,
    metrics: list[str],
) -> Comparison:
    """Two-sample tests: `candidate` on the entities it served against `baseline` on the ones it served."""
    o = cfg.rollout.outcomes
    values: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {m: ([], []) for m in metrics}
    for day, who in zip(days, served_by, strict=True):
        for m in metrics:
            a = day.per_entity(baseline, m)[who == baseline]
            b = day.per_entity(candidate, m)[who == candidate]
            values[m][0].append(a[np.isfinite(a)])
            values[m][1].append(b[np.isfinite(b)])
    difference: list[TestResult] = []
    non_inferiority: list[TestResult] = []
    sizes_a: list[int] = []
    sizes_b: list[int] = []
    for m in metrics:
        a = np.concatenate(values[m][0]) if values[m][0] else np.zeros(0)
        b = np.concatenate(values[m][1]) if values[m][1] else np.zeros(0)
        sizes_a.append(int(a.size))
        sizes_b.append(int(b.size))
        if m in RATE_METRICS:
            two, ni = proportion_tests(
                m, int(a.sum()), int(a.size), int(b.sum()), int(b.size), margin_effect=o.effect_size
            )
        else:
            two, ni = welch_tests(m, _oriented(m, a), _oriented(m, b), margin_effect=o.effect_size)
        difference.append(two)
        non_inferiority.append(ni)
    n_a, n_b = (min(sizes_a), min(sizes_b)) if metrics else (0, 0)
    n = n_a + n_b
    share = n_b / n if n else 0.0
    required = required_two_sample(o.effect_size, o.alpha, o.power, share, len(metrics)) if 0 < share < 1 else 2**62
    comparison = decide(
        "two-sample",
        baseline,
        candidate,
        [d.ds.isoformat() for d in days],
        difference,
        non_inferiority,
        n=n,
        n_required=required,
        alpha=o.alpha,
        settings={
            **o.model_dump(),
            "metrics": metrics,
            "candidate_share": share,
            "n_baseline": n_a,
            "n_candidate": n_b,
        },
    )
    if not 0 < share < 1 and comparison.verdict == "insufficient":
        comparison.message = f"not enough evidence yet: v{candidate} served {n_b:,} and v{baseline} {n_a:,} entities"
    return comparison


def pooled_metric(day_list: list[LabelledDay], version: int, metric: str) -> tuple[float, int]:
    """A version's gate metric over the pooled entities of some labelled days, and n."""
    from nightshift.metrics import task_metrics

    if not day_list:
        return float("nan"), 0
    task = day_list[0].task
    ys: list[np.ndarray] = []
    preds: list[np.ndarray] = []
    for day in day_list:
        ok = day.present(version)
        if task == "binary":
            ys.append(day.truth[ok].astype(np.int64))
            preds.append(day.scores[version][ok])
        elif task == "regression":
            ys.append(day.truth[ok].astype(np.float64))
            preds.append(day.values.get(version, day.scores[version])[ok])
        else:
            classes = day.classes.get(version) or []
            index = {c: i for i, c in enumerate(classes)}
            idx = np.asarray([index.get(str(t), -1) for t in day.truth], dtype=np.int64)
            probs = day.probs.get(version)
            if probs is None:
                continue
            keep = ok & (idx >= 0) & np.isfinite(probs).all(axis=1)
            ys.append(idx[keep])
            preds.append(probs[keep])
    if not ys:
        return float("nan"), 0
    y = np.concatenate(ys)
    p = np.concatenate(preds) if task != "multiclass" else np.vstack(preds)
    if y.size == 0:
        return float("nan"), 0
    threshold = day_list[0].threshold.get(version, 0.5)
    value = task_metrics(task, y, p, threshold).get(metric, float("nan"))
    return float(value), int(y.size)


@dataclass
class NightOutcomes:
    """The evidence of one night (see the module's docstring) and the verdicts it gives `Rollouts.advance`."""

    model: str
    ds: date
    champion: Comparison | None = None
    champion_range: dict[str, Any] | None = None
    challenger: Comparison | None = None
    bandit: dict[str, Any] | None = None
    allocation: Allocation | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def evaluated(self) -> bool:
        return any(x is not None for x in (self.champion, self.champion_range, self.challenger, self.bandit))

    @property
    def champion_ok(self) -> bool | None:
        """False: roll back (range breached, or significantly worse than previous); None: no evidence."""
        if self.champion is not None and self.champion.verdict == "worse":
            return False
        if self.champion_range is not None and self.champion_range.get("breached"):
            return False
        if self.champion is None and self.champion_range is None:
            return None
        return True

    @property
    def previous_ok(self) -> bool | None:
        """False when going back would not help: previous breaches the range on the same days too, and the
        champion is not significantly worse than it."""
        rng = self.champion_range or {}
        if rng.get("previous_breached") and not (self.champion is not None and self.champion.verdict == "worse"):
            return False
        return None if not rng else True

    @property
    def challenger_ok(self) -> bool | None:
        if self.challenger is None:
            return None
        return {"supported": True, "worse": False}.get(self.challenger.verdict)

    def champion_reason(self) -> str:
        parts = []
        rng = self.champion_range or {}
        if rng.get("breached"):
            parts.append(
                f"v{rng['version']}'s {rng['metric']} on its labelled days ({', '.join(rng['days'])}) is "
                f"{rng['value']:.4g}, outside its acceptable range [{_bound(rng['min'])}, {_bound(rng['max'])}] "
                f"(n={rng['n']:,})"
            )
        if self.champion is not None and self.champion.verdict == "worse":
            parts.append(self.champion.message)
        return "labelled outcomes: " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        from nightshift.jsonsafe import json_safe

        return dict(
            json_safe(
                {
                    "model": self.model,
                    "ds": self.ds,
                    "champion_vs_previous": self.champion.as_dict() if self.champion else None,
                    "champion_range": self.champion_range,
                    "challenger_vs_champion": self.challenger.as_dict() if self.challenger else None,
                    "bandit": self.bandit,
                    "verdicts": {
                        "champion_ok": self.champion_ok,
                        "previous_ok": self.previous_ok,
                        "challenger_ok": self.challenger_ok,
                    },
                    "notes": self.notes,
                }
            )
        )


def _bound(v: float | None) -> str:
    return "–" if v is None else f"{v:g}"


class _Days:
    """Labelled days read once per night, for whichever versions the comparisons need."""

    def __init__(self, settings: Settings, store: Store, model: str, cfg: ModelSettings) -> None:
        self.settings, self.store, self.model, self.cfg = settings, store, model, cfg
        self._cache: dict[tuple[date, tuple[int, ...]], LabelledDay] = {}

    def get(self, ds: date, versions: list[int]) -> LabelledDay | None:
        key = (ds, tuple(sorted(set(versions))))
        if key not in self._cache:
            if not labels_ready(self.settings, self.cfg, ds):
                return None
            try:
                self._cache[key] = labelled_day(
                    self.settings, self.store, self.model, ds, list(key[1]), reward_column=reward_column(self.cfg)
                )
            except PartitionNotReady:
                return None
        return self._cache[key]


def _effective_champion_night(store: Store, model: str, champion: int, ds: date) -> date | None:
    """The night the champion's newest move to it applies from (on or before ds)."""
    ev = schema.alias_events
    with store.connect() as conn:
        row = conn.execute(
            sa.select(ev.c.effective_ds)
            .where(ev.c.model == model, ev.c.alias == CHAMPION, ev.c.new_version == champion, ev.c.effective_ds <= ds)
            .order_by(ev.c.effective_ds.desc(), ev.c.event_id.desc())
            .limit(1)
        ).first()
    return as_date(row.effective_ds) if row is not None and row.effective_ds is not None else None


def _rollout_nights(served: dict[date, dict[str, tuple[int, float]]], ds: date, challenger: int) -> list[date]:
    """The consecutive nights up to ds on which `challenger` ran as the challenger."""
    nights = []
    day = ds
    while challenger == (served.get(day, {}).get(CHALLENGER) or (None, 0.0))[0]:
        nights.append(day)
        day -= timedelta(days=1)
    return sorted(nights)


def judge_night(
    settings: Settings,
    store: Store,
    model: str,
    ds: date,
    *,
    aliases: dict[str, int],
    active: dict[str, Any] | None,
    lookback_days: int = 120,
) -> NightOutcomes:
    """Gather the night's outcome evidence (see the module's docstring); reads, never writes."""
    from nightshift.models.registry import Registry

    cfg = settings.model(model)
    out = NightOutcomes(model, ds)
    if not cfg.labels:
        out.notes.append("no labels location: no outcome evidence")
        return out
    served = served_days(store, model, ds - timedelta(days=lookback_days), ds)
    days = _Days(settings, store, model, cfg)
    registry = Registry(store, settings.artifacts_uri)
    champion, previous = aliases.get(CHAMPION), aliases.get(PREVIOUS)
    task = registry.get(model, champion).task if champion is not None else "binary"
    metrics = outcome_metrics(cfg, task)

    # Champion vs previous, inside the champion's rollback window (plus the label delay).
    window = cfg.rollout.rollback_window_days
    effective = _effective_champion_night(store, model, champion, ds) if champion is not None else None
    if (
        champion is not None
        and previous is not None
        and effective is not None
        and window > 0
        and 0 <= (ds - effective).days < window + cfg.rollout.label_delay_days
    ):
        evidence = []
        for i in range(window):
            d = effective + timedelta(days=i)
            roles = served.get(d, {})
            if (
                d > ds
                or (roles.get(CHAMPION) or (None,))[0] != champion
                or (roles.get(PREVIOUS) or (None,))[0] != (previous)
            ):
                continue
            day = days.get(d, [champion, previous])
            if day is not None:
                evidence.append(day)
        if evidence:
            out.champion = compare_paired(cfg, evidence, previous, champion, metrics)
            gate = cfg.gates
            value, n = pooled_metric(evidence, champion, gate.metric)
            prev_value, _ = pooled_metric(evidence, previous, gate.metric)
            enough = n >= cfg.monitoring.min_labelled_rows

            def outside(v: float) -> bool:
                return math.isfinite(v) and (
                    (gate.min is not None and v < gate.min) or (gate.max is not None and v > gate.max)
                )

            out.champion_range = {
                "version": champion,
                "previous": previous,
                "metric": gate.metric,
                "value": value,
                "previous_value": prev_value,
                "min": gate.min,
                "max": gate.max,
                "n": n,
                "days": [d.ds.isoformat() for d in evidence],
                "breached": enough and outside(value),
                "previous_breached": enough and outside(prev_value),
                "enough": enough,
            }
        else:
            out.notes.append(f"champion v{champion}: no labelled day of its window yet")

    # The rollout in progress.
    if active is not None and champion is not None:
        cand = int(active["challenger_version"])
        nights = _rollout_nights(served, ds, cand)
        evidence, who = [], []
        for d in nights:
            roles = served[d]
            base = (roles.get(CHAMPION) or (None,))[0]
            if base != champion:
                continue
            day = days.get(d, [champion, cand])
            if day is None:
                continue
            evidence.append(day)
            share = (roles.get(CHALLENGER) or (cand, 0.0))[1]
            who.append(
                np.asarray([cand if serves_challenger(model, e, share) else champion for e in day.ids], dtype=np.int64)
            )
        strategy = active["strategy"]
        if strategy == "shadow":
            out.challenger = compare_paired(cfg, evidence, champion, cand, metrics)
        else:
            out.challenger = compare_split(cfg, evidence, who, champion, cand, metrics)
        if strategy == "bandit":
            stats = {champion: ArmStats(champion), cand: ArmStats(cand)}
            for day, served_by in zip(evidence, who, strict=True):
                for v in (champion, cand):
                    r = day.per_entity(v, "reward") if reward_column(cfg) else day.correct(v)
                    r = r[(served_by == v) & np.isfinite(r)]
                    stats[v].add(r)
            kind = "bernoulli" if reward_column(cfg) is None and task != "regression" else "gaussian"
            b = cfg.rollout.bandit
            out.allocation = allocate(
                [stats[champion], stats[cand]],
                kind=kind,
                floor=b.floor,
                draws=b.draws,
                seed=night_seed(model, ds) % 2**32,
                reward=b.reward,
            )
            out.bandit = {
                "arms": {"champion": champion, "candidate": cand},
                "days": [d.ds.isoformat() for d in evidence],
                "allocation": out.allocation.as_dict(),
            }
    return out
