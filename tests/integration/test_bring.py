"""Models brought by their users, end to end: trained outside nightshift, registered, scored, served.

LightGBM and XGBoost (binary, multiclass, regression), a scikit-learn pipeline and an ONNX file, each
registered with `register_brought` on real rows of a demo partition, scored by the production path
on SQLite and PostgreSQL, and read back — from the store and over HTTP — as the original library
predicts them. The refusals name their cause and register nothing.
"""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from nightshift.config import load_settings
from nightshift.demo import DEMO_ENTITY_ID, demo_contract
from nightshift.errors import ModelSchemaError, ParityError
from nightshift.models import open_registry
from nightshift.models.bring import register_brought
from nightshift.scoring import score_partition
from tests.api.conftest import serve  # noqa: F401 - the live-server fixture
from tests.conftest import DEMO_START, SCORE_DS, write_project

NUMERIC = [c.name for c in demo_contract().numeric]
LABELS = {"binary": "churned", "multiclass": "next_plan", "regression": "spend_next_month"}


def _day(root: Path, ds: date) -> tuple[pa.Table, pa.Table]:
    features = pq.read_table(root / "features" / f"ds={ds.isoformat()}")
    labels = pq.read_table(root / "labels" / f"ds={ds.isoformat()}")
    return features, labels.take(pc.index_in(features.column(DEMO_ENTITY_ID), labels.column(DEMO_ENTITY_ID)))


def _matrix(features: pa.Table) -> np.ndarray:
    return np.column_stack([features.column(n).to_numpy(zero_copy_only=False).astype(float) for n in NUMERIC])


def _train(kind: str, task: str, root: Path, folder: Path) -> tuple[Path, Any]:
    """A model trained the way a data scientist would, in a notebook: (its file, the fitted object)."""
    features, labels = _day(root, DEMO_START)
    y_raw = labels.column(LABELS[task]).to_numpy(zero_copy_only=False)
    y = y_raw.astype(float) if task == "regression" else y_raw
    if kind == "lightgbm":
        import lightgbm as lgb

        cls = lgb.LGBMRegressor if task == "regression" else lgb.LGBMClassifier
        est = cls(n_estimators=40, num_leaves=15, verbose=-1, random_state=0)
        est.fit(features.select(NUMERIC).to_pandas(), y)
        path = folder / f"{task}.txt"
        est.booster_.save_model(str(path))
        return path, est
    import xgboost as xgb

    if task == "regression":
        est = xgb.XGBRegressor(n_estimators=40, max_depth=4)
    else:
        est = xgb.XGBClassifier(n_estimators=40, max_depth=4)
        if task == "multiclass":  # XGBoost wants class indices: keep the names in order for the reader
            classes = sorted(set(y))
            y = np.array([classes.index(v) for v in y])
    est.fit(features.select(NUMERIC).to_pandas(), y)
    path = folder / f"{task}.json"
    est.save_model(str(path))
    return path, est


@pytest.fixture
def project(tmp_path: Path, data_root: Path, store_url: str) -> Any:
    more = {
        "plan": (data_root, "", LABELS["multiclass"]),
        "spend": (data_root, "", LABELS["regression"]),
    }
    return load_settings(write_project(tmp_path, store_url, data_root, more_models=more))


@pytest.mark.parametrize(
    ("kind", "task", "model"),
    [
        ("lightgbm", "binary", "churn"),
        ("lightgbm", "multiclass", "plan"),
        ("xgboost", "regression", "spend"),
        ("xgboost", "binary", "churn"),
    ],
)
def test_a_brought_model_is_registered_scored_and_read_back_as_its_library_predicts(
    project: Any, data_root: Path, tmp_path: Path, dask_client: Any, kind: str, task: str, model: str
) -> None:
    path, est = _train(kind, task, data_root, tmp_path)
    names = None
    if kind == "lightgbm" and task == "multiclass":  # a LightGBM text file keeps no class names
        with pytest.raises(ModelSchemaError, match=r"hold classes \['basic', .* the model does not name.*--class"):
            register_brought(project, model, str(path), ds=SCORE_DS)
        names = [str(c) for c in est.classes_]
    brought = register_brought(project, model, str(path), ds=SCORE_DS, created_by="ds-team", class_names=names)
    mv = brought.version
    assert (mv.task, mv.version, brought.promoted) == (task, 1, True)
    assert brought.parity.passed, brought.parity.describe()
    assert brought.parity.max_diff < 1e-4
    assert mv.source["library"] == kind
    assert len(mv.source["sha256"]) == 64
    assert mv.source["sha256"] != mv.sha256  # the original's hash beside the ONNX graph's
    # The original file is kept beside the ONNX graph, named by its kind (original.txt, original.json, ...).
    kept = Path(mv.artifact_uri).parent / f"original{path.suffix}"
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == mv.source["sha256"]
    assert mv.metrics  # the scored day's labels have landed: the version carries its quality on them
    summary = score_partition(project, model, SCORE_DS, client=dask_client)
    features, _labels = _day(data_root, SCORE_DS)
    ids = [str(i) for i in features.column(DEMO_ENTITY_ID).to_pylist()[:50]]
    from nightshift.db import open_store

    store = open_store(project)
    got = {p.entity_id: p for p in store.lookup(model, mv.version, SCORE_DS, ids)}
    assert summary.rows == features.num_rows
    x = features.select(NUMERIC).slice(0, 50).to_pandas()
    if task == "regression":
        expected = est.predict(x)
        values = np.array([got[i].value for i in ids])
        assert np.allclose(values, expected, rtol=1e-4, atol=1e-3)
        assert all(got[i].label is None for i in ids)
    elif task == "multiclass":
        expected = est.predict_proba(x)
        probs = np.array([got[i].probs for i in ids])
        assert np.abs(probs - expected).max() < 1e-4
        assert [got[i].label for i in ids] == list(expected.argmax(axis=1))
    else:
        expected = est.predict_proba(x)[:, 1]
        assert np.abs(np.array([got[i].score for i in ids]) - expected).max() < 1e-4
    store.dispose()


def test_lookups_of_each_task_are_typed_over_http(
    project: Any,
    data_root: Path,
    tmp_path: Path,
    dask_client: Any,
    serve: Any,  # noqa: F811 - the fixture imported above
) -> None:
    from tests.api.conftest import make_key

    for kind, task, model in (("lightgbm", "multiclass", "plan"), ("xgboost", "regression", "spend")):
        path, est = _train(kind, task, data_root, tmp_path)
        names = [str(c) for c in est.classes_] if task == "multiclass" else None
        register_brought(project, model, str(path), ds=SCORE_DS, class_names=names)
        score_partition(project, model, SCORE_DS, client=dask_client)
    from nightshift.db import open_store

    store = open_store(project)
    key = make_key(store, "*")
    api = serve(project.resolved_store_url)
    with api.client(key) as c:
        plan = c.get("/v1/models/plan/predictions/7").json()
        spend = c.get("/v1/models/spend/predictions/7").json()
        batch = c.post("/v1/models/plan/predictions/batch", json={"ids": ["7", "8"]}).json()
        spec = c.get("/openapi.json").json()
    [p7] = store.lookup("plan", 1, SCORE_DS, ["7"])
    assert plan["task"] == "multiclass"
    assert set(plan["probabilities"]) == {"basic", "standard", "premium", "family"}
    assert plan["predicted_class"] == max(plan["probabilities"], key=plan["probabilities"].get)
    assert plan["score"] == pytest.approx(max(plan["probabilities"].values()))
    assert plan["label"] == p7.label
    assert spend["task"] == "regression"
    assert spend["label"] is None
    assert spend["value"] == pytest.approx(store.lookup("spend", 1, SCORE_DS, ["7"])[0].value)
    assert [p["predicted_class"] for p in batch["predictions"]] == [
        max(p["probabilities"], key=p["probabilities"].get) for p in batch["predictions"]
    ]
    props = spec["components"]["schemas"]["Prediction"]["properties"]
    assert {"value", "predicted_class", "probabilities", "task"} <= set(props)
    store.dispose()


def test_a_graph_that_differs_from_its_original_is_refused_naming_the_difference(
    project: Any, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A converter that went wrong: every split threshold of the ONNX graph moved, the original unchanged."""
    import dataclasses

    import onnx

    from nightshift.models import importing

    path, _est = _train("lightgbm", "binary", data_root, tmp_path)
    good = importing.load_model(str(path))
    graph = onnx.load_from_string(good.onnx_bytes)
    [node] = [n for n in graph.graph.node if n.op_type.startswith("TreeEnsemble")]
    [thresholds] = [a for a in node.attribute if a.name == "nodes_values"]
    for i in range(len(thresholds.floats)):
        thresholds.floats[i] *= 1.05
    edited = dataclasses.replace(good, onnx_bytes=graph.SerializeToString())
    monkeypatch.setattr(importing, "load_model", lambda *a, **k: edited)
    with pytest.raises(ParityError, match=r"model 'churn' from .*: nothing registered: "):
        register_brought(project, "churn", str(path), ds=SCORE_DS)
    assert open_registry(project).versions("churn") == []


def test_a_model_whose_inputs_do_not_fit_the_contract_is_refused_naming_the_column(
    project: Any, data_root: Path, tmp_path: Path
) -> None:
    import lightgbm as lgb

    features, labels = _day(data_root, DEMO_START)
    frame = features.select(NUMERIC).to_pandas()
    frame["loyalty_points"] = 1.0  # a column the contract does not declare
    est = lgb.LGBMClassifier(n_estimators=5, verbose=-1).fit(frame, labels.column("churned").to_numpy())
    path = tmp_path / "extra.txt"
    est.booster_.save_model(str(path))
    with pytest.raises(ModelSchemaError, match="loyalty_points"):
        register_brought(project, "churn", str(path), ds=SCORE_DS)
    assert open_registry(project).versions("churn") == []


def test_a_pickle_is_refused_without_trust(project: Any, data_root: Path, tmp_path: Path) -> None:
    import pickle

    from nightshift.models.importing import ModelImportError

    _path, est = _train("xgboost", "binary", data_root, tmp_path)
    pkl = tmp_path / "model.pkl"
    pkl.write_bytes(pickle.dumps(est))
    with pytest.raises(ModelImportError, match="runs any code"):
        register_brought(project, "churn", str(pkl), ds=SCORE_DS)
    brought = register_brought(project, "churn", str(pkl), ds=SCORE_DS, trust_pickle=True)
    assert brought.version.source["serialization"] == "pickle"
