"""The one `nightshift` Typer app and its consoles; the noun modules (cli/db.py, cli/scoring.py, ...) add to it."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup, TyperOption


def _wide_console(*, stderr: bool = False) -> Console:
    """A console as wide as the terminal, or, when the output is piped or captured, $COLUMNS or 200 columns
    wide, where a line of text is never wrapped: tables and messages are not cut at 80 columns in a log file
    or a `| grep`, and a one-line message stays one line."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > 0 else 200
    return Console(stderr=stderr, width=width, soft_wrap=True)


#: What commands print for people (tables, summaries); --json output bypasses Rich (see common.print_json).
out = _wide_console()
#: Progress bars, notes and errors.
err = _wide_console(stderr=True)


def _plain_flags(params: list[Any]) -> list[Any]:
    # Typer's help shows a `<bool>` placeholder beside every flag (--json, --help, --report/--no-report):
    # a flag takes no value, so it shows none.
    for p in params:
        if isinstance(p, TyperOption) and p.is_flag and p.metavar is None:
            p.metavar = ""
    return params


class Command(TyperCommand):
    """A `nightshift` command: flags without value placeholders in --help."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))


#: The order `nightshift --help` lists commands in: the flow of a night, then serving and housekeeping.
COMMAND_ORDER = (
    "demo",
    "demo-data",
    "demo-loop",
    "train",
    "models",
    "score",
    "night",
    "backfill",
    "predictions",
    "partitions",
    "runs",
    "monitor",
    "monitor-report",
    "monitor-reference",
    "reports",
    "labels-quality",
    "retrain-decision",
    "retrain-request",
    "retrain",
    "approve",
    "reject",
    "promote",
    "rollback",
    "compare",
    "api",
    "keys",
    "gc",
    "db",
    "config",
)


class Group(TyperGroup):
    """A `nightshift` command group: flags without value placeholders in --help, commands in COMMAND_ORDER."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))


class NightshiftTyper(typer.Typer):
    """typer.Typer whose commands and groups use the classes above."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", Group)
        kwargs.setdefault("pretty_exceptions_enable", False)
        kwargs.setdefault("add_completion", False)
        super().__init__(**kwargs)

    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(name, cls=cls or Command, **kwargs)

    def sub(self, name: str, help: str, **kwargs: Any) -> NightshiftTyper:
        """A sub-command group `nightshift <name> ...`."""
        kwargs.setdefault("no_args_is_help", True)
        group = NightshiftTyper(help=help, **kwargs)
        self.add_typer(group, name=name)
        return group


app = NightshiftTyper(
    name="nightshift",
    help="Nightly batch scoring: demo data, training, Dask + ONNX Runtime scoring, the prediction store, "
    "monitoring, the model lifecycle and the lookup API.",
    no_args_is_help=True,
)


def version() -> str:
    """The installed nightshift's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("nightshift")
    except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
        return "unknown (not installed)"


def _show_version(value: bool) -> None:
    if value:
        print(f"nightshift {version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_show_version, help="print nightshift's version and exit"
    ),
) -> None:
    """Nightly batch scoring: demo data, training, Dask + ONNX Runtime scoring, the prediction store,
    monitoring, the model lifecycle and the lookup API. `nightshift COMMAND --help` explains each command."""
