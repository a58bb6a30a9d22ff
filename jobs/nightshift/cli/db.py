"""`nightshift db upgrade | downgrade | current | backup | restore`: the store's schema, and SQLite backups."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from nightshift.cli.app import app, out
from nightshift.cli.common import ConfigOpt, JsonOpt, print_json, settings_from

db_app = app.sub("db", "The store's schema (Alembic migrations), and backups of a SQLite store.")

T = TypeVar("T")

#: What Alembic takes as a target: a revision id, head/base, or a relative step such as -1 or +2.
_REVISION = re.compile(r"^([+-]\d+|[A-Za-z0-9_@]+([+-]\d+)?)$")


def _store(config: Path | None) -> Any:
    from nightshift.db import open_store

    return open_store(settings_from(config), check=False)


def _migrate(store: Any, step: Callable[[str], T], revision: str) -> T:
    """Run an Alembic step; its errors (an unknown revision, ...) as one StoreError line."""
    from alembic.util import CommandError

    from nightshift.db import StoreError

    if not _REVISION.match(revision):
        raise typer.BadParameter(
            f"{revision!r} is not a revision: expected an id such as 0003, head, base, or a step such as -1",
            param_hint="REVISION",
        )
    try:
        return step(revision)
    except CommandError as exc:
        raise StoreError(f"store {store!r}: {exc}") from None


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOpt = None,
    revision: Annotated[str, typer.Option(help="target revision (default: the code's newest, head)")] = "head",
) -> None:
    """Apply the store's migrations up to `revision` (idempotent)."""
    store = _store(config)
    _migrate(store, store.upgrade, revision)
    out.print(f"store {store!r} is at revision {store.current_revision()}")


@db_app.command("downgrade", context_settings={"ignore_unknown_options": True})
def db_downgrade(
    revision: Annotated[
        str,
        typer.Argument(
            help="target revision: an id such as 0003, base (nothing), or -1 for one step back "
            "(`nightshift db downgrade -1`)"
        ),
    ],
    config: ConfigOpt = None,
) -> None:
    """Undo migrations down to `revision`. Back up the store first (`db backup`): tables a migration drops lose
    their rows, and going below 0007 deletes every regression prediction and drops multiclass probabilities."""
    if revision.startswith("--"):
        raise typer.BadParameter(f"no such option: {revision}", param_hint="REVISION")
    store = _store(config)
    _migrate(store, store.downgrade, revision)
    out.print(f"store {store!r} is at revision {store.current_revision() or 'none'}")


@db_app.command("current")
def db_current(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show the store's schema revision and the code's."""
    store = _store(config)
    current, head = store.current_revision(), store.head_revision()
    if as_json:
        print_json({"store": repr(store), "revision": current, "head": head, "current": current == head})
        return
    out.print(f"store {store!r}: revision {current or 'none'} (code: {head})")


@db_app.command("backup")
def db_backup(
    to: Annotated[Path, typer.Option("--to", help="the backup file to write (a new file)")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Back up a SQLite store with SQLite's online backup API: consistent while it is in use. PostgreSQL
    stores: pg_dump (docs/operations.md)."""
    from nightshift.db.backup import backup

    result = backup(settings_from(config).resolved_store_url, to)
    if as_json:
        print_json(result)
        return
    out.print(
        f"backed up {result.source} (revision {result.revision or 'none'}) to {result.target}: "
        f"{result.bytes / 2**20:,.1f} MiB in {result.seconds:.2f}s"
    )


@db_app.command("restore")
def db_restore(
    source: Annotated[Path, typer.Option("--from", help="the backup file (from `nightshift db backup`)")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replace a SQLite store with a backup. Refuses while any other process (the lookup API, a scoring run, an
    Airflow task) has the database open; stop them first. PostgreSQL stores: pg_restore (docs/operations.md)."""
    from nightshift.db.backup import restore

    settings = settings_from(config)
    result = restore(settings.resolved_store_url, source)
    from nightshift.db import open_store

    head = open_store(settings, check=False).head_revision()
    if as_json:
        print_json({**result.__dict__, "head": head})
        return
    out.print(
        f"restored {result.target} from {result.source} (revision {result.revision or 'none'}, "
        f"{result.bytes / 2**20:,.1f} MiB) in {result.seconds:.2f}s"
    )
    if result.revision != head:
        out.print(f"this code needs revision {head}: run `nightshift db upgrade` before starting anything on it")
