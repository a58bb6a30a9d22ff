"""`nightshift demo-data` refuses a drift outside the days it writes; `demo-loop` runs on state of its own."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from nightshift.demo import check_drift, generate, parse_drift
from nightshift.demo.loop import loop_settings
from tests.conftest import write_project

CLI = Callable[..., subprocess.CompletedProcess[str]]


@pytest.mark.parametrize("day", ["2026-11-19", "2026-11-04"])
def test_a_drift_outside_the_generated_days_is_refused(cli: CLI, tmp_path: Path, sqlite_url: str, day: str) -> None:
    data = tmp_path / "fresh"
    project = write_project(tmp_path, sqlite_url, data)
    r = cli(
        "demo-data", "-c", str(project), "--start", "2026-11-05", "--days", "3", "--rows-per-day", "1000",
        "--drift", f"mean_shift:monthly_charges:1.5@{day}",
    )  # fmt: skip
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"its start {day} is outside the generated days 2026-11-05..2026-11-07" in r.stderr
    assert not data.exists()  # nothing written
    with pytest.raises(ValueError, match=f"{day} is outside the generated days 2026-11-05..2026-11-07"):
        generate(data / "f", data / "l", start=date(2026, 11, 5), days=3, rows_per_day=100,
                 drift=[parse_drift(f"mean_shift:monthly_charges:1.5@{day}")])  # fmt: skip
    check_drift([parse_drift("mean_shift:monthly_charges:1.5@2026-11-07")], date(2026, 11, 5), 3)  # the last day


def test_demo_loop_runs_on_its_own_state_and_data(tmp_path: Path, sqlite_url: str, data_root: Path) -> None:
    from nightshift.config import load_settings

    settings = load_settings(write_project(tmp_path, sqlite_url, data_root))
    loop = loop_settings(settings, "churn")
    root = tmp_path / "state" / "demo-loop"
    assert loop.state_path == root
    assert loop.resolved_store_url == f"sqlite:///{root / 'store.db'}"
    assert loop.resolved_store_url != settings.resolved_store_url
    assert loop.artifacts_uri == str(root / "models")
    assert loop.reports_uri == str(root / "reports")
    cfg = loop.model("churn")
    assert cfg.dataset_uri(loop) == str(root / "data" / "features" / "churn")
    assert cfg.labels_uri(loop) == str(root / "data" / "labels" / "churn")
    # The project's own settings are untouched.
    assert settings.model("churn").dataset_uri(settings) == str(data_root / "features")
    assert settings.resolved_store_url == sqlite_url


def test_make_demo_reads_its_run_summary_from_the_store(tmp_path: Path, sqlite_url: str, data_root: Path) -> None:
    from nightshift_airflow.demo import _run_summary
    from tests.cli.conftest import commit_rows

    project = write_project(tmp_path, sqlite_url, data_root)
    ds = date(2026, 11, 18)
    assert "no committed run of churn ds=2026-11-18" in _run_summary(project, "churn", ds)
    run = commit_rows(sqlite_url, "churn", 1, ds, [str(i) for i in range(250)], run_key="manual__2026-11-19")
    line = _run_summary(project, "churn", ds)
    assert "scored 250 rows of churn v1 ds=2026-11-18" in line
    assert "rows/s" in line
    assert f"store run {run}, Airflow run manual__2026-11-19" in line


def test_make_demo_says_how_to_reach_uv_when_it_is_not_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nightshift_airflow.demo import _uv

    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    (home / ".local" / "bin" / "uv").write_text("#!/bin/sh\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("UV", raising=False)
    shown, hint = _uv()
    assert shown == "~/.local/bin/uv"
    assert hint is not None
    assert f'export PATH="{home / ".local" / "bin"}:$PATH"' in hint
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "uv").write_text("#!/bin/sh\n")
    (tmp_path / "empty" / "uv").chmod(0o755)
    assert _uv() == ("uv", None)
