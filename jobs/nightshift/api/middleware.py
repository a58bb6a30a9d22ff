"""Pure ASGI middleware: request metrics, and a cap on request body size (413) before any route runs."""

from __future__ import annotations

import json
import time

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nightshift.api.metrics import CLIENT_CLOSED, ApiMetrics


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (bounded label values).

    A request answered before routing (a 413 from `BodyLimitMiddleware`) is counted under the
    route its path matches; only a path no route matches is "unmatched". A client that hangs up
    before any response started is counted with status 499 (client closed request), not as a
    server error.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int | None = None
        disconnected = False

        async def watch_receive() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, watch_receive, send_status)
        finally:
            if status is None:  # no response started: the client left, or the app failed
                status = CLIENT_CLOSED if disconnected else 500
            self.metrics.observe(route_template(scope), scope["method"], status, time.perf_counter() - start)


def route_template(scope: Scope) -> str:
    """The template of the route serving `scope` (the router writes it into the scope), else of the
    route its path matches (a request refused before routing), else "unmatched"."""
    path = getattr(scope.get("route"), "path", None)
    if path:
        return str(path)
    partial: str | None = None
    for route in getattr(getattr(scope.get("app"), "router", None), "routes", ()):
        match, _child = route.matches(scope)
        if match is Match.FULL:
            return str(route.path)
        if match is Match.PARTIAL and partial is None:  # the path matches, the method does not (405)
            partial = str(route.path)
    return partial or "unmatched"


async def _reject(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Answers 413 to a body over `max_bytes`, declared (Content-Length) or streamed (chunked).

    The body is read here, at most `max_bytes` of it, and handed on whole: the cap holds
    before any parsing, authentication or database work.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_big = f"request body larger than {self.max_bytes} bytes"
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _reject(send, 400, "invalid Content-Length header")
                    return
                if declared > self.max_bytes:
                    await _reject(send, 413, too_big)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _reject(send, 413, too_big)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
