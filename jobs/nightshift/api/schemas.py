"""Request and response shapes of the lookup API, and the patterns every identifier must match."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

#: Entity ids: what the store's scoring writes (customer numbers, UUIDs, "tenant:42", ...).
ENTITY_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
#: Model names, as in the project file.
MODEL_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
#: Aliases, as the registry allows them.
ALIAS_PATTERN = r"^[a-z0-9_-]{1,64}$"
MAX_VERSION = 2**31 - 1

#: The `as_of` member of an answer.
AS_OF_ECHO = (
    "the moment asked for with `as_of`, in UTC (absent without it, and for a moment not yet past: that is "
    "answered as now)"
)
#: The `as_of` query parameter.
AS_OF_DESCRIPTION = (
    "answer as this API answered at that moment: an ISO 8601 date and time, e.g. 2026-11-18T06:00:00Z or "
    "2026-11-18T07:00:00%2B01:00; **without an offset it is UTC**. The alias (default: champion) as it was "
    "then, and the run that served then: for a day re-scored since, the replaced run, while the model's "
    "`history_days` keeps its rows (410 once they are removed). With `ds`: the run that served that day "
    "then, from the version that held the role on that night then (a night re-run since included), or the "
    "alias as it was then for a night not yet recorded. A moment not yet past answers as now. A canary "
    "split is not replayed: the alias answers."
)

#: The `explain` query parameter.
EXPLAIN_DESCRIPTION = (
    "`true`: each answer adds `reasons`, the top-k feature contributions of its score (largest |contribution| "
    "first), stored beside it when the day was scored with `[models.explain] enabled = true`. Contributions are in "
    "the explained output's units: log-odds of the positive class (a binary linear model), the predicted class's "
    "decision function (multiclass linear), the value (a regression), the raw margin (LightGBM and XGBoost, by "
    "TreeSHAP); a version's baseline plus every feature's contribution is that output exactly. A day scored "
    "without reasons answers 409, naming the model and how to enable them. Read from the database, never from the "
    "answer cache."
)

EntityId = Annotated[str, Field(min_length=1, max_length=128, pattern=ENTITY_ID_PATTERN, examples=["42"])]


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer the API itself writes: one human-readable `detail`."""

    detail: str


class ValidationIssue(BaseModel):
    type: str
    loc: list[str | int]
    msg: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationErrorBody(BaseModel):
    """422: what was wrong with which input (FastAPI's shape)."""

    detail: list[ValidationIssue]


class PartitionRef(BaseModel):
    """Where an answer comes from: one model version, one committed partition, and its freshness."""

    model: str = Field(examples=["churn"])
    version: int = Field(description="model version the scores come from")
    ds: date = Field(description="the committed partition (day) the scores come from")
    run_id: int = Field(description="the scoring run the catalog points at for (model, version, ds)")
    committed_at: datetime = Field(description="when that partition was committed (UTC)")
    age_seconds: float = Field(
        description="seconds since committed_at, at the time of the answer (with `as_of`: at that moment)"
    )


class TaskOutputs(BaseModel):
    """What a multiclass or a regression model's answer carries besides score and label (binary: absent)."""

    value: float | None = Field(
        default=None, description="regression: the predicted value, as the model gave it (float64)"
    )
    predicted_class: str | None = Field(
        default=None, description="multiclass: the most probable class's name (label is its index)"
    )
    probabilities: dict[str, float] | None = Field(
        default=None, description="multiclass: every class's probability, by class name"
    )


class Reason(BaseModel):
    """One feature's contribution to a score (`?explain=true`)."""

    feature: str = Field(description="a feature (contract column) of the model", examples=["monthly_charges"])
    contribution: float = Field(
        description="its contribution to the explained output (log-odds, value or margin; see `explain`), float32"
    )


class Explained(BaseModel):
    """What `?explain=true` adds to an answer."""

    reasons: list[Reason] | None = Field(
        default=None,
        description="with `explain=true`: the top-k feature contributions, largest |contribution| first (absent "
        "without it)",
    )


class Prediction(PartitionRef, TaskOutputs, Explained):
    """One entity's committed prediction. binary: score = P(positive class), label = 0/1 at the decision
    threshold. multiclass: score = the predicted class's probability, label = its index, plus predicted_class
    and probabilities. regression: value, and score = the value as float32, label = null."""

    task: str | None = Field(default=None, description="multiclass or regression (absent for a binary model)")
    entity_id: str
    score: float
    label: int | None
    as_of: datetime | None = Field(default=None, description=AS_OF_ECHO)


class ScoredEntity(TaskOutputs, Explained):
    entity_id: str
    score: float
    label: int | None
    version: int = Field(description="the version that answered: the challenger's for canary entities")


class PredictionBatch(PartitionRef):
    """Committed predictions of several entities, from one (version, ds, run) — or, while a canary
    runs, the canary entities from the challenger's partition described in `canary`."""

    predictions: list[ScoredEntity] = Field(description="found entities, in request order, each once")
    missing: list[str] = Field(description="requested ids without a prediction in this partition")
    canary: PartitionRef | None = Field(
        default=None, description="the challenger's partition that answered the canary entities, if any"
    )
    as_of: datetime | None = Field(default=None, description=AS_OF_ECHO)


class ModelInfo(BaseModel):
    """A servable model: its live (champion) version and the newest committed partition of it."""

    model: str
    version: int | None = Field(description="the champion version; null when no champion is set")
    ds: date | None = Field(description="newest committed partition of the champion; null when none")
    committed_at: datetime | None
    age_seconds: float | None
    rows: int | None = Field(description="predictions in that partition")
    aliases: dict[str, int] = Field(description="every alias of the model and the version it points at")


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    """Readiness: the database answers and every live model is fresh. Names stay out (no key needed)."""

    status: str = Field(examples=["ready"], description="'ready' or 'not ready'")
    database: str = Field(description="'ok' or 'unreachable'")
    models: int = Field(description="live models checked")
    stale: int = Field(description="live models whose newest partition is older than the limit, or missing")
    freshness_limit_hours: float


class BatchRequestBase(BaseModel):
    """What every batch body has; the cap is added per app by `batch_request_model`."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str]


def batch_request_model(max_ids: int) -> type[BatchRequestBase]:
    """The batch body, with the configured cap written into the schema (and enforced: 422 above it)."""
    return create_model(
        "BatchRequest",
        __base__=BatchRequestBase,
        __doc__=f"Up to {max_ids} entity ids, answered with one query from one partition.",
        ids=(
            list[EntityId],
            Field(
                min_length=1, max_length=max_ids, description=f"1 to {max_ids} entity ids; duplicates are answered once"
            ),
        ),
    )


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error codes a route can answer."""
    text = {
        400: "the body is not text (undecodable bytes)",
        401: "missing, unknown or revoked API key",
        404: "unknown model (or one outside the key's scope: the same answer), no such alias, version, "
        "partition or entity (with `as_of`: none then, e.g. before the first commit)",
        409: "`explain=true`: the partition that answers was scored without reasons; the detail names the model "
        "and how to enable them ([models.explain] enabled = true, then score the day again)",
        410: "`as_of`: the run that served then has had its predictions removed (past the model's "
        "`history_days`, or expired by retention)",
        413: "request body too large",
        422: "invalid model name, entity id, version, alias, ds, as_of or explain (or both version and alias), or body",
        429: "rate limit of the key exceeded; see Retry-After",
        503: "database unavailable",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": ValidationErrorBody if code == 422 else ErrorBody, "description": text[code]}
    return out


def lookup_parameters(*, entity: bool) -> list[dict[str, Any]]:
    """The OpenAPI parameters of a lookup route. deps.py parses exactly these, by hand, for speed.

    FastAPI's declarative parameters cost ~10 µs each per request here (measured); a single
    lookup has seven inputs, which would double the route's CPU. The spec below and the parser
    in deps.py are kept together by the schemathesis test, which sends what this spec allows.
    """
    params: list[dict[str, Any]] = [
        {
            "name": "model",
            "in": "path",
            "required": True,
            "description": "model name",
            "schema": {"type": "string", "pattern": MODEL_PATTERN, "maxLength": 63},
            "example": "churn",
        }
    ]
    if entity:
        params.append(
            {
                "name": "entity_id",
                "in": "path",
                "required": True,
                "description": "entity id",
                "schema": {"type": "string", "pattern": ENTITY_ID_PATTERN, "minLength": 1, "maxLength": 128},
                "example": "42",
            }
        )
    params += [
        {
            "name": "version",
            "in": "query",
            "required": False,
            "description": "read this model version (default: the champion); not with `alias`",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
        },
        {
            "name": "alias",
            "in": "query",
            "required": False,
            "description": "read the version behind this alias, e.g. challenger (default: champion); not with version",
            "schema": {"type": "string", "pattern": ALIAS_PATTERN, "maxLength": 64},
        },
        {
            "name": "ds",
            "in": "query",
            "required": False,
            "description": "read this committed partition (day), YYYY-MM-DD; default: the newest committed",
            "schema": {"type": "string", "format": "date"},
        },
        {
            "name": "as_of",
            "in": "query",
            "required": False,
            "description": AS_OF_DESCRIPTION,
            "schema": {"type": "string", "format": "date-time"},
        },
        {
            "name": "explain",
            "in": "query",
            "required": False,
            "description": EXPLAIN_DESCRIPTION,
            "schema": {"type": "boolean", "default": False},
        },
    ]
    return params
