"""The `nightshift` command end to end in subprocesses: train, score, read back, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nightshift.errors import ParityError
from nightshift.models import open_registry
from nightshift.training import train_and_register
from tests.conftest import DEMO_ROWS, SCORE_DS, write_project


def _cli(*args: str, env: dict[str, str] | None = None, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nightshift.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        check=False,
    )


def test_train_registers_a_champion_with_full_metadata(store_url: str, make_settings: Any) -> None:
    settings = make_settings(store_url)
    result = train_and_register(settings, "churn", SCORE_DS, created_by="tester")
    mv = result.version
    assert result.promoted
    assert mv.version == 1
    assert mv.created_by == "tester"
    assert mv.training_data["rows"] > 0
    assert [p["ds"] for p in mv.training_data["partitions"]] == ["2026-11-17", "2026-11-18"]
    assert len(mv.training_data["content_sha256"]) == 64
    assert sorted(mv.libraries) == ["numpy", "onnx", "onnxruntime", "pandas", "pyarrow", "scikit-learn", "skl2onnx"]
    assert mv.metrics["roc_auc"] > 0.6
    assert mv.parity["passed"] is True
    assert len(mv.features) == len(settings.model("churn").contract.columns)
    assert Path(mv.artifact_uri).is_file()
    # A second training registers v2 but leaves the champion alone (if-first).
    second = train_and_register(settings, "churn", SCORE_DS)
    assert (second.version.version, second.promoted, second.previous_champion) == (2, False, 1)


def test_a_failed_parity_check_registers_nothing(store_url: str, make_settings: Any) -> None:
    settings = make_settings(store_url, extra_model="")
    cfg = settings.model("churn")
    cfg.training.parity_tolerance = 1e-12
    with pytest.raises(ParityError, match="ONNX and scikit-learn disagree"):
        train_and_register(settings, "churn", SCORE_DS)
    assert open_registry(settings).versions("churn") == []


def test_cli_end_to_end(tmp_path: Path, data_root: Path, sqlite_url: str) -> None:
    project = write_project(tmp_path, sqlite_url, data_root)
    c = ["--config", str(project)]
    assert _cli("db", "upgrade", *c).returncode == 0
    trained = _cli("train", "-m", "churn", "--ds", "2026-11-17", *c, "--json")
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout)["promoted"] is True
    scored = _cli("score", "-m", "churn", "--ds", SCORE_DS.isoformat(), *c, "--json")
    assert scored.returncode == 0, scored.stderr
    summary = json.loads(scored.stdout)
    assert summary["rows"] == DEMO_ROWS
    assert summary["rows_per_s"] > 0
    assert summary["cluster"] == "on a local cluster of 2 workers (processes, 1 thread(s) each)"
    # People read which cluster did the work, and the run key it was recorded with.
    again = _cli("score", "-m", "churn", "--ds", SCORE_DS.isoformat(), "--run-key", "cron:nightly", *c)
    assert again.returncode == 0, again.stderr
    assert f"committed churn v1 ds={SCORE_DS}: {DEMO_ROWS:,} rows" in again.stdout
    assert "on a local cluster of 2 workers" in again.stdout
    assert f"replaced run {summary['run_id']}" in again.stdout
    summary = json.loads(_cli("runs", "show", str(summary["run_id"] + 1), *c, "--json").stdout)
    assert (summary["run_key"], summary["status"], summary["serving"]) == ("cron:nightly", "committed", True)
    got = _cli("predictions", "-m", "churn", "-e", "1", "-e", "nope", *c, "--json")
    assert got.returncode == 0, got.stderr
    body = json.loads(got.stdout)
    assert [p["entity_id"] for p in body["predictions"]] == ["1"]
    assert body["not_found"] == ["nope"]
    run_id = summary["run_id"]
    parts = json.loads(_cli("partitions", *c, "--json").stdout)
    assert [(p["model"], p["version"], p["ds"], p["row_count"], p["run_id"]) for p in parts] == [
        ("churn", 1, SCORE_DS.isoformat(), DEMO_ROWS, run_id)
    ]
    runs = json.loads(_cli("runs", *c, "--json").stdout)
    assert [(r["run_id"], r["status"], r["rows"], r["input_rows"], r["run_key"]) for r in runs] == [
        (run_id, "committed", DEMO_ROWS, DEMO_ROWS, "cron:nightly"),
        (run_id - 1, "superseded", DEMO_ROWS, DEMO_ROWS, None),
    ]
    models = json.loads(_cli("models", *c, "--json").stdout)
    assert [(m["model"], m["version"], m["aliases"]) for m in models] == [("churn", 1, ["champion"])]
    # The tables people read say the same.
    table = _cli("partitions", *c)
    assert table.returncode == 0, table.stderr
    assert SCORE_DS.isoformat() in table.stdout
    assert f"{DEMO_ROWS:,}" in table.stdout


@pytest.mark.parametrize(
    ("args", "expected", "code"),
    [
        (["score", "-m", "nope", "--ds", "2026-11-18"], "model 'nope' is not declared", 1),
        (["score", "-m", "churn", "--ds", "2026-13-01"], "is not a date: expected YYYY-MM-DD", 2),
        (["score", "-m", "churn", "--ds", "2026-11-18"], "has no 'champion' alias", 1),
        (["train", "-m", "churn", "--ds", "2026-11-17", "--promote", "bogus"], "'bogus' is not one of", 2),
    ],
)
def test_cli_errors_are_one_clear_line_without_a_traceback(
    tmp_path: Path, data_root: Path, sqlite_url: str, args: list[str], expected: str, code: int
) -> None:
    project = write_project(tmp_path, sqlite_url, data_root)
    r = _cli(*args, "--config", str(project))
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr
    assert expected in " ".join(r.stderr.split())


def test_scoring_a_day_that_was_never_delivered_names_the_partition(
    tmp_path: Path, data_root: Path, sqlite_url: str, registered: Any
) -> None:
    from nightshift.config import load_settings

    project = write_project(tmp_path, sqlite_url, data_root)
    registered(load_settings(project))  # a champion: the date itself is what fails
    r = _cli("score", "-m", "churn", "--ds", "2030-01-01", "--config", str(project))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert f"partition {data_root / 'features'}/ds=2030-01-01 does not exist (yet)" in " ".join(r.stderr.split())


def test_a_broken_project_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "nightshift.toml"
    bad.write_text('[dask]\nn_workers = "many"\n')
    r = _cli("db", "upgrade", "--config", str(bad))
    assert r.returncode == 2
    assert "dask.n_workers" in r.stderr
    assert "Traceback" not in r.stderr
