"""The lookup API mounted in Airflow's API server: nightshift's own app (API keys and all), or 503 saying why not."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager
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
    """nightshift.api.app.create_app(settings): the lookup API with its API keys, scopes and rate limits.

    There is no fallback: a lookup API without API keys must never be mounted. If nightshift.api
    cannot be imported (the `api` extra is not installed, a dependency is broken), the mount answers
    every request 503, saying why, and the API server's log says it once.
    """
    try:
        from nightshift.api.app import create_app
    except ImportError as exc:
        reason = (
            f"the nightshift lookup API (nightshift.api) cannot be imported here ({type(exc).__name__}: {exc}); "
            "install nightshift with its `api` extra in the Airflow API server's environment"
        )
        log.error("nightshift plugin: %s; /nightshift lookups answer 503", reason)
        return unavailable_app(reason)
    app: ASGIApp = create_app(plugin_settings())
    return app


def unavailable_app(reason: str) -> ASGIApp:
    """An ASGI app that answers every HTTP request 503 with `reason` as its JSON detail."""
    body = json.dumps({"detail": reason}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

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
