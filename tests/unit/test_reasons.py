"""Reasons on the worker: the top-k order, category codes, and the linear explainer against scikit-learn."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nightshift.scoring.reasons import ExplainSpec, category_codes, make_explainer, top_k
from tests.conftest import DEMO_START


def test_top_k_orders_by_size_then_feature_and_keeps_signs() -> None:
    contributions = np.array([[0.1, -0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, -1.0, 2.0, -4.0]])
    codes, values = top_k(contributions, 2)
    assert codes.dtype == np.int16
    assert values.dtype == np.float32
    assert codes.tolist() == [[1, 2], [0, 1], [3, 0]]  # a tie: the lower feature index first
    assert values.tolist() == [[-0.5, 0.5], [0.0, 0.0], [-4.0, 3.0]]
    codes, values = top_k(contributions, 10)  # k beyond the features: every feature, ordered
    assert codes.tolist()[2] == [3, 0, 2, 1]


def test_category_codes_map_nulls_to_missing_and_unseen_past_the_end() -> None:
    categories = ["a", "b", "__missing__"]
    plain = pa.array(["b", None, "z", "a"], pa.string())
    assert category_codes(plain, categories).tolist() == [1, 2, 3, 0]
    assert category_codes(plain.dictionary_encode(), categories).tolist() == [1, 2, 3, 0]
    assert category_codes(pa.chunked_array([plain.slice(0, 2), plain.slice(2)]), categories).tolist() == [1, 2, 3, 0]
    assert category_codes(pa.array(["b", None], pa.large_string()), ["a", "b"]).tolist() == [1, 2]  # no __missing__
    assert category_codes(pa.nulls(2), categories).tolist() == [2, 2]


def test_the_linear_explainer_is_the_pipelines_log_odds_on_nulls_and_unseen_categories(
    trained_model: Any, demo_root: Path
) -> None:
    """baseline + Σ contributions = scikit-learn's decision function, on rows with random nulls and categories
    never seen in training (what parity checks perturb)."""
    from nightshift.data.features import model_frame, model_inputs
    from nightshift.demo import demo_contract
    from nightshift.training.pipeline import _perturb

    contract = demo_contract()
    table = pq.read_table(demo_root / "features" / "ds=2026-11-18").slice(0, 2000)
    perturbed = _perturb(table.select(contract.feature_names), contract, np.random.default_rng(1))
    explainer = make_explainer(ExplainSpec(trained_model.explainer, 3))
    for rows in (table.select(contract.feature_names), perturbed):
        batch = rows.combine_chunks().to_batches()[0]
        full = explainer.contributions(batch, model_inputs(batch, contract), None)
        decision = trained_model.pipeline.decision_function(model_frame(rows, contract))
        np.testing.assert_allclose(trained_model.explainer["baseline"][0] + full.sum(axis=1), decision, atol=1e-5)


@pytest.mark.parametrize(
    ("kind", "task"),
    [
        ("logistic_regression", "multiclass"),
        ("logistic_regression", "regression"),
        ("lightgbm", "multiclass"),
        ("lightgbm", "regression"),
        ("xgboost", "multiclass"),
        ("xgboost", "regression"),
        ("random_forest", "binary"),
    ],
)
def test_every_explainable_kind_and_task_sums_to_its_output(
    demo_root: Path, tmp_path: Path, kind: str, task: str
) -> None:
    """The contributions of the predicted class (multiclass) or the value (regression) plus the baseline are the
    model's own output; a random forest records why it has no explainer."""
    from nightshift.config import EstimatorSettings, TrainingSettings
    from nightshift.data.features import model_frame, model_inputs
    from nightshift.training.pipeline import train
    from tests.unit.test_training_tasks import CONTRACT, _day

    table, labels = _day(demo_root, DEMO_START, task)
    params = {"n_estimators": 20} if kind != "logistic_regression" else {}
    trained = train(
        table, labels, CONTRACT, EstimatorSettings(kind=kind, task=task, params=params), TrainingSettings(seed=3)
    )
    if kind == "random_forest":
        assert trained.explainer is None
        assert "no exact explainer" in (trained.explainer_problem or "")
        return
    assert trained.explainer is not None
    spec = dict(trained.explainer)
    for name, data in (trained.explainer_files or {}).items():  # the booster file, as registration writes it
        path = tmp_path / name
        path.write_bytes(data)
        spec["files"] = {name: {"uri": str(path), "sha256": hashlib.sha256(data).hexdigest()}}
    explainer = make_explainer(ExplainSpec(spec, 3))
    rows = pq.read_table(demo_root / "features" / "ds=2026-11-18").slice(0, 1000).select(CONTRACT.feature_names)
    batch = rows.combine_chunks().to_batches()[0]
    frame = model_frame(rows, CONTRACT)
    est = trained.pipeline.steps[-1][1]
    x = trained.pipeline[:-1].transform(frame)
    predicted = None if task == "regression" else np.asarray(trained.pipeline.predict_proba(frame)).argmax(axis=1)
    full = explainer.contributions(batch, model_inputs(batch, CONTRACT), predicted)
    if kind == "logistic_regression":
        if task == "regression":
            output, baseline = est.predict(x), trained.explainer["baseline"][0]
        else:
            decision = est.decision_function(x)
            output = decision[np.arange(len(decision)), predicted]
            baseline = np.asarray(trained.explainer["baseline"])[predicted]
        np.testing.assert_allclose(baseline + full.sum(axis=1), output, atol=1e-5)
        return
    # A booster: the bias column of its own TreeSHAP is the baseline; with it the contributions make the margin.
    if kind == "lightgbm":
        raw = np.asarray(est.predict(x, pred_contrib=True))
        margin = np.asarray(est.predict(x, raw_score=True))
    else:
        import xgboost as xgb

        raw = np.asarray(est.get_booster().predict(xgb.DMatrix(x), pred_contribs=True))
        margin = np.asarray(est.get_booster().predict(xgb.DMatrix(x), output_margin=True))
    m = x.shape[1]
    raw = raw.reshape(len(frame), -1, m + 1)
    if task == "multiclass":
        raw, margin = (
            raw[np.arange(len(frame)), predicted],
            margin.reshape(len(frame), -1)[np.arange(len(frame)), predicted],
        )
    else:
        raw, margin = raw[:, 0], margin.reshape(-1)
    np.testing.assert_allclose(raw[:, -1] + full.sum(axis=1), margin, atol=1e-4)
