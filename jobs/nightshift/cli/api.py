"""`nightshift api` (serve the lookup API with uvicorn) and `nightshift keys create | list | revoke`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from nightshift.cli.app import app, err, out
from nightshift.cli.common import ConfigOpt, JsonOpt, print_json, settings_from

if TYPE_CHECKING:  # pragma: no cover
    from nightshift.api.keys import KeyManager


def _check_schema(settings: Any) -> None:
    """Refuse to start on a store whose schema is not the code's, in one line (the app's own check would fail
    in every worker's startup, with uvicorn's traceback). An unreachable database is left to the app: it starts
    anyway and /readyz answers 503 until the database is back."""
    from nightshift.db import Store, StoreUnavailable

    store = Store(settings.api.store_url or settings.resolved_store_url, connect_retries=0)
    try:
        store.ensure_current()  # StoreError: "... is at schema revision 0004, this code needs 0007: run ..."
    except StoreUnavailable as exc:
        err.print(f"warning: {exc}; starting anyway (/readyz answers 503 until the database answers)", soft_wrap=True)
    finally:
        store.dispose()


@app.command("api")
def api_cmd(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="bind address (default: api.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: api.port)")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="worker processes (default: api.workers)")] = None,
    access_log: Annotated[bool, typer.Option(help="log every request (costs throughput)")] = False,
) -> None:
    """Serve the lookup API (uvicorn; each worker opens its own database pool)."""
    import uvicorn

    from nightshift.config import CONFIG_ENV, find_config, load_settings

    path = find_config(config)
    settings = load_settings(path)  # fail here, with a clear message, not in every worker
    _check_schema(settings)
    os.environ[CONFIG_ENV] = str(path)  # what the factory reads in each worker
    uvicorn.run(
        "nightshift.api.app:app_from_environment",
        factory=True,
        host=host or settings.api.host,
        port=port or settings.api.port,
        workers=workers or settings.api.workers,
        access_log=access_log,
        log_level="info",
        server_header=False,
    )


keys_app = app.sub("keys", "API keys of the lookup API: create (shown once), list, revoke.")


def _key_manager(config: Path | None) -> KeyManager:
    from nightshift.api.keys import KeyManager
    from nightshift.db import open_store

    return KeyManager(open_store(settings_from(config)))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", "-n", help="who or what uses the key (an app's name)")],
    models: Annotated[str, typer.Option("--models", "-m", help="comma-separated model names, or '*' for all")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a key and print it ONCE: only its SHA-256 is stored, it cannot be shown again."""
    from nightshift.models.registry import current_user

    manager = _key_manager(config)
    key, token = manager.create(name, models, created_by=current_user())
    if as_json:
        print_json({**key.as_dict(), "key": token})
        return
    err.print(f"created key {key.key_id} ({key.name}) for models {', '.join(key.models)}; store it now:")
    print(token)


@keys_app.command("list")
def keys_list(
    config: ConfigOpt = None,
    active: Annotated[bool, typer.Option("--active", help="only keys that are not revoked")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List keys (never their secrets)."""
    manager = _key_manager(config)
    keys = manager.list_keys(include_revoked=not active)
    if as_json:
        print_json([k.as_dict() for k in keys])
        return
    table = Table(title="API keys")
    for col in ("key_id", "name", "models", "created", "by", "status"):
        table.add_column(col)
    for k in keys:
        status = f"revoked {k.revoked_at:%F %T}" if k.revoked_at else "active"
        table.add_row(k.key_id, k.name, ",".join(k.models), f"{k.created_at:%F %T}", k.created_by, status)
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="key_id (from `keys list`), the key itself, or a name (all its keys)")],
    config: ConfigOpt = None,
) -> None:
    """Revoke a key: running APIs refuse it within api.key_cache_ttl_s."""
    manager = _key_manager(config)
    for k in manager.revoke(key):
        out.print(f"revoked {k.key_id} ({k.name})")
