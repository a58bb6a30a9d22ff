"""`nightshift models register` and `nightshift contract infer` as users run them: subprocesses, real files.

An ONNX file (a scikit-learn pipeline converted with skl2onnx), a scikit-learn pipeline saved with skops and a
CatBoost model (.cbm) are registered through the CLI on SQLite (on PostgreSQL the ONNX one; the others with
`make extra`: tests/conftest.py ONE_STORE), scored with `nightshift score`
and read back with `nightshift predictions`, each as the original library predicts it. The refusals (an
operator ONNX Runtime does not have, a step skl2onnx cannot convert, a pickle without --trust-pickle) exit 1
with one line naming the file and the cause, and register nothing. `nightshift contract infer` prints a
`[models.contract]` block that tomllib parses and that names the model's inputs.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from nightshift.data.features import MISSING_CATEGORY
from nightshift.demo import DEMO_ENTITY_ID, demo_contract
from nightshift.models.parity import NOT_APPLICABLE
from tests.cli.conftest import run_cli
from tests.conftest import DEMO_ROWS, DEMO_START, SCORE_DS, write_project
from tests.integration.test_bring import LABELS, NUMERIC, _day

CATEGORICAL = [c.name for c in demo_contract().categorical]
FEATURES = demo_contract().feature_names
#: Entities read back and compared with the original library (ids of SCORE_DS).
CHECKED = 40

CLI = Callable[..., subprocess.CompletedProcess[str]]


def _frame(features: pa.Table, columns: list[str]) -> Any:
    """The columns as pandas the way nightshift feeds them: numbers with NaN, a null category "__missing__"."""
    frame = features.select(columns).to_pandas()
    for name in columns:
        if name in CATEGORICAL:
            frame[name] = frame[name].fillna(MISSING_CATEGORY).astype(object)
    return frame


def _preprocess(numeric: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder

    return ColumnTransformer([("num", numeric, NUMERIC), ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL)])


@pytest.fixture
def project(tmp_path: Path, data_root: Path, store_url: str) -> Path:
    """churn (binary), plan (multiclass: next_plan) and spend (regression: spend_next_month) on the demo data."""
    more = {"plan": (data_root, "", LABELS["multiclass"]), "spend": (data_root, "", LABELS["regression"])}
    return write_project(tmp_path, store_url, data_root, more_models=more)


@pytest.fixture
def ns(project: Path, dask_client: Any, tmp_path: Path) -> CLI:
    """`nightshift ARGS -c PROJECT` in a subprocess, scoring on the session's Dask cluster, run in tmp_path."""
    address = dask_client.scheduler.address

    def _run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "-c", str(project), env={"NIGHTSHIFT_DASK__SCHEDULER_ADDRESS": address}, cwd=tmp_path)

    return _run


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def _refused(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a refused command (exit 1, nothing on stdout, no traceback)."""
    assert result.returncode == 1, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _versions(ns: CLI, model: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(_ok(ns("models", "-m", model, "--json")).stdout)
    return listed


def _predictions(ns: CLI, model: str, ids: list[str]) -> dict[str, Any]:
    args = [a for i in ids for a in ("-e", i)]
    got: dict[str, Any] = json.loads(_ok(ns("predictions", "-m", model, *args, "--json")).stdout)
    assert got["not_found"] == []
    return got


# -- the models, trained the way their users would --------------------------------------------------------------


def _onnx_regression(root: Path, folder: Path) -> tuple[Path, Any]:
    """spend: imputation, one-hot categories and a Ridge regression, converted to ONNX with skl2onnx (per-column
    inputs, as a DataFrame pipeline converts); written as a plain .onnx file."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline

    features, labels = _day(root, DEMO_START)
    y = labels.column(LABELS["regression"]).to_numpy(zero_copy_only=False).astype(float)
    pipe = Pipeline([("pre", _preprocess(SimpleImputer(strategy="median"))), ("model", Ridge(alpha=1.0))])
    pipe.fit(_frame(features, FEATURES), y)
    initial = [(n, StringTensorType([None, 1]) if n in CATEGORICAL else FloatTensorType([None, 1])) for n in FEATURES]
    proto = convert_sklearn(pipe, initial_types=initial, target_opset={"": 17, "ai.onnx.ml": 3})
    path = folder / "spend.onnx"
    path.write_bytes(proto.SerializeToString())
    return path, pipe


def _skops_multiclass(root: Path, folder: Path) -> tuple[Path, Any]:
    """plan: a random forest over imputed numbers and one-hot categories, saved with skops."""
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    features, labels = _day(root, DEMO_START)
    y = np.asarray(labels.column(LABELS["multiclass"]).to_pylist(), dtype=object)
    pipe = Pipeline(
        [
            ("pre", _preprocess(SimpleImputer(strategy="median"))),
            ("model", RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0)),
        ]
    )
    pipe.fit(_frame(features, FEATURES), y)
    path = folder / "plan.skops"
    sio.dump(pipe, path)
    return path, pipe


def _catboost_binary(root: Path, folder: Path) -> tuple[Path, Any]:
    """churn: CatBoost on the numeric columns, saved in its own format (.cbm)."""
    import catboost as cb

    features, labels = _day(root, DEMO_START)
    y = labels.column(LABELS["binary"]).to_numpy(zero_copy_only=False).astype(int)
    est = cb.CatBoostClassifier(iterations=40, depth=4, verbose=False, random_seed=0, allow_writing_files=False)
    est.fit(features.select(NUMERIC).to_pandas(), y)
    path = folder / "churn.cbm"
    est.save_model(str(path))
    return path, est


# -- registered, scored, read back --------------------------------------------------------------------------------


def _register_onnx(ns: CLI, root: Path, folder: Path, ds: str) -> tuple[str, Any]:
    """An ONNX file is read as it is: no original to compare with, parity not applicable, a regression."""
    path, ridge = _onnx_regression(root, folder)
    brought = json.loads(_ok(ns("models", "register", "-m", "spend", "--from", str(path), "--ds", ds, "--json")).stdout)
    assert (brought["model"], brought["version"], brought["task"], brought["promoted"]) == (
        "spend",
        1,
        "regression",
        True,
    )
    assert (brought["source"]["flavour"], brought["source"]["library"]) == ("onnx", "skl2onnx")
    assert brought["parity"]["status"] == NOT_APPLICABLE
    assert {"rmse", "mae", "r2"} <= set(brought["metrics"])  # the day's labels have landed
    return "spend", ridge


def _register_skops(ns: CLI, root: Path, folder: Path, ds: str) -> tuple[str, Any]:
    """skops does not trust a forest's tree objects by default: refused naming the type, then trusted."""
    path, forest = _skops_multiclass(root, folder)
    line = _refused(ns("models", "register", "-m", "plan", "--from", str(path), "--ds", ds))
    assert line.startswith("error: ModelImportError: plan.skops: skops: ")
    assert "sklearn.tree._tree.Tree" in line
    assert "--trust-type" in line
    assert _versions(ns, "plan") == []
    trust = ("--trust-type", "sklearn.tree._tree.Tree")
    registered = _ok(ns("models", "register", "-m", "plan", "--from", str(path), "--ds", ds, *trust)).stdout
    assert "registered plan v1 (multiclass, scikit-learn" in registered
    assert "→ ONNX by skl2onnx): parity passed" in registered
    assert "metrics on the day's labels: log_loss" in registered
    assert "champion → v1" in registered
    return "plan", forest


def _register_catboost(ns: CLI, root: Path, folder: Path, ds: str) -> tuple[str, Any]:
    """A CatBoost model in its own format: CatBoost exports the ONNX graph itself."""
    path, boost = _catboost_binary(root, folder)
    registered = _ok(ns("models", "register", "-m", "churn", "--from", str(path), "--ds", ds)).stdout
    assert "registered churn v1 (binary, catboost" in registered
    assert "→ ONNX by catboost): parity passed" in registered
    assert "metrics on the day's labels: roc_auc" in registered
    return "churn", boost


REGISTER = {"onnx": _register_onnx, "skops": _register_skops, "catboost": _register_catboost}


@pytest.mark.parametrize("flavour", list(REGISTER))
def test_a_brought_model_is_registered_scored_and_read_back_through_the_cli(
    ns: CLI, data_root: Path, tmp_path: Path, flavour: str
) -> None:
    ds = SCORE_DS.isoformat()
    features, _labels = _day(data_root, SCORE_DS)
    ids = [str(i) for i in features.column(DEMO_ENTITY_ID).to_pylist()[:CHECKED]]
    checked = features.slice(0, CHECKED)
    model, original = REGISTER[flavour](ns, data_root, tmp_path, ds)

    [listed] = _versions(ns, model)
    assert (listed["version"], listed["aliases"]) == (1, ["champion"])
    assert listed["source"]["flavour"] == {"onnx": "onnx", "skops": "sklearn", "catboost": "catboost"}[flavour]
    scored = json.loads(_ok(ns("score", "-m", model, "--ds", ds, "--json")).stdout)
    assert (scored["model"], scored["version"], scored["rows"]) == (model, 1, DEMO_ROWS)

    # Read back: what the original library predicts for the same rows.
    got = _predictions(ns, model, ids)
    by_id = {p["entity_id"]: p for p in got["predictions"]}
    if flavour == "onnx":
        assert (got["task"], got["classes"]) == ("regression", None)
        expected = original.predict(_frame(checked, FEATURES))
        values = [by_id[i]["value"] for i in ids]
        assert np.allclose(values, expected, rtol=1e-4, atol=1e-2)
        table = _ok(ns("predictions", "-m", model, "-e", ids[0], "-e", ids[1])).stdout
        assert f"spend v1 (regression) ds={ds}" in table
        assert "value" in table.splitlines()[2]  # the header: entity_id and value, no score or label
        assert "score" not in table
        assert "label" not in table
        assert f"{values[0]:,.4f}" in table
        assert f"{values[1]:,.4f}" in table
    elif flavour == "skops":
        classes = [str(c) for c in original.classes_]
        assert (got["task"], got["classes"]) == ("multiclass", classes)
        probs = np.array([by_id[i]["probs"] for i in ids])
        expected = original.predict_proba(_frame(checked, FEATURES))
        assert np.abs(probs - expected).max() < 1e-3
        assert [classes[by_id[i]["label"]] for i in ids] == list(original.predict(_frame(checked, FEATURES)))
        assert [by_id[i]["score"] for i in ids] == pytest.approx(probs.max(axis=1), abs=1e-6)
        table = _ok(ns("predictions", "-m", model, "-e", ids[0])).stdout
        assert f"plan v1 (multiclass) ds={ds}" in table
        assert all(c in table for c in ("class", "probability", *classes))
        row = next(line for line in table.splitlines() if f" {ids[0]} " in line)
        assert classes[by_id[ids[0]]["label"]] in row
        assert f"{by_id[ids[0]]['score']:.4f}" in row
    else:
        assert (got["task"], got["classes"]) == ("binary", ["0", "1"])
        expected = original.predict_proba(checked.select(NUMERIC).to_pandas())[:, 1]
        assert np.abs(np.array([by_id[i]["score"] for i in ids]) - expected).max() < 1e-4
        assert [by_id[i]["label"] for i in ids] == [int(p >= 0.5) for p in expected]
        assert not (tmp_path / "catboost_info").exists()


# -- refusals ------------------------------------------------------------------------------------------------------


def _onnx_with(path: Path, op: str, domain: str, ir_version: int) -> Path:
    """A regression graph over two contract columns whose last node is `domain:op`."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 1]) for n in ("age", "tenure_months")]
    nodes = [
        helper.make_node("Concat", ["age", "tenure_months"], ["both"], axis=1),
        helper.make_node(op, ["both"], ["variable"], domain=domain, **({"axes": [1]} if op == "ReduceSum" else {})),
    ]
    output = helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])
    opsets = [helper.make_opsetid("", 11)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(
        helper.make_graph(nodes, "handmade", inputs, [output]),
        opset_imports=opsets,
        producer_name="handmade",
        ir_version=ir_version,
    )
    path.write_bytes(model.SerializeToString())
    onnx.load_from_string(path.read_bytes())  # a well-formed file: only its operator (or IR version) is foreign
    return path


def test_refusals_name_the_file_and_the_cause_and_register_nothing(ns: CLI, data_root: Path, tmp_path: Path) -> None:
    ds = SCORE_DS.isoformat()
    # An operator no ONNX Runtime has.
    custom = _onnx_with(tmp_path / "custom.onnx", "Frobnicate", "com.example", 8)
    line = _refused(ns("models", "register", "-m", "spend", "--from", str(custom), "--ds", ds))
    assert line.startswith("error: ModelImportError: custom.onnx: onnx: ONNX Runtime cannot load the graph")
    assert "com.example:Frobnicate" in line
    assert "is not a registered function/op" in line
    # A graph of a newer ONNX than this ONNX Runtime reads: the message keeps the cause, not the C++ location.
    newer = _onnx_with(tmp_path / "newer.onnx", "ReduceSum", "", 99)
    line = _refused(ns("models", "register", "-m", "spend", "--from", str(newer), "--ds", ds))
    assert line.startswith("error: ModelImportError: newer.onnx: onnx: ONNX Runtime cannot load the graph")
    assert "Unsupported model IR version: 99" in line
    assert "onnxruntime_src" not in line

    # A pipeline step skl2onnx has no converter for (a trusted pickle: skops would ask to trust scipy's types).
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import SplineTransformer

    features, labels = _day(data_root, DEMO_START)
    y = labels.column(LABELS["binary"]).to_numpy(zero_copy_only=False).astype(int)
    x = _frame(features, ["age", "tenure_months"])
    spline = make_pipeline(SimpleImputer(), SplineTransformer(n_knots=4), LogisticRegression()).fit(x, y)
    (tmp_path / "spline.pkl").write_bytes(pickle.dumps(spline))
    line = _refused(
        ns("models", "register", "-m", "churn", "--from", str(tmp_path / "spline.pkl"), "--ds", ds, "--trust-pickle")
    )
    assert line.startswith("error: ModelImportError: spline.pkl: sklearn: ")
    assert "skl2onnx has no converter for SplineTransformer (in the Pipeline)" in line

    # A pickle runs code when loaded: refused unless the user says they trust it.
    logistic = make_pipeline(SimpleImputer(), LogisticRegression()).fit(x, y)
    pkl = tmp_path / "logistic.pkl"
    pkl.write_bytes(pickle.dumps(logistic))
    line = _refused(ns("models", "register", "-m", "churn", "--from", str(pkl), "--ds", ds))
    assert line.startswith("error: ModelImportError: logistic.pkl: pickle: refusing to load a pickle")
    assert "runs any code" in line
    assert "--trust-pickle" in line
    refused_json = ns("models", "register", "-m", "churn", "--from", str(pkl), "--ds", ds, "--json")
    assert refused_json.returncode == 1
    body = json.loads(refused_json.stdout)
    assert body["error"] == "ModelImportError"
    assert "logistic.pkl" in body["message"]
    assert "runs any code" in body["message"]

    assert _versions(ns, "spend") == _versions(ns, "churn") == []
    assert not list((tmp_path / "state").glob("**/*.onnx"))  # no artifact written for a refused model

    trusted = _ok(ns("models", "register", "-m", "churn", "--from", str(pkl), "--ds", ds, "--trust-pickle"))
    assert "registered churn v1 (binary, scikit-learn" in trusted.stdout
    [version] = _versions(ns, "churn")
    assert version["source"]["serialization"] == "pickle"


# -- contract infer ----------------------------------------------------------------------------------------------


def test_contract_infer_prints_a_block_tomllib_parses_naming_the_models_inputs(
    ns: CLI, data_root: Path, tmp_path: Path
) -> None:
    from nightshift.contracts import FeatureContract

    cbm_path, boost = _catboost_binary(data_root, tmp_path)
    folder = data_root / "features" / f"ds={SCORE_DS.isoformat()}"
    printed = _ok(ns("contract", "infer", "-m", "churn", "--from", str(cbm_path), "--partition", str(folder))).stdout
    assert printed.startswith("[models.contract]\n")
    parsed = tomllib.loads(printed)["models"]["contract"]
    contract = FeatureContract.model_validate(parsed)
    assert contract.entity_id == DEMO_ENTITY_ID
    assert contract.entity_id_type == "int64"
    assert [c.name for c in contract.columns] == list(boost.feature_names_) == NUMERIC
    assert {c.type.value for c in contract.columns} == {"float64"}
    # Nullable exactly where the day's files hold a null.
    import pyarrow.parquet as pq

    table = pq.read_table(folder)
    assert {c.name: c.nullable for c in contract.columns} == {n: table.column(n).null_count > 0 for n in NUMERIC}

    # The configured dataset at --ds gives the same block; a skops pipeline names its categorical inputs too.
    assert (
        _ok(ns("contract", "infer", "-m", "churn", "--from", str(cbm_path), "--ds", SCORE_DS.isoformat())).stdout
        == printed
    )
    skops_path, _forest = _skops_multiclass(data_root, tmp_path)
    trust = ("--trust-type", "sklearn.tree._tree.Tree")
    printed = _ok(
        ns("contract", "infer", "-m", "plan", "--from", str(skops_path), "--partition", str(folder), *trust)
    ).stdout
    parsed = tomllib.loads(printed)["models"]["contract"]
    assert [c["name"] for c in parsed["columns"]] == FEATURES
    assert {c["name"]: c["type"] for c in parsed["columns"] if c["name"] in CATEGORICAL} == dict.fromkeys(
        CATEGORICAL, "string"
    )
