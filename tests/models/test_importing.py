"""Bring your own model: every flavour loaded from its real file format, converted to ONNX, and proven equal to the
original library on real demo rows (with NaNs, unseen categories and all-missing copies)."""

from __future__ import annotations

import hashlib
import pickle
import re
import tomllib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from nightshift.contracts import Column, ColumnType, FeatureContract
from nightshift.data.features import onnx_feeds
from nightshift.demo import DEMO_ENTITY_ID
from nightshift.models.importing import (
    ImportedModel,
    InputSpec,
    ModelImportError,
    OutputSpec,
    check_inputs,
    contract_toml,
    load_model,
    propose_contract,
)
from nightshift.models.parity import NOT_APPLICABLE, check_import_parity
from tests.conftest import SCORE_DS
from tests.models.conftest import CATEGORICAL, NUMERIC, TIERS, Day, record

sk_pipeline = pytest.importorskip("sklearn.pipeline")


def _parity(model: ImportedModel, day: Day, contract: FeatureContract, label: str) -> None:
    report = check_import_parity(model, day.table, contract, rows=2000, seed=3)
    assert report.applicable
    assert report.passed, report.describe()
    assert report.rows == 2000 + 2000 + 64
    assert report.perturbed_rows == 2064
    record(label, report.max_diff)


def _pipeline(kind: str) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if kind == "binary":
        numeric: Any = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        estimator: Any = LogisticRegression(max_iter=2000)
    else:
        # Trees are not scaled: scikit-learn scales in float64 and ONNX in float32, which can move a value
        # across a split threshold (see training/pipeline.py).
        numeric = SimpleImputer(strategy="median")
        estimator = (
            RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0)
            if kind == "multiclass"
            else RandomForestRegressor(n_estimators=30, max_depth=8, random_state=0)
        )
    pre = ColumnTransformer([("num", numeric, NUMERIC), ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL)])
    return Pipeline([("preprocess", pre), ("model", estimator)])


def _labels(day: Day, task: str) -> np.ndarray:
    return {"binary": day.binary, "multiclass": day.multiclass, "regression": day.regression}[task]


# -- ONNX files ----------------------------------------------------------------------------------


def test_an_onnx_file_is_read_as_it_is_and_run_without_an_original(
    tmp_path: Path, train_day: Day, check_day: Day, contract: FeatureContract
) -> None:
    from skl2onnx import to_onnx

    pipe = _pipeline("binary").fit(train_day.frame(contract.feature_names), train_day.binary)
    sk_model = load_model_from_object(pipe, tmp_path)
    path = tmp_path / "churn.onnx"
    path.write_bytes(sk_model.onnx_bytes)
    model = load_model(str(path))
    assert model.flavour == "onnx"
    assert model.original is None
    assert model.converter == "none"
    assert model.library == "skl2onnx"
    assert model.inputs.layout == "columns"
    assert model.inputs.element_types["plan"] == "string"
    assert model.inputs.element_types["age"] == "float32"
    assert model.outputs == OutputSpec("binary", ("0", "1"), probabilities="probabilities", label="label")
    report = check_import_parity(model, check_day.table, contract, rows=500)
    assert report.status == NOT_APPLICABLE, report.describe()
    assert report.passed, report.describe()
    assert "not applicable (no original)" in report.describe()
    assert report.rows == 500 + 500 + 64
    # The same graph with ZipMap left on is refused with the way out.
    zipped = to_onnx(pipe, train_day.frame(contract.feature_names)[:5], target_opset={"": 17, "ai.onnx.ml": 3})
    (tmp_path / "zipmap.onnx").write_bytes(zipped.SerializeToString())
    with pytest.raises(ModelImportError, match=r"^zipmap\.onnx: onnx: output .* is a ZipMap .*zipmap disabled"):
        load_model(str(tmp_path / "zipmap.onnx"))


def load_model_from_object(obj: Any, tmp_path: Path, name: str = "model.pkl", **kwargs: Any) -> ImportedModel:
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj))
    return load_model(str(path), trust_pickle=True, **kwargs)


def test_an_onnx_matrix_model_needs_feature_names_and_onnx_only_outputs_are_checked(
    tmp_path: Path, train_day: Day, check_day: Day, numeric_contract: FeatureContract
) -> None:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    pipe = make_pipeline(SimpleImputer(), RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0))
    pipe.fit(train_day.frame(NUMERIC).to_numpy(), train_day.regression)
    proto = convert_sklearn(pipe, initial_types=[("X", FloatTensorType([None, len(NUMERIC)]))], target_opset=17)
    path = tmp_path / "spend.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(
        ModelImportError, match=r"spend\.onnx: onnx: the graph reads one matrix input 'X'.*feature_names"
    ):
        load_model(str(path))
    with pytest.raises(ModelImportError, match=r"input 'X' has 36 columns but 2 feature_names"):
        load_model(str(path), feature_names=["age", "plan"])
    model = load_model(str(path), feature_names=NUMERIC)
    assert model.inputs == InputSpec("matrix", tuple(NUMERIC), {"X": "float32"})
    assert model.outputs.task == "regression"
    assert model.outputs.value == "variable"
    report = check_import_parity(model, check_day.table, numeric_contract, rows=300)
    assert report.passed, report.describe()
    assert not report.applicable


# -- scikit-learn ------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_a_scikit_learn_pipeline_saved_with_skops(
    tmp_path: Path, train_day: Day, check_day: Day, contract: FeatureContract, task: str
) -> None:
    sio = pytest.importorskip("skops.io")
    pipe = _pipeline(task).fit(train_day.frame(contract.feature_names), _labels(train_day, task))
    path = tmp_path / f"{task}.skops"
    sio.dump(pipe, path)
    trusted: list[str] = []
    if task != "binary":
        # skops trusts scikit-learn's estimators but not its Cython tree objects: the error lists them.
        with pytest.raises(
            ModelImportError, match=rf"^{task}\.skops: skops: .*sklearn\.tree\._tree\.Tree.*trusted_types"
        ):
            load_model(str(path))
        trusted = ["sklearn.tree._tree.Tree"]
    model = load_model(str(path), trusted_types=trusted)
    assert (model.flavour, model.serialization, model.converter) == ("sklearn", "skops", "skl2onnx")
    assert model.inputs.layout == "columns"
    assert model.inputs.features == tuple(contract.feature_names)
    assert {model.inputs.element_types[c] for c in CATEGORICAL} == {"string"}
    assert model.outputs.task == task
    expected_classes = {"binary": ("0", "1"), "multiclass": tuple(map(str, range(TIERS))), "regression": ()}[task]
    assert model.outputs.classes == expected_classes
    assert model.algorithm.startswith("sklearn.")
    assert "._" not in model.algorithm
    assert model.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert check_inputs(model, contract) == []
    _parity(model, check_day, contract, f"sklearn pipeline {task} (skops)")


def test_a_pickle_is_refused_unless_trusted(
    tmp_path: Path, train_day: Day, check_day: Day, contract: FeatureContract
) -> None:
    pipe = _pipeline("binary").fit(train_day.frame(contract.feature_names), train_day.binary)
    for name in ("model.pkl", "model.joblib"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(pipe))
        with pytest.raises(
            ModelImportError,
            match=rf"^{re.escape(name)}: pickle: refusing to load a pickle: "
            r"loading one runs any code it contains.*trust_pickle=True",
        ):
            load_model(str(path))
    model = load_model(str(tmp_path / "model.pkl"), trust_pickle=True)
    assert (model.flavour, model.serialization) == ("sklearn", "pickle")
    _parity(model, check_day, contract, "sklearn pipeline binary (pickle)")


def test_skops_lists_the_types_it_would_need_to_trust(tmp_path: Path, train_day: Day) -> None:
    sio = pytest.importorskip("skops.io")
    xgb = pytest.importorskip("xgboost")
    model = xgb.XGBClassifier(n_estimators=5, max_depth=3).fit(train_day.frame(NUMERIC), train_day.binary)
    path = tmp_path / "xgb.skops"
    sio.dump(model, path)
    with pytest.raises(
        ModelImportError, match=r"^xgb\.skops: skops: .*do(es)? not trust.*xgboost\.sklearn\.XGBClassifier"
    ):
        load_model(str(path))
    untrusted = sio.get_untrusted_types(file=path)
    loaded = load_model(str(path), trusted_types=untrusted)
    assert loaded.flavour == "xgboost"
    assert loaded.serialization == "skops"


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_hist_gradient_boosting_converts_and_is_proven_on_real_rows(
    tmp_path: Path, train_day: Day, check_day: Day, numeric_contract: FeatureContract, task: str
) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    est: Any = (
        HistGradientBoostingRegressor(max_iter=60)
        if task == "regression"
        else HistGradientBoostingClassifier(max_iter=60)
    )
    est.fit(train_day.frame(NUMERIC), _labels(train_day, task))
    model = load_model_from_object(est, tmp_path)
    assert model.algorithm == f"sklearn.ensemble.{type(est).__name__}"
    assert model.inputs.layout == "matrix"
    _parity(model, check_day, numeric_contract, f"sklearn HistGradientBoosting {task} (pickle)")


def test_hist_gradient_boosting_with_categorical_splits_is_refused_by_name(tmp_path: Path, train_day: Day) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    frame = train_day.frame(["age", "tenure_months", "plan"])
    frame["plan"] = frame["plan"].astype("category")
    est = HistGradientBoostingClassifier(max_iter=5, categorical_features="from_dtype").fit(frame, train_day.binary)
    with pytest.raises(
        ModelImportError, match=r"^model\.pkl: sklearn: HistGradientBoostingClassifier with categorical"
    ):
        load_model_from_object(est, tmp_path)


# -- XGBoost ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("form", ["json", "ubj", "sklearn-api"])
def test_xgboost(
    tmp_path: Path, train_day: Day, check_day: Day, numeric_contract: FeatureContract, task: str, form: str
) -> None:
    xgb = pytest.importorskip("xgboost")
    pytest.importorskip("onnxmltools")
    cls = xgb.XGBRegressor if task == "regression" else xgb.XGBClassifier
    est = cls(n_estimators=40, max_depth=4, learning_rate=0.2).fit(train_day.frame(NUMERIC), _labels(train_day, task))
    if form == "sklearn-api":
        model = load_model_from_object(est, tmp_path)
        assert model.algorithm == f"xgboost.{cls.__name__}"
    else:
        path = tmp_path / f"model.{form}"
        est.get_booster().save_model(str(path))
        model = load_model(str(path))
        assert model.serialization == "native"
        assert model.algorithm == "xgboost.Booster"
    assert (model.flavour, model.converter) == ("xgboost", "onnxmltools")
    assert model.inputs == InputSpec("matrix", tuple(NUMERIC), {"input": "float32"})
    assert model.outputs.task == task
    assert len(model.outputs.classes) == {"binary": 2, "multiclass": TIERS, "regression": 0}[task]
    _parity(model, check_day, numeric_contract, f"xgboost {task} ({form})")


def test_an_unnamed_model_takes_feature_names(
    tmp_path: Path, train_day: Day, check_day: Day, numeric_contract: FeatureContract
) -> None:
    xgb = pytest.importorskip("xgboost")
    pytest.importorskip("onnxmltools")
    est = xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(train_day.frame(NUMERIC).to_numpy(), train_day.binary)
    path = tmp_path / "unnamed.json"
    est.get_booster().save_model(str(path))
    with pytest.raises(ModelImportError, match=r"^unnamed\.json: xgboost: the model has no feature names \(36 unnamed"):
        load_model(str(path))
    model = load_model(str(path), feature_names=NUMERIC)
    assert model.original_columns is None  # the original takes a numpy matrix in this order
    _parity(model, check_day, numeric_contract, "xgboost binary (json, feature_names given)")


# -- LightGBM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("form", ["txt", "sklearn-api"])
def test_lightgbm(
    tmp_path: Path, train_day: Day, check_day: Day, numeric_contract: FeatureContract, task: str, form: str
) -> None:
    lgb = pytest.importorskip("lightgbm")
    pytest.importorskip("onnxmltools")
    cls = lgb.LGBMRegressor if task == "regression" else lgb.LGBMClassifier
    est = cls(n_estimators=40, num_leaves=15, verbose=-1).fit(train_day.frame(NUMERIC), _labels(train_day, task))
    if form == "txt":
        path = tmp_path / "model.txt"
        est.booster_.save_model(str(path))
        model = load_model(str(path))
        assert model.algorithm == "lightgbm.Booster"
    else:
        model = load_model_from_object(est, tmp_path)
        assert model.algorithm == f"lightgbm.{cls.__name__}"
    assert (model.flavour, model.converter) == ("lightgbm", "onnxmltools")
    assert model.inputs == InputSpec("matrix", tuple(NUMERIC), {"input": "float32"})
    assert model.outputs.task == task
    _parity(model, check_day, numeric_contract, f"lightgbm {task} ({form})")


def test_lightgbm_on_pandas_categoricals_reads_category_codes(
    tmp_path: Path, train_day: Day, check_day: Day, contract: FeatureContract
) -> None:
    lgb = pytest.importorskip("lightgbm")
    pytest.importorskip("onnxmltools")
    frame = train_day.table.select(contract.feature_names).to_pandas()
    for name in CATEGORICAL:
        frame[name] = frame[name].astype("category")
    est = lgb.LGBMClassifier(n_estimators=40, num_leaves=15, verbose=-1).fit(frame, train_day.binary)
    path = tmp_path / "cats.txt"
    est.booster_.save_model(str(path))
    model = load_model(str(path))
    assert model.inputs.categories["plan"] == ("basic", "family", "premium", "standard")
    assert check_inputs(model, contract) == []
    # Unseen categories and nulls are missing on both sides (LightGBM's own rule for pandas categoricals).
    _parity(model, check_day, contract, "lightgbm binary with categoricals (txt)")


# -- CatBoost ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_catboost(tmp_path: Path, train_day: Day, check_day: Day, numeric_contract: FeatureContract, task: str) -> None:
    cb = pytest.importorskip("catboost")
    cls = cb.CatBoostRegressor if task == "regression" else cb.CatBoostClassifier
    est = cls(iterations=60, depth=4, verbose=False, random_seed=0, allow_writing_files=False)
    est.fit(train_day.frame(NUMERIC), _labels(train_day, task))
    path = tmp_path / "model.cbm"
    est.save_model(str(path))
    model = load_model(str(path))
    assert (model.flavour, model.converter, model.serialization) == ("catboost", "catboost", "native")
    assert model.inputs.layout == "matrix"
    assert model.inputs.features == tuple(NUMERIC)
    assert model.outputs.task == task
    _parity(model, check_day, numeric_contract, f"catboost {task} (cbm)")


def test_catboost_with_categorical_features_is_refused_naming_them(tmp_path: Path, train_day: Day) -> None:
    cb = pytest.importorskip("catboost")
    frame = train_day.frame(["age", "plan"])
    est = cb.CatBoostClassifier(iterations=5, verbose=False, cat_features=["plan"], allow_writing_files=False)
    est.fit(frame, train_day.binary)
    with pytest.raises(ModelImportError, match=r"^model\.pkl: catboost: categorical feature\(s\) plan: .*ONNX"):
        load_model_from_object(est, tmp_path)


# -- MLflow -----------------------------------------------------------------------------------------


def test_a_local_mlflow_model_directory(
    tmp_path: Path, train_day: Day, check_day: Day, numeric_contract: FeatureContract
) -> None:
    xgb = pytest.importorskip("xgboost")
    pytest.importorskip("onnxmltools")
    est = xgb.XGBRegressor(n_estimators=20, max_depth=3).fit(train_day.frame(NUMERIC), train_day.regression)
    root = tmp_path / "mlflow-model"
    root.mkdir()
    with warnings.catch_warnings():  # "Saving model in the UBJSON format as default": what MLflow writes
        warnings.simplefilter("ignore", UserWarning)
        est.get_booster().save_model(str(root / "model.xgb"))
    (root / "MLmodel").write_text(
        "artifact_path: model\nflavors:\n  python_function:\n    loader_module: mlflow.xgboost\n"
        "  xgboost:\n    code: null\n    data: model.xgb\n    model_class: xgboost.core.Booster\n    xgb_version: 3.0\n"
    )
    model = load_model(str(root))
    assert (model.flavour, model.serialization, model.source_uri) == ("xgboost", "mlflow", str(root))
    _parity(model, check_day, numeric_contract, "xgboost regression (mlflow directory)")


# -- contracts ----------------------------------------------------------------------------------------


def test_a_model_needing_a_column_the_contract_lacks_is_refused_naming_it(
    tmp_path: Path, train_day: Day, check_day: Day, numeric_contract: FeatureContract
) -> None:
    lgb = pytest.importorskip("lightgbm")
    pytest.importorskip("onnxmltools")
    est = lgb.LGBMRegressor(n_estimators=5, verbose=-1).fit(train_day.frame(NUMERIC), train_day.regression)
    model = load_model_from_object(est, tmp_path)
    smaller = FeatureContract(
        entity_id=DEMO_ENTITY_ID, columns=tuple(c for c in numeric_contract.columns if c.name != "monthly_charges")
    )
    assert check_inputs(model, smaller) == [
        "the model reads column 'monthly_charges', which the contract does not declare"
    ]
    with pytest.raises(ModelImportError, match=r"^model\.pkl: lightgbm: the model does not fit .*'monthly_charges'"):
        check_import_parity(model, check_day.table, smaller)
    # A categorical column where the model reads numbers, and an integer input fed from a nullable float column.
    mistyped = FeatureContract(
        entity_id=DEMO_ENTITY_ID,
        columns=tuple(
            Column(name=c.name, type=ColumnType.string) if c.name == "age" else c for c in numeric_contract.columns
        ),
    )
    assert check_inputs(model, mistyped) == [
        "column 'age' is string (categorical) but the model reads it as float32 "
        "and records no categories to encode it with"
    ]


def test_check_inputs_names_every_misfit() -> None:
    model = ImportedModel(
        onnx_bytes=b"",
        flavour="onnx",
        library="x",
        library_version="1",
        converter="none",
        converter_version="",
        source_uri="m.onnx",
        source_sha256="",
        algorithm="onnx:graph",
        hyperparameters={},
        inputs=InputSpec(
            "columns",
            ("a", "b", "c", "d", "e"),
            {"a": "string", "b": "int64", "c": "int64", "d": "bool", "e": "float32"},
        ),
        outputs=OutputSpec("regression", value="v"),
    )
    contract = FeatureContract(
        columns=(
            Column(name="a", type=ColumnType.float64),
            Column(name="b", type=ColumnType.float32, nullable=False),
            Column(name="c", type=ColumnType.int16),
            Column(name="d", type=ColumnType.boolean, nullable=False),
            Column(name="f", type=ColumnType.category),
        )
    )
    assert check_inputs(model, contract) == [
        "column 'a' is float64 but the model reads it as string (categorical)",
        "column 'b' is float32 but the model reads it as int64: fractions cannot be fed exactly",
        "column 'c' is nullable but the model reads it as int64, which has no missing value: "
        "declare it nullable = false if it never holds nulls",
        "the model reads column 'e', which the contract does not declare",
    ]


def test_propose_contract_from_partition_files(tmp_path: Path, demo_root: Path, train_day: Day) -> None:
    lgb = pytest.importorskip("lightgbm")
    pytest.importorskip("onnxmltools")
    frame = train_day.table.select(["age", "monthly_charges", "plan", "region"]).to_pandas()
    for name in ("plan", "region"):
        frame[name] = frame[name].astype("category")
    est = lgb.LGBMClassifier(n_estimators=5, verbose=-1).fit(frame, train_day.binary)
    model = load_model_from_object(est, tmp_path)
    files = sorted(str(p) for p in (demo_root / "features" / f"ds={SCORE_DS.isoformat()}").glob("*.parquet"))
    # One file with a not-null int column and a dictionary-encoded (category) column.
    table = pq.read_table(files[0])
    table = table.set_column(table.schema.get_field_index("plan"), "plan", table.column("plan").dictionary_encode())
    table = table.set_column(
        table.schema.get_field_index("age"), "age", table.column("age").fill_null(40).cast("int16")
    )
    pq.write_table(table, tmp_path / "typed.parquet")
    proposed = propose_contract(model, [str(tmp_path / "typed.parquet")])
    assert proposed.entity_id == DEMO_ENTITY_ID
    assert proposed.entity_id_type == "int64"
    assert [(c.name, c.type.value, c.nullable) for c in proposed.columns] == [
        ("age", "int16", False),
        ("monthly_charges", "float64", True),
        ("plan", "category", True),
        ("region", "string", True),
    ]
    text = contract_toml(proposed)
    assert text.startswith("[models.contract]\n")
    parsed = FeatureContract.model_validate(tomllib.loads(text)["models"]["contract"])
    assert parsed == proposed
    assert check_inputs(model, parsed) == []
    pq.write_table(table.drop_columns(["age"]), tmp_path / "less.parquet")
    with pytest.raises(ModelImportError, match=r"the model reads column\(s\) 'age'.*which this file lacks"):
        propose_contract(model, [str(tmp_path / "less.parquet")])
    # The proposed contract feeds the model.
    feeds = onnx_feeds(table, parsed, model.inputs, "typed.parquet")
    assert feeds["input"].shape == (table.num_rows, 4)


def test_an_unsupported_operator_is_named(tmp_path: Path, train_day: Day) -> None:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, SplineTransformer

    x = train_day.frame(["age", "tenure_months"])
    spline = make_pipeline(SimpleImputer(), SplineTransformer(), LogisticRegression()).fit(x, train_day.binary)
    with pytest.raises(
        ModelImportError,
        match=r"^model\.pkl: sklearn: skl2onnx has no converter for SplineTransformer \(in the Pipeline\)",
    ):
        load_model_from_object(spline, tmp_path)
    log = make_pipeline(SimpleImputer(), FunctionTransformer(np.log1p), LogisticRegression()).fit(x, train_day.binary)
    with pytest.raises(
        ModelImportError,
        match=r"^model\.pkl: sklearn: skl2onnx cannot convert FunctionTransformer \(in the Pipeline\): ",
    ):
        load_model_from_object(log, tmp_path)


def test_unreadable_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(ModelImportError, match=r"^missing\.onnx: model file .* does not exist$"):
        load_model(str(tmp_path / "missing.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelImportError, match=r"^junk\.onnx: onnx: not a readable ONNX model"):
        load_model(str(tmp_path / "junk.onnx"))
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ModelImportError, match=r"^notes\.csv: unknown model format"):
        load_model(str(tmp_path / "notes.csv"))
