"""Performance before labels: the CBPE estimate of ROC AUC is within ±0.02 of the realized value on calibrated data."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nightshift.monitoring.cbpe import expected_binary_metrics, expected_roc_auc

START = date(2026, 11, 2)
ROWS = 20_000


def test_the_expected_roc_auc_is_the_expected_share_of_concordant_pairs() -> None:
    rng = np.random.default_rng(4)
    p = np.round(rng.beta(2, 5, 250), 2)  # ties included
    num = den = 0.0
    for i in range(p.size):
        for j in range(p.size):
            if i != j:
                w = p[i] * (1 - p[j])
                den += w
                num += w * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
    assert expected_roc_auc(p) == pytest.approx(num / den, rel=1e-12)


def test_on_calibrated_scores_the_estimate_matches_the_realized_metrics_and_miscalibration_shows() -> None:
    from sklearn.metrics import accuracy_score, roc_auc_score

    rng = np.random.default_rng(5)
    p = rng.beta(2, 6, 200_000)
    y = rng.random(p.size) < p  # calibrated by construction
    est = expected_binary_metrics(p, 0.5)
    assert est["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=0.005)
    assert est["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5), abs=0.005)
    # Squashed scores rank the same (realized AUC unchanged) but are not calibrated: the estimate is off.
    squashed = expected_roc_auc(p**3)
    assert abs(squashed - roc_auc_score(y, p**3)) > 0.02


@pytest.fixture(scope="module")
def calibrated_days(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nightshift.demo import generate

    root = tmp_path_factory.mktemp("cbpe")
    generate(root / "features", root / "labels", start=START, days=3, rows_per_day=ROWS, files_per_day=2, seed=21)
    return root


@pytest.mark.timeout(900)
def test_the_nightly_estimate_is_within_002_auc_of_the_realized_value(
    calibrated_days: Path, tmp_path: Path, store_url: str, dask_client: Any
) -> None:
    from nightshift.config import load_settings
    from nightshift.db import open_store
    from nightshift.monitoring import estimate_performance, label_quality
    from nightshift.monitoring.cbpe import estimates
    from nightshift.scoring import score_partition
    from nightshift.training import train_and_register
    from tests.conftest import write_project

    settings = load_settings(write_project(tmp_path, store_url, calibrated_days))
    scored = date(2026, 11, 4)
    train_and_register(settings, "churn", date(2026, 11, 3))  # logistic regression: calibrated probabilities
    store = open_store(settings)
    try:
        score_partition(settings, "churn", scored, client=dask_client, store=store)
        estimate = estimate_performance(settings, "churn", scored, store=store)  # the night: no label yet
        assert estimate.rows == ROWS
        assert estimate.status == "pass"
        quality = label_quality(settings, "churn", scored, store=store)  # labels land
        realized = quality.summary["metrics"]["roc_auc"]
        error = quality.summary["estimate"]["roc_auc"]
        assert error["estimated"] == pytest.approx(estimate.estimated["roc_auc"])
        assert error["realized"] == pytest.approx(realized)
        assert abs(error["error"]) <= 0.02, error
        assert abs(quality.summary["estimate"]["accuracy"]["error"]) <= 0.02
        # The error is a stored metric: a check of the quality result, and beside the estimate.
        [check] = [c for c in quality.checks if c.kind == "estimation_error" and c.statistic == "roc_auc"]
        assert check.value == pytest.approx(abs(error["error"]))
        [row] = estimates(store, "churn")
        assert row["error"]["roc_auc"] == pytest.approx(error["error"])
        assert row["realized"]["roc_auc"] == pytest.approx(realized)
    finally:
        store.dispose()
