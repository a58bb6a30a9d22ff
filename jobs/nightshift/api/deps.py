"""FastAPI dependencies: they hand routes the reader, the caller's identity and a checked selection."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader

from nightshift.api.auth import Authenticator, Caller
from nightshift.api.db import Database
from nightshift.api.metrics import ApiMetrics
from nightshift.api.reader import NotFound, PredictionReader, Selection, unknown_model_detail
from nightshift.api.schemas import ALIAS_PATTERN, ENTITY_ID_PATTERN, MAX_VERSION, MODEL_PATTERN
from nightshift.config import ApiSettings

API_KEY_HEADER = "X-API-Key"

api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="ApiKey",
    description="a key from `nightshift keys create`, scoped to some models (or all)",
    auto_error=False,
)

_MODEL = re.compile(MODEL_PATTERN)
_ENTITY = re.compile(ENTITY_ID_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_INT = re.compile(r"^[+-]?[0-9]{1,12}$")
#: ISO 8601 extended date and time (RFC 3339 and its naive form): seconds, a fraction and an offset optional.
_TIMESTAMP = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?([Zz]|[+-][0-9]{2}:?[0-9]{2})?$"
)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


@dataclass
class ApiState:
    """What the app's lifespan opens: the database and everything that reads through it."""

    settings: ApiSettings
    db: Database
    reader: PredictionReader
    auth: Authenticator
    metrics: ApiMetrics


@dataclass(frozen=True, slots=True)
class Lookup:
    """A checked lookup request: the reader, what to read, and (single lookups) which entity."""

    reader: PredictionReader
    selection: Selection
    entity_id: str


def state_of(request: Request) -> ApiState:
    """The app's state (a plain function: FastAPI would run a sync dependency in a thread)."""
    state: ApiState = request.app.state.nightshift
    return state


async def get_reader(request: Request) -> PredictionReader:
    return state_of(request).reader


async def get_caller(request: Request, token: Annotated[str | None, Security(api_key_header)]) -> Caller:
    """The authenticated caller (401 otherwise), after spending one token of its rate limit (429)."""
    return await state_of(request).auth.authenticate(token)


def _issue(where: str, name: str, kind: str, msg: str, value: Any, **ctx: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "loc": (where, name), "msg": msg, "input": value}
    if ctx:
        out["ctx"] = ctx
    return out


def _pattern(where: str, name: str, value: str, regex: re.Pattern[str], issues: list[dict[str, Any]]) -> None:
    if not regex.fullmatch(value):  # fullmatch: `$` alone would let one trailing newline through
        issues.append(
            _issue(
                where,
                name,
                "string_pattern_mismatch",
                f"String should match pattern '{regex.pattern}'",
                value,
                pattern=regex.pattern,
            )
        )


def _version(raw: str | None, issues: list[dict[str, Any]]) -> int | None:
    if raw is None:
        return None
    if not _INT.fullmatch(raw):
        issues.append(
            _issue("query", "version", "int_parsing", "Input should be a valid integer, unable to parse string", raw)
        )
        return None
    value = int(raw)
    if not 1 <= value <= MAX_VERSION:
        issues.append(_issue("query", "version", "out_of_range", f"Input should be between 1 and {MAX_VERSION}", raw))
        return None
    return value


def _ds(raw: str | None, issues: list[dict[str, Any]]) -> date | None:
    if raw is None:
        return None
    try:
        if _DATE.fullmatch(raw):
            return date.fromisoformat(raw)
    except ValueError:
        pass
    issues.append(_issue("query", "ds", "date_parsing", "Input should be a valid date in the format YYYY-MM-DD", raw))
    return None


def _as_of(raw: str | None, issues: list[dict[str, Any]]) -> datetime | None:
    """`as_of` as an aware UTC datetime (a naive one is UTC); None when absent or not in the past: a
    moment that has not come yet is answered as now, by the live read itself."""
    if raw is None:
        return None
    at = None
    if _TIMESTAMP.fullmatch(raw):
        text = raw[:-1] + "+00:00" if raw[-1] in "Zz" else raw
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            at = None
    if at is None:
        hint = " (a '+' in a query string reads as a space: send it as %2B)" if " " in raw else ""
        issues.append(
            _issue(
                "query",
                "as_of",
                "datetime_parsing",
                "Input should be an ISO 8601 date and time, e.g. 2026-11-18T06:00:00Z; without an offset it is "
                f"UTC{hint}",
                raw,
            )
        )
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    try:
        at = at.astimezone(UTC)
    except OverflowError:  # within a day of datetime's range: before anything, or after everything
        return _EARLIEST if at.year == 1 else None
    return at if at < datetime.now(UTC) else None


_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def _explain(raw: str | None, issues: list[dict[str, Any]]) -> bool:
    if raw is None:
        return False
    value = _BOOLEANS.get(raw.lower())
    if value is None:
        issues.append(_issue("query", "explain", "bool_parsing", "Input should be true or false", raw))
        return False
    return value


def _selection(request: Request, issues: list[dict[str, Any]]) -> Selection:
    model = request.path_params["model"]
    _pattern("path", "model", model, _MODEL, issues)
    if not request.scope["query_string"]:  # the common case: live version, newest partition
        return Selection(model=model)
    query = request.query_params
    version = _version(query.get("version"), issues)
    alias = query.get("alias")
    if alias is not None:
        _pattern("query", "alias", alias, _ALIAS, issues)
    ds = _ds(query.get("ds"), issues)
    as_of = _as_of(query.get("as_of"), issues)
    explain = _explain(query.get("explain"), issues)
    if version is not None and alias is not None:
        issues.append(_issue("query", "alias", "value_error", "give either version or alias, not both", alias))
    return Selection(model=model, version=version, alias=alias, ds=ds, as_of=as_of, explain=explain)


async def _checked(request: Request, entity_id: str) -> Lookup:
    state = state_of(request)
    caller = await state.auth.authenticate(request.headers.get(API_KEY_HEADER))  # 401 / 429 first
    issues: list[dict[str, Any]] = []
    sel = _selection(request, issues)
    if entity_id:
        _pattern("path", "entity_id", entity_id, _ENTITY, issues)
    if issues:
        raise RequestValidationError(issues)
    if not caller.may_read(sel.model):
        raise NotFound(unknown_model_detail(sel.model), unknown_model=True)  # exactly as an unknown model
    return Lookup(reader=state.reader, selection=sel, entity_id=entity_id)


async def single_lookup(request: Request) -> Lookup:
    """GET /v1/models/{model}/predictions/{entity_id}: authenticated, validated, in scope.

    One dependency authenticates, rate-limits, validates the path and query (the inputs
    `schemas.lookup_parameters` documents) and checks the key's scope. It parses by hand with
    precompiled patterns: FastAPI's per-parameter machinery costs ~10 µs per parameter per
    request here, more than the database read itself. Errors keep FastAPI's 422 shape.
    """
    return await _checked(request, request.path_params["entity_id"])


async def batch_lookup(request: Request) -> Lookup:
    """POST /v1/models/{model}/predictions/batch: the same checks; the ids come in the body."""
    return await _checked(request, "")


BatchLookup = Annotated[Lookup, Depends(batch_lookup)]
