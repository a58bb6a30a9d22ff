"""Every kind of brought model, scored by ONE group DAG run under real Airflow `dag.test()`, on both stores.

Nine models share the demo dataset as schedule group `brought`: an ONNX file (a scikit-learn pipeline
converted elsewhere), a scikit-learn pipeline saved with skops, LightGBM and XGBoost classifiers (binary and
multiclass) and regressors in their libraries' own files, and a CatBoost model. Each is trained as its user
would (the first two days), brought with `register_brought` (what `nightshift models register --from`
calls) with its parity proven on a day it never saw, and score_brought (dags/score_models.py) scores the night
for all nine in one read of the partition: each commits its task's outputs (P(1) and a label; a class and
every class's probability; a value), equal to what its own library predicts, and is monitored, its label
quality measured and its night decided in its own task group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from nightshift.demo import DEMO_ENTITY_ID, demo_contract
from tests.airflow.conftest import AF_ROWS
from tests.airflow.harness import load_dag
from tests.cli.test_bring_cli import _frame
from tests.conftest import write_project
from tests.integration.test_bring import _day

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("airflow_db")]

DS = date(2026, 11, 16)  # the night scored by the run at logical date 11-17
TRAIN_DAYS = (date(2026, 11, 12), date(2026, 11, 13))
PARITY_DS = date(2026, 11, 14)  # unseen in training: the reference and the recorded metrics come from it
GROUP = "brought"
LABELS = {"binary": "churned", "multiclass": "next_plan", "regression": "spend_next_month"}
FEATURES = demo_contract().feature_names
NUMERIC = [c.name for c in demo_contract().numeric]
CATEGORICAL = [c.name for c in demo_contract().categorical]


@dataclass
class Brought:
    """A model file as its user brings it, and what its own library predicts: P(1) [N] (LightGBM's and
    XGBoost's boosters give it so), probabilities [N, K] in `classes` order, or values [N]."""

    task: str
    path: Path
    predict: Callable[[pa.Table], np.ndarray]
    classes: list[str] | None = None
    trusted: tuple[str, ...] = ()


def _pipeline(estimator: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pre = ColumnTransformer(
        [
            ("num", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]), NUMERIC),
            ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
        ]
    )
    return Pipeline([("pre", pre), ("model", estimator)])


def _train_all(root: Path, out: Path) -> dict[str, Brought]:
    """The nine model files, trained on TRAIN_DAYS."""
    import catboost as cb
    import lightgbm as lgb
    import skops.io as sio
    import xgboost as xgb
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    days = [_day(root, ds) for ds in TRAIN_DAYS]
    features = pa.concat_tables([f for f, _ in days])
    y = {
        task: np.concatenate([lab.column(c).to_numpy(zero_copy_only=False) for _, lab in days])
        for task, c in LABELS.items()
    }
    y_bin, y_value = y["binary"].astype(int), y["regression"].astype(float)
    plans = sorted({str(v) for v in y["multiclass"]})
    y_plan = np.array([plans.index(str(v)) for v in y["multiclass"]])
    x = features.select(NUMERIC).to_pandas()

    def matrix(t: pa.Table) -> Any:
        return t.select(NUMERIC).to_pandas()

    found: dict[str, Brought] = {}

    logistic = _pipeline(LogisticRegression(max_iter=500)).fit(_frame(features, FEATURES), y_bin)
    inputs = [(n, StringTensorType([None, 1]) if n in CATEGORICAL else FloatTensorType([None, 1])) for n in FEATURES]
    zipmap = {id(logistic.steps[-1][1]): {"zipmap": False}}  # probabilities as a tensor, which nightshift reads
    proto = convert_sklearn(logistic, initial_types=inputs, target_opset={"": 17, "ai.onnx.ml": 3}, options=zipmap)
    (out / "churn.onnx").write_bytes(proto.SerializeToString())
    found["onnx_churn"] = Brought(
        "binary", out / "churn.onnx", lambda t: logistic.predict_proba(_frame(t, FEATURES))[:, 1]
    )

    boosted = _pipeline(GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0))
    boosted.fit(_frame(features, FEATURES), np.array(plans, dtype=object)[y_plan])
    sio.dump(boosted, out / "plan.skops")
    found["skops_plan"] = Brought(
        "multiclass",
        out / "plan.skops",
        lambda t: boosted.predict_proba(_frame(t, FEATURES)),
        classes=[str(c) for c in boosted.classes_],
        # What skops does not trust by default (the trees, the loss): the user reviews and names them.
        trusted=tuple(sio.get_untrusted_types(file=out / "plan.skops")),
    )

    for task, target in (("binary", y_bin), ("multiclass", y_plan), ("regression", y_value)):
        kind = lgb.LGBMRegressor if task == "regression" else lgb.LGBMClassifier
        est = kind(n_estimators=30, num_leaves=15, verbose=-1, random_state=0).fit(x, target)
        path = out / f"lgb_{task}.txt"
        est.booster_.save_model(str(path))
        booster = lgb.Booster(model_file=str(path))
        found[f"lgb_{task}"] = Brought(
            task,
            path,
            (lambda t, b=booster: np.asarray(b.predict(matrix(t).to_numpy(float)), float)),
            classes=plans if task == "multiclass" else None,
        )

        xkind = xgb.XGBRegressor if task == "regression" else xgb.XGBClassifier
        xest = xkind(n_estimators=30, max_depth=4).fit(x, target)
        xpath = out / f"xgb_{task}.json"
        xest.save_model(str(xpath))
        xbooster = xgb.Booster(model_file=str(xpath))
        found[f"xgb_{task}"] = Brought(
            task,
            xpath,
            (lambda t, b=xbooster: np.asarray(b.predict(xgb.DMatrix(matrix(t), feature_names=NUMERIC)), float)),
            classes=plans if task == "multiclass" else None,
        )

    cat = cb.CatBoostClassifier(iterations=30, depth=4, verbose=False, random_seed=0, allow_writing_files=False)
    cat.fit(x, y_plan)
    cat.save_model(str(out / "plan.cbm"))
    found["cat_plan"] = Brought("multiclass", out / "plan.cbm", lambda t: cat.predict_proba(matrix(t)), classes=plans)
    return found


@pytest.fixture(scope="module")
def brought(af_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Brought]:
    return _train_all(af_data, tmp_path_factory.mktemp("brought"))


@pytest.mark.timeout(420)
# The SQLite run (43 s) goes to `make extra` where PostgreSQL runs: tests/conftest.py ONE_STORE says why.
@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_every_kind_of_brought_model_is_scored_in_one_group_dag_run(
    tmp_path: Path,
    af_data: Path,
    brought: dict[str, Brought],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    store: str,
) -> None:
    from nightshift.config import load_settings
    from nightshift.db import open_store
    from nightshift.models.bring import register_brought
    from nightshift.monitoring import monitor_history
    from nightshift.nightly import decided_night, served_on

    url = str(request.getfixturevalue("sqlite_url" if store == "sqlite" else "pg_url"))
    group = f'[models.schedule]\ngroup = "{GROUP}"\n'
    more = {name: (af_data, group, LABELS[b.task]) for name, b in brought.items()}
    path = write_project(tmp_path, url, af_data, more_models=more)  # churn, the project's own, scores alone
    monkeypatch.setenv("NIGHTSHIFT_CONFIG", str(path))
    settings = load_settings(path)
    assert sorted(m.name for m in settings.groups()[GROUP]) == sorted(brought)
    for name, b in brought.items():
        registered = register_brought(
            settings, name, str(b.path), ds=PARITY_DS, created_by="ds-team", class_names=b.classes,
            trusted_types=b.trusted,
        )  # fmt: skip
        assert (registered.version.version, registered.version.task) == (1, b.task), name
        assert registered.parity.passed, registered.parity.describe()
        print(f"{name}: {registered.parity.describe()}")  # the figures per flavour (pytest -s shows them)

    dag_run = load_dag(f"score_{GROUP}").test(logical_date=datetime(2026, 11, 17, tzinfo=UTC))

    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    assert str(dag_run.state) == "success", states
    for task_id in ("wait_for_partition", "plan", "score"):
        assert states[task_id] == "success", states
    for name in brought:
        for step in ("monitor", "report", "decide", "retrain_decision"):
            assert states[f"{name}_night.{step}"] == "success", (name, step, states)

    features, _labels = _day(af_data, DS)
    ids = [str(i) for i in features.column(DEMO_ENTITY_ID).to_pylist()]
    db = open_store(settings)
    try:
        runs = {r["model"]: r for m in brought for r in db.runs(m)}
        assert sorted(runs) == sorted(brought)
        assert {r["run_key"] for r in runs.values()} == {dag_run.run_id}
        # One read of the partition for all nine: each run's timings say how many models shared it.
        assert {name: (r["timings"] or {}).get("models_in_read") for name, r in runs.items()} == dict.fromkeys(
            brought, len(brought)
        )
        for name, b in brought.items():
            [part] = db.list_partitions(name)
            assert (part.ds, part.version, part.row_count) == (DS, 1, AF_ROWS), name
            got = {p.entity_id: p for p in db.lookup(name, 1, DS, ids)}
            rows = [got[i] for i in ids]
            expected = b.predict(features)
            if b.task == "binary":  # P(1) as float4, and the label at the version's threshold
                scores = np.array([p.score for p in rows], dtype=np.float64)
                assert np.abs(scores - expected).max() < 1e-4, name
                print(f"{name}: the night's max |Δ P(1)| {np.abs(scores - expected).max():.3g}")
                assert all(p.label in (0, 1) and p.probs is None and p.value is None for p in rows), name
            elif b.task == "multiclass":  # the class, its probability and every class's, in the model's order
                probs = np.array([p.probs for p in rows], dtype=np.float64)
                assert probs.shape == (AF_ROWS, 4), name
                close = (np.abs(probs - expected) < 1e-4).all(axis=1)
                # A tree behind a float32 scaler (the skops pipeline) can take the other branch on a row whose
                # scaled value sits on a split: rare, and bounded by what the parity check measures on its day.
                print(
                    f"{name}: the night's max |Δ probability| {np.abs(probs - expected).max():.3g}, "
                    f"{int((~close).sum())} rows over 1e-4"
                )
                assert close.mean() >= 0.998, name
                assert [p.label for p in rows] == probs.argmax(axis=1).tolist(), name
            else:  # the value as the library gives it
                values = np.array([p.value for p in rows], dtype=np.float64)
                assert np.isclose(values, expected, rtol=1e-4, atol=1e-3).mean() > 0.998, name
                assert all(p.label is None and p.probs is None for p in rows), name
            assert served_on(db, name, DS) == {"champion": (1, 1.0)}, name

            history = monitor_history(settings, name, store=db)
            kinds = sorted((h["kind"], h["ds"], h["version"]) for h in history)
            assert kinds == [("data", DS, 1), ("quality", DS, 1)], (name, history)
            [quality] = [h for h in history if h["kind"] == "quality"]
            assert quality["summary"]["task"] == b.task, name
            assert quality["summary"]["metrics"]["n"] == AF_ROWS, name
            decided = decided_night(db, name, DS)
            assert decided is not None, name
            assert decided["versions"] == {"champion": 1}, name
            assert decided["run_key"] == dag_run.run_id, name
    finally:
        db.dispose()
