"""Unit tests for nightshift.training: pipelines, ONNX export, parity and the train() contract."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")
pytest.importorskip("onnxruntime")

import onnx

from nightshift.config import EstimatorSettings, TrainingSettings
from nightshift.contracts import Column, FeatureContract
from nightshift.data.features import model_frame, model_inputs
from nightshift.errors import ParityError
from nightshift.training import pipeline as training

N_ROWS = 3000
SEED = 7

CONTRACT = FeatureContract(
    entity_id="customer_id",
    entity_id_type="string",
    columns=(
        Column(name="age", type="float64"),
        Column(name="income", type="float64"),
        Column(name="tenure", type="float64"),
        Column(name="visits", type="float64"),
        Column(name="region", type="string"),
        Column(name="plan", type="string"),
    ),
)

# Small trees keep the file fast; parity behaviour does not depend on size.
ESTIMATORS: dict[str, dict[str, Any]] = {
    "logistic_regression": {},
    "random_forest": {"n_estimators": 20, "max_depth": 6},
    "gradient_boosting": {"n_estimators": 30, "max_depth": 3},
}

# Measured max |ONNX - sklearn| on this data (held-out + perturbed rows): ~1e-7 for logistic
# regression, ~4e-7 for both tree ensembles (float32 accumulation in ONNX Runtime). 1e-4 (the
# default tolerance) leaves three orders of magnitude of headroom for every kind.
TOLERANCE = {"logistic_regression": 1e-4, "random_forest": 1e-4, "gradient_boosting": 1e-4}


def make_table(n: int = N_ROWS, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    """4 float64 columns and 2 string columns, all with nulls; label from a logistic of some of them."""
    rng = np.random.default_rng(seed)
    age = rng.normal(45, 12, n)
    income = rng.lognormal(10, 0.5, n)
    tenure = np.round(rng.exponential(3, n), 1)  # ties: thresholds land on data values
    visits = rng.poisson(4, n).astype(np.float64)
    region = rng.choice(["north", "south", "east", "west"], n)
    plan = rng.choice(["basic", "plus", "pro"], n, p=[0.6, 0.3, 0.1])
    logit = 0.06 * (age - 45) - 0.4 * (tenure - 3) + 0.3 * (visits - 4)
    logit += 1.2 * (plan == "pro") - 0.8 * (region == "east")
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)

    def nulls(rate: float) -> np.ndarray:
        return rng.random(n) < rate

    table = pa.table(
        {
            "customer_id": pa.array([f"ENT{i:06d}" for i in range(n)]),
            "age": pa.array(age, mask=nulls(0.1)),
            "income": pa.array(income, mask=nulls(0.05)),
            "tenure": pa.array(tenure, mask=nulls(0.1)),
            "visits": pa.array(visits, mask=nulls(0.02)),
            "region": pa.array(region.astype(object), mask=nulls(0.08), type=pa.string()),
            "plan": pa.array(plan.astype(object), mask=nulls(0.05), type=pa.string()),
        }
    )
    return table, labels


@pytest.fixture(scope="module")
def data() -> tuple[pa.Table, np.ndarray]:
    return make_table()


def settings(**overrides: Any) -> TrainingSettings:
    # parity_rows above the 750 validation rows: every held-out row is checked.
    values: dict[str, Any] = {"seed": SEED, "validation_fraction": 0.25, "parity_rows": 5000}
    values.update(overrides)
    return TrainingSettings(**values)


@pytest.fixture(scope="module", params=list(ESTIMATORS))
def trained(request: pytest.FixtureRequest, data: tuple[pa.Table, np.ndarray]) -> training.TrainedModel:
    table, labels = data
    kind = request.param
    return training.train(
        table,
        labels,
        CONTRACT,
        EstimatorSettings(kind=kind, params=ESTIMATORS[kind]),
        settings(parity_tolerance=TOLERANCE[kind]),
    )


def _kind(model: training.TrainedModel) -> str:
    return next(k for k in ESTIMATORS if training.algorithm_name(k) == model.algorithm)


# -- train() results ---------------------------------------------------------------------------


def test_trains_every_estimator_kind(trained: training.TrainedModel) -> None:
    assert trained.train_rows + trained.validation_rows == N_ROWS
    assert trained.validation_rows == pytest.approx(0.25 * N_ROWS, abs=1)
    assert trained.algorithm.startswith("sklearn.")
    assert set(trained.libraries) >= {"scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy", "pandas", "pyarrow"}
    json.dumps(trained.hyperparameters)  # JSON-safe
    assert trained.hyperparameters["random_state"] == SEED


def test_parity_passes_including_nulls_and_unseen(trained: training.TrainedModel) -> None:
    report = trained.parity
    assert report.passed
    assert report.max_abs_diff <= TOLERANCE[_kind(trained)]
    assert report.tolerance == TOLERANCE[_kind(trained)]
    assert report.label_disagreement == 0.0
    # every held-out row + a perturbed copy of each + 64 all-missing rows.
    assert report.rows == 2 * trained.validation_rows + 64
    assert report.perturbed_rows == trained.validation_rows + 64
    d = report.as_dict()
    assert d["max_abs_diff"] == report.max_abs_diff
    assert "worst_row" in d
    json.dumps(d)


def test_onnx_matches_sklearn_on_all_missing_and_unseen_rows(trained: training.TrainedModel) -> None:
    n = 40
    table = pa.table(
        {
            "age": pa.nulls(n, pa.float64()),
            "income": pa.array(np.linspace(-1e6, 1e6, n)),  # far outside the training range
            "tenure": pa.array([None, 1.0] * (n // 2), type=pa.float64()),
            "visits": pa.array(np.zeros(n)),
            "region": pa.array(["atlantis", None] * (n // 2), type=pa.string()),
            "plan": pa.array(["__unseen__plan"] * n),
        }
    )
    sk = trained.pipeline.predict_proba(model_frame(table, CONTRACT))[:, 1]
    onnx_p = training.onnx_scores(trained.onnx_bytes, model_inputs(table, CONTRACT))
    assert onnx_p.dtype == np.float64
    assert onnx_p.shape == (n,)
    assert np.max(np.abs(sk - onnx_p)) <= TOLERANCE[_kind(trained)]


def test_metrics(trained: training.TrainedModel) -> None:
    m = trained.metrics
    for key in ("roc_auc", "log_loss", "accuracy", "precision", "recall", "f1", "positive_rate", "brier"):
        assert key in m
        assert np.isfinite(m[key]), key
    assert 0.6 < m["roc_auc"] <= 1.0
    assert 0.0 <= m["brier"] < 0.25
    assert 0.0 <= m["positive_rate"] <= 1.0


def test_feature_importance_per_contract_feature(trained: training.TrainedModel) -> None:
    fi = trained.feature_importance
    assert list(fi) == CONTRACT.feature_names
    assert sum(fi.values()) == pytest.approx(1.0)
    assert all(v >= 0 for v in fi.values())
    # plan/tenure drive the label; income is pure noise.
    assert fi["income"] < max(fi["plan"], fi["tenure"])


def test_export_schema_and_outputs(trained: training.TrainedModel) -> None:
    model = onnx.load_from_string(trained.onnx_bytes)
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    assert [i.name for i in model.graph.input] == CONTRACT.feature_names
    assert trained.input_schema == [
        {"name": c.name, "type": "string" if c.type.is_categorical else "float32", "shape": [None, 1]}
        for c in CONTRACT.columns
    ]
    outputs = {o["name"]: o for o in trained.output_schema}
    assert outputs["probabilities"]["type"] == "float32"
    assert outputs["probabilities"]["shape"] == [None, 2]
    assert outputs["label"]["type"] == "int64"

    table, _ = make_table(50, seed=3)
    session = training._session(trained.onnx_bytes)
    label, proba = session.run(None, model_inputs(table, CONTRACT))
    assert proba.shape == (50, 2)
    assert label.shape == (50,)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_feature_importance_falls_back_to_permutation(data: tuple[pa.Table, np.ndarray]) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    table, labels = data
    pipe = training.build_pipeline(CONTRACT, EstimatorSettings(), SEED)
    pipe.steps[-1] = ("classifier", KNeighborsClassifier(n_neighbors=25))  # no coef_, no feature_importances_
    frame = model_frame(table, CONTRACT)
    pipe.fit(frame.iloc[:2000], labels[:2000])
    fi = training.feature_importance(pipe, CONTRACT, frame.iloc[2000:], labels[2000:], SEED)
    assert list(fi) == CONTRACT.feature_names
    assert sum(fi.values()) == pytest.approx(1.0)
    assert all(v >= 0 for v in fi.values())


def test_feature_importance_is_measured_or_left_empty_never_made_up(data: tuple[pa.Table, np.ndarray]) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    table, labels = data
    pipe = training.build_pipeline(CONTRACT, EstimatorSettings(), SEED)
    pipe.steps[-1] = ("classifier", KNeighborsClassifier(n_neighbors=25))  # no coef_, no feature_importances_
    frame = model_frame(table, CONTRACT)
    pipe.fit(frame.iloc[:2000], labels[:2000])
    one_class = np.zeros(N_ROWS - 2000, dtype=labels.dtype)  # no ROC AUC to permute: nothing can be measured
    assert training.feature_importance(pipe, CONTRACT, frame.iloc[2000:], one_class, SEED) == {}
    nothing = training.measure_feature_importance(pipe, CONTRACT, frame.iloc[2000:], one_class, SEED)
    assert (nothing.values, nothing.method) == ({}, None)
    measured = training.measure_feature_importance(pipe, CONTRACT, frame.iloc[2000:], labels[2000:], SEED)
    assert measured.method is not None
    assert measured.method.startswith("permutation")


def test_a_trained_model_says_how_its_importance_was_measured(trained: training.TrainedModel) -> None:
    assert trained.feature_importance_method is not None
    assert trained.feature_importance_method.startswith("permutation")


# -- build_pipeline / export -------------------------------------------------------------------


def test_unknown_estimator_param_names_it() -> None:
    with pytest.raises(ValueError, match=r"'n_trees'.*'random_forest'"):
        training.build_pipeline(CONTRACT, EstimatorSettings(kind="random_forest", params={"n_trees": 5}), SEED)


def test_trees_read_unscaled_numerics() -> None:
    # Scaling in float64 (sklearn) vs float32 (ONNX) moves values by one ulp, which flips splits whose
    # threshold sits on a data value: random_forest parity on make_table() fails (~0.04) if this regresses.
    for kind in ESTIMATORS:
        pipe = training.build_pipeline(CONTRACT, EstimatorSettings(kind=kind), SEED)
        numeric = pipe.named_steps["preprocess"].transformers[0][1]
        assert ("scale" in numeric.named_steps) == (kind == "logistic_regression"), kind


def test_params_pass_through_and_seed() -> None:
    pipe = training.build_pipeline(CONTRACT, EstimatorSettings(kind="gradient_boosting", params={"max_depth": 2}), 11)
    clf = pipe.named_steps["classifier"]
    assert clf.max_depth == 2
    assert clf.random_state == 11


def test_pipeline_on_dictionary_encoded_columns(data: tuple[pa.Table, np.ndarray]) -> None:
    table, labels = data
    encoded = table.set_column(
        table.schema.get_field_index("region"), "region", table.column("region").dictionary_encode()
    )
    pipe = training.build_pipeline(CONTRACT, EstimatorSettings(), SEED)
    pipe.fit(model_frame(encoded, CONTRACT), labels)
    report = training.check_parity(
        pipe, training.export_onnx(pipe, CONTRACT), encoded, CONTRACT, tolerance=1e-4, rows=300, seed=1
    )
    assert report.passed
    assert report.rows == 300 + 300 + 64


# -- parity failures ---------------------------------------------------------------------------


def test_impossible_tolerance_raises_parity_error(data: tuple[pa.Table, np.ndarray]) -> None:
    # float32 ONNX vs float64 sklearn can never agree to 1e-12 on a logistic regression.
    table, labels = data
    with pytest.raises(ParityError, match=r"tolerance 1e-12") as info:
        training.train(table, labels, CONTRACT, EstimatorSettings(), settings(parity_tolerance=1e-12))
    assert "ENT" not in str(info.value)  # no entity ids in the message


def test_noisy_onnx_raises_parity_error(data: tuple[pa.Table, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    real = training.onnx_predict

    def noisy(onnx_bytes: bytes, feeds: dict[str, np.ndarray], task: str) -> np.ndarray:
        scores = real(onnx_bytes, feeds, task)
        return scores + np.where(np.arange(len(scores)) == 17, 0.05, 0.0)

    monkeypatch.setattr(training, "onnx_predict", noisy)
    table, labels = data
    with pytest.raises(ParityError) as info:
        training.train(table, labels, CONTRACT, EstimatorSettings(), settings())
    message = str(info.value)
    assert "0.05" in message
    assert "tolerance 0.0001" in message
    assert "row 17 " in message
    assert "held-out row" in message
    assert "ENT" not in message


# -- labels ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.zeros(N_ROWS, dtype=np.int64), "both classes"),
        (np.r_[np.zeros(N_ROWS - 1), 1].astype(np.int64), "class 1 has 1 row"),
        (np.zeros(N_ROWS - 1, dtype=np.int64), "2999 value.*3000 row"),
        (np.tile([0, 1, 2], N_ROWS // 3), "binary.*2"),
        (np.tile([0.0, 1.0, 0.5], N_ROWS // 3), "binary.*0.5"),
        (np.r_[np.tile([0.0, 1.0], N_ROWS // 2 - 1), np.nan, 1.0], "null"),
        (np.array([0, 1, None] * (N_ROWS // 3), dtype=object), "null"),
        (pa.array([0, 1, None] * (N_ROWS // 3)), "null"),
        (np.array(["no", "yes"] * (N_ROWS // 2)), "0/1"),
    ],
)
def test_bad_labels_raise(data: tuple[pa.Table, np.ndarray], labels: Any, match: str) -> None:
    table, _ = data
    with pytest.raises(ValueError, match=match):
        training.train(table, labels, CONTRACT, EstimatorSettings(), settings())


def test_boolean_labels_accepted() -> None:
    assert training._check_labels(np.array([True, False, True, False]), 4).tolist() == [1, 0, 1, 0]


# -- determinism and sampling ------------------------------------------------------------------


def test_same_seed_same_model(data: tuple[pa.Table, np.ndarray]) -> None:
    table, labels = data
    est = EstimatorSettings(kind="random_forest", params={"n_estimators": 10, "max_depth": 5})
    a = training.train(table, labels, CONTRACT, est, settings())
    b = training.train(table, labels, CONTRACT, est, settings())
    feeds = model_inputs(make_table(500, seed=9)[0], CONTRACT)
    np.testing.assert_array_equal(training.onnx_scores(a.onnx_bytes, feeds), training.onnx_scores(b.onnx_bytes, feeds))
    assert a.metrics == b.metrics
    assert a.feature_importance == b.feature_importance
    c = training.train(table, labels, CONTRACT, est, settings(seed=SEED + 1))
    assert not np.array_equal(training.onnx_scores(c.onnx_bytes, feeds), training.onnx_scores(a.onnx_bytes, feeds))


def test_max_rows_cap_is_deterministic(data: tuple[pa.Table, np.ndarray]) -> None:
    table, labels = data
    model = training.train(table, labels, CONTRACT, EstimatorSettings(), settings(max_rows=1000))
    assert model.train_rows + model.validation_rows == 1000
    first = training.sample_rows(N_ROWS, 1000, SEED)
    assert first is not None
    assert len(first) == 1000
    assert np.all(np.diff(first) > 0)
    np.testing.assert_array_equal(first, training.sample_rows(N_ROWS, 1000, SEED))
    assert training.sample_rows(N_ROWS, N_ROWS, SEED) is None


def test_split_is_stratified_and_deterministic(data: tuple[pa.Table, np.ndarray]) -> None:
    _, labels = data
    tr, va = training.split_rows(labels, 0.25, SEED)
    tr2, va2 = training.split_rows(labels, 0.25, SEED)
    np.testing.assert_array_equal(va, va2)
    np.testing.assert_array_equal(tr, tr2)
    assert len(np.intersect1d(tr, va)) == 0
    assert len(tr) + len(va) == len(labels)
    assert labels[va].mean() == pytest.approx(labels.mean(), abs=0.01)


def test_a_failing_explainer_extraction_never_fails_training(
    data: tuple[pa.Table, np.ndarray], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The explainer is extracted whether or not reasons are on; when that fails the model trains all the same,
    with no explainer and the reason recorded (as for a kind without one), logged at INFO."""
    import logging

    from nightshift.training import explain

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise ValueError("the pipeline emits 9 columns for 8 coefficients")

    monkeypatch.setattr(explain, "_linear", broken)
    table, labels = data
    with caplog.at_level(logging.INFO, logger="nightshift.training"):
        model = training.train(
            table, labels, CONTRACT, EstimatorSettings(kind="logistic_regression"), settings(parity_tolerance=1e-4)
        )
    assert model.parity.passed
    assert model.explainer is None
    assert not model.explainer_files
    assert model.explainer_problem == (
        "its explainer could not be extracted: ValueError: the pipeline emits 9 columns for 8 coefficients"
    )
    [record] = [r for r in caplog.records if "no exact explainer recorded" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert model.explainer_problem in record.getMessage()


def test_a_trained_linear_model_records_its_explainer(trained: training.TrainedModel) -> None:
    """Extracted at training whatever [models.explain] says: reasons can be turned on without retraining."""
    if _kind(trained) == "logistic_regression":
        assert trained.explainer is not None
        assert trained.explainer_problem is None
    else:
        assert trained.explainer is None
        assert "has no exact explainer here" in str(trained.explainer_problem)
