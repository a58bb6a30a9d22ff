"""nightshift's own training of every task: LightGBM and XGBoost beside scikit-learn; binary, multiclass, regression."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from nightshift.config import EstimatorSettings, TrainingSettings
from nightshift.data.features import model_inputs
from nightshift.demo import demo_contract
from nightshift.training.pipeline import onnx_predict, sklearn_predict, task_labels, train
from tests.conftest import DEMO_START

LABEL = {"binary": "churned", "multiclass": "next_plan", "regression": "spend_next_month"}
CONTRACT = demo_contract()


def _day(root: Path, ds: date, task: str) -> tuple[Any, np.ndarray]:
    features = pq.read_table(root / "features" / f"ds={ds.isoformat()}")
    labels = pq.read_table(root / "labels" / f"ds={ds.isoformat()}")
    labels = labels.take(pc.index_in(features.column("customer_id"), labels.column("customer_id")))
    return features, labels.column(LABEL[task]).to_numpy(zero_copy_only=False)


@pytest.mark.parametrize(
    ("kind", "task"),
    [
        ("lightgbm", "binary"),
        ("lightgbm", "multiclass"),
        ("lightgbm", "regression"),
        ("xgboost", "binary"),
        ("xgboost", "multiclass"),
        ("xgboost", "regression"),
        ("random_forest", "regression"),
        ("logistic_regression", "multiclass"),
        ("logistic_regression", "regression"),
    ],
)
def test_every_kind_trains_every_task_and_its_onnx_matches(demo_root: Path, kind: str, task: str) -> None:
    table, labels = _day(demo_root, DEMO_START, task)
    params = {"n_estimators": 20} if kind in ("lightgbm", "xgboost", "random_forest") else {}
    trained = train(
        table, labels, CONTRACT, EstimatorSettings(kind=kind, task=task, params=params), TrainingSettings(seed=3)
    )
    assert trained.task == task
    assert trained.parity.passed, trained.parity.worst_row_description
    assert trained.parity.max_abs_diff < 1e-4
    metrics = trained.metrics
    if task == "regression":
        assert {"rmse", "mae", "r2"} <= set(metrics)
        # Spend follows this month's charges, but is 0 for a churner, which the features only partly predict.
        assert metrics["r2"] > 0.2
        assert trained.classes == []
        assert trained.signature() == {"outputs": {"task": "regression", "classes": [], "value": "variable"}}
    elif task == "multiclass":
        assert {"log_loss", "accuracy", "macro_f1"} <= set(metrics)
        assert trained.classes == sorted(set(labels.tolist()))
        assert len(trained.classes) == 4
        assert metrics["accuracy"] > 0.4  # the plan mostly stays: far better than a quarter
    else:
        assert metrics["roc_auc"] > 0.6
        assert trained.signature() is None  # the binary layout every version always had
    # The ONNX graph answers like the fitted pipeline on rows it never saw, per task.
    check, _ = _day(demo_root, date(2026, 11, 18), task)
    feeds = model_inputs(check.slice(0, 300), CONTRACT)
    from nightshift.data.features import model_frame

    sk = sklearn_predict(trained.pipeline, model_frame(check.slice(0, 300), CONTRACT), task)
    ort = onnx_predict(trained.onnx_bytes, feeds, task)
    scale = np.maximum(1.0, np.abs(sk)) if task == "regression" else 1.0
    assert np.max(np.abs(sk - ort) / scale) < 1e-4
    assert trained.feature_importance  # measured for every task (permutation on the validation rows)


def test_labels_that_do_not_fit_the_task_are_refused_naming_why() -> None:
    with pytest.raises(ValueError, match="at least 3 classes"):
        task_labels(np.array(["a", "b", "a", "b"]), 4, "multiclass")
    with pytest.raises(ValueError, match="class 'c' has 1 labelled row"):
        task_labels(np.array(["a", "b", "c", "a", "b"]), 5, "multiclass")
    with pytest.raises(ValueError, match="must be numbers"):
        task_labels(np.array(["x", "y", "z", "w"], dtype=object), 4, "regression")
    with pytest.raises(ValueError, match="1 null value"):
        task_labels(np.array([1.0, None, 2.0, 3.0], dtype=object), 4, "regression")
    y, classes = task_labels(np.array([2, 0, 1, 2, 0, 1]), 6, "multiclass")
    assert classes == ["0", "1", "2"]
    assert y.tolist() == [2, 0, 1, 2, 0, 1]


def test_a_gate_metric_of_another_task_is_refused_at_retrain(store_url: str, make_settings: Any) -> None:
    """Gates judge the task's metrics: a regression retrain gated on ROC AUC is rejected with the reason."""
    from nightshift.rollout import Rollouts
    from tests.conftest import SCORE_DS

    settings = make_settings(store_url)
    cfg = settings.model("churn")
    cfg.estimator.kind, cfg.estimator.task, cfg.label_column = "lightgbm", "regression", "spend_next_month"
    cfg.estimator.params = {"n_estimators": 10}
    out = Rollouts(settings).retrain("churn", SCORE_DS, trigger={"kind": "test"})
    assert out.status == "rejected"
    assert "gates.metric 'roc_auc' does not measure a regression model" in out.reason
    cfg.gates.metric, cfg.gates.min = "r2", 0.2
    out = Rollouts(settings).retrain("churn", SCORE_DS, trigger={"kind": "test"})
    assert out.status == "promoted", out.reason
    assert [g["name"] for g in out.gates if g["passed"]] == [
        "onnx_parity",
        "acceptable_range",
        "end_to_end",
        "not_worse_than_champion",
    ]


def test_class_names_follow_one_rule_for_models_trained_here_and_brought() -> None:
    from nightshift.metrics import class_name

    assert [class_name(v) for v in (True, False, 1.0, 2, "gold", 2.5)] == ["1", "0", "1", "2", "gold", "2.5"]


@pytest.mark.parametrize("task", ["regression", "binary"])
def test_a_lightgbm_split_between_float32_values_answers_alike_in_onnx(task: str) -> None:
    """LightGBM splits between 52.3 and 52.5 (as float32) at their float64 midpoint 52.39999961853027, which the
    ONNX graph's float32 would round ONTO 52.4: a row with 52.4 must still go where LightGBM sends it."""
    import pyarrow as pa

    from nightshift.contracts import Column, ColumnType, FeatureContract
    from nightshift.data.features import model_frame

    low, high = np.float32(52.3), np.float32(52.5)
    assert np.float32((float(low) + float(high)) / 2) == np.float32(52.4)  # the premise: it rounds onto a value
    contract = FeatureContract(entity_id="id", columns=(Column(name="x", type=ColumnType.float64),))
    x = np.repeat([52.3, 52.5], 100)
    table = pa.table({"id": np.arange(x.size), "x": x})
    y = (x > 52.4).astype(np.int64) * (10 if task == "regression" else 1)
    params = {"n_estimators": 3, "min_child_samples": 5}
    trained = train(
        table, y, contract, EstimatorSettings(kind="lightgbm", task=task, params=params), TrainingSettings()
    )
    assert trained.parity.passed, trained.parity.worst_row_description
    probe = pa.table({"id": [0, 1, 2], "x": [52.3, 52.4, 52.5]})
    sk = sklearn_predict(trained.pipeline, model_frame(probe, contract), task)
    ort = onnx_predict(trained.onnx_bytes, model_inputs(probe, contract), task)
    assert np.abs(sk - ort).max() < 1e-5, (sk, ort)
    # Where LightGBM sends float32 52.4: above its float64 threshold, with 52.5.
    assert sk[1] == pytest.approx(sk[2])
    assert sk[1] != pytest.approx(sk[0])
