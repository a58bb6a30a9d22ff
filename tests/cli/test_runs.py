"""`nightshift runs` (with the run key, uncut when piped), `runs show RUN_ID`, and one timestamp format in --json."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

import pytest

from nightshift.db.store import Store
from tests.cli.conftest import commit_rows

CLI = Callable[..., subprocess.CompletedProcess[str]]
DS = date(2026, 11, 18)
AIRFLOW_RUN = "scheduled__2026-11-19T00:00:00+00:00"
#: The one timestamp format of --json output.
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$")
LONG_ERROR = (
    "ContractError: /data/features/churn/ds=2026-11-18/part-00003.parquet: column 'monthly_charges' has type "
    "string, the contract says float64; nothing committed, the previous predictions still serve\nsecond line"
)


def _failed_run(url: str) -> int:
    store = Store(url)
    try:
        run = store.start_run("churn", 1, date(2026, 11, 19), run_key="cli:night", input_rows=10, files=2)
        store.fail_run(run, LONG_ERROR)
        return run
    finally:
        store.dispose()


def test_runs_lists_the_run_key_and_is_not_cut_when_piped(cli: CLI, bare_project: Path, sqlite_url: str) -> None:
    committed = commit_rows(sqlite_url, "churn", 1, DS, ["1", "2", "3"], run_key=AIRFLOW_RUN)
    failed = _failed_run(sqlite_url)
    r = cli("runs", "-c", str(bare_project))  # stdout is a pipe, no $COLUMNS
    assert r.returncode == 0, r.stderr
    assert "run_key" in r.stdout
    assert AIRFLOW_RUN in r.stdout  # whole, not cut at 80 columns
    assert "ContractError: /data/features/churn/ds=2026-11-18/part-00003.parquet" in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) > 80
    rows = json.loads(cli("runs", "-c", str(bare_project), "--json").stdout)
    assert [(x["run_id"], x["run_key"], x["status"]) for x in rows] == [
        (failed, "cli:night", "failed"),
        (committed, AIRFLOW_RUN, "committed"),
    ]
    for x in rows:
        assert ISO_UTC.match(x["started_at"]), x["started_at"]
        assert ISO_UTC.match(x["finished_at"]), x["finished_at"]
        assert re.match(r"^\d{4}-\d{2}-\d{2}$", x["ds"])


def test_runs_show_tells_everything_about_one_run(cli: CLI, bare_project: Path, sqlite_url: str) -> None:
    committed = commit_rows(sqlite_url, "churn", 1, DS, ["1", "2", "3"], run_key=AIRFLOW_RUN)
    failed = _failed_run(sqlite_url)
    shown = cli("runs", "show", str(failed), "-c", str(bare_project))
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"run {failed}: churn v1 ds=2026-11-19" in text
    assert "failed" in text
    assert "cli:night" in text
    assert LONG_ERROR in text  # the full error, every line
    for field in ("input rows", "files", "rows", "started", "finished", "host / pid", "serving"):
        assert field in text, field
    body = json.loads(cli("runs", "show", str(committed), "-c", str(bare_project), "--json").stdout)
    assert body["run_id"] == committed
    assert body["run_key"] == AIRFLOW_RUN
    assert (body["model"], body["version"], body["ds"], body["status"]) == ("churn", 1, DS.isoformat(), "committed")
    assert (body["input_rows"], body["rows"]) == (3, 3)
    assert body["serving"] is True
    assert body["pid"] > 0
    assert body["host"]
    assert ISO_UTC.match(body["started_at"])
    started, finished = (datetime.fromisoformat(body[k]) for k in ("started_at", "finished_at"))
    assert body["seconds"] == pytest.approx((finished - started).total_seconds(), abs=0.01)
    missing = cli("runs", "show", "999", "-c", str(bare_project), "--json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout) == {
        "error": "NightshiftError",
        "message": json.loads(missing.stdout)["message"],
    }
    assert "no run 999" in json.loads(missing.stdout)["message"]


def test_every_json_timestamp_is_iso_8601_utc(cli: CLI, bare_project: Path, sqlite_url: str) -> None:
    commit_rows(sqlite_url, "churn", 1, DS, ["1"])
    assert cli("keys", "create", "--name", "crm", "--models", "*", "-c", str(bare_project)).returncode == 0
    seen: list[str] = []

    def timestamps(value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k.endswith("_at") and v is not None:
                    seen.append(str(v))
                timestamps(v)
        elif isinstance(value, list):
            for v in value:
                timestamps(v)

    for args in (["runs"], ["partitions"], ["keys", "list"]):
        r = cli(*args, "-c", str(bare_project), "--json")
        assert r.returncode == 0, r.stderr
        timestamps(json.loads(r.stdout))
    assert len(seen) >= 4
    assert [t for t in seen if not ISO_UTC.match(t)] == []
