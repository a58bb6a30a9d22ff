"""The parity check fails loudly when the ONNX graph is not the original: graphs edited on purpose, NaN outputs."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from nightshift.contracts import FeatureContract
from nightshift.models.importing import ImportedModel, InputSpec, OutputSpec, load_model
from nightshift.models.parity import NOT_APPLICABLE, check_import_parity
from tests.models.conftest import NUMERIC, Day


def _load(obj: Any, tmp_path: Path, name: str = "model.pkl", **kwargs: Any) -> ImportedModel:
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj))
    return load_model(str(path), trust_pickle=True, **kwargs)


def _edit(model: ImportedModel, op_type: str, attribute: str, change: Any) -> ImportedModel:
    """The model with one attribute of its `op_type` node changed by `change(values) -> values`."""
    proto = onnx.load_from_string(model.onnx_bytes)
    (node,) = [n for n in proto.graph.node if n.op_type == op_type]
    (attr,) = [a for a in node.attribute if a.name == attribute]
    if attr.type == onnx.AttributeProto.TENSOR:
        values = numpy_helper.to_array(attr.t)
        attr.t.CopyFrom(numpy_helper.from_array(change(values.copy()), attr.t.name))
    else:
        values = np.asarray(attr.floats, dtype=np.float32)
        del attr.floats[:]
        attr.floats.extend(change(values.copy()).tolist())
    return dataclasses.replace(model, onnx_bytes=proto.SerializeToString())


def test_a_moved_split_threshold_fails_parity_naming_the_class_and_the_difference(
    tmp_path: Path, train_day: Day, check_day: Day, numeric_contract: FeatureContract
) -> None:
    xgb = pytest.importorskip("xgboost")
    pytest.importorskip("onnxmltools")
    est = xgb.XGBClassifier(n_estimators=20, max_depth=3).fit(train_day.frame(NUMERIC), train_day.binary)
    model = _load(est, tmp_path, "churn-xgb.pkl")
    assert check_import_parity(model, check_day.table, numeric_contract, rows=1000).passed

    def move_root_thresholds(values: np.ndarray) -> np.ndarray:
        values[0] = values[0] * 1.5 + 1.0  # the first tree's root split
        return values

    broken = _edit(model, "TreeEnsembleClassifier", "nodes_values", move_root_thresholds)
    report = check_import_parity(broken, check_day.table, numeric_contract, rows=1000)
    assert not report.passed
    assert report.status == "failed"
    assert report.max_diff > 1e-3
    assert report.label_disagreement is not None
    assert report.worst_class in ("0", "1")
    text = report.describe()
    assert text.startswith("model churn-xgb.pkl (xgboost, binary): ONNX and xgboost disagree on class ")
    assert f"max |Δ probability| over all classes {report.max_diff:.3g} exceeds tolerance 0.0001" in text
    assert "original P(" in text
    assert "; inputs: age=" in text
    json.dumps(report.as_dict())
    # A tolerance above the difference passes the same graph: the figure is what decides.
    assert check_import_parity(broken, check_day.table, numeric_contract, rows=1000, tolerance=1.0).passed


def test_changed_leaf_values_fail_a_regression_naming_the_output(
    tmp_path: Path, train_day: Day, check_day: Day, numeric_contract: FeatureContract
) -> None:
    lgb = pytest.importorskip("lightgbm")
    pytest.importorskip("onnxmltools")
    est = lgb.LGBMRegressor(n_estimators=20, verbose=-1).fit(train_day.frame(NUMERIC), train_day.regression)
    model = _load(est, tmp_path, "spend.pkl")
    broken = _edit(model, "TreeEnsembleRegressor", "target_weights", lambda w: w * np.float32(1.001))
    report = check_import_parity(broken, check_day.table, numeric_contract, rows=1000)
    assert not report.passed
    assert report.worst_class == "variable"
    assert report.label_disagreement is None
    assert 1e-4 < report.max_diff < 1e-2  # relative: 0.1% of the leaves
    assert "disagree on output 'variable': max |Δ| / max(1, |original|)" in report.describe()


def test_changed_coefficients_fail_parity(
    tmp_path: Path, train_day: Day, check_day: Day, numeric_contract: FeatureContract
) -> None:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline

    pipe = make_pipeline(SimpleImputer(), LinearRegression()).fit(train_day.frame(NUMERIC), train_day.regression)
    model = _load(pipe, tmp_path, "linear.pkl")
    # skl2onnx writes the coefficients as an attribute of the LinearRegressor node: 1% more on each.
    broken = _edit(model, "LinearRegressor", "coefficients", lambda c: c * np.float32(1.01))
    assert check_import_parity(model, check_day.table, numeric_contract, rows=500).passed
    report = check_import_parity(broken, check_day.table, numeric_contract, rows=500)
    assert not report.passed
    assert report.max_diff > 1e-3, report.describe()


def test_an_onnx_file_with_non_finite_outputs_fails_without_an_original(
    tmp_path: Path, train_day: Day, check_day: Day, numeric_contract: FeatureContract
) -> None:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    pipe = make_pipeline(SimpleImputer(), RandomForestRegressor(n_estimators=5, max_depth=4, random_state=0))
    model = _load(pipe.fit(train_day.frame(NUMERIC), train_day.regression), tmp_path)
    broken = _edit(model, "TreeEnsembleRegressor", "target_weights", lambda w: np.where(w > np.median(w), np.nan, w))
    path = tmp_path / "nan.onnx"
    path.write_bytes(broken.onnx_bytes)
    onnx_only = load_model(str(path), feature_names=NUMERIC)
    assert onnx_only.original is None
    report = check_import_parity(onnx_only, check_day.table, numeric_contract, rows=300)
    assert report.status == NOT_APPLICABLE
    assert not report.passed
    assert "non-finite value(s) in output 'variable'" in report.describe()
    good = tmp_path / "good.onnx"
    good.write_bytes(model.onnx_bytes)
    assert check_import_parity(
        load_model(str(good), feature_names=NUMERIC), check_day.table, numeric_contract, rows=300
    ).passed


def test_specs_round_trip_as_json_and_refuse_nonsense() -> None:
    spec = InputSpec("matrix", ("a", "plan"), {"input": "float32"}, {"plan": ("basic", "premium")})
    assert InputSpec.from_dict(json.loads(json.dumps(spec.as_dict()))) == spec
    assert spec.matrix_input == "input"
    assert spec.element_type("plan") == "float32"
    out = OutputSpec("multiclass", ("a", "b", "c"), probabilities="probabilities", label="label")
    assert OutputSpec.from_dict(json.loads(json.dumps(out.as_dict()))) == out
    assert out.output == "probabilities"
    assert OutputSpec("regression", value="variable").output == "variable"
    with pytest.raises(ValueError, match="binary model has 2 classes"):
        OutputSpec("binary", ("0", "1", "2"), probabilities="p")
    with pytest.raises(ValueError, match="regression model has a value output"):
        OutputSpec("regression", ("0",), value="v")
    with pytest.raises(ValueError, match="exactly one input"):
        InputSpec("matrix", ("a",), {"x": "float32", "y": "float32"})
    with pytest.raises(ValueError, match="one element type per feature"):
        InputSpec("columns", ("a", "b"), {"a": "float32"})
    with pytest.raises(ValueError, match="unknown element type"):
        InputSpec("columns", ("a",), {"a": "complex64"})
