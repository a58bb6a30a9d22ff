"""Canary and shadow rollouts through the API: who is served by which version."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from nightshift.db import schema
from nightshift.db.engine import dialect_insert
from nightshift.rollout.canary import serves_challenger
from tests.api.conftest import DS2, ROWS, Seeded, make_key, score_of

pytestmark = pytest.mark.timeout(120)


def _start(seeded: Seeded, strategy: str, share: float | None) -> None:
    now = datetime.now(UTC)
    row = {
        "candidate_id": 1,
        "strategy": strategy,
        "champion_version": 1,
        "challenger_version": 2,
        "canary_share": share,
        "healthy_nights": 0,
        "started_at": now,
        "updated_at": now,
    }
    with seeded.store.begin() as conn:
        stmt = dialect_insert(seeded.store.dialect, schema.model_rollouts).values(model="churn", **row)
        conn.execute(stmt.on_conflict_do_update(index_elements=["model"], set_=row))


def _stop(seeded: Seeded) -> None:
    with seeded.store.begin() as conn:
        conn.execute(sa.delete(schema.model_rollouts).where(schema.model_rollouts.c.model == "churn"))


def test_a_canary_serves_its_stable_share_from_the_challenger(seeded: Seeded, serve: Any) -> None:
    share = 0.3
    _start(seeded, "canary", share)
    api = serve(seeded.url)
    ids = [str(i) for i in range(1, ROWS + 1)]
    expected = {i for i in ids if serves_challenger("churn", i, share)}
    assert 0.2 < len(expected) / len(ids) < 0.4
    with api.client(make_key(seeded.store, "churn")) as c:
        for i in ids[:120]:
            body = c.get(f"/v1/models/churn/predictions/{i}").json()
            want = (2, score_of(22, int(i))) if i in expected else (1, score_of(12, int(i)))
            assert (body["version"], body["ds"]) == (want[0], DS2.isoformat()), i
            assert body["score"] == pytest.approx(want[1], abs=1e-7)
        batch = c.post("/v1/models/churn/predictions/batch", json={"ids": ids}).json()
        assert {p["entity_id"] for p in batch["predictions"] if p["version"] == 2} == expected
        assert batch["version"] == 1
        assert batch["canary"]["version"] == 2
        # An explicit alias or version is never re-routed.
        assert c.get("/v1/models/churn/predictions/1", params={"alias": "champion"}).json()["version"] == 1
        # The canary ends: within the cache's second every entity is back on the champion.
        _stop(seeded)
        time.sleep(1.2)
        assert {c.get(f"/v1/models/churn/predictions/{i}").json()["version"] for i in sorted(expected)[:20]} == {1}


def test_shadow_predictions_never_change_api_answers(seeded: Seeded, serve: Any) -> None:
    _start(seeded, "shadow", None)
    api = serve(seeded.url)
    with api.client(make_key(seeded.store, "churn")) as c:
        versions = {c.get(f"/v1/models/churn/predictions/{i}").json()["version"] for i in range(1, 80)}
        assert versions == {1}
        batch = c.post("/v1/models/churn/predictions/batch", json={"ids": [str(i) for i in range(1, 200)]}).json()
        assert {p["version"] for p in batch["predictions"]} == {1}
        assert batch["canary"] is None
