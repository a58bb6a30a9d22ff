"""`nightshift --help` and every command's help: complete, no placeholders on flags, a version, `db downgrade -1`."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

CLI = Callable[..., subprocess.CompletedProcess[str]]


def _commands() -> Iterator[tuple[list[str], Any]]:
    """Every (command path, click command) of the app, groups included."""
    import typer

    from nightshift.cli import app

    def walk(path: list[str], command: Any) -> Iterator[tuple[list[str], Any]]:
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk([*path, name], sub)

    yield from walk([], typer.main.get_command(app))


def test_every_option_and_argument_says_what_it_is_for() -> None:
    undocumented = [
        f"nightshift {' '.join(path)} {param.opts[0] if param.opts else param.name}"
        for path, command in _commands()
        for param in command.params
        if not (getattr(param, "help", None) or "").strip()
    ]
    assert undocumented == []
    nameless = [" ".join(path) for path, command in _commands() if path and not (command.help or "").strip()]
    assert nameless == []


def test_every_command_and_the_ones_the_docs_use_exist() -> None:
    names = {" ".join(path) for path, _ in _commands()}
    documented = {
        "db upgrade", "db downgrade", "db current", "db backup", "db restore", "demo-data", "demo", "train",
        "models", "models show", "score", "night", "backfill", "predictions", "partitions", "runs", "runs show",
        "gc", "monitor", "monitor-report", "monitor-reference", "reports", "labels-quality", "retrain-decision",
        "retrain-request", "retrain", "approve", "reject", "promote", "rollback", "compare", "demo-loop", "api",
        "keys", "keys create", "keys list", "keys revoke", "config", "config check", "config show",
    }  # fmt: skip
    assert documented <= names


def test_no_help_shows_a_value_placeholder_on_a_flag() -> None:
    from nightshift.cli import app

    runner = CliRunner()
    for path, _ in _commands():
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "160"})
        assert shown.exit_code == 0, (path, shown.output)
        assert "<bool>" not in shown.output, f"nightshift {' '.join(path)} --help:\n{shown.output}"
        assert "--help" in shown.output


def test_version_is_the_installed_distribution(cli: CLI) -> None:
    r = cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"nightshift {version('nightshift')}"


def test_downgrade_takes_minus_one_as_its_help_says(cli: CLI, bare_project: Path) -> None:
    helped = cli("db", "downgrade", "--help", env={"COLUMNS": "200"})
    assert "nightshift db downgrade -1" in helped.stdout
    head = cli("db", "current", "--json", "-c", str(bare_project))
    assert head.returncode == 0, head.stderr
    import json

    code = json.loads(head.stdout)["head"]
    down = cli("db", "downgrade", "-1", "-c", str(bare_project))
    assert down.returncode == 0, down.stderr
    now = json.loads(cli("db", "current", "--json", "-c", str(bare_project)).stdout)
    assert now["revision"] == f"{int(code) - 1:04d}"
    assert not now["current"]
    bogus = cli("db", "downgrade", "--bogus", "-c", str(bare_project))
    assert bogus.returncode == 2
    assert "no such option: --bogus" in bogus.stderr
    unknown = cli("db", "downgrade", "zz99", "-c", str(bare_project))
    assert unknown.returncode == 1
    assert "Traceback" not in unknown.stderr
    assert "zz99" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["config", "check"], ["runs", "--limit", "x"]])
def test_usage_errors_are_one_line(cli: CLI, bare_project: Path, args: list[str]) -> None:
    r = cli(*args, "-c", str(bare_project), "--bogus-option")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("usage error:")
