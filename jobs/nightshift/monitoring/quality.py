"""The model's quality on a day once its labels arrive: committed predictions joined with the labels partition.

`label_quality` measures one version on one day (by default the champion that served the day, from
`served`); `quality_of_day` measures every version that served or shadowed it (champion, canary
challenger, bandit arms, previous), which is what the quality DAG and `nightshift outcomes` call.
`labelled_day` gives the rollout's outcome tests the labelled entities with every version's
prediction, aligned.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from nightshift.config import ModelSettings, Settings
from nightshift.db import schema
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
    `version` defaults to the champion that served ds (recorded in `served`), else today's champion.
    When the night's label-free estimate exists (kind 'estimate'), the result carries it next to the
    realized value and one `estimation_error` check per metric. Raises PartitionNotReady while the
    labels (or the predictions) are not there.
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
        if version is None:
            version = served_versions(store, model, ds).get("champion", (None, 0.0))[0]
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
        truth_type = {"binary": pa.int8(), "multiclass": pa.string(), "regression": pa.float64()}[mv.task]
        labels, _ = sampler.finish(
            pa.schema(
                [
                    pa.field(eid, pa.int64() if cfg.contract.entity_id_type == "int64" else pa.string()),
                    pa.field(label_col, truth_type),
                ]
            )
        )
        labels = labels.filter(pc.is_valid(labels.column(label_col))) if labels.num_rows else labels
        ids = pc.cast(labels.column(eid), pa.string()) if labels.num_rows else pa.array([], pa.string())
        got = committed_rows(
            store,
            part.run_id,
            ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids,
            columns={"binary": ("score", "label"), "multiclass": ("score", "label", "probs")}.get(
                mv.task, ("score", "value")
            ),
        )
        truth = pa.table({"entity_id": ids, "truth": pc.cast(labels.column(label_col), truth_type)})
        # Aligned by id, not with Table.join (which could not carry the real[] column PostgreSQL stored before 0013).
        at = pc.index_in(got.column("entity_id"), value_set=truth.column("entity_id").combine_chunks())
        hit = pc.is_valid(at)
        joined = got.filter(hit).append_column("truth", truth.column("truth").take(at.filter(hit)))
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
        if n >= mon.min_labelled_rows and mv.task != "binary":
            metrics, task_checks = _task_quality(mv, joined, mon, n)
            sampled = labels.num_rows < sampler.seen
            for c in task_checks:
                c.sampled = sampled
            checks += task_checks
        elif n >= mon.min_labelled_rows:
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
        estimate = _estimation_error(store, model, mv.version, ds, metrics, n, labels.num_rows < sampler.seen)
        checks += estimate[1]
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
                "task": mv.task,
                "validation_metrics": {
                    k: (mv.metrics or {}).get(k)
                    for k in ("roc_auc", "log_loss", "base_rate", "accuracy", "macro_f1", "rmse", "mae", "r2")
                    if k in (mv.metrics or {})
                },
                "failed": [c.describe() for c in checks if c.failing],
                "sample": policy.describe(sampler.seen, labels.num_rows),
                "decision_threshold": mv.decision_threshold,
                "estimate": estimate[0],
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


def _task_quality(mv: Any, joined: pa.Table, mon: Any, n: int) -> tuple[dict[str, Any], list[Check]]:
    """A multiclass or regression version's quality on the joined rows, and its checks against the version's
    recorded metrics (multiclass: macro F1 may drop by `max_macro_f1_drop`; regression: RMSE may grow by
    `max_rmse_increase` as a share)."""
    from nightshift.db.store import decode_probs
    from nightshift.metrics import task_metrics

    trained = mv.metrics or {}
    if mv.task == "regression":
        y = np.asarray(joined.column("truth").to_numpy(zero_copy_only=False), dtype=np.float64)
        values = np.asarray(joined.column("value").to_numpy(zero_copy_only=False), dtype=np.float64)
        metrics = task_metrics("regression", y, values)
        recorded = trained.get("rmse")
        high = (
            float(recorded) * (1 + mon.max_rmse_increase)
            if mon.max_rmse_increase is not None and isinstance(recorded, int | float) and math.isfinite(recorded)
            else None
        )
        checks = [
            _bound_check("rmse", metrics["rmse"], n, high=high, detail={"validation": recorded}),
            _bound_check("mae", metrics["mae"], n, detail={"validation": trained.get("mae")}),
            _bound_check("r2", metrics["r2"], n, detail={"validation": trained.get("r2")}),
        ]
    else:
        classes = [str(c) for c in ((mv.signature or {}).get("outputs") or {}).get("classes") or []]
        index = {c: i for i, c in enumerate(classes)}
        names = joined.column("truth").to_pylist()
        probs = [decode_probs(p) for p in joined.column("probs").to_pylist()]
        keep = [i for i, name in enumerate(names) if name in index and probs[i] is not None]
        y = np.asarray([index[names[i]] for i in keep], dtype=np.int64)
        matrix = np.asarray([probs[i] for i in keep], dtype=np.float64).reshape(len(keep), len(classes))
        metrics = task_metrics("multiclass", y, matrix)
        metrics["unknown_classes"] = float(len(names) - len(keep))
        recorded = trained.get("macro_f1")
        low = (
            float(recorded) - mon.max_macro_f1_drop
            if mon.max_macro_f1_drop is not None and isinstance(recorded, int | float) and math.isfinite(recorded)
            else None
        )
        checks = [
            _bound_check("macro_f1", metrics["macro_f1"], n, low=low, detail={"validation": recorded}),
            _bound_check("accuracy", metrics["accuracy"], n, detail={"validation": trained.get("accuracy")}),
            _bound_check("log_loss", metrics["log_loss"], n, detail={"validation": trained.get("log_loss")}),
        ]
    metrics["n"] = n
    return metrics, checks


# -- who served a day, and the estimate against the realized value ------------------------------------------


def served_versions(store: Store, model: str, ds: date) -> dict[str, tuple[int, float]]:
    """role → (version, share) of what served (or shadowed) `model` on `ds`, from `served`; empty when the day
    was never served by a nightly night."""
    t = schema.served
    with store.connect() as conn:
        rows = conn.execute(sa.select(t.c.role, t.c.version, t.c.share).where(t.c.model == model, t.c.ds == ds))
        return {str(r.role): (int(r.version), float(r.share)) for r in rows}


#: The estimated metrics compared with their realized value, per task.
_ESTIMATED = {"binary": ("roc_auc", "accuracy", "precision", "recall"), "multiclass": ("accuracy",)}


def _estimation_error(
    store: Store, model: str, version: int, ds: date, realized: dict[str, Any], n: int, sampled: bool
) -> tuple[dict[str, Any] | None, list[Check]]:
    """The night's label-free estimate (monitoring/cbpe.py) next to the realized metrics, and one
    informational `estimation_error` check per metric (|estimated - realized|), stored with the quality."""
    from nightshift.monitoring.cbpe import record_realized, stored_estimate

    estimated = stored_estimate(store, model, version, ds)
    if not estimated:
        return None, []
    out: dict[str, Any] = {}
    checks: list[Check] = []
    for name in ("roc_auc", "accuracy", "precision", "recall"):
        est, real = estimated.get(name), realized.get(name)
        if not isinstance(est, int | float) or not isinstance(real, int | float):
            continue
        if not (math.isfinite(est) and math.isfinite(real)):
            continue
        out[name] = {"estimated": float(est), "realized": float(real), "error": float(est) - float(real)}
        checks.append(
            Check(
                "estimation_error",
                None,
                name,
                abs(float(est) - float(real)),
                None,
                PASS,
                n,
                sampled,
                detail={**out[name], "method": "CBPE", "informational": True},
            )
        )
    if out:
        record_realized(
            store,
            model,
            version,
            ds,
            {k: v["realized"] for k, v in out.items()},
            {k: v["error"] for k, v in out.items()},
        )
    return (out or None), checks


# -- every serving version of a day ------------------------------------------------------------------------


@dataclass
class DayQuality:
    """The quality of every version that served (or shadowed) a day: role → its 'quality' result."""

    model: str
    ds: date
    results: dict[str, MonitorResult] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)
    source: str = "served"

    @property
    def champion_version(self) -> int | None:
        """The version that served the day as champion (None when the day was never served)."""
        return self.versions.get("champion")

    @property
    def status(self) -> str:
        """The champion's verdict (fail if any serving version failed)."""
        statuses = [r.status for r in self.results.values()]
        if FAIL in statuses:
            return FAIL
        champion = self.results.get("champion")
        return champion.status if champion else (statuses[0] if statuses else INSUFFICIENT)

    def as_dict(self) -> dict[str, Any]:
        champion = self.results.get("champion")
        return {
            "model": self.model,
            "ds": self.ds.isoformat(),
            "source": self.source,
            "status": self.status,
            # What the quality DAG's retraining decision judges: the version that served the day.
            "version": self.champion_version if champion else None,
            "versions": dict(self.versions),
            "shares": dict(self.shares),
            "results": {role: r.as_dict() for role, r in self.results.items()},
        }


def quality_of_day(
    settings: Settings, model: str, ds: date, *, store: Store | None = None, alert: bool = True
) -> DayQuality:
    """Label quality of every version that served or shadowed `ds` (from `served`: champion, challenger,
    bandit arms, previous), each stored as its own kind 'quality' result. A day no nightly night recorded
    (scored before `served` existed, or by hand) is measured for every version with a committed partition
    that day. Raises PartitionNotReady while the labels are not there."""
    own = store is None
    if store is None:
        from nightshift.db import open_store

        store = open_store(settings)
    try:
        served = served_versions(store, model, ds)
        day = DayQuality(model, ds)
        if served:
            day.versions = {role: v for role, (v, _s) in served.items()}
            day.shares = {role: s for role, (_v, s) in served.items()}
        else:
            p = schema.partitions
            with store.connect() as conn:
                found = conn.execute(
                    sa.select(p.c.version)
                    .where(p.c.model == model, p.c.ds == ds, p.c.status == "committed")
                    .order_by(p.c.version)
                ).scalars()
                day.versions = {f"v{int(v)}": int(v) for v in found}
            day.source = "committed partitions (no served record)"
            if not day.versions:
                raise PartitionNotReady(f"model {model!r} has no committed partition for ds={ds}")
        measured: dict[int, MonitorResult] = {}
        for role, version in day.versions.items():
            if version not in measured:
                measured[version] = label_quality(settings, model, ds, version=version, store=store, alert=alert)
            day.results[role] = measured[version]
        return day
    finally:
        if own:
            store.dispose()


# -- the labelled entities of a day with every version's prediction, for the outcome tests -----------------


@dataclass
class LabelledDay:
    """One labelled day: the hash-sampled labelled entities, their outcome (and reward), and each version's
    committed prediction of them, aligned (missing predictions: NaN score)."""

    ds: date
    task: str
    ids: list[str]
    truth: np.ndarray
    reward: np.ndarray | None
    scores: dict[int, np.ndarray] = field(default_factory=dict)
    labels: dict[int, np.ndarray] = field(default_factory=dict)
    values: dict[int, np.ndarray] = field(default_factory=dict)
    probs: dict[int, np.ndarray] = field(default_factory=dict)
    classes: dict[int, list[str]] = field(default_factory=dict)
    threshold: dict[int, float] = field(default_factory=dict)

    def present(self, version: int) -> np.ndarray:
        """Entities the version has a committed prediction for."""
        return np.isfinite(self.scores[version])

    def per_entity(self, version: int, metric: str) -> np.ndarray:
        """The metric for every entity (NaN where it cannot be computed: no prediction, unknown class)."""
        from nightshift.metrics import per_entity_loss

        n = len(self.ids)
        out = np.full(n, np.nan)
        ok = self.present(version)
        if self.task == "binary":
            y = self.truth.astype(np.float64)
            p = self.scores[version]
            if metric == "log_loss":
                out[ok] = per_entity_loss("binary", y[ok], p[ok])
            elif metric == "brier":
                out[ok] = (p[ok] - y[ok]) ** 2
            elif metric == "accuracy":
                out[ok] = (self.labels[version][ok] == y[ok]).astype(np.float64)
            elif metric == "reward" and self.reward is not None:
                out[ok] = self.reward[ok]
        elif self.task == "multiclass":
            classes = self.classes.get(version) or []
            index = {c: i for i, c in enumerate(classes)}
            truth_idx = np.asarray([index.get(str(t), -1) for t in self.truth], dtype=np.int64)
            ok &= truth_idx >= 0
            if metric == "accuracy":
                out[ok] = (self.labels[version][ok] == truth_idx[ok]).astype(np.float64)
            elif metric in ("log_loss", "brier") and version in self.probs:
                probs = self.probs[version]
                has = ok & np.isfinite(probs).all(axis=1)
                if metric == "log_loss":
                    out[has] = per_entity_loss("multiclass", truth_idx[has], probs[has])
                else:
                    onehot = np.zeros_like(probs[has])
                    onehot[np.arange(int(has.sum())), truth_idx[has]] = 1.0
                    out[has] = ((probs[has] - onehot) ** 2).sum(axis=1)
            elif metric == "reward" and self.reward is not None:
                out[ok] = self.reward[ok]
        else:
            y = self.truth.astype(np.float64)
            v = self.values.get(version, self.scores[version])
            if metric == "squared_error":
                out[ok] = (v[ok] - y[ok]) ** 2
            elif metric == "absolute_error":
                out[ok] = np.abs(v[ok] - y[ok])
            elif metric == "reward" and self.reward is not None:
                out[ok] = self.reward[ok]
        return out

    def correct(self, version: int) -> np.ndarray:
        """The bandit's default reward per entity: the decision was right (1/0); a regression: -|error|."""
        if self.task == "regression":
            return -self.per_entity(version, "absolute_error")
        return self.per_entity(version, "accuracy")


def _sampled_labels(
    settings: Settings, cfg: ModelSettings, ds: date, truth_type: pa.DataType, extra: list[str]
) -> tuple[pa.Array, pa.Table]:
    """The labelled entities of `ds` (hash sample of `monitoring.label_rows`, null labels dropped): their ids as
    strings and the label (and `extra`) columns."""
    from nightshift.data import list_partition_files, open_parquet
    from nightshift.errors import ConfigError

    labels_root = cfg.labels_uri(settings)
    if labels_root is None:
        raise ConfigError(f"model {cfg.name!r} declares no labels location: its outcomes cannot be measured")
    mon = cfg.monitoring
    files = list_partition_files(labels_root, cfg.partition_key, ds, cfg.success_marker)
    eid, label_col = cfg.contract.entity_id, cfg.label_column
    columns = [eid, label_col, *[c for c in extra if c not in (eid, label_col)]]
    sampler = HashSampler(mon.label_rows, file_rows(files), mon.sample_seed)
    for uri in files:
        for batch in open_parquet(uri).iter_batches(batch_size=65_536, columns=columns):
            sampler.offer(batch, batch.column(eid))
    fields = [
        pa.field(eid, pa.int64() if cfg.contract.entity_id_type == "int64" else pa.string()),
        pa.field(label_col, truth_type),
        *[pa.field(c, pa.float64()) for c in columns[2:]],
    ]
    table, _ = sampler.finish(pa.schema(fields))
    if table.num_rows:
        table = table.filter(pc.is_valid(table.column(label_col)))
    ids = pc.cast(table.column(eid), pa.string()) if table.num_rows else pa.array([], pa.string())
    return (ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids), table


def labelled_day(
    settings: Settings, store: Store, model: str, ds: date, versions: list[int], *, reward_column: str | None = None
) -> LabelledDay:
    """The labelled entities of `ds` with each version's committed prediction (see LabelledDay). Versions
    without a committed partition that day get all-NaN scores. Raises PartitionNotReady without labels."""
    from nightshift.db.store import decode_probs
    from nightshift.models.registry import Registry

    cfg = settings.model(model)
    registry = Registry(store, settings.artifacts_uri)
    mvs = {v: registry.get(model, v) for v in dict.fromkeys(versions)}
    task = next(iter(mvs.values())).task if mvs else "binary"
    truth_type = {"binary": pa.int8(), "multiclass": pa.string(), "regression": pa.float64()}[task]
    ids, table = _sampled_labels(settings, cfg, ds, truth_type, [reward_column] if reward_column else [])
    truth_col = table.column(cfg.label_column) if table.num_rows else pa.array([], truth_type)
    truth = np.asarray(pc.cast(truth_col, truth_type).to_numpy(zero_copy_only=False))
    reward = None
    if reward_column and table.num_rows:
        reward = np.asarray(
            pc.fill_null(table.column(reward_column), np.nan).to_numpy(zero_copy_only=False), dtype=np.float64
        )
    id_list = [str(x) for x in ids.to_pylist()]
    day = LabelledDay(ds, task, id_list, truth, reward)
    n = len(id_list)
    for version, mv in mvs.items():
        day.threshold[version] = mv.decision_threshold
        day.classes[version] = [str(c) for c in ((mv.signature or {}).get("outputs") or {}).get("classes") or []]
        scores = np.full(n, np.nan)
        labels = np.full(n, -1, dtype=np.int64)
        values = np.full(n, np.nan)
        part = store.partition(model, version, ds)
        if part is not None and n:
            columns = {"binary": ("score", "label"), "multiclass": ("score", "label", "probs")}.get(
                mv.task, ("score", "value")
            )
            got = committed_rows(store, part.run_id, ids, columns=columns)
            index = pc.index_in(pc.cast(ids, pa.string()), value_set=got.column("entity_id"))
            idx = np.asarray(index.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
            hit = idx >= 0
            scores[hit] = np.asarray(got.column("score").to_numpy(zero_copy_only=False), dtype=np.float64)[idx[hit]]
            if "label" in columns:
                found = np.asarray([-1 if v is None else int(v) for v in got.column("label").to_pylist()])
                labels[hit] = found[idx[hit]] if found.size else labels[hit]
            if "value" in columns:
                vals = np.asarray(
                    [np.nan if v is None else float(v) for v in got.column("value").to_pylist()], dtype=np.float64
                )
                values[hit] = vals[idx[hit]] if vals.size else values[hit]
                day.values[version] = values
            if "probs" in columns:
                k = len(day.classes[version])
                matrix = np.full((n, k), np.nan)
                decoded = [decode_probs(p) for p in got.column("probs").to_pylist()]
                for row, j in zip(np.flatnonzero(hit), idx[hit], strict=True):
                    probs = decoded[j]
                    if probs is not None and len(probs) == k:
                        matrix[row] = probs
                day.probs[version] = matrix
        day.scores[version] = scores
        day.labels[version] = labels
    return day
