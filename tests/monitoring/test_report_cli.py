"""The Evidently HTML report, its agreement with the checks, the drift-history plot and the CLI commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from nightshift.scoring import score_partition
from tests.monitoring.conftest import CLEAN_DAYS, NEW_CATEGORY_DAY


def test_report_html_plot_and_cli(
    sqlite_url: str,
    mon_settings: Callable[..., Any],
    mon_registered: Callable[[Any], Any],
    dask_client: Any,
    tmp_path: Path,
) -> None:
    from nightshift.cli import app

    # Evidently renders a plot per drift column (~0.2 s each): the test keeps five of them.
    keep = {"monthly_charges", "age", "plan", "region", "tenure_months"}
    skip = [c.name for c in mon_settings(sqlite_url).model("churn").contract.columns if c.name not in keep]
    overrides = "".join(f"[models.monitoring.columns.{c}]\ndrift = false\n" for c in skip)
    settings = mon_settings(sqlite_url, "retrain_failing_nights = 1\n" + overrides)
    mon_registered(settings)
    for day in (CLEAN_DAYS[-1], NEW_CATEGORY_DAY):
        score_partition(settings, "churn", day, client=dask_client)
    config = str(tmp_path / "nightshift.toml")
    runner = CliRunner()

    clean = runner.invoke(app, ["monitor", "-m", "churn", "--ds", CLEAN_DAYS[-1].isoformat(), "-c", config])
    assert clean.exit_code == 0, clean.output
    res = runner.invoke(
        app, ["monitor", "-m", "churn", "--ds", NEW_CATEGORY_DAY.isoformat(), "--report", "--json", "-c", config]
    )
    assert res.exit_code == 1, res.output  # a failing night exits 1
    body = json.loads(res.stdout)
    assert body["status"] == "fail"
    assert body["report_uri"]
    html = Path(body["report_uri"])
    assert html.is_file()
    assert html.stat().st_size > 100_000
    text = html.read_text()
    assert "monthly_charges" in text
    assert "plan" in text
    assert html.parent == Path(settings.reports_uri) / "churn" / "v1" / f"ds={NEW_CATEGORY_DAY.isoformat()}"

    html.unlink()
    again = runner.invoke(app, ["monitor-report", "-m", "churn", "--ds", NEW_CATEGORY_DAY.isoformat(), "-c", config])
    assert again.exit_code == 0, again.output
    assert html.is_file()  # report_partition: the same report as its own step

    listed = runner.invoke(app, ["reports", "-m", "churn", "--plot", "--json", "-c", config])
    assert listed.exit_code == 0, listed.output
    png = Path(settings.reports_uri) / "churn" / "drift_history.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    decided = runner.invoke(
        app, ["retrain-decision", "-m", "churn", "--ds", NEW_CATEGORY_DAY.isoformat(), "-c", config]
    )
    assert decided.exit_code == 0
    assert "TRIGGER" in decided.output
    requests = runner.invoke(app, ["reports", "--requests", "--json", "-c", config])
    assert [r["request_id"] for r in json.loads(requests.stdout)] == [
        f"retrain__churn__{NEW_CATEGORY_DAY.isoformat()}__drift"
    ]
    checks = runner.invoke(
        app, ["reports", "-m", "churn", "--ds", NEW_CATEGORY_DAY.isoformat(), "--json", "-c", config]
    )
    assert any(c["kind"] == "new_category" and c["passed"] is False for c in json.loads(checks.stdout)["churn"])
    ref = runner.invoke(app, ["monitor-reference", "-m", "churn", "-c", config])
    assert ref.exit_code == 0
    assert "6,000 training rows" in ref.output


def test_report_values_agree_with_the_checks(
    mon_root: Path, mon_cfg: Any, mon_reference: Any, trained_model: Any
) -> None:
    """Evidently's ValueDrift on the report subsample equals our distance on the same rows."""
    from nightshift.config import ColumnMonitoring
    from nightshift.monitoring.checks import run_checks
    from nightshift.monitoring.profile import category_counts, numeric_values, profile_files
    from nightshift.monitoring.reference import model_session, score_sample
    from nightshift.monitoring.report import build_report
    from nightshift.monitoring.stats import categorical_distance, finite, numeric_distance
    from tests.monitoring.conftest import day_files

    cfg = mon_cfg.model_copy(deep=True)
    keep = {"monthly_charges", "age", "tenure_months", "plan"}
    cfg.monitoring.columns = {c: ColumnMonitoring(drift=False) for c in cfg.contract.feature_names if c not in keep}
    profile = profile_files(day_files(mon_root, NEW_CATEGORY_DAY), cfg.contract, cap=2000, seed=0)
    scores = score_sample(model_session(trained_model.onnx_bytes), profile.sample, cfg.contract)
    checks = run_checks(profile, mon_reference, cfg, current_scores=scores, volume_history=None)
    snapshot = build_report(cfg, profile, scores, mon_reference, checks)
    values = {
        m["config"]["column"]: m["value"]
        for m in snapshot.dict()["metrics"]
        if m["config"]["type"].endswith("ValueDrift")
    }
    n = cfg.monitoring.report_rows
    cur, ref = profile.sample.slice(0, n), mon_reference.sample.slice(0, n)
    for col in ("monthly_charges", "age", "tenure_months"):
        mine = numeric_distance("wasserstein", finite(numeric_values(ref, col)), finite(numeric_values(cur, col)))
        assert values[col] == pytest.approx(mine, rel=1e-9)
    mine = categorical_distance("jensenshannon", category_counts(ref, "plan"), category_counts(cur, "plan"))
    assert values["plan"] == pytest.approx(mine, rel=1e-9)
    assert np.isfinite(values["model_score"])
    assert set(values) == keep | {"model_score"}
