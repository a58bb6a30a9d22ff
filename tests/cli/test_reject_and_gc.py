"""`nightshift reject` (a candidate waiting for approval never rolls out) and `nightshift gc [--dry-run]`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from nightshift.db.store import Store
from nightshift.rollout import Rollouts
from nightshift.training import train_and_register
from tests.cli.conftest import commit_rows
from tests.conftest import SCORE_DS, write_project

CLI = Callable[..., subprocess.CompletedProcess[str]]


def test_reject_a_candidate_waiting_for_approval(cli: CLI, tmp_path: Path, sqlite_url: str, data_root: Path) -> None:
    from nightshift.config import load_settings

    project = write_project(
        tmp_path, sqlite_url, data_root, extra_model="\n[models.rollout]\nrequire_approval = true\n"
    )
    settings = load_settings(project)
    train_and_register(settings, "churn", date(2026, 11, 17))  # v1, champion
    r = Rollouts(settings)
    waiting = r.retrain("churn", SCORE_DS, trigger={"kind": "manual"})
    assert waiting.status == "pending_approval"
    assert waiting.version == 2
    c = ["-c", str(project)]
    no_reason = cli("reject", "-m", "churn", "--version", "2", *c)
    assert no_reason.returncode == 2
    assert "--reason" in no_reason.stderr
    done = cli("reject", "-m", "churn", "--version", "2", "--reason", "worse on the March cohort", *c, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "model": "churn",
        "version": 2,
        "rejected": True,
        "reason": "worse on the March cohort",
    }
    cand = r.candidate(waiting.candidate_id)
    assert cand["status"] == "rejected"
    assert "worse on the March cohort" in cand["reason"]
    assert r.history("churn", waiting.candidate_id)[-1]["event"] == "rejected"
    assert r.registry.aliases("churn") == {"champion": 1}
    again = cli("reject", "-m", "churn", "--version", "2", "--reason", "twice", *c)
    assert again.returncode == 1
    assert "not waiting for approval (status: rejected)" in again.stderr
    assert "Traceback" not in again.stderr


def test_gc_dry_run_lists_real_row_counts_and_removes_nothing(
    cli: CLI, tmp_path: Path, sqlite_url: str, data_root: Path
) -> None:
    from nightshift.db.staging import stage_chunk

    project = write_project(tmp_path, sqlite_url, data_root, extra_model="retention_days = 2")
    old = commit_rows(sqlite_url, "churn", 1, date(2026, 11, 10), [str(i) for i in range(5)])
    kept = commit_rows(sqlite_url, "churn", 1, date(2026, 11, 19), [str(i) for i in range(4)])
    store = Store(sqlite_url)
    try:
        crashed = store.start_run("churn", 1, date(2026, 11, 18), input_rows=3)  # killed before its commit
        stage_chunk(store.url, crashed, "a", *_rows(3))
    finally:
        store.dispose()
    c = ["--today", "2026-11-20", "-c", str(project)]
    dry = cli("gc", "--dry-run", *c, "--json")
    assert dry.returncode == 0, dry.stderr
    body = json.loads(dry.stdout)
    assert body["dry_run"] is True
    assert [(e["run_id"], e["ds"], e["rows"]) for e in body["expired"]] == [(old, "2026-11-10", 5)]
    assert [(r["run_id"], r["status"], r["rows"]) for r in body["runs"]] == [(crashed, "abandoned", 3)]
    assert body["rows"] == 8
    text = cli("gc", "--dry-run", *c)
    assert text.returncode == 0, text.stderr
    assert "would expire 1 partition(s) older than 2 days" in text.stdout
    assert "dry run: 8 row(s) would be removed" in text.stdout
    store = Store(sqlite_url)
    try:
        assert store.count_predictions(old) == 5  # nothing removed
        assert store.count_predictions(crashed) == 3
        assert store.partition("churn", 1, date(2026, 11, 10)) is not None
    finally:
        store.dispose()
    real = cli("gc", *c, "--json")
    assert real.returncode == 0, real.stderr
    done = json.loads(real.stdout)
    assert done["rows"] == 8
    assert [r["run_id"] for r in done["runs"]] == [crashed]
    store = Store(sqlite_url)
    try:
        assert store.count_predictions(old) == 0
        assert store.count_predictions(crashed) == 0
        assert store.count_predictions(kept) == 4
    finally:
        store.dispose()
    assert json.loads(cli("gc", *c, "--json").stdout)["rows"] == 0


def _rows(n: int) -> tuple[Any, Any, Any]:
    import numpy as np
    import pyarrow as pa

    return pa.array([str(i) for i in range(n)]), np.full(n, 0.3, np.float32), np.zeros(n, np.int16)
