"""Monitoring and label quality of a multiclass and a regression model, on SQLite and PostgreSQL.

A multiclass LightGBM model brought from outside (its reference: the day its parity was proven on) and a
regression model nightshift trained (`[models.estimator] task = "regression"`, its reference: its training
days) are scored and monitored. Every row is sampled (the caps exceed a day's rows), so each drift distance
and each label-quality metric is recomputed here, independently of the monitoring code: from what the
original library predicts, what the store committed and what the labels say.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from nightshift.config import load_settings
from nightshift.db import open_store
from nightshift.demo import DEMO_ENTITY_ID, demo_contract
from nightshift.metrics import TASK_METRICS
from nightshift.monitoring import label_quality, monitor_partition
from nightshift.monitoring.checks import FAIL, PASS
from nightshift.scoring import score_partition
from tests.conftest import model_block
from tests.monitoring.conftest import CLEAN_DAYS, MEAN_SHIFT_DAY, MON_ROWS, TRAIN_DAYS

NUMERIC = [c.name for c in demo_contract().numeric]
#: Caps above a day's rows (and above the two training days'): every row is sampled, so every figure can be
#: recomputed from all rows.
MONITORING = """
[models.monitoring]
report = false
sample_rows = 10000
reference_rows = 10000
report_rows = 300
min_rows = 200
"""
#: The regression's own training: LightGBM on the label spend_next_month.
REGRESSION = """[models.estimator]
kind = "lightgbm"
task = "regression"
params = { n_estimators = 30, num_leaves = 15 }"""
#: Checks every night has, whatever the task (row_count is insufficient without history, but present).
COMMON = {"row_count", "missing_share", "out_of_range", "new_category", "drift", "dataset_drift", "score_coverage"}


@pytest.fixture
def settings(tmp_path: Path, mon_root: Path, store_url: str) -> Any:
    """plan (multiclass: next_plan) and spend (regression: spend_next_month, trained by nightshift)."""
    spend = model_block("spend", mon_root, MONITORING, "spend_next_month")
    estimator = spend[spend.index("[models.estimator]") : spend.index("[models.training]")]
    text = f'state_dir = "{tmp_path / "state"}"\nstore_url = "{store_url}"\n'
    text += model_block("plan", mon_root, MONITORING, "next_plan")
    text += spend.replace(estimator, REGRESSION + "\n\n")
    path = tmp_path / "nightshift.toml"
    path.write_text(text)
    return load_settings(path)


def _day(root: Path, ds: date, label: str) -> tuple[pa.Table, np.ndarray]:
    """A day's features and its labels in the features' row order."""
    features = pq.read_table(root / "features" / f"ds={ds.isoformat()}")
    labels = pq.read_table(root / "labels" / f"ds={ds.isoformat()}")
    order = pc.index_in(features.column(DEMO_ENTITY_ID), labels.column(DEMO_ENTITY_ID))
    return features, np.asarray(labels.column(label).take(order).to_pylist(), dtype=object)


def _committed(store: Any, model: str, version: int, ds: date, ids: list[str]) -> dict[str, Any]:
    rows = store.lookup(model, version, ds, ids)
    assert len(rows) == len(ids)
    return {r.entity_id: r for r in rows}


def _check(result: Any, kind: str) -> Any:
    [check] = [c for c in result.checks if c.kind == kind]
    return check


def _jensenshannon(reference: np.ndarray, current: np.ndarray, k: int) -> float:
    from scipy.spatial.distance import jensenshannon

    return float(jensenshannon(np.bincount(reference, minlength=k), np.bincount(current, minlength=k)))


def test_a_brought_multiclass_model_is_monitored_for_class_drift_and_judged_on_multiclass_metrics(
    settings: Any, mon_root: Path, tmp_path: Path, dask_client: Any
) -> None:
    import lightgbm as lgb
    from sklearn import metrics as m

    from nightshift.models.bring import register_brought

    train_features, train_labels = _day(mon_root, TRAIN_DAYS[0], "next_plan")
    est = lgb.LGBMClassifier(n_estimators=30, num_leaves=15, verbose=-1, random_state=0)
    est.fit(train_features.select(NUMERIC).to_pandas(), train_labels.astype(str))
    classes = [str(c) for c in est.classes_]
    path = tmp_path / "plan.txt"
    est.booster_.save_model(str(path))
    mv = register_brought(settings, "plan", str(path), ds=TRAIN_DAYS[0], class_names=classes).version
    assert mv.task == "multiclass"

    ds = CLEAN_DAYS[0]
    assert score_partition(settings, "plan", ds, client=dask_client).rows == MON_ROWS
    store = open_store(settings)
    try:
        result = monitor_partition(settings, "plan", ds, store=store, alert=False)
        kinds = [c.kind for c in result.checks]
        assert set(kinds) == COMMON | {"score_drift", "class_drift"}
        assert kinds.count("class_drift") == kinds.count("score_drift") == 1
        assert result.sampled_rows == result.rows == MON_ROWS  # every row: the figures below are exact
        # The predicted-class mix against the reference's (the parity day's), as LightGBM itself predicts both.
        features, truth = _day(mon_root, ds, "next_plan")
        reference = est.predict(train_features.select(NUMERIC).to_pandas())
        current = est.predict(features.select(NUMERIC).to_pandas())
        index = {c: i for i, c in enumerate(classes)}
        expected = _jensenshannon(
            np.array([index[c] for c in reference]), np.array([index[c] for c in current]), len(classes)
        )
        drift = _check(result, "class_drift")
        assert drift.statistic == "jensenshannon"
        assert drift.value == pytest.approx(expected, abs=2e-3)
        assert drift.status == PASS  # the same customers' plans, one day apart: no drift of the mix
        # The committed classes are LightGBM's (the top probability's): what the check counted.
        ids = [str(i) for i in features.column(DEMO_ENTITY_ID).to_pylist()]
        got = _committed(store, "plan", mv.version, ds, ids)
        committed = np.array([got[i].label for i in ids])
        assert (np.array([classes[k] for k in committed]) == current).mean() > 0.995
        assert {p.value for p in got.values()} == {None}

        quality = label_quality(settings, "plan", ds, store=store, alert=False)
        assert quality.summary["task"] == "multiclass"
        metrics = quality.summary["metrics"]
        assert set(TASK_METRICS["multiclass"]) <= set(metrics)
        assert not {"roc_auc", "rmse", "precision", "recall"} & set(metrics)
        assert [c.kind for c in quality.checks] == ["labelled_rows", "macro_f1", "accuracy", "log_loss"]
        # Recomputed from the committed probabilities and the labels of every row.
        probs = np.array([got[i].probs for i in ids], dtype=np.float64)
        y = np.array([index[str(t)] for t in truth])
        assert metrics["n"] == MON_ROWS
        assert metrics["accuracy"] == pytest.approx(m.accuracy_score(y, committed), abs=1e-9)
        assert metrics["macro_f1"] == pytest.approx(m.f1_score(y, committed, average="macro"), abs=1e-9)
        clipped = np.clip(probs, 1e-15, 1.0)
        expected_loss = float(-np.mean(np.log((clipped / clipped.sum(axis=1, keepdims=True))[np.arange(len(y)), y])))
        assert metrics["log_loss"] == pytest.approx(expected_loss, rel=1e-6)
        # Plausible: better than always answering the most common plan, and than a uniform guess.
        assert metrics["accuracy"] > np.bincount(y).max() / len(y) - 0.02
        assert metrics["log_loss"] < np.log(len(classes))
        macro_f1 = _check(quality, "macro_f1")
        assert macro_f1.threshold == pytest.approx(mv.metrics["macro_f1"] - 0.05)
    finally:
        store.dispose()


def test_a_trained_regression_is_monitored_for_value_drift_and_judged_on_regression_metrics(
    settings: Any, mon_root: Path, dask_client: Any
) -> None:
    from nightshift.models import open_registry
    from nightshift.training import train
    from nightshift.training.dataset import build_training_set
    from nightshift.training.pipeline import sklearn_predict

    cfg = settings.model("spend")
    assert (cfg.estimator.kind, cfg.estimator.task) == ("lightgbm", "regression")
    tset = build_training_set(settings, cfg, TRAIN_DAYS[-1])
    trained = train(tset.table, tset.labels, cfg.contract, cfg.estimator, cfg.training, cfg.decision_threshold)
    registry = open_registry(settings)
    mv = registry.register_trained(
        "spend", trained, cfg.contract, training_data=tset.record(), decision_threshold=cfg.decision_threshold
    )
    registry.set_alias("spend", "champion", mv.version, reason="test")
    assert [p["ds"] for p in mv.training_data["partitions"]] == [d.isoformat() for d in TRAIN_DAYS]

    def predict(days: list[date]) -> np.ndarray:
        from nightshift.data.features import model_frame

        table = pa.concat_tables(pq.read_table(mon_root / "features" / f"ds={d.isoformat()}") for d in days)
        return np.asarray(sklearn_predict(trained.pipeline, model_frame(table, cfg.contract), "regression"))

    reference = predict(TRAIN_DAYS)  # what scikit-learn predicts for the reference rows (the training days)
    store = open_store(settings)
    try:
        drift: dict[date, Any] = {}
        for ds in (CLEAN_DAYS[0], MEAN_SHIFT_DAY):
            assert score_partition(settings, "spend", ds, client=dask_client).rows == MON_ROWS
            result = monitor_partition(settings, "spend", ds, store=store, alert=False)
            kinds = [c.kind for c in result.checks]
            assert set(kinds) == COMMON | {"score_drift"}  # a value has no class mix
            assert kinds.count("score_drift") == 1
            drift[ds] = _check(result, "score_drift")
            # The values drift against the reference's, measured from all committed values.
            features, _ = _day(mon_root, ds, "spend_next_month")
            ids = [str(i) for i in features.column(DEMO_ENTITY_ID).to_pylist()]
            got = _committed(store, "spend", mv.version, ds, ids)
            values = np.array([got[i].value for i in ids], dtype=np.float64)
            # As scikit-learn predicts them, but for a row or two whose value float32 rounds across a split.
            assert np.isclose(values, predict([ds]), rtol=1e-4, atol=1e-3).mean() > 0.998
            from scipy.stats import wasserstein_distance

            assert drift[ds].statistic == "wasserstein_normed"
            expected = wasserstein_distance(reference, values) / max(float(np.std(reference)), 0.001)
            assert drift[ds].value == pytest.approx(expected, rel=1e-3, abs=1e-4)
            assert drift[ds].detail["mean"] == pytest.approx(values.mean(), rel=1e-6)
            assert drift[ds].detail["reference_mean"] == pytest.approx(reference.mean(), rel=1e-4)
        # Monthly charges up by one standard deviation: next month's spend moves with them, the values drift.
        assert (drift[CLEAN_DAYS[0]].status, drift[MEAN_SHIFT_DAY].status) == (PASS, FAIL)
        assert drift[MEAN_SHIFT_DAY].detail["mean"] > drift[CLEAN_DAYS[0]].detail["mean"]

        ds = CLEAN_DAYS[0]
        quality = label_quality(settings, "spend", ds, store=store, alert=False)
        assert quality.summary["task"] == "regression"
        metrics = quality.summary["metrics"]
        assert set(TASK_METRICS["regression"]) <= set(metrics)
        assert not {"roc_auc", "log_loss", "accuracy", "macro_f1"} & set(metrics)
        assert [c.kind for c in quality.checks] == ["labelled_rows", "rmse", "mae", "r2"]
        # Recomputed with numpy from the committed values and the labels of every row.
        features, truth = _day(mon_root, ds, "spend_next_month")
        ids = [str(i) for i in features.column(DEMO_ENTITY_ID).to_pylist()]
        got = _committed(store, "spend", mv.version, ds, ids)
        values = np.array([got[i].value for i in ids], dtype=np.float64)
        y = truth.astype(np.float64)
        assert metrics["n"] == MON_ROWS
        assert metrics["rmse"] == pytest.approx(float(np.sqrt(np.mean((values - y) ** 2))), rel=1e-9)
        assert metrics["mae"] == pytest.approx(float(np.mean(np.abs(values - y))), rel=1e-9)
        r2 = 1.0 - np.sum((y - values) ** 2) / np.sum((y - y.mean()) ** 2)
        assert metrics["r2"] == pytest.approx(float(r2), rel=1e-9)
        # Plausible: spend follows the charges but is 0 for a churner, which the features only partly predict.
        assert 0.2 < metrics["r2"] < 1.0
        assert metrics["rmse"] < float(np.std(y))
        assert metrics["mae"] <= metrics["rmse"]
        rmse = _check(quality, "rmse")
        assert rmse.threshold == pytest.approx(mv.metrics["rmse"] * 1.25)  # max_rmse_increase: 25 %
        assert rmse.status == PASS
    finally:
        store.dispose()
