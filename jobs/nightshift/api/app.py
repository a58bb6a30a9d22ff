"""The lookup API's app factory: `create_app(settings)`; the database pool opens in the lifespan, not at import."""

from __future__ import annotations

import gc
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.responses import Response

from nightshift.api import responses
from nightshift.api.auth import Authenticator, RateLimited, RateLimiter, Unauthorized
from nightshift.api.cache import AnswerCache, RedisTier
from nightshift.api.db import Database, DatabaseUnavailable, open_database
from nightshift.api.deps import ApiState
from nightshift.api.metrics import ApiMetrics
from nightshift.api.middleware import BodyLimitMiddleware, MetricsMiddleware
from nightshift.api.queries import Queries
from nightshift.api.queries import build as build_queries
from nightshift.api.reader import NotFound, PredictionReader, ResolutionCache
from nightshift.api.routes import build_router
from nightshift.config import ApiSettings, Settings
from nightshift.db.engine import redact
from nightshift.errors import NightshiftError

log = logging.getLogger("nightshift.api")

#: Longest entity id (128) + quotes and a comma: what one id can take in a batch body.
_BYTES_PER_ID = 131


async def _check_schema(db: Database, queries: Queries, url: str) -> None:
    """Refuse to start on a store whose schema is not the code's (the API reads api_keys, 0002+)."""
    from nightshift.db.store import Store

    store = Store(url)
    head = store.head_revision()
    store.dispose()
    rows = await db.fetch(queries.schema_revision, {})
    current = rows[0][0] if rows else None
    if current != head:
        raise NightshiftError(
            f"the store is at schema revision {current or 'none'}, this API needs {head}: run `nightshift db upgrade`"
        )


def redis_prefix(api: ApiSettings, store_url: str) -> str:
    """The Redis key prefix: `api.redis_prefix`, else one derived from the store URL (without its password), so
    two stores sharing a Redis never share keys."""
    if api.redis_prefix is not None:
        return api.redis_prefix
    return f"nightshift:{hashlib.sha256(redact(store_url).encode()).hexdigest()[:12]}:"


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app for these settings; nothing is opened until the app starts."""
    api = settings.api
    url = api.store_url or settings.resolved_store_url
    if api.max_body_bytes < api.max_batch_ids * _BYTES_PER_ID + 64:
        log.warning(
            "api.max_body_bytes=%d may refuse (413) a batch of %d long ids; raise it to at least %d",
            api.max_body_bytes,
            api.max_batch_ids,
            api.max_batch_ids * _BYTES_PER_ID + 64,
        )
    metrics = ApiMetrics()
    cache = ResolutionCache(api.resolve_cache_ttl_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = open_database(
            url,
            pool_size=api.pool_size,
            timeout_s=api.db_timeout_s,
            statement_timeout_ms=int(api.db_timeout_s * 1000),
        )
        queries = build_queries(db.dialect)
        try:
            await db.open()
            await _check_schema(db, queries, url)
        except DatabaseUnavailable as exc:
            # Start anyway: /readyz answers 503 until the database is back, then the pool reconnects.
            log.error("starting without the database: %s", exc)
        except BaseException:
            await db.close()
            raise
        cache.clear()
        redis = None
        if api.redis_url:
            redis = RedisTier(
                api.redis_url, prefix=redis_prefix(api, url), ttl_s=api.redis_ttl_s, timeout_s=api.redis_timeout_s
            )
            if not await redis.ping():  # start anyway: the database answers until Redis is back
                log.error("starting without Redis at %s: it is skipped until it answers", redact(api.redis_url))
        answers = AnswerCache(api.cache_entries, redis)
        state = ApiState(
            settings=api,
            db=db,
            reader=PredictionReader(
                db, queries, cache, coalesce=api.coalesce_lookups, max_ids=api.max_batch_ids, answers=answers
            ),
            auth=Authenticator(
                db,
                queries,
                cache_ttl_s=api.key_cache_ttl_s,
                limiter=RateLimiter(api.rate_limit_per_minute, api.rate_limit_burst),
            ),
            metrics=metrics,
        )
        app.state.nightshift = state
        # Objects alive now (modules, the app) live as long as the process: keep them out of the
        # collector's way, so a full collection under load does not walk them (p99 pauses).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if redis is not None:
                await redis.close()
            await db.close()

    app = FastAPI(
        title="nightshift lookup API",
        summary="Committed predictions of the nightly batch scoring, one consistent partition per answer.",
        version="1",
        docs_url="/docs" if api.docs_enabled else None,
        redoc_url=None,
        openapi_url="/openapi.json" if api.docs_enabled else None,
        lifespan=lifespan,
    )
    metrics.watch_reader(lambda: state.reader if (state := getattr(app.state, "nightshift", None)) else None)
    app.include_router(build_router(api))
    # Routes are matched in order and the docs routes come first: put the lookups first, they
    # are nearly every request (each regex tried costs a few µs).
    app.router.routes.sort(key=lambda r: not getattr(r, "path", "").startswith("/v1/models/{model}/predictions"))
    _add_exception_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=api.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _add_exception_handlers(app: FastAPI) -> None:
    async def unauthorized(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Unauthorized)
        return responses.json_response(
            {"detail": exc.detail}, 401, headers={"WWW-Authenticate": 'ApiKey header="X-API-Key"'}
        )

    async def rate_limited(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RateLimited)
        return responses.json_response({"detail": str(exc)}, 429, headers={"Retry-After": str(exc.retry_after_s)})

    async def not_found(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, NotFound)
        return responses.json_response({"detail": exc.detail}, exc.status)

    async def unavailable(_request: Request, exc: Exception) -> Response:
        log.warning("database unavailable: %s", exc)
        return responses.json_response({"detail": "database unavailable"}, 503, headers={"Retry-After": "1"})

    app.add_exception_handler(Unauthorized, unauthorized)
    app.add_exception_handler(RateLimited, rate_limited)
    app.add_exception_handler(NotFound, not_found)
    app.add_exception_handler(DatabaseUnavailable, unavailable)


def app_from_environment() -> FastAPI:
    """The factory `nightshift api` hands uvicorn: settings from $NIGHTSHIFT_CONFIG (or ./nightshift.toml)."""
    from nightshift.config import load_settings

    return create_app(load_settings())
