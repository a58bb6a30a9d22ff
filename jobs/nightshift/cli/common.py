"""What every `nightshift` command module shares: the common options, settings loading, date parsing."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="project file (default: $NIGHTSHIFT_CONFIG or ./nightshift.toml)"),
]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="model name from the project file")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]


def settings_from(config: Path | None) -> Any:
    """The project's settings (imported lazily: `--help` stays fast)."""
    from nightshift.config import load_settings

    return load_settings(config)


def parse_day(value: str) -> date:
    """A YYYY-MM-DD option value, or a usage error that says what was expected."""
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date: expected YYYY-MM-DD") from None


def print_json(console: Console, data: Any) -> None:
    console.print_json(json.dumps(data, default=str))
