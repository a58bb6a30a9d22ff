"""`?explain=true`: each answer's reasons (top-k feature contributions) over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from tests.api.conftest import make_key

pytestmark = pytest.mark.timeout(180)

EXPLAIN = "[models.explain]\nenabled = true\ntop_k = 3\n"


@pytest.fixture
def explained(store_url: str, make_settings: Any, registered: Any, dask_client: Any) -> dict[str, Any]:
    """churn v1 (champion) scored with reasons, v2 (the same model) scored without, on the same day."""
    from nightshift.db import open_store
    from nightshift.scoring import score_partition
    from tests.conftest import SCORE_DS

    settings = make_settings(store_url, extra_model=EXPLAIN)
    registered(settings)  # v1, champion
    with_reasons = score_partition(settings, "churn", SCORE_DS, client=dask_client)
    plain = make_settings(store_url)
    registered(plain)  # v2, and the champion again moves to it: put it back
    from nightshift.models import open_registry

    registry = open_registry(plain)
    registry.set_alias("churn", "champion", 1, reason="test")
    registry.set_alias("churn", "challenger", 2, reason="test")
    without = score_partition(plain, "churn", SCORE_DS, version=2, client=dask_client)
    store = open_store(settings)
    names = [c.name for c in settings.model("churn").contract.columns]
    expected = {
        p.entity_id: [(names[c], v) for c, v in p.reasons or []]
        for p in store.lookup("churn", 1, SCORE_DS, ["1", "2", "3", "4"])
    }
    key = make_key(store, "churn")
    registry.store.dispose()
    return {
        "store": store,
        "key": key,
        "expected": expected,
        "run": with_reasons.run_id,
        "plain_run": without.run_id,
        "ds": SCORE_DS,
    }


def _same(reasons: list[dict[str, Any]], expected: list[tuple[str, float]]) -> None:
    """The stored reasons exactly: each contribution is the stored float32 in its shortest digits, on both
    stores (PostgreSQL's bytea unpacks to the widened double, 0.8123000264167786 for 0.8123)."""
    from nightshift.api.reader import shortest_float32

    assert [r["feature"] for r in reasons] == [f for f, _ in expected]
    assert [r["contribution"] for r in reasons] == [shortest_float32(v) for _, v in expected]
    for r, (_, v) in zip(reasons, expected, strict=True):
        assert struct.pack("<f", r["contribution"]) == struct.pack("<f", v)  # the same float32
    sizes = [abs(r["contribution"]) for r in reasons]
    assert sizes == sorted(sizes, reverse=True)


def test_single_and_batch_answers_carry_their_reasons(explained: dict[str, Any], serve: Any, store_url: str) -> None:
    expected = explained["expected"]
    assert all(len(v) == 3 for v in expected.values())
    api = serve(store_url, cache_entries=100_000)  # the answer cache on: explained answers must bypass it
    with api.client(explained["key"]) as c:
        plain = c.get("/v1/models/churn/predictions/1")  # cached without reasons first
        assert plain.status_code == 200
        assert "reasons" not in plain.json()
        r = c.get("/v1/models/churn/predictions/1", params={"explain": "true"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["version"], body["run_id"]) == (1, explained["run"])
        assert body["score"] == plain.json()["score"]
        _same(body["reasons"], expected["1"])
        again = c.get("/v1/models/churn/predictions/1")  # and the cached plain answer is still plain
        assert "reasons" not in again.json()

        b = c.post("/v1/models/churn/predictions/batch?explain=true", json={"ids": ["2", "nope", "3", "2"]})
        assert b.status_code == 200, b.text
        batch = b.json()
        assert [p["entity_id"] for p in batch["predictions"]] == ["2", "3"]
        assert batch["missing"] == ["nope"]
        for p in batch["predictions"]:
            _same(p["reasons"], expected[p["entity_id"]])
        plain_batch = c.post("/v1/models/churn/predictions/batch", json={"ids": ["2", "3"]}).json()
        assert all("reasons" not in p for p in plain_batch["predictions"])
        assert [p["score"] for p in plain_batch["predictions"]] == [p["score"] for p in batch["predictions"]]

        # explain=false is the plain answer; ds and version selections keep working with reasons.
        assert "reasons" not in c.get("/v1/models/churn/predictions/4?explain=false").json()
        pinned = c.get(
            "/v1/models/churn/predictions/4", params={"explain": "1", "version": 1, "ds": explained["ds"].isoformat()}
        )
        _same(pinned.json()["reasons"], expected["4"])


def test_explain_for_a_day_scored_without_reasons_is_a_409_naming_the_model(
    explained: dict[str, Any], serve: Any, store_url: str
) -> None:
    api = serve(store_url)
    with api.client(explained["key"]) as c:
        for r in (
            c.get("/v1/models/churn/predictions/1", params={"explain": "true", "version": 2}),
            c.get("/v1/models/churn/predictions/1", params={"explain": "true", "alias": "challenger"}),
            c.post("/v1/models/churn/predictions/batch?explain=true&version=2", json={"ids": ["1", "2"]}),
        ):
            assert r.status_code == 409, r.text
            detail = r.json()["detail"]
            assert f"churn v2 ds={explained['ds']}" in detail
            assert f"run {explained['plain_run']}" in detail
            assert "[models.explain] enabled = true" in detail
            # The command that scores that version's day again names the version.
            assert f"`nightshift score -m churn --version 2 --ds {explained['ds']}`" in detail
        # Without explain the same reads answer as always.
        assert c.get("/v1/models/churn/predictions/1", params={"version": 2}).status_code == 200
        # A bad value is a validation error on the parameter.
        bad = c.get("/v1/models/churn/predictions/1", params={"explain": "maybe"})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["query", "explain"]


def test_the_openapi_schema_documents_explain(explained: dict[str, Any], serve: Any, store_url: str) -> None:
    api = serve(store_url)
    with api.client() as c:
        spec = c.get("/openapi.json").json()
    for path, method in (
        ("/v1/models/{model}/predictions/{entity_id}", "get"),
        ("/v1/models/{model}/predictions/batch", "post"),
    ):
        op = spec["paths"][path][method]
        param = next(p for p in op["parameters"] if p["name"] == "explain")
        assert param["schema"]["type"] == "boolean"
        assert "reasons" in param["description"]
        assert "409" in op["responses"]
    reason = spec["components"]["schemas"]["Reason"]
    assert set(reason["properties"]) == {"feature", "contribution"}
    assert "reasons" in spec["components"]["schemas"]["Prediction"]["properties"]
    assert "reasons" in spec["components"]["schemas"]["ScoredEntity"]["properties"]
