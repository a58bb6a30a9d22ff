"""A shadow rollout of a regression model, decided night by night by its labelled outcomes (nightshift.nightly).

Champion v1 is a LightGBM regressor of next month's spend trained outside nightshift and brought
(`register_brought`); challenger v2 is nightshift's own regression, retrained and started as a shadow.
Two nights score both versions; the first night's labels land only after it ran, so that night waits;
the second night's paired tests on the per-entity squared and absolute errors decide: a better v2 is
promoted, a v2 trained on shuffled labels is aborted.

Every figure the decision rests on (the mean error differences, each version's RMSE, MAE and R²) is
recomputed here from the committed values and the labels, so a regression read the binary way (a
decision threshold, the label column, log loss and accuracy) fails this test.
"""

from __future__ import annotations

import shutil
from datetime import date, timedelta
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
from nightshift.models.bring import register_brought
from nightshift.monitoring import monitor_history, quality_of_day
from nightshift.nightly import run_night, served_on
from nightshift.rollout import Rollouts
from tests.conftest import model_block

#: Five labelled days: v1 is trained outside on day 0 (parity on day 1), v2 on days 0-1 and tested on day 2;
#: days 3 and 4 are the shadow's nights.
D0 = date(2026, 10, 5)
DAYS = [D0 + timedelta(days=i) for i in range(5)]
ROWS = 1_000
MODEL = "spend"
LABEL = "spend_next_month"
NUMERIC = [c.name for c in demo_contract().numeric]

#: nightshift's own regression (v2): LightGBM on the contract's columns.
ESTIMATOR = """[models.estimator]
kind = "lightgbm"
task = "regression"
params = { n_estimators = 60, num_leaves = 15 }

"""
#: A shadow of two nights at least, promoted once the paired tests show it not worse (effect 0.1, two metrics:
#: 785 labelled entities, so one night of 1,000 is enough evidence).
ROLLOUT = """
[models.rollout]
strategy = "shadow"
promote_after_nights = 2
[models.rollout.outcomes]
effect_size = 0.1
[models.monitoring]
report = false
"""
#: The retrain's gates judge RMSE. "promoted": v2 must beat the brought champion on the held-out day;
#: "aborted": anything passes, so only the labelled outcomes can stop it.
GATES = {
    "promoted": '[models.gates]\nmetric = "rmse"\nmin = 0.0\nchampion_tolerance = 0.0\n',
    "aborted": '[models.gates]\nmetric = "rmse"\nmin = 0.0\nchampion_tolerance = 1000000.0\n',
}
#: The brought champion: a weak one (a few shallow trees) when v2 should win, a strong one when v2 should lose.
CHAMPION_PARAMS: dict[str, dict[str, Any]] = {
    "promoted": {"n_estimators": 3, "num_leaves": 3, "learning_rate": 0.1},
    "aborted": {"n_estimators": 80, "num_leaves": 15, "learning_rate": 0.1},
}


@pytest.fixture(scope="module")
def regression_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nightshift.demo import generate

    root = tmp_path_factory.mktemp("regression-rollout")
    generate(root / "features", root / "labels", start=D0, days=len(DAYS), rows_per_day=ROWS, files_per_day=2, seed=3)
    return root


def _project(folder: Path, store_url: str, data: Path, outcome: str) -> Any:
    block = model_block(MODEL, data, ROLLOUT + GATES[outcome], LABEL)
    own = block[block.index("[models.estimator]") : block.index("[models.training]")]
    text = f'state_dir = "{folder / "state"}"\nstore_url = "{store_url}"\n'
    text += "\n[dask]\nn_workers = 2\nthreads_per_worker = 1\n"
    text += block.replace(own, ESTIMATOR)
    path = folder / "nightshift.toml"
    path.write_text(text)
    return load_settings(path)


def _day(data: Path, ds: date) -> tuple[pa.Table, np.ndarray]:
    """A day's features and its spend labels in the features' row order."""
    features = pq.read_table(data / "features" / f"ds={ds.isoformat()}")
    labels = pq.read_table(data / "labels" / f"ds={ds.isoformat()}")
    order = pc.index_in(features.column(DEMO_ENTITY_ID), labels.column(DEMO_ENTITY_ID))
    return features, np.asarray(labels.column(LABEL).take(order).to_numpy(), dtype=np.float64)


def _bring_champion(settings: Any, data: Path, folder: Path, outcome: str) -> Any:
    """v1: a LightGBM regressor trained in a notebook on day 0, saved as LightGBM's text file, brought."""
    import lightgbm as lgb

    features, y = _day(data, DAYS[0])
    est = lgb.LGBMRegressor(verbose=-1, random_state=0, **CHAMPION_PARAMS[outcome])
    est.fit(features.select(NUMERIC).to_pandas(), y)
    path = folder / "spend.txt"
    est.booster_.save_model(str(path))
    brought = register_brought(settings, MODEL, str(path), ds=DAYS[1], created_by="ds-team")
    assert (brought.version.version, brought.version.task, brought.promoted) == (1, "regression", True)
    assert brought.parity.passed, brought.parity.describe()
    return est


def _shuffle_labels(data: Path, days: list[date]) -> None:
    rng = np.random.default_rng(0)
    for d in days:
        for f in (data / "labels" / f"ds={d.isoformat()}").glob("*.parquet"):
            t = pq.read_table(f)
            i = t.schema.get_field_index(LABEL)
            pq.write_table(t.set_column(i, LABEL, pa.array(rng.permutation(t.column(LABEL).to_numpy()))), f)


def _values(store: Any, version: int, ds: date, ids: list[str]) -> np.ndarray:
    """The committed values of every entity of the night (a regression's: a value, no class label)."""
    rows = {p.entity_id: p for p in store.lookup(MODEL, version, ds, ids)}
    assert len(rows) == len(ids)
    assert all(p.label is None and p.probs is None for p in rows.values())
    values = np.array([rows[i].value for i in ids], dtype=np.float64)
    assert np.isfinite(values).all()
    return values


def _outcome_event(rollouts: Rollouts, event: str) -> dict[str, Any]:
    detail: dict[str, Any] = [e for e in rollouts.history(MODEL) if e["event"] == event][-1]["detail"]
    return detail


@pytest.mark.timeout(600)
@pytest.mark.parametrize("outcome", ["promoted", "aborted"])
def test_a_regression_shadow_is_decided_by_its_labelled_errors(
    regression_data: Path, tmp_path: Path, store_url: str, dask_client: Any, outcome: str
) -> None:
    data = tmp_path / "data"
    shutil.copytree(regression_data, data)
    settings = _project(tmp_path, store_url, data, outcome)
    champion_est = _bring_champion(settings, data, tmp_path, outcome)
    if outcome == "aborted":
        _shuffle_labels(data, DAYS[:2])  # v2 learns nothing: its training days' spend is shuffled
    store = open_store(settings)
    try:
        rollouts = Rollouts(settings, store)
        out = rollouts.retrain(MODEL, DAYS[2], trigger={"kind": "manual"}, by="test")
        assert out.status == "shadow", out.reason
        assert rollouts.registry.aliases(MODEL) == {"champion": 1, "challenger": 2}
        assert rollouts.registry.get(MODEL, 2).task == "regression"
        champion_gate = next(g for g in out.gates if g["name"] == "not_worse_than_champion")
        assert champion_gate["champion_version"] == 1  # compared with the brought champion on the same rows

        # Night 1 of the shadow: both versions scored; its labels have not landed yet, so nothing is decided.
        marker = data / "labels" / f"ds={DAYS[3].isoformat()}" / "_SUCCESS"
        marker.rename(marker.with_name("_SUCCESS.later"))
        first = run_night(settings, MODEL, DAYS[3], client=dask_client, store=store, by="test")
        assert first.plan.versions == {"champion": 1, "challenger": 2}
        assert first.decision.rollout == "waiting: not enough evidence yet: n=0 of 785", first.decision.rollout
        assert monitor_history(settings, MODEL, kind="quality", store=store) == []
        # The labels land; the quality of the night before is measured as quality_<model> does, and the
        # second night decides on both labelled nights.
        marker.with_name("_SUCCESS.later").rename(marker)
        quality_of_day(settings, MODEL, DAYS[3], store=store, alert=False)
        second = run_night(settings, MODEL, DAYS[4], client=dask_client, store=store, by="test")
        assert second.plan.versions == {"champion": 1, "challenger": 2}
        assert second.decision.rollout == outcome, second.decision.rollout

        # What serves now.
        if outcome == "promoted":
            assert rollouts.registry.aliases(MODEL) == {"champion": 2, "previous": 1}
            assert rollouts.active(MODEL) is None
            assert rollouts.candidate(out.candidate_id)["status"] == "promoted"
        else:
            assert rollouts.registry.aliases(MODEL) == {"champion": 1}
            assert rollouts.active(MODEL) is None
            assert rollouts.candidate(out.candidate_id)["status"] == "aborted"
            assert "significantly worse than v1" in _outcome_event(rollouts, "aborted")["reason"]

        # Both versions' predictions of each night are stored: every entity, a value each, and v1's are what
        # the brought LightGBM predicts. The champion served every entity, the shadow none.
        errors: dict[int, list[np.ndarray]] = {1: [], 2: []}
        quality = {(h["ds"], h["version"]): h for h in monitor_history(settings, MODEL, kind="quality", store=store)}
        assert set(quality) == {(d, v) for d in DAYS[3:] for v in (1, 2)}
        for ds in DAYS[3:]:
            assert served_on(store, MODEL, ds) == {"champion": (1, 1.0), "challenger": (2, 0.0)}
            features, y = _day(data, ds)
            ids = [str(i) for i in features.column(DEMO_ENTITY_ID).to_pylist()]
            for version in (1, 2):
                part = store.partition(MODEL, version, ds)
                assert part is not None
                assert part.row_count == ROWS == features.num_rows
                values = _values(store, version, ds, ids)
                if version == 1:
                    expected = champion_est.predict(features.select(NUMERIC).to_pandas())
                    assert np.isclose(values, expected, rtol=1e-4, atol=1e-3).mean() > 0.998
                errors[version].append(values - y)
                # The night's label quality of each version: regression metrics, recomputed from what was stored.
                summary = quality[(ds, version)]["summary"]
                assert summary["task"] == "regression"
                metrics = summary["metrics"]
                assert not {"roc_auc", "log_loss", "accuracy", "precision", "recall"} & set(metrics)
                assert metrics["n"] == ROWS
                assert metrics["rmse"] == pytest.approx(float(np.sqrt(np.mean((values - y) ** 2))), rel=1e-6)
                assert metrics["mae"] == pytest.approx(float(np.mean(np.abs(values - y))), rel=1e-6)
                r2 = 1.0 - np.sum((y - values) ** 2) / np.sum((y - y.mean()) ** 2)
                assert metrics["r2"] == pytest.approx(float(r2), rel=1e-6, abs=1e-9)
            better = quality[(ds, 2)]["summary"]["metrics"]["rmse"] < quality[(ds, 1)]["summary"]["metrics"]["rmse"]
            assert better is (outcome == "promoted")

        # The evidence the decision rests on: paired tests of the errors on the 2,000 labelled entities of both
        # nights, oriented so that a positive difference favours the challenger.
        evidence = _outcome_event(rollouts, outcome)["evidence"]["challenger_vs_champion"]
        assert (evidence["design"], evidence["baseline"], evidence["candidate"]) == ("paired", 1, 2)
        assert evidence["days"] == [d.isoformat() for d in DAYS[3:]]
        assert (evidence["n"], evidence["n_required"]) == (2 * ROWS, 785)
        assert evidence["verdict"] == ("supported" if outcome == "promoted" else "worse")
        assert {(t["metric"], t["kind"]) for t in evidence["tests"]} == {
            (m, k) for m in ("squared_error", "absolute_error") for k in ("difference", "non_inferiority")
        }
        e1, e2 = np.concatenate(errors[1]), np.concatenate(errors[2])
        expected_difference = {
            "squared_error": float(np.mean(e1**2 - e2**2)),
            "absolute_error": float(np.mean(np.abs(e1) - np.abs(e2))),
        }
        for t in evidence["tests"]:
            assert t["test"] == "paired t-test"
            assert (t["n_a"], t["n_b"]) == (2 * ROWS, 2 * ROWS)
            assert t["difference"] == pytest.approx(expected_difference[t["metric"]], rel=1e-6)
            if t["kind"] == "difference":
                assert t["significant"] is True
                assert (t["difference"] > 0) is (outcome == "promoted")
    finally:
        store.dispose()
