"""Champion vs challenger on labelled outcomes: metrics of each, agreement, paired and split tests."""

from __future__ import annotations

from datetime import date
from typing import Any

from nightshift.config import Settings
from nightshift.db.store import Store
from nightshift.errors import PartitionNotReady
from nightshift.models.registry import CHAMPION, Registry
from nightshift.rollout.canary import serves_challenger
from nightshift.rollout.lifecycle import CHALLENGER, RolloutError, Rollouts


def compare_versions(
    settings: Settings,
    model: str,
    days: list[date],
    *,
    champion: int | None = None,
    challenger: int | None = None,
    store: Store | None = None,
) -> dict[str, Any]:
    """Champion vs challenger on labelled outcomes over `days`: metrics of each, agreement, and tests.

    Both versions score every entity every night (shadow, canary and blue/green alike), so the
    main test is paired: a paired t-test on the per-entity log-loss difference (n = labelled
    entities scored by both). When a canary share is set, the split the API serves is compared
    too: the challenger on its canary entities against the champion on the others (Welch's t-test,
    unpaired). Each test is reported with its sample size.
    """
    import numpy as np
    from scipy import stats

    from nightshift.data import list_partition_files, open_parquet
    from nightshift.training import classification_metrics

    cfg = settings.model(model)
    store = store or Store(settings.resolved_store_url, connect_retries=settings.connect_retries)
    registry = Registry(store, settings.artifacts_uri)
    aliases = registry.aliases(model)
    champion = champion or aliases.get(CHAMPION)
    challenger = challenger or aliases.get(CHALLENGER)
    if champion is None or challenger is None:
        raise RolloutError(f"model {model!r} needs a champion and a challenger to compare (aliases: {aliases})")
    labels_root = cfg.labels_uri(settings)
    y_all: list[int] = []
    a_all: list[float] = []
    b_all: list[float] = []
    ids_all: list[str] = []
    used: list[str] = []
    for d in days:
        pa_ = store.read_partition(model, champion, d)
        pb_ = store.read_partition(model, challenger, d)
        if pa_ is None or pb_ is None or labels_root is None:
            continue
        try:
            files = list_partition_files(labels_root, cfg.partition_key, d, cfg.success_marker)
        except PartitionNotReady:
            continue
        labels: dict[str, int] = {}
        for f in files:
            t = open_parquet(f).read(columns=[cfg.contract.entity_id, cfg.label_column])
            labels.update(
                zip(
                    (str(x) for x in t.column(cfg.contract.entity_id).to_pylist()),
                    t.column(cfg.label_column).to_pylist(),
                    strict=True,
                )
            )
        b_scores = dict(zip(pb_[0], pb_[1], strict=True))
        for eid, score in zip(pa_[0], pa_[1], strict=True):
            if eid in labels and eid in b_scores and labels[eid] is not None:
                ids_all.append(eid)
                y_all.append(labels[eid])
                a_all.append(score)
                b_all.append(b_scores[eid])
        used.append(d.isoformat())
    if not ids_all:
        raise RolloutError(f"{model}: no labelled day in {[d.isoformat() for d in days]} was scored by both versions")
    y = np.asarray(y_all, dtype=np.int64)
    a = np.clip(np.asarray(a_all, dtype=np.float64), 1e-7, 1 - 1e-7)
    b = np.clip(np.asarray(b_all, dtype=np.float64), 1e-7, 1 - 1e-7)
    loss_a = -(y * np.log(a) + (1 - y) * np.log(1 - a))
    loss_b = -(y * np.log(b) + (1 - y) * np.log(1 - b))
    diff = loss_b - loss_a
    if np.allclose(diff, 0.0):
        # Identical per-entity losses (e.g. the same model retrained on the same data): no difference.
        statistic, p_value = 0.0, 1.0
    else:
        paired = stats.ttest_rel(loss_b, loss_a)
        statistic, p_value = float(paired.statistic), float(paired.pvalue)
    threshold = settings.model(model).decision_threshold
    result: dict[str, Any] = {
        "model": model,
        "champion": champion,
        "challenger": challenger,
        "days": used,
        "n": len(y),
        "metrics": {
            f"v{champion}": classification_metrics(y, a, threshold),
            f"v{challenger}": classification_metrics(y, b, threshold),
        },
        "agreement": float(np.mean((a >= threshold) == (b >= threshold))),
        "score_correlation": float(np.corrcoef(a, b)[0, 1]) if len(y) > 1 else float("nan"),
        "paired_test": {
            "test": "paired t-test on per-entity log loss (challenger - champion)",
            "n": len(y),
            "mean_difference": float(np.mean(diff)),
            "statistic": statistic,
            "p_value": p_value,
            "verdict": _verdict(float(np.mean(diff)), p_value),
        },
    }
    active = Rollouts(settings, store).active(model)
    share = active.get("canary_share") if active else None
    if share:
        in_canary = np.array([serves_challenger(model, e, share) for e in ids_all])
        if in_canary.any() and (~in_canary).any():
            welch = stats.ttest_ind(loss_b[in_canary], loss_a[~in_canary], equal_var=False)
            result["split_test"] = {
                "test": "Welch's t-test on log loss: challenger on its canary entities vs champion on the rest",
                "n_challenger": int(in_canary.sum()),
                "n_champion": int((~in_canary).sum()),
                "canary_share": share,
                "statistic": float(welch.statistic),
                "p_value": float(welch.pvalue),
            }
    return result


def _verdict(mean_diff: float, p_value: float, alpha: float = 0.05) -> str:
    if p_value >= alpha:
        return f"no significant difference at alpha={alpha}"
    return "challenger better" if mean_diff < 0 else "challenger worse"
