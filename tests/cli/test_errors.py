"""Bad input is one clear line, never a traceback; with --json the error is JSON on stdout, with the same exit code."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SCORE_DS, write_project

CLI = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def project(tmp_path: Path, sqlite_url: str, data_root: Path) -> Path:
    return write_project(tmp_path, sqlite_url, data_root)


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "code", "error", "says"),
    [
        (["score", "-m", "churn", "--ds", "2026-13-01"], 2, "BadParameter", "'2026-13-01' is not a date"),
        (["score", "-m", "nope", "--ds", "2026-11-18"], 1, "ModelNotFound", "model 'nope' is not declared"),
        (["score", "-m", "churn", "--ds", "2026-11-18"], 1, "ModelNotFound", "has no 'champion' alias"),
        (["train", "-m", "churn", "--ds", "2026-11-17", "--promote", "bogus"], 2, "BadParameter", "'bogus'"),
        (["predictions", "-m", "churn"], 2, "MissingParameter", "--entity"),
        (["runs", "show", "12"], 1, "NightshiftError", "no run 12"),
        (["partitions", "--no-such-option"], 2, "NoSuchOption", "--no-such-option"),
    ],
)
def test_errors_are_one_line_and_json_with_json(
    cli: CLI, project: Path, args: list[str], code: int, error: str, says: str
) -> None:
    text = cli(*args, "-c", str(project))
    assert text.returncode == code, text.stderr
    assert says in _one_line(text.stderr)
    assert text.stdout == ""
    as_json = cli(*args, "-c", str(project), "--json")
    assert as_json.returncode == code, as_json.stderr
    body = json.loads(as_json.stdout)
    assert body["error"] == error
    assert says in body["message"]
    assert set(body) == {"error", "message"}
    assert "Traceback" not in as_json.stderr


def test_a_bad_project_file_is_a_json_config_error_exit_2(cli: CLI, tmp_path: Path) -> None:
    bad = tmp_path / "nightshift.toml"
    bad.write_text('[dask]\nn_workers = "many"\n')
    r = cli("runs", "-c", str(bad), "--json")
    assert r.returncode == 2
    body = json.loads(r.stdout)
    assert body["error"] == "ConfigError"
    assert "dask.n_workers" in body["message"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_scheduler_fails_in_one_line_within_its_timeout(
    cli: CLI, project: Path, registered: Callable[[Any], Any]
) -> None:
    from nightshift.config import load_settings

    registered(load_settings(project))  # a champion: the cluster is what fails
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = {"NIGHTSHIFT_DASK__SCHEDULER_ADDRESS": address, "NIGHTSHIFT_DASK__CONNECT_TIMEOUT_S": "2"}
    t0 = time.monotonic()
    r = cli("score", "-m", "churn", "--ds", SCORE_DS.isoformat(), "-c", str(project), env=env)
    took = time.monotonic() - t0
    assert r.returncode == 1
    line = _one_line(r.stderr)
    assert "ClusterUnavailable" in line
    assert f"cannot reach the Dask scheduler at {address} within 2s" in line
    assert took < 25, took
    runs = json.loads(cli("runs", "-c", str(project), "--json").stdout)
    assert [x["status"] for x in runs] == ["failed"]  # recorded, with the same words
    assert address in runs[0]["error"]


def test_a_workers_traceback_never_reaches_the_terminal(
    cli: CLI, project: Path, data_root: Path, registered: Callable[[Any], Any]
) -> None:
    from nightshift.config import load_settings

    registered(load_settings(project))
    # Footer intact (the contract check passes), data pages garbage: the Dask task reading it fails.
    target = sorted((data_root / "features" / f"ds={SCORE_DS.isoformat()}").glob("*.parquet"))[1]
    body = bytearray(target.read_bytes())
    body[64:4096] = b"\xff" * (4096 - 64)
    target.write_bytes(bytes(body))
    r = cli("score", "-m", "churn", "--ds", SCORE_DS.isoformat(), "-c", str(project))
    assert r.returncode == 1
    assert "Compute Failed" not in r.stderr
    assert "distributed.worker" not in r.stderr
    line = _one_line(r.stderr)
    assert target.name in line
    assert r.stdout == ""


def test_the_api_refuses_an_old_schema_in_one_line(cli: CLI, project: Path) -> None:
    down = cli("db", "downgrade", "-1", "-c", str(project))
    assert down.returncode == 0, down.stderr
    r = cli("api", "--port", str(_free_port()), "-c", str(project), timeout=60)
    assert r.returncode == 1
    line = _one_line(r.stderr)
    assert "schema revision" in line
    assert "nightshift db upgrade" in line
