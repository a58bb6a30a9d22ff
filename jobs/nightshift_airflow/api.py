"""The lookup API mounted in Airflow's API server: nightshift's own app if installed, else a minimal read-only one."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager
from datetime import date
from typing import Any

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def plugin_settings() -> Any:
    """The project's settings for the API server, the store from the `nightshift_store` Connection if defined."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    from nightshift_airflow.runtime import STORE_CONN_ID, load_project, store_url_from_connection

    try:
        conn = Connection.get_connection_from_secrets(STORE_CONN_ID)
    except AirflowNotFoundException:
        return load_project()
    return load_project(store_url=store_url_from_connection(conn))


def build_app() -> ASGIApp:
    """nightshift.api.app.create_app(settings) when that module exists, else the minimal app below."""
    settings = plugin_settings()
    try:
        from nightshift.api.app import create_app
    except ModuleNotFoundError as exc:
        if exc.name not in ("nightshift.api", "nightshift.api.app"):
            raise
        log.info("nightshift.api is not installed: mounting the minimal read-only lookup API")
        return minimal_app(settings)
    app: ASGIApp = create_app(settings)
    return app


def minimal_app(settings: Any) -> Any:
    """Read-only lookups of committed predictions: the champion's newest partition, or a given ds."""
    from fastapi import FastAPI, HTTPException

    from nightshift.db import open_store
    from nightshift.errors import ModelNotFound, NightshiftError
    from nightshift.models import open_registry

    app = FastAPI(title="nightshift predictions (minimal)", docs_url="/docs", openapi_url="/openapi.json")
    state: dict[str, Any] = {}
    lock = threading.Lock()

    def store() -> Any:
        with lock:
            if "store" not in state:
                state["store"] = open_store(settings)
            return state["store"]

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "models": [m.name for m in settings.models]}

    @app.get("/models/{model}/predictions/{entity_id}")
    def prediction(model: str, entity_id: str, ds: date | None = None) -> dict[str, Any]:
        if model not in {m.name for m in settings.models}:
            raise HTTPException(404, f"model {model!r} is not declared in the project file")
        try:
            s = store()
            mv = open_registry(settings, s).resolve(model)
            part = s.partition(model, mv.version, ds) if ds else s.latest_partition(model, mv.version)
        except ModelNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except NightshiftError as exc:  # the store is unreachable or at another schema revision
            raise HTTPException(503, f"{type(exc).__name__}: {exc}") from None
        if part is None:
            raise HTTPException(
                404, f"model {model!r} v{mv.version} has no committed partition" + (f" for {ds}" if ds else "")
            )
        rows = s.lookup(model, mv.version, part.ds, [entity_id])
        if not rows:
            raise HTTPException(404, f"entity {entity_id!r} has no prediction in {model} v{mv.version} ds={part.ds}")
        r = rows[0]
        return {
            "model": model,
            "version": mv.version,
            "ds": part.ds.isoformat(),
            "committed_at": part.committed_at.isoformat(),
            "entity_id": r.entity_id,
            "score": r.score,
            "label": r.label,
        }

    return app


class LazyApp:
    """An ASGI app built on its first request, so importing the plugin stays cheap and touches no database.

    A mounted app gets no lifespan events from the API server, so its own lifespan (which
    opens the store, say) is entered here, once, before the first request is served.
    """

    def __init__(self, factory: Callable[[], ASGIApp]) -> None:
        self._factory = factory
        self._app: ASGIApp | None = None
        self._lifespan: AbstractAsyncContextManager[Any] | None = None
        self._lock: asyncio.Lock | None = None

    async def _get(self) -> ASGIApp:
        if self._app is not None:
            return self._app
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if self._app is None:
                app = self._factory()
                lifespan = getattr(getattr(app, "router", None), "lifespan_context", None)
                if lifespan is not None:
                    self._lifespan = lifespan(app)
                    await self._lifespan.__aenter__()
                self._app = app
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # not sent to mounted apps today; answer it if it ever is
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            return
        app = await self._get()
        await app(scope, receive, send)
