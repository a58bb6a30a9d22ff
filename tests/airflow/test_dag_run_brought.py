"""A model trained outside nightshift, brought and scored by its nightly DAG under real Airflow `dag.test()`.

examples/train_outside.py trains, as a data scientist would (it imports no nightshift), a LightGBM regressor
of next month's spend and an XGBoost classifier of next month's plan (4 classes); each file is brought
(`register_brought`, what `nightshift models register --from` calls) and its score_<model> DAG
(dags/score_models.py) runs one night: the partition is scored with the task's outputs (a value; a class
and its probabilities), committed, monitored against the reference of the day its parity was proven on,
its label quality measured, and decided.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.airflow.conftest import AF_ROWS
from tests.airflow.harness import REPO, load_dag
from tests.conftest import write_project

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("airflow_db")]

#: The night scored: a run at logical date 11-17 covers [11-16, 11-17).
DS = date(2026, 11, 16)
#: The brought models are trained on the first two days (11-12, 11-13); their parity is proven on the next day, which
#: they never saw: it is the day their recorded metrics and their monitoring reference come from (a training day
#: would make both in-sample: on this data the night then fails its score drift and its RMSE / macro F1 checks).
TRAIN_UNTIL = date(2026, 11, 13)
PARITY_DS = date(2026, 11, 14)
MODELS = {"spend": ("regression", "spend_next_month", "spend.txt"), "plan": ("multiclass", "next_plan", "plan.json")}


@pytest.fixture(scope="module")
def brought_files(af_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's two model files, trained on the Airflow tests' data (laid out as the demo's: <root>/<model>)."""
    root = tmp_path_factory.mktemp("outside")
    for kind in ("features", "labels"):
        (root / "data" / kind).mkdir(parents=True)
        (root / "data" / kind / "churn").symlink_to(af_data / kind)
    out = root / "brought"
    args = ["--data", str(root / "data"), "--until", TRAIN_UNTIL.isoformat(), "--days", "2", "--out", str(out)]
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "train_outside.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert f"trained on {2 * AF_ROWS:,} labelled rows" in run.stdout
    return out


def _example() -> Any:
    """examples/train_outside.py as a module (for its feature list); examples/ is not a package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_outside", REPO / "examples" / "train_outside.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def _original(model: str, path: Path, features: Any) -> np.ndarray:
    """What the brought file predicts with its own library: values, or the probability of each class."""
    features_read = _example().FEATURES
    x = np.column_stack([features.column(n).to_numpy(zero_copy_only=False).astype(float) for n in features_read])
    if model == "spend":
        import lightgbm as lgb

        return np.asarray(lgb.Booster(model_file=str(path)).predict(x), dtype=np.float64)
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(path))
    return np.asarray(booster.predict(xgb.DMatrix(x, feature_names=features_read)), dtype=np.float64)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("model", ["spend", "plan"])
def test_a_brought_model_is_scored_monitored_and_decided_by_its_dag(
    tmp_path: Path, af_data: Path, sqlite_url: str, brought_files: Path, monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from nightshift.config import load_settings
    from nightshift.db import open_store
    from nightshift.models.bring import register_brought
    from nightshift.monitoring import monitor_history
    from nightshift.nightly import decided_night, served_on

    task, label, filename = MODELS[model]
    path = write_project(tmp_path, sqlite_url, af_data, more_models={model: (af_data, "", label)})
    monkeypatch.setenv("NIGHTSHIFT_CONFIG", str(path))
    settings = load_settings(path)
    brought = register_brought(settings, model, str(brought_files / filename), ds=PARITY_DS, created_by="ds-team")
    assert (brought.version.version, brought.version.task, brought.promoted) == (1, task, True)
    assert brought.version.training_data["parity_partition"] == PARITY_DS.isoformat()

    dag_run = load_dag(f"score_{model}").test(logical_date=datetime(2026, 11, 17, tzinfo=UTC))

    states = _states(dag_run)
    assert str(dag_run.state) == "success", states
    assert dag_run.data_interval_start == datetime(2026, 11, 16, tzinfo=UTC)
    for task_id in ("wait_for_partition", "plan", "score", "monitor", "report", "decide", "retrain_decision"):
        assert states[task_id] == "success", states
    assert states["trigger_retrain"] == "skipped", states

    # Committed: one partition of the brought version, a row per entity of the night's files.
    store = open_store(settings)
    try:
        features = pq.read_table(af_data / "features" / f"ds={DS.isoformat()}")
        assert features.num_rows == AF_ROWS
        [part] = store.list_partitions(model)
        assert (part.ds, part.version, part.row_count) == (DS, 1, AF_ROWS)
        ids = [str(i) for i in features.column("customer_id").to_pylist()]
        got = {p.entity_id: p for p in store.lookup(model, 1, DS, ids)}
        assert len(got) == AF_ROWS
        rows = [got[i] for i in ids]
        original = _original(model, brought_files / filename, features)
        if task == "regression":  # a value per entity, as LightGBM predicts it; no class, no probabilities
            assert all(p.label is None and p.probs is None for p in rows)
            values = np.array([p.value for p in rows], dtype=np.float64)
            assert np.isclose(values, original, rtol=1e-4, atol=1e-3).mean() > 0.998
        else:  # the most probable class and every class's probability, in the order of the names the file records
            assert all(p.value is None for p in rows)
            probs = np.array([p.probs for p in rows], dtype=np.float64)
            assert probs.shape == (AF_ROWS, 4)
            assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
            assert np.abs(probs - original).max() < 1e-4
            assert [p.label for p in rows] == probs.argmax(axis=1).tolist()
            assert brought.version.signature["outputs"]["classes"] == ["basic", "standard", "premium", "family"]
        assert served_on(store, model, DS) == {"champion": (1, 1.0)}

        # Monitored against its reference (the parity day: clean data, every check passes), and the quality of
        # version 1 on the night's labels measured.
        history = monitor_history(settings, model, store=store)
        assert sorted((h["kind"], h["ds"], h["version"]) for h in history) == [
            ("data", DS, 1),
            ("quality", DS, 1),
        ], history
        [night] = [h for h in history if h["kind"] == "data"]
        assert (night["status"], night["failed_checks"]) == ("pass", 0), night["summary"]
        assert night["report_uri"]  # written by the report task
        [quality] = [h for h in history if h["kind"] == "quality"]
        assert quality["summary"]["task"] == task
        metrics = quality["summary"]["metrics"]
        assert metrics["n"] == AF_ROWS
        if task == "regression":
            assert {"rmse", "mae", "r2"} <= set(metrics)
            assert not {"roc_auc", "accuracy", "log_loss"} & set(metrics)
            assert 0.2 < metrics["r2"] < 1.0
        else:
            assert {"log_loss", "accuracy", "macro_f1"} <= set(metrics)
            assert not {"roc_auc", "rmse"} & set(metrics)
            assert metrics["accuracy"] > 0.4
        # Decided once: its verdict recorded, nothing to roll out.
        decided = decided_night(store, model, DS)
        assert decided is not None
        assert (decided["versions"], decided["verdicts"], decided["rollout"]) == (
            {"champion": 1},
            {"champion": True},
            "unchanged",
        )
        assert decided["run_key"] == dag_run.run_id
        [run] = store.runs(model)
        assert run["run_key"] == dag_run.run_id
    finally:
        store.dispose()

    with create_session() as session:
        [event] = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == f"nightshift_predictions_{model}", AssetEvent.source_run_id == dag_run.run_id)
        ).all()
        assert (event.extra["ds"], event.extra["version"], event.extra["rows"]) == (DS.isoformat(), 1, AF_ROWS)
