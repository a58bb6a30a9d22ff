"""What every `nightshift` command module shares: the common options, settings, dates, JSON output and errors."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from nightshift.cli.app import err

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="project file (default: $NIGHTSHIFT_CONFIG or ./nightshift.toml)"),
]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="model name from the project file")]
AnyModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="only this model (default: all)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON (errors too)")]
DsOpt = Annotated[str, typer.Option("--ds", help="the partition's day (YYYY-MM-DD)")]
VersionOpt = Annotated[int | None, typer.Option("--version", help="model version (default: the champion)")]


def settings_from(config: Path | None) -> Any:
    """The project's settings (imported lazily: `--help` stays fast)."""
    from nightshift.config import load_settings

    return load_settings(config)


def parse_day(value: str, option: str | None = None) -> date:
    """A YYYY-MM-DD option value, or a usage error that says what was expected."""
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date: expected YYYY-MM-DD", param_hint=option) from None


def cluster_of(settings: Any) -> str:
    """Where a run's Dask work goes, in words: the existing scheduler's address, or the local cluster it starts."""
    dask = settings.dask
    if dask.scheduler_address:
        return f"on {dask.scheduler_address}"
    n = dask.local_workers()
    kind = "processes" if dask.processes else "threads"
    return f"on a local cluster of {n} worker{'s' if n != 1 else ''} ({kind}, {dask.threads_per_worker} thread(s) each)"


def progress_bar(*columns: Any) -> Any:
    """A Rich progress bar on stderr; left out of logs and pipes (where only its last frame would show)."""
    from rich.progress import Progress

    return Progress(*columns, console=err, disable=not err.is_terminal)


# -- JSON -----------------------------------------------------------------------------------------

_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:?\d{2})?$")


def utc_iso(value: datetime) -> str:
    """The one timestamp format of --json output: ISO 8601 in UTC, microseconds, e.g. 2026-11-20T03:12:44.123456+00:00.
    A naive timestamp is taken as UTC (the store keeps UTC)."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat(timespec="microseconds")


def json_ready(value: Any) -> Any:
    """`value` with every timestamp as utc_iso (also those the library already turned into strings), every date
    as YYYY-MM-DD, NaN and infinities as null, and dataclasses, enums, paths and NumPy scalars as plain JSON values."""
    if isinstance(value, float) and not math.isfinite(value):
        return None  # valid JSON has no NaN or Infinity
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        if _TIMESTAMP.match(value):
            try:
                return utc_iso(datetime.fromisoformat(value.replace("Z", "+00:00")))
            except ValueError:
                return value
        return value
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_ready(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_ready({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, enum.Enum):
        return json_ready(value.value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # NumPy scalars
        return json_ready(value.item())
    return value


def print_json(data: Any) -> None:
    """Machine-readable output on stdout: plain JSON (no Rich markup or wrapping), one timestamp format."""
    sys.stdout.write(json.dumps(json_ready(data), indent=2, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


# -- errors ---------------------------------------------------------------------------------------


def one_line(message: str) -> str:
    """A message's unindented continuation lines (a wrapped library message, e.g. Arrow's) joined into its
    first line; indented lines (a list the message gives on purpose: every bad key, every duplicate id) stay."""
    lines = message.strip().splitlines() or [""]
    out = [lines[0]]
    for line in lines[1:]:
        if line[:1].isspace():
            out.append(line)
        elif line.strip():
            out[-1] = f"{out[-1].rstrip()} {line.strip()}"
    return "\n".join(out)


def say_error(kind: str, message: str) -> None:
    """One error, as one line where the message is one line (never wrapped by the console)."""
    err.print(f"[bold red]{kind}:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)


def json_error(exc: BaseException, message: str | None = None) -> None:
    """An error as JSON on stdout: {"error": "<ErrorClass>", "message": "..."}."""
    print_json({"error": type(exc).__name__, "message": message if message is not None else str(exc)})
