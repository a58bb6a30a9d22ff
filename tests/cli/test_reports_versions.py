"""`nightshift reports` when two versions were monitored on the same nights: `--ds --version`, and a drift-history
plot that marks each version (its own line style, named in the legend) instead of mixing them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pytest

from nightshift.db.store import Store
from nightshift.monitoring.checks import Check
from nightshift.monitoring.report import drift_lines
from nightshift.monitoring.results import MonitorResult, check_history, save_result
from tests.conftest import write_project

CLI = Callable[..., subprocess.CompletedProcess[str]]
NIGHTS = [date(2026, 11, 16) + timedelta(days=i) for i in range(3)]


def _night(version: int, ds: date, charges: float) -> MonitorResult:
    checks = [
        Check("drift", "monthly_charges", "wasserstein", charges, 0.1, "fail" if charges >= 0.1 else "pass", 900, True),
        Check("drift", "age", "wasserstein", 0.01 * version, 0.1, "pass", 900, True),
        Check("score_drift", None, "wasserstein", 0.02 * version, 0.1, "pass", 900, True),
    ]
    status = "fail" if charges >= 0.1 else "pass"
    return MonitorResult("churn", version, ds, "data", status, checks, 1000, 900, {"failed": []})


def test_versions_are_told_apart(cli: CLI, tmp_path: Path, sqlite_url: str, data_root: Path) -> None:
    project = write_project(tmp_path, sqlite_url, data_root)
    store = Store(sqlite_url)
    try:
        for i, ds in enumerate(NIGHTS):
            save_result(store, _night(1, ds, 0.05 + 0.05 * i))  # the champion drifts
            save_result(store, _night(2, ds, 0.02))  # its shadow does not
        rows = check_history(store, "churn")
    finally:
        store.dispose()
    assert {r["version"] for r in rows} == {1, 2}
    lines = drift_lines(rows)
    labels = {line.label: line for line in lines}
    assert {"monthly_charges (v1)", "monthly_charges (v2)", "score (v1)", "score (v2)"} <= set(labels)
    assert labels["monthly_charges (v1)"].linestyle != labels["monthly_charges (v2)"].linestyle
    assert [v for _, v in labels["monthly_charges (v1)"].points] == pytest.approx([0.5, 1.0, 1.5])
    assert [v for _, v in labels["monthly_charges (v2)"].points] == pytest.approx([0.2] * 3)  # not overwritten
    # One version alone keeps the plain names.
    assert {line.label for line in drift_lines([r for r in rows if r["version"] == 1])} >= {"monthly_charges"}

    c = ["-m", "churn", "-c", str(project)]
    night = NIGHTS[-1].isoformat()
    newest = json.loads(cli("reports", "--ds", night, *c, "--json").stdout)["churn"]
    assert {x["version"] for x in newest} == {2}
    v1 = json.loads(cli("reports", "--ds", night, "--version", "1", *c, "--json").stdout)["churn"]
    assert {x["version"] for x in v1} == {1}
    assert next(x for x in v1 if x["column_name"] == "monthly_charges")["value"] == pytest.approx(0.15)
    text = cli("reports", "--ds", night, *c)
    assert text.returncode == 0, text.stderr
    assert f"churn v2 ds={night}" in text.stdout
    assert "also monitored v1 (--version 1)" in text.stdout
    history = json.loads(cli("reports", "--version", "1", *c, "--json").stdout)["churn"]
    assert {x["version"] for x in history} == {1}
    assert len(history) == 3
    plotted = cli("reports", "--plot", *c)
    assert plotted.returncode == 0, plotted.stderr
    png = tmp_path / "state" / "reports" / "churn" / "drift_history.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
