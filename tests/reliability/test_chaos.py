"""Nights of data through `nightshift night` with faults injected at random points (tests/reliability/chaos.py).

The default suite plays 3 nights (a PostgreSQL crash and restart, a Dask worker SIGKILLed, a corrupt file);
`pytest -m chaos` (`make chaos`) plays 30 nights with every fault several times and writes the report to
$NIGHTSHIFT_CHAOS_REPORT (default: chaos-report.md in the test's folder), printed too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.chaos import FAULTS, chaos, chaos_unavailable


def _require() -> None:
    why = chaos_unavailable()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the chaos soak must run under CI=true: {why}")
        pytest.skip(why)


def _write(report: str, tmp_path: Path) -> None:
    out = Path(os.environ.get("NIGHTSHIFT_CHAOS_REPORT", tmp_path / "chaos-report.md"))
    out.write_text(report + "\n")
    print(f"\n{report}\n(report: {out})")


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_three_nights_of_chaos_lose_nothing(tmp_path: Path) -> None:
    _require()
    with chaos(tmp_path, nights=3, rows=12_000, files=6, seed=7, task_rows=2_000) as soak:
        nights = soak.run(["pg_restart", "worker_kill", "corrupt_file"])
        _write(soak.summary(), tmp_path)
    assert [n.fault for n in nights] == ["pg_restart", "worker_kill", "corrupt_file"]
    assert all(n.attempts[-1].exit_code == 0 for n in nights)


@pytest.mark.chaos
@pytest.mark.postgres
@pytest.mark.timeout(1800)
def test_a_month_of_chaos_loses_nothing(tmp_path: Path) -> None:
    _require()
    nights = int(os.environ.get("NIGHTSHIFT_CHAOS_NIGHTS", "30"))
    seed = int(os.environ.get("NIGHTSHIFT_CHAOS_SEED", "19"))
    with chaos(tmp_path, nights=nights, rows=200_000, files=16, seed=seed, task_rows=25_000) as soak:
        played = soak.run()
        _write(soak.summary(), tmp_path)
    faults = {n.fault for n in played}
    if nights >= len(FAULTS):
        assert faults >= set(FAULTS) - {"none"}, faults


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs for a SQLite store: a disk that can fill up."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        why = f"cannot mount a tmpfs for the full-disk fault: {done.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_full_disk_fails_the_night_by_name_and_loses_nothing(tmp_path: Path, small_disk: Path) -> None:
    """The SQLite store's disk fills during a night: the night fails saying so, the previous night still serves,
    nothing half-written stays; with space again the retry commits it whole."""
    import shutil
    from datetime import date, timedelta

    from nightshift.config import load_settings
    from nightshift.db import open_store
    from nightshift.demo import generate
    from tests.conftest import write_project
    from tests.reliability.conftest import committed, input_ids, runs, start_cli

    start = date(2026, 10, 1)
    data = tmp_path / "data"
    generate(data / "features", data / "labels", start=start, days=4, rows_per_day=40_000, files_per_day=4, seed=5)
    url = f"sqlite:///{small_disk / 'store.db'}"
    (tmp_path / "project").mkdir()
    config = write_project(tmp_path / "project", url, data)
    settings = load_settings(config)

    def night(ds: date) -> tuple[int, str, str]:
        return start_cli(["night", "-m", "churn", "--ds", ds.isoformat()], config).finish(timeout=300)

    assert start_cli(["db", "upgrade"], config).finish(timeout=120)[0] == 0
    code, _, err = start_cli(["train", "-m", "churn", "--ds", (start + timedelta(days=1)).isoformat()], config).finish(
        timeout=300
    )
    assert code == 0, err
    first, second = start + timedelta(days=2), start + timedelta(days=3)
    assert night(first)[0] == 0
    store = open_store(settings)
    try:
        before = committed(store, first)
        assert len(before) == 40_000
        # Fill the disk but for ~1 MiB: the next night's 40,000 rows (a few MiB with their key) cannot fit.
        free = shutil.disk_usage(small_disk).free
        (small_disk / "ballast").write_bytes(b"\0" * max(0, free - (1 << 20)))
        code, out, err = night(second)
        assert code == 1, (out, err)
        line = err.strip().splitlines()[-1]
        assert "full" in line.lower(), err
        assert "Traceback" not in err
        assert store.partition("churn", 1, second) is None  # nothing of the night is served
        assert committed(store, first) == before  # the previous night still serves, whole
        failed = [r for r in runs(store) if r["ds"] == second]
        assert failed
        assert all(r["status"] in ("failed", "abandoned") and "full" in (r["error"] or "").lower() for r in failed)

        (small_disk / "ballast").unlink()
        code, out, err = night(second)
        assert code == 0, err
        code, out, err = start_cli(["gc", "-m", "churn"], config).finish(timeout=120)
        assert code == 0, err
        assert len(committed(store, second)) == len(input_ids(data, second)) == 40_000
        assert committed(store, first) == before
    finally:
        store.dispose()
