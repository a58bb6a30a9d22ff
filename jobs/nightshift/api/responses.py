"""JSON bodies of the API, written straight to bytes (the schemas in schemas.py document the same shapes)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.responses import Response

from nightshift.api.reader import Hit, ModelStatus, Partition

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
#: The batch answer's encoder (C): the standard library's took a fifth of the server's CPU on 1,000-id batches.
#: It writes a non-finite float as null where the standard one refuses it, so `batch` refuses those itself.
_encode = msgspec.json.Encoder().encode


class JsonBytes(Response):
    """A JSON response whose body is already encoded: no second validation or serialisation pass."""

    media_type = "application/json"


def json_response(body: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None) -> JsonBytes:
    return JsonBytes(_dumps(body).encode(), status_code=status_code, headers=headers)


def _partition(part: Partition, now: datetime) -> dict[str, Any]:
    """The partition's members; `age_seconds` at `now` (an as-of answer's: at its as_of)."""
    out: dict[str, Any] = {
        "model": part.model,
        "version": part.version,
        "ds": part.ds.isoformat(),
        "run_id": part.run_id,
        "committed_at": part.committed_at.isoformat(),
        "age_seconds": round((now - part.committed_at).total_seconds(), 3),
    }
    if part.task != "binary":
        out["task"] = part.task
    return out


def _outputs(part: Partition, label: int | None, extra: Any) -> dict[str, Any]:
    """What a multiclass or regression answer carries besides the score (binary: nothing)."""
    if part.task == "regression":
        return {"value": extra}
    if part.task == "multiclass" and label is not None:
        probs = list(extra or ())
        names = part.classes if len(part.classes) == len(probs) else tuple(str(i) for i in range(len(probs)))
        return {
            "predicted_class": names[label] if label < len(names) else str(label),
            "probabilities": dict(zip(names, probs, strict=True)),
        }
    return {}


def _reasons(reasons: list[tuple[str, float]]) -> list[dict[str, Any]]:
    """`reasons`: each feature and its contribution, largest |contribution| first (as stored)."""
    return [{"feature": feature, "contribution": contribution} for feature, contribution in reasons]


def prediction(
    part: Partition,
    entity_id: str,
    score: float,
    label: int | None,
    extra: Any = None,
    reasons: list[tuple[str, float]] | None = None,
) -> JsonBytes:
    """The hot answer, formatted directly: every string in it is validated ([A-Za-z0-9_.:-], ISO
    dates), so none needs escaping, and this is a fifth of the cost of a JSON encoder pass. A
    multiclass or regression answer adds its outputs (class names are the model's: encoded), an
    explained one (`?explain=true`) its `reasons` (feature names are the contract's: encoded)."""
    if not math.isfinite(score):
        raise ValueError(f"score of {entity_id!r} in run {part.run_id} is not finite: {score!r}")
    age = round((datetime.now(UTC) - part.committed_at).total_seconds(), 3)
    why = "" if reasons is None else "," + _dumps({"reasons": _reasons(reasons)})[1:-1]
    if part.task == "binary":
        return JsonBytes(
            f'{part.json_head}"age_seconds":{age!r},"entity_id":"{entity_id}","score":{score!r},'
            f'"label":{label}{why}}}'.encode()
        )
    more = _dumps(_outputs(part, label, extra))[1:-1]
    label_json = "null" if label is None else str(label)
    return JsonBytes(
        f'{part.json_head}"age_seconds":{age!r},"entity_id":"{entity_id}","score":{score!r},'
        f'"label":{label_json},{more}{why}}}'.encode()
    )


def prediction_as_of(
    part: Partition,
    entity_id: str,
    as_of: datetime,
    score: float,
    label: int | None,
    extra: Any = None,
    reasons: list[tuple[str, float]] | None = None,
) -> JsonBytes:
    """An as-of answer: what `prediction` answered at `as_of` (its age then), and the `as_of` it was asked for."""
    if not math.isfinite(score):
        raise ValueError(f"score of {entity_id!r} in run {part.run_id} is not finite: {score!r}")
    body = _partition(part, as_of)
    body.update(entity_id=entity_id, score=score, label=label, **_outputs(part, label, extra))
    if reasons is not None:
        body["reasons"] = _reasons(reasons)
    body["as_of"] = as_of.isoformat()
    return json_response(body)


def entity_not_found(part: Partition, entity_id: str, as_of: datetime | None = None) -> JsonBytes:
    when = f" as of {as_of.isoformat()}" if as_of is not None else ""
    return json_response(
        {"detail": f"no prediction for entity {entity_id!r} in {part.model} v{part.version} ds={part.ds}{when}"}, 404
    )


def batch(
    part: Partition,
    ids: Sequence[str],
    found: dict[str, Hit],
    canary: tuple[Partition, dict[str, Hit]] | None = None,
    *,
    as_of: datetime | None = None,
) -> JsonBytes:
    """The batch answer. Under a canary, the canary entities found in the challenger's partition
    are answered from it: each item names its version, and `canary` describes that partition.
    An as-of answer's age is at its `as_of`, which it names."""
    now = as_of or datetime.now(UTC)
    body = _partition(part, now)
    predictions = []
    missing = []
    seen = set()
    canary_found = canary[1] if canary else {}
    canary_version = canary[0].version if canary else None
    for entity_id in ids:
        if entity_id in seen:
            continue
        seen.add(entity_id)
        hit = canary_found.get(entity_id)
        version, answered_by = canary_version, canary[0] if canary else part
        if hit is None:
            hit, version, answered_by = found.get(entity_id), part.version, part
        if hit is None:
            missing.append(entity_id)
        else:
            if not math.isfinite(hit[0]) or (isinstance(hit[2], float) and not math.isfinite(hit[2])):
                raise ValueError(f"a prediction of {entity_id!r} in run {answered_by.run_id} is not finite: {hit!r}")
            item = {"entity_id": entity_id, "score": hit[0], "label": hit[1], "version": version}
            if answered_by.task != "binary":
                item.update(_outputs(answered_by, hit[1], hit[2]))
            if len(hit) > 3:
                item["reasons"] = _reasons(hit[3])
            predictions.append(item)
    body["predictions"] = predictions
    body["missing"] = missing
    body["canary"] = _partition(canary[0], now) if canary else None
    if as_of is not None:
        body["as_of"] = as_of.isoformat()
    return JsonBytes(_encode(body))


def models(statuses: Sequence[ModelStatus]) -> JsonBytes:
    now = datetime.now(UTC)
    out = []
    for m in statuses:
        age = m.age_seconds(now)
        out.append(
            {
                "model": m.model,
                "version": m.version,
                "ds": m.ds.isoformat() if m.ds else None,
                "committed_at": m.committed_at.isoformat() if m.committed_at else None,
                "age_seconds": round(age, 3) if age is not None else None,
                "rows": m.rows,
                "aliases": m.aliases,
            }
        )
    return json_response({"models": out})
