"""Reasons for each score (`[models.explain]`): exact contributions stored beside the predictions."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from nightshift.db import open_store
from nightshift.db.store import decode_reasons
from nightshift.errors import ConfigError, DuplicateEntityError, ModelSchemaError, NightshiftError
from nightshift.scoring import score_partition
from tests.conftest import DEMO_ROWS, SCORE_DS

EXPLAIN = "[models.explain]\nenabled = true\ntop_k = 3\n"


def _table(data_root: Path) -> Any:
    return pq.read_table(data_root / "features" / f"ds={SCORE_DS.isoformat()}")


def _stored(store: Any, run_id: int) -> dict[str, tuple[float, int | None, list[tuple[int, float]] | None]]:
    """entity id → (score, label, reasons) of a run's rows, read straight from the table."""
    with store.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT entity_id, score, label, reasons FROM predictions WHERE run_id = :r"),
            {"r": run_id},
        ).all()
    return {r[0]: (float(r[1]), r[2], decode_reasons(r[3])) for r in rows}


def _full_contributions(mv: Any, table: Any, contract: Any) -> np.ndarray:
    """Every feature's contribution for every row of `table`, as the workers compute them."""
    from nightshift.data.features import model_inputs
    from nightshift.scoring.reasons import ExplainSpec, make_explainer

    explainer = make_explainer(ExplainSpec(mv.explainer, 3))
    batch = table.combine_chunks().to_batches()[0]
    return explainer.contributions(batch, model_inputs(batch, contract), None)


def _check_top_k(stored: dict[str, Any], ids: list[str], full: np.ndarray, k: int = 3) -> None:
    """The stored reasons are each row's k largest |contribution|s of the full set, largest first."""
    for i, entity in enumerate(ids):
        reasons = stored[entity][2]
        assert reasons is not None
        assert len(reasons) == k
        codes = [c for c, _ in reasons]
        values = np.array([v for _, v in reasons])
        size = np.abs(full[i])
        # Ordered by |contribution|, largest first, and none left out is larger than the smallest kept.
        assert np.all(np.diff(np.abs(values)) <= 1e-6)
        assert size[codes].min() >= np.delete(size, codes).max() - 1e-6
        np.testing.assert_allclose(values, full[i, codes], rtol=1e-6, atol=1e-6)


def test_linear_reasons_sum_with_the_baseline_to_the_logit_of_every_stored_score(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path, trained_model: Any
) -> None:
    settings = make_settings(store_url, extra_model=EXPLAIN)
    mv = registered(settings)
    assert mv.explainer["method"] == "linear"
    assert mv.explainer["output"] == "log_odds"
    summary = score_partition(settings, "churn", SCORE_DS, client=dask_client)
    assert summary.rows == DEMO_ROWS
    assert summary.timings["tasks_explain_s"] > 0
    store = open_store(settings)
    stored = _stored(store, summary.run_id)
    assert len(stored) == DEMO_ROWS

    table = _table(data_root)
    contract = settings.model("churn").contract
    ids = [str(i) for i in table.column(contract.entity_id).to_pylist()]
    full = _full_contributions(mv, table, contract)
    baseline = mv.explainer["baseline"][0]
    scores = np.array([stored[i][0] for i in ids], dtype=np.float64)
    logit = np.log(scores) - np.log1p(-scores)
    # A float32 score's logit is exact to ~6e-8 / (1 - p) (relative rounding of p near 0 costs nothing more):
    # well inside 1e-4 for every score below 0.999.
    assert scores.max() < 1 - 1e-3
    np.testing.assert_allclose(baseline + full.sum(axis=1), logit, atol=1e-4, rtol=0)
    # And independently of the explainer: the scikit-learn pipeline's own log-odds (float64).
    from nightshift.data.features import model_frame

    decision = trained_model.pipeline.decision_function(model_frame(table, contract))
    np.testing.assert_allclose(baseline + full.sum(axis=1), decision, atol=1e-5, rtol=0)
    _check_top_k(stored, ids, full)
    # The baseline is the log-odds of the average training row: an intercept plus coef x the training means.
    assert np.isfinite(baseline)
    store.dispose()


def test_explain_off_stores_no_reasons(store_url: str, make_settings: Any, registered: Any, dask_client: Any) -> None:
    settings = make_settings(store_url)
    registered(settings)
    summary = score_partition(settings, "churn", SCORE_DS, client=dask_client)
    assert "tasks_explain_s" not in summary.timings
    store = open_store(settings)
    with store.connect() as conn:
        with_reasons = conn.execute(sa.text("SELECT count(*) FROM predictions WHERE reasons IS NOT NULL")).scalar_one()
    assert with_reasons == 0
    assert all(p.reasons is None for p in store.lookup("churn", 1, SCORE_DS, ["1", "2", "3"]))
    store.dispose()


def test_a_failed_run_leaves_neither_reasons_nor_predictions(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    """A reason lives in its prediction's row: committed together, and removed together when a run fails."""
    settings = make_settings(store_url, extra_model=EXPLAIN)
    registered(settings)
    first = score_partition(settings, "churn", SCORE_DS, client=dask_client)
    store = open_store(settings)
    before = _stored(store, first.run_id)
    # A second run of the day fails: a copy of one file repeats its entity ids (on PostgreSQL the commit
    # finds them when it builds the key; on SQLite the staging of the copy does).
    part = data_root / "features" / f"ds={SCORE_DS.isoformat()}"
    first_file = sorted(part.glob("*.parquet"))[0]
    shutil.copy(first_file, part / "zz-copy.parquet")
    with pytest.raises(DuplicateEntityError):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)
    failed = max(r["run_id"] for r in store.runs("churn"))
    assert failed != first.run_id
    assert store.count_predictions(failed) == 0
    # The committed run still serves, every row with its reasons, unchanged.
    info = store.partition("churn", 1, SCORE_DS)
    assert info is not None
    assert info.run_id == first.run_id
    assert _stored(store, first.run_id) == before
    assert all(reasons is not None for _, _, reasons in before.values())
    with store.connect() as conn:
        orphans = conn.execute(
            sa.text("SELECT count(*) FROM predictions WHERE run_id <> :r"), {"r": first.run_id}
        ).scalar_one()
    assert orphans == 0
    store.dispose()


# -- trees: the library's own TreeSHAP ------------------------------------------------------------


def _tree_model(kind: str, settings: Any) -> Any:
    """churn as a `kind` booster trained by nightshift on the demo days before SCORE_DS."""
    from datetime import date

    from nightshift.config import EstimatorSettings
    from nightshift.training import train
    from nightshift.training.dataset import build_training_set

    cfg = settings.model("churn")
    cfg.estimator = EstimatorSettings(kind=kind, params={"n_estimators": 30})
    tset = build_training_set(settings, cfg, date(2026, 11, 17))
    return train(tset.table, tset.labels, cfg.contract, cfg.estimator, cfg.training, cfg.decision_threshold)


def _library_contributions(kind: str, pipeline: Any, frame: Any) -> tuple[np.ndarray, np.ndarray]:
    """(the library's pred_contrib summed per contract feature, its raw margin), from the fitted pipeline."""
    from nightshift.training.pipeline import _output_feature_map

    x = pipeline[:-1].transform(frame)
    est = pipeline.steps[-1][1]
    if kind == "lightgbm":
        raw = np.asarray(est.predict(x, pred_contrib=True))
        margin = np.asarray(est.predict(x, raw_score=True))
    else:
        import xgboost as xgb

        booster = est.get_booster()
        raw = np.asarray(booster.predict(xgb.DMatrix(x), pred_contribs=True))
        margin = np.asarray(booster.predict(xgb.DMatrix(x), output_margin=True))
    np.testing.assert_allclose(raw.sum(axis=1), margin, atol=1e-5)  # TreeSHAP is exact: bias + Σ = margin
    owners = _output_feature_map(pipeline)
    names = list(frame.columns)
    per_feature = np.zeros((len(frame), len(names)))
    for column, owner in enumerate(owners):
        per_feature[:, names.index(owner)] += raw[:, column]
    return per_feature, margin


@pytest.mark.parametrize("kind", ["lightgbm", "xgboost"])
def test_tree_reasons_are_the_librarys_treeshap_and_sum_to_the_raw_margin(
    store_url: str, make_settings: Any, dask_client: Any, data_root: Path, kind: str
) -> None:
    from nightshift.data.features import model_frame
    from nightshift.models import open_registry

    settings = make_settings(store_url, extra_model=EXPLAIN)
    trained = _tree_model(kind, settings)
    assert trained.explainer is not None
    assert trained.explainer["method"] == "tree_shap"
    registry = open_registry(settings)
    mv = registry.register_trained(
        "churn", trained, settings.model("churn").contract, training_data={"rows": 1}, decision_threshold=0.5
    )
    registry.set_alias("churn", "champion", mv.version, reason="test")
    from nightshift.models.explainers import booster_file

    booster = booster_file(mv.explainer)
    assert booster is not None
    assert booster["uri"].startswith(str(Path(mv.artifact_uri).parent / "explainer"))
    summary = score_partition(settings, "churn", SCORE_DS, client=dask_client)
    store = open_store(settings)
    stored = _stored(store, summary.run_id)
    table = _table(data_root)
    contract = settings.model("churn").contract
    ids = [str(i) for i in table.column(contract.entity_id).to_pylist()]
    per_feature, margin = _library_contributions(kind, trained.pipeline, model_frame(table, contract))
    # The workers' contributions are the library's, summed per feature (one-hot columns into their categorical).
    np.testing.assert_allclose(_full_contributions(mv, table, contract), per_feature, atol=1e-6)
    _check_top_k(stored, ids, per_feature)
    # And the raw margin is the stored (ONNX) score's log-odds.
    scores = np.array([stored[i][0] for i in ids], dtype=np.float64)
    assert scores.max() < 1 - 1e-3
    np.testing.assert_allclose(np.log(scores) - np.log1p(-scores), margin, atol=1e-4)
    registry.store.dispose()
    store.dispose()


@pytest.mark.parametrize(("kind", "task"), [("lightgbm", "binary"), ("xgboost", "regression")])
def test_a_brought_booster_is_explained_by_its_own_treeshap(
    tmp_path: Path, data_root: Path, store_url: str, dask_client: Any, kind: str, task: str
) -> None:
    from nightshift.config import load_settings
    from nightshift.data.features import onnx_feeds
    from nightshift.models.bring import register_brought
    from tests.conftest import write_project
    from tests.integration.test_bring import LABELS, _train

    more = {"spend": (data_root, EXPLAIN, LABELS["regression"])}
    settings = load_settings(write_project(tmp_path, store_url, data_root, extra_model=EXPLAIN, more_models=more))
    model = "churn" if task == "binary" else "spend"
    path, est = _train(kind, task, data_root, tmp_path)
    mv = register_brought(settings, model, str(path), ds=SCORE_DS).version
    assert mv.explainer["method"] == "tree_shap"
    assert mv.explainer["design"] == "matrix"
    summary = score_partition(settings, model, SCORE_DS, client=dask_client)
    store = open_store(settings)
    stored = _stored(store, summary.run_id)
    table = _table(data_root)
    contract = settings.model(model).contract
    ids = [str(i) for i in table.column(contract.entity_id).to_pylist()]
    # The library's TreeSHAP on the matrix the ONNX graph is fed, by contract feature.
    (x,) = onnx_feeds(table, contract, mv.signature["inputs"], "test").values()
    x = np.asarray(x, dtype=np.float64)
    if kind == "lightgbm":
        raw = np.asarray(est.booster_.predict(x, pred_contrib=True))
        margin = np.asarray(est.booster_.predict(x, raw_score=True))
    else:
        import xgboost as xgb

        booster = est.get_booster()
        dmatrix = xgb.DMatrix(x, feature_names=booster.feature_names)
        raw = np.asarray(booster.predict(dmatrix, pred_contribs=True))
        margin = np.asarray(booster.predict(dmatrix, output_margin=True))
    np.testing.assert_allclose(raw.sum(axis=1), margin, rtol=1e-6, atol=1e-4)
    names = contract.feature_names
    per_feature = np.zeros((len(ids), len(names)))
    for column, feature in enumerate(mv.signature["inputs"]["features"]):
        per_feature[:, names.index(feature)] = raw[:, column]
    _check_top_k(stored, ids, per_feature)
    store.dispose()


# -- refusals: one line naming the model and why ----------------------------------------------------


def test_explain_is_refused_for_a_kind_without_an_exact_explainer(tmp_path: Path, data_root: Path) -> None:
    from nightshift.config import load_settings
    from tests.conftest import write_project

    path = write_project(tmp_path, "sqlite:///x.db", data_root, extra_model=EXPLAIN)
    path.write_text(path.read_text().replace('kind = "logistic_regression"', 'kind = "random_forest"'))
    with pytest.raises(ConfigError, match=r"model 'churn': explain.enabled needs .*'random_forest' has no exact"):
        load_settings(path)


def test_a_brought_model_without_an_explainer_is_refused_when_explain_is_on(
    sqlite_url: str, make_settings: Any, tmp_path: Path, trained_model: Any
) -> None:
    from nightshift.models import open_registry
    from nightshift.models.bring import register_brought

    settings = make_settings(sqlite_url, extra_model=EXPLAIN)
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(trained_model.onnx_bytes)
    with pytest.raises(ModelSchemaError, match=r"model 'churn' from .*nothing registered: explain.enabled is set"):
        register_brought(settings, "churn", str(onnx_file), ds=SCORE_DS)
    assert open_registry(settings).versions("churn") == []


def test_scoring_with_explain_refuses_a_version_without_an_explainer(
    sqlite_url: str, make_settings: Any, trained_model: Any, dask_client: Any
) -> None:
    import dataclasses

    from nightshift.models import open_registry

    settings = make_settings(sqlite_url, extra_model=EXPLAIN)
    registry = open_registry(settings)
    older = dataclasses.replace(trained_model, explainer=None)  # as a version registered before reasons existed
    mv = registry.register_trained(
        "churn", older, settings.model("churn").contract, training_data={"rows": 1}, decision_threshold=0.5
    )
    registry.set_alias("churn", "champion", mv.version, reason="test")
    with pytest.raises(NightshiftError, match=r"model 'churn' v1: explain.enabled is set but it records no exact"):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)
    assert registry.store.list_partitions("churn") == []
    registry.store.dispose()


def test_a_failed_explainer_extraction_is_registered_without_one_and_refused_by_scoring_with_explain(
    sqlite_url: str, make_settings: Any, dask_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reasons off: the explainer's extraction failing never fails training; the version is registered with no
    explainer. Reasons turned on later: scoring it refuses in one line, and writes nothing."""
    from datetime import date

    from nightshift.models import open_registry
    from nightshift.training import explain, train_and_register

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise ValueError("the pipeline emits 9 columns for 8 coefficients")

    monkeypatch.setattr(explain, "_linear", broken)
    result = train_and_register(make_settings(sqlite_url), "churn", date(2026, 11, 17))
    assert result.version.version == 1
    assert result.promoted
    assert result.version.explainer is None
    registry = open_registry(make_settings(sqlite_url))
    assert registry.get("churn", 1).explainer is None

    settings = make_settings(sqlite_url, extra_model=EXPLAIN)
    with pytest.raises(NightshiftError, match=r"model 'churn' v1: explain.enabled is set but it records no exact") as e:
        score_partition(settings, "churn", SCORE_DS, client=dask_client)
    assert "\n" not in str(e.value)
    assert registry.store.list_partitions("churn") == []
    registry.store.dispose()


# -- the CLI ----------------------------------------------------------------------------------------


def test_cli_predictions_explain(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, tmp_path: Path
) -> None:
    import json

    from tests.cli.conftest import run_cli

    settings = make_settings(store_url, extra_model=EXPLAIN)
    registered(settings)
    score_partition(settings, "churn", SCORE_DS, client=dask_client)
    store = open_store(settings)
    names = [c.name for c in settings.model("churn").contract.columns]
    expected = {p.entity_id: p.reasons for p in store.lookup("churn", 1, SCORE_DS, ["1", "2"])}
    config = str(tmp_path / "nightshift.toml")

    got = run_cli("predictions", "-m", "churn", "-e", "1", "-e", "2", "--explain", "--json", "--config", config)
    assert got.returncode == 0, got.stderr
    body = json.loads(got.stdout)
    for p in body["predictions"]:
        reasons = expected[p["entity_id"]]
        assert reasons is not None
        assert [r["feature"] for r in p["reasons"]] == [names[c] for c, _ in reasons]
        assert [r["contribution"] for r in p["reasons"]] == pytest.approx([v for _, v in reasons], abs=1e-6)
    plain = json.loads(run_cli("predictions", "-m", "churn", "-e", "1", "--json", "--config", config).stdout)
    assert "reasons" not in plain["predictions"][0]

    table = run_cli("predictions", "-m", "churn", "-e", "1", "--explain", "--config", config)
    assert table.returncode == 0, table.stderr
    first = expected["1"]
    assert first is not None
    assert "reasons" in table.stdout
    assert f"{names[first[0][0]]} {first[0][1]:+.4f}" in table.stdout

    # `nightshift lineage --entity` says why the score is what it is: the same reasons, by feature name.
    lineage = run_cli("lineage", "-m", "churn", "--ds", str(SCORE_DS), "--entity", "1", "--json", "--config", config)
    assert lineage.returncode == 0, lineage.stderr
    said = json.loads(lineage.stdout)["steps"]["prediction"]["reasons"]
    assert [r["feature"] for r in said] == [names[c] for c, _ in first]
    assert [r["contribution"] for r in said] == pytest.approx([v for _, v in first], abs=1e-6)
    text = run_cli("lineage", "-m", "churn", "--ds", str(SCORE_DS), "--entity", "1", "--config", config)
    assert f"reasons: {names[first[0][0]]} {first[0][1]:+.4f}" in text.stdout, text.stdout

    # A day scored without reasons: one line naming the model and how to enable them, exit 1.
    plain_settings = make_settings(store_url)
    score_partition(plain_settings, "churn", SCORE_DS, client=dask_client)
    refused = run_cli("predictions", "-m", "churn", "-e", "1", "--explain", "--config", config)
    assert refused.returncode == 1
    assert "was scored without reasons: set [models.explain] enabled = true for model 'churn'" in refused.stderr
    # ... and the command that scores that version's day again (the version the read resolved to).
    assert f"`nightshift score -m churn --version 1 --ds {SCORE_DS}`" in " ".join(refused.stderr.split())
    store.dispose()
