"""`nightshift config check | show`, and NIGHTSHIFT_* variables that look like settings but are none."""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from nightshift.config import check_environment
from nightshift.errors import ConfigError
from tests.conftest import write_project

CLI = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def project(tmp_path: Path, sqlite_url: str, data_root: Path) -> Path:
    return write_project(tmp_path, sqlite_url, data_root, more_models={"upsell": (data_root, "retention_days = 30")})


def test_check_says_ok_with_one_line_per_model(cli: CLI, project: Path, data_root: Path) -> None:
    r = cli("config", "check", "-c", str(project))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith(f"ok: {project}")
    assert "2 model(s)" in lines[0]
    assert "a local cluster of 2 workers" in lines[0]
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["churn", "upsell"]
    assert f"data {data_root / 'features'}" in lines[1]
    assert "retention 30" in lines[2]
    body = json.loads(cli("config", "check", "-c", str(project), "--json").stdout)
    assert body["ok"] is True
    assert [m["name"] for m in body["models"]] == ["churn", "upsell"]


def test_check_names_the_bad_key_and_exits_2(cli: CLI, project: Path) -> None:
    project.write_text(project.read_text().replace("window_days = 2", 'window_days = "two"', 1))
    r = cli("config", "check", "-c", str(project))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "models[0] (churn).training.window_days" in r.stderr
    j = cli("config", "check", "-c", str(project), "--json")
    assert j.returncode == 2
    body = json.loads(j.stdout)
    assert body["error"] == "ConfigError"
    assert "window_days" in body["message"]


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("NIGHTSHIFT_DASK_SCHEDULER_ADDRESS", "NIGHTSHIFT_DASK__SCHEDULER_ADDRESS"),
        ("NIGHTSHIFT_DASK__SCHEDULER_ADRESS", "NIGHTSHIFT_DASK__SCHEDULER_ADDRESS"),
        ("NIGHTSHIFT_API_PORT", "NIGHTSHIFT_API__PORT"),
        ("NIGHTSHIFT_STOREURL", "NIGHTSHIFT_STORE_URL"),
    ],
)
def test_a_misspelled_variable_is_refused_with_the_right_spelling(
    cli: CLI, project: Path, variable: str, suggestion: str
) -> None:
    r = cli("config", "check", "-c", str(project), env={variable: "tcp://scheduler:8786"})
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert variable in r.stderr
    assert suggestion in r.stderr
    # Every command refuses it, not only `config check`: it would otherwise be ignored silently.
    runs = cli("runs", "-c", str(project), "--json", env={variable: "tcp://scheduler:8786"})
    assert runs.returncode == 2
    assert json.loads(runs.stdout) == {"error": "ConfigError", "message": json.loads(runs.stdout)["message"]}
    assert suggestion in json.loads(runs.stdout)["message"]


def test_the_projects_own_variables_and_real_settings_pass() -> None:
    check_environment(
        {
            "NIGHTSHIFT_CONFIG": "x.toml",
            "NIGHTSHIFT_USER": "alice",
            "NIGHTSHIFT_TEST_PG_URL": "postgresql://x",
            "NIGHTSHIFT_SOAK_S": "300",
            "NIGHTSHIFT_AIRFLOW_HOME": "/tmp/af",
            "NIGHTSHIFT_KEEP_AIRFLOW_LOG": "1",
            "NIGHTSHIFT_UPDATE_DOCS_SCREENSHOT": "1",
            "NIGHTSHIFT_API_DB_ROLE": "nightshift_api",
            "NIGHTSHIFT_DB_PASSWORD": "x",
            "NIGHTSHIFT_STORE_URL": "sqlite:///x.db",
            "NIGHTSHIFT_DASK__SCHEDULER_ADDRESS": "tcp://s:8786",
            "NIGHTSHIFT_API__DOCS_ENABLED": "false",
            "nightshift_dask__n_workers": "2",
            "NIGHTSHIFT_SOMETHING_ELSE": "not a setting lookalike",
            "PATH": "/bin",
        }
    )
    with pytest.raises(ConfigError, match="NIGHTSHIFT_DASK__N_WORKERS"):
        check_environment({"NIGHTSHIFT_DASK_N_WORKERS": "2"})


def test_show_prints_the_effective_settings_as_toml_with_secrets_redacted(cli: CLI, project: Path) -> None:
    env = {
        "NIGHTSHIFT_STORE_URL": "postgresql://nightshift:s3cret-pw@db.example:5432/nightshift",
        "NIGHTSHIFT_DASK__N_WORKERS": "5",
        "NIGHTSHIFT_NOTIFY__WEBHOOK_URL": "https://hooks.example.com/services/T000/B000/very-secret-token",
    }
    r = cli("config", "show", "-c", str(project), env=env)
    assert r.returncode == 0, r.stderr
    assert "s3cret-pw" not in r.stdout
    assert "very-secret-token" not in r.stdout
    shown = tomllib.loads(r.stdout)
    assert shown["store_url"] == "postgresql://nightshift:***@db.example:5432/nightshift"
    assert shown["dask"]["n_workers"] == 5  # the environment's value, not the file's 2
    assert shown["notify"]["webhook_url"] == "https://hooks.example.com/***"
    assert [m["name"] for m in shown["models"]] == ["churn", "upsell"]
    assert len(shown["models"][0]["contract"]["columns"]) == 39
    assert shown["models"][1]["retention_days"] == 30
    assert shown["artifacts"].endswith("/state/models")
    body = json.loads(cli("config", "show", "-c", str(project), "--json", env=env).stdout)
    assert body["dask"]["n_workers"] == 5
    assert "s3cret-pw" not in json.dumps(body)
