"""The routes: health, readiness, metrics and the /v1 reads. Thin: deps check, the reader reads."""

# No `from __future__ import annotations`: the batch body type is a local (its cap is a setting),
# and FastAPI must see it when the route is declared.
from dataclasses import replace
from typing import Annotated, Any, cast

from fastapi import APIRouter, Body, Depends, Request
from starlette.responses import Response

from nightshift.api import responses
from nightshift.api.auth import Caller
from nightshift.api.db import DatabaseUnavailable
from nightshift.api.deps import BatchLookup, get_caller, get_reader, single_lookup, state_of
from nightshift.api.metrics import CONTENT_TYPE
from nightshift.api.reader import Hit, NoReasons, NotFound, Partition, PredictionReader
from nightshift.api.schemas import (
    BatchRequestBase,
    Health,
    ModelList,
    Prediction,
    PredictionBatch,
    Readiness,
    batch_request_model,
    error_responses,
    lookup_parameters,
)
from nightshift.config import ApiSettings
from nightshift.rollout.canary import serves_challenger

CHALLENGER = "challenger"

SECURED: dict[str, Any] = {"security": [{"ApiKey": []}]}


def build_router(settings: ApiSettings) -> APIRouter:
    """All routes; the batch body's cap comes from the settings so the schema states it."""
    router = APIRouter()
    batch_request = batch_request_model(settings.max_batch_ids)

    @router.get("/healthz", response_model=Health, tags=["ops"], summary="Liveness: the process answers")
    async def healthz() -> Response:
        return responses.json_response({"status": "ok"})

    @router.get(
        "/readyz",
        response_model=Readiness,
        tags=["ops"],
        summary="Readiness: the database answers and every live model is fresh",
        responses={503: {"model": Readiness, "description": "not ready"}},
    )
    async def readyz(request: Request) -> Response:
        state = state_of(request)
        body: dict[str, Any] = {"freshness_limit_hours": settings.freshness_limit_hours}
        try:
            models = await state.reader.models()
        except DatabaseUnavailable:
            state.metrics.database_up.set(0)
            body.update(status="not ready", database="unreachable", models=0, stale=0)
            return responses.json_response(body, 503)
        state.metrics.set_catalog(models)
        live = [m for m in models if m.version is not None]
        limit_s = settings.freshness_limit_hours * 3600
        stale = [m.model for m in live if (age := m.age_seconds()) is None or age > limit_s]
        body.update(status="not ready" if stale else "ready", database="ok", models=len(live), stale=len(stale))
        return responses.json_response(body, 503 if stale else 200)

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        state = state_of(request)
        try:
            state.metrics.set_catalog(await state.reader.models())
        except DatabaseUnavailable:
            state.metrics.database_up.set(0)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @router.get(
        "/v1/models",
        response_model=ModelList,
        tags=["predictions"],
        summary="Models the key may read, with their live version and its newest committed partition",
        responses=error_responses(401, 429, 503),
    )
    async def list_models(
        caller: Annotated[Caller, Depends(get_caller)], reader: Annotated[PredictionReader, Depends(get_reader)]
    ) -> Response:
        return responses.models([m for m in await reader.models() if caller.may_read(m.model)])

    @router.get(
        "/v1/models/{model}/predictions/{entity_id}",
        response_model=Prediction,
        tags=["predictions"],
        summary="One entity's committed prediction (live version, newest partition unless asked otherwise)",
        responses=error_responses(401, 404, 409, 410, 422, 429, 503),
        openapi_extra={"parameters": lookup_parameters(entity=True), **SECURED},
    )
    async def get_prediction(request: Request) -> Response:
        # The dependency is called, not declared: FastAPI's dependency machinery is ~10 µs a request.
        lookup = await single_lookup(request)
        sel, reader = lookup.selection, lookup.reader
        # A canary splits live reads only: its share's history is not kept, so an as-of read answers
        # from the alias (champion) as it was then.
        if sel.version is None and sel.alias is None and sel.as_of is None:
            share = await reader.canary_share(sel.model)
            if share and serves_challenger(sel.model, lookup.entity_id, share):
                try:
                    part, hit = await reader.one(replace(sel, alias=CHALLENGER), lookup.entity_id)
                except NoReasons:
                    raise  # the challenger that answers this entity has no reasons: say so, never ask another
                except NotFound:
                    pass  # the canary ended a moment ago: the champion answers
                else:
                    if hit is not None:
                        return responses.prediction(part, lookup.entity_id, *hit)
        part, hit = await reader.one(sel, lookup.entity_id)
        if hit is None:
            return responses.entity_not_found(part, lookup.entity_id, sel.as_of)
        if sel.as_of is not None:
            return responses.prediction_as_of(part, lookup.entity_id, sel.as_of, *hit)
        return responses.prediction(part, lookup.entity_id, *hit)

    @router.post(
        "/v1/models/{model}/predictions/batch",
        response_model=PredictionBatch,
        tags=["predictions"],
        summary=f"Up to {settings.max_batch_ids} entities' predictions, from one partition, in one query",
        description="A read (POST only to carry the ids): nothing is written.",
        responses=error_responses(400, 401, 404, 409, 410, 413, 422, 429, 503),
        openapi_extra={"parameters": lookup_parameters(entity=False), **SECURED},
    )
    async def batch_predictions(
        request: Request,
        lookup: BatchLookup,
        body: Annotated[batch_request, Body()],  # type: ignore[valid-type]
    ) -> Response:
        ids = cast(BatchRequestBase, body).ids
        state_of(request).metrics.batch_ids.observe(len(ids))
        sel, reader = lookup.selection, lookup.reader
        canary: tuple[Partition, dict[str, Hit]] | None = None
        if sel.version is None and sel.alias is None and sel.as_of is None:
            share = await reader.canary_share(sel.model)
            if share:
                chosen = [i for i in ids if serves_challenger(sel.model, i, share)]
                if chosen:
                    try:
                        canary = await reader.many(replace(sel, alias=CHALLENGER), chosen)
                    except NoReasons:
                        raise
                    except NotFound:
                        canary = None  # the canary ended a moment ago: the champion answers
        part, found = await reader.many(sel, ids)
        return responses.batch(part, ids, found, canary, as_of=sel.as_of)

    return router
