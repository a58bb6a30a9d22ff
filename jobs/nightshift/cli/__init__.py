"""`nightshift ...`: every job runnable from the command line, without Airflow.

One Typer app (cli/app.py), a module per noun that adds its commands to it: db, data (demo-data, demo), models
(train, models), scoring (score, night, backfill, predictions, partitions, runs, gc), lineage, monitor, rollout,
api (api, keys) and config. `main()` is the console entry point: expected failures are one line (JSON with --json).
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from nightshift.cli import api, config, data, db, lineage, models, monitor, rollout, scoring  # noqa: F401 - they add commands
from nightshift.cli.app import app
from nightshift.cli.common import json_error, say_error
from nightshift.errors import ConfigError, NightshiftError

__all__ = ["app", "main"]

#: Exit codes: 1 for an expected failure (NightshiftError), 2 for bad usage or a bad project file.
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _wants_json(args: list[str]) -> bool:
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def _quiet_dask() -> None:
    # Dask's own logs (a worker's traceback of a failing task, connection retries) would reach the terminal
    # before the one-line error this command prints. distributed sets its loggers' levels from Dask's config
    # when it is imported (later, lazily), so the config says it too; the library's dask_client then quiets
    # its local workers as much as the `distributed` logger.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
    for name in ("distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`nightshift`, `python -m nightshift.cli`): runs the app; an expected failure prints
    one clear line (or, with --json, {"error": ..., "message": ...} on stdout) and exits 1, bad usage or a bad
    project file exits 2, never a traceback."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    args = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(args)
    _quiet_dask()
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="nightshift", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `nightshift db`: the help was the answer
        exc.show()
        code = exc.exit_code
    except ClickException as exc:
        message = exc.format_message()
        if as_json:
            json_error(exc, message)
        else:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            say_error("usage error" if exc.exit_code == EXIT_USAGE else "error", message + hint)
        code = exc.exit_code
    except typer.Abort as exc:
        if as_json:
            json_error(exc, "aborted")
        else:
            say_error("error", "aborted")
        code = EXIT_FAILURE
    except ConfigError as exc:
        if as_json:
            json_error(exc)
        else:
            say_error("config error", str(exc))
        code = EXIT_USAGE
    except NightshiftError as exc:
        if as_json:
            json_error(exc)
        else:
            say_error("error", f"{type(exc).__name__}: {exc}")
        code = EXIT_FAILURE
    except Exception as exc:
        lost = _lost_database(exc)
        if lost is None:
            raise  # a bug: its traceback is the report
        if as_json:
            json_error(lost)
        else:
            say_error("error", f"{type(lost).__name__}: {lost}")
        code = EXIT_FAILURE
    sys.exit(code if isinstance(code, int) else 0)


def _lost_database(exc: BaseException) -> Exception | None:
    """The database went away mid-command (a restart, a crash, a cut connection), or SQLite refused a write (a full
    disk, a locked or read-only file): a one-line StoreUnavailable / StoreError, not a traceback with the statement
    it was running. None: anything else, a lock or statement timeout included (its own message says it)."""
    import sqlite3

    import sqlalchemy.exc as sa_exc

    from nightshift.db.engine import StoreError, StoreUnavailable, sqlite_environment_error

    cause: BaseException = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    first = " ".join(str(cause).split())
    if isinstance(cause, sqlite3.OperationalError):
        # The file's environment only (a full disk, a lock, a read-only or unopenable file, an I/O error); a
        # missing table or column, a syntax error, is a bug or an unmigrated store: its traceback says where.
        if not sqlite_environment_error(cause):
            return None
        return StoreError(f"SQLite refused the command: {first}")
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the postgres extra is not installed
        return None
    if not isinstance(cause, psycopg.OperationalError):
        return None
    # SQLAlchemy's own verdict when it wrapped the error (its dialect knows a disconnect); otherwise no SQLSTATE
    # (the socket closed), a connection exception (08xxx) or the server shutting down (57P01-03). A lock timeout,
    # a cancelled statement or a deadlock is an OperationalError of a live connection, and is not "lost".
    state = cause.sqlstate
    invalidated = isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    if (
        not invalidated
        and state is not None
        and not state.startswith("08")
        and state not in ("57P01", "57P02", "57P03")
    ):
        return None
    return StoreUnavailable(
        f"the database connection was lost mid-command: {first} (its open transaction was rolled back; what "
        "committed before it stands)"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
