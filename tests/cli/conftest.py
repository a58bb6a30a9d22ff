"""The `nightshift` command as users run it: a subprocess (`python -m nightshift.cli`), its output piped."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`nightshift ARGS` in a subprocess, stdout and stderr piped (not a terminal), no $COLUMNS."""
    base = {k: v for k, v in os.environ.items() if k != "COLUMNS" and not k.startswith("NIGHTSHIFT_DASK")}
    return subprocess.run(
        [sys.executable, "-m", "nightshift.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
        cwd=cwd,
        check=False,
    )


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli


@pytest.fixture
def bare_project(tmp_path: Path, sqlite_url: str) -> Path:
    """A project file without models, on a migrated SQLite store."""
    path = tmp_path / "nightshift.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\nstore_url = "{sqlite_url}"\n')
    return path


def commit_rows(
    store_url: str, model: str, version: int, ds: date, ids: list[str], *, run_key: str | None = None
) -> int:
    """Commit a partition of `ids` through the store's own staging (no Dask, no model): its run id."""
    from nightshift.db.staging import stage_chunk
    from nightshift.db.store import Store

    store = Store(store_url)
    try:
        with store.run_lock(model, ds, 10):
            run = store.start_run(model, version, ds, run_key=run_key, input_rows=len(ids))
            scores = np.linspace(0.1, 0.9, len(ids)).astype(np.float32)
            stage_chunk(store.url, run, "a", pa.array(ids), scores, (scores >= 0.5).astype(np.int16))
            store.commit_run(run, len(ids))
        return run
    finally:
        store.dispose()
