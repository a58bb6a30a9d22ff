"""The batch answer's bytes: the same JSON the standard library writes, and a non-finite prediction refused by id."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest

from nightshift.api import responses
from nightshift.api.reader import Partition

COMMITTED = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
AS_OF = datetime(2026, 12, 5, 4, 0, tzinfo=UTC)


def _part(task: str = "binary", classes: tuple[str, ...] = ()) -> Partition:
    return Partition.of("churn", 2, date(2026, 12, 4), 7, COMMITTED, task=task, classes=classes)


def test_a_batch_answer_is_the_json_the_standard_library_writes() -> None:
    found = {
        "a": (0.1, 0, None),
        "é": (1e-05, 1, None, [("tenure", -0.25), ("plan", 1e16)]),
    }
    got = responses.batch(_part(), ["a", "é", "a", "gone"], found, as_of=AS_OF)
    body = json.loads(got.body)
    assert body["predictions"] == [
        {"entity_id": "a", "score": 0.1, "label": 0, "version": 2},
        {
            "entity_id": "é",
            "score": 1e-05,
            "label": 1,
            "version": 2,
            "reasons": [{"feature": "tenure", "contribution": -0.25}, {"feature": "plan", "contribution": 1e16}],
        },
    ]
    assert body["missing"] == ["gone"]
    assert body["as_of"] == AS_OF.isoformat()
    assert body["age_seconds"] == 3600.0
    assert "é".encode() in got.body  # UTF-8 as is, like ensure_ascii=False
    multi = responses.batch(_part("multiclass", ("x", "y")), ["m"], {"m": (0.75, 1, [0.25, 0.75])})
    assert json.loads(multi.body)["predictions"][0]["probabilities"] == {"x": 0.25, "y": 0.75}


@pytest.mark.parametrize(
    ("task", "hit"),
    [("binary", (float("nan"), 0, None)), ("regression", (0.5, None, float("inf")))],
    ids=["nan-score", "infinite-value"],
)
def test_a_non_finite_prediction_is_refused_naming_the_entity_and_run(task: str, hit: tuple[object, ...]) -> None:
    with pytest.raises(ValueError, match=r"a prediction of 'e9' in run 7 is not finite"):
        responses.batch(_part(task), ["e1", "e9"], {"e1": (0.5, 0, 0.5), "e9": hit})  # type: ignore[dict-item]
