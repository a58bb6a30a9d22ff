"""Every endpoint of the lookup API over real HTTP (uvicorn), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.api.conftest import DS1, DS2, ROWS, Seeded, commit_partition, make_key, score_of

pytestmark = pytest.mark.timeout(120)


def salt_of(score: float) -> int:
    """Which synthetic run wrote a score (see score_of)."""
    return round(score * 1_000_000) // 1000


def test_single_lookup_answers_the_live_version_newest_partition(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url)
    with api.client(make_key(seeded.store, "*")) as c:
        r = c.get("/v1/models/churn/predictions/42")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "churn"
        assert body["version"] == 1  # the champion
        assert body["ds"] == DS2.isoformat()  # the newest committed partition
        assert body["run_id"] == seeded.runs[("churn", 1, DS2)]
        assert body["entity_id"] == "42"
        assert body["score"] == pytest.approx(score_of(12, 42), abs=1e-7)
        assert body["label"] == 0
        committed = datetime.fromisoformat(body["committed_at"])
        assert committed.tzinfo is not None
        assert 0 <= body["age_seconds"] <= (datetime.now(UTC) - committed).total_seconds() + 1
        assert r.headers["content-type"] == "application/json"


def test_as_of_version_and_alias_reads(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url)
    with api.client(make_key(seeded.store, "*")) as c:
        old = c.get("/v1/models/churn/predictions/7", params={"ds": DS1.isoformat()}).json()
        assert (old["version"], old["ds"], salt_of(old["score"])) == (1, DS1.isoformat(), 11)
        challenger = c.get("/v1/models/churn/predictions/7", params={"alias": "challenger"}).json()
        assert (challenger["version"], challenger["ds"], salt_of(challenger["score"])) == (2, DS2.isoformat(), 22)
        by_version = c.get("/v1/models/churn/predictions/7", params={"version": 2, "ds": DS2.isoformat()}).json()
        assert by_version["run_id"] == seeded.runs[("churn", 2, DS2)]
        # Known model, but nothing committed there: a 404 that says what is missing.
        r = c.get("/v1/models/churn/predictions/7", params={"version": 2, "ds": DS1.isoformat()})
        assert r.status_code == 404
        assert "no committed partition" in r.json()["detail"]
        assert "no version 9" in c.get("/v1/models/churn/predictions/7", params={"version": 9}).json()["detail"]
        assert "'canary' alias" in c.get("/v1/models/churn/predictions/7", params={"alias": "canary"}).json()["detail"]
        missing = c.get("/v1/models/churn/predictions/no-such-id")
        assert missing.status_code == 404
        assert "no prediction for entity 'no-such-id'" in missing.json()["detail"]


def test_batch_reads_one_partition_in_request_order(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url)
    with api.client(make_key(seeded.store, "churn")) as c:
        ids = ["5", "3", "nope", "5", str(ROWS)]
        r = c.post("/v1/models/churn/predictions/batch", json={"ids": ids})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["version"], body["ds"]) == (1, DS2.isoformat())
        assert body["run_id"] == seeded.runs[("churn", 1, DS2)]
        assert [p["entity_id"] for p in body["predictions"]] == ["5", "3", str(ROWS)]
        assert body["missing"] == ["nope"]
        assert {salt_of(p["score"]) for p in body["predictions"]} == {12}
        old = c.post(
            "/v1/models/churn/predictions/batch", params={"ds": DS1.isoformat()}, json={"ids": ["1", "2"]}
        ).json()
        assert old["ds"] == DS1.isoformat()
        assert {salt_of(p["score"]) for p in old["predictions"]} == {11}
        full = c.post("/v1/models/churn/predictions/batch", json={"ids": [str(i) for i in range(1, 1001)]})
        assert full.status_code == 200
        assert len(full.json()["predictions"]) == ROWS
        assert len(full.json()["missing"]) == 1000 - ROWS


def test_models_lists_live_versions_and_freshness_within_the_keys_scope(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url)
    with api.client(make_key(seeded.store, "*")) as c:
        models = {m["model"]: m for m in c.get("/v1/models").json()["models"]}
    assert set(models) == {"churn", "fraud"}
    churn = models["churn"]
    assert (churn["version"], churn["ds"], churn["rows"]) == (1, DS2.isoformat(), ROWS)
    assert churn["aliases"] == {"champion": 1, "challenger": 2}
    assert 0 <= churn["age_seconds"] < 600
    with api.client(make_key(seeded.store, "fraud")) as c:
        assert [m["model"] for m in c.get("/v1/models").json()["models"]] == ["fraud"]


def test_health_readiness_and_metrics(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url, freshness_limit_hours=1)
    with api.client() as c:  # no key: probes and scrapes are unauthenticated
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        assert ready.json()["models"] == 2
    with api.client(make_key(seeded.store, "*")) as c:
        assert c.get("/v1/models/churn/predictions/1").status_code == 200
        assert c.get("/v1/models/churn/predictions/unknown").status_code == 404
        assert c.post("/v1/models/churn/predictions/batch", json={"ids": ["1"]}).status_code == 200
        text = c.get("/metrics").text
    single = "/v1/models/{model}/predictions/{entity_id}"
    assert f'nightshift_api_requests_total{{method="GET",route="{single}",status="200"}}' in text
    assert f'route="{single}",status="404"' in text
    assert "nightshift_api_request_duration_seconds_bucket" in text
    assert 'nightshift_api_prediction_age_seconds{model="churn"}' in text
    assert 'nightshift_api_live_version{model="churn"} 1.0' in text
    assert "nightshift_api_database_up 1.0" in text


def test_readiness_fails_when_a_live_model_is_stale(seeded: Seeded, serve: Any) -> None:
    import sqlalchemy as sa

    with seeded.store.begin() as conn:  # fraud's only partition was committed two days ago
        conn.execute(
            sa.text("UPDATE partitions SET committed_at = :t WHERE model = 'fraud'"),
            {"t": datetime(2000, 1, 1, tzinfo=UTC)},
        )
    api = serve(seeded.url, freshness_limit_hours=36)
    with api.client() as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {
        "freshness_limit_hours": 36.0,
        "status": "not ready",
        "database": "ok",
        "models": 2,
        "stale": 1,
    }


def test_a_new_commit_is_served_and_its_freshness_is_exact(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url, resolve_cache_ttl_s=60)  # a long TTL: the cache must not hide a re-commit
    with api.client(make_key(seeded.store, "*")) as c:
        before = c.get("/v1/models/churn/predictions/9").json()
        run = commit_partition(seeded.store, "churn", 1, DS2, salt=13)  # re-score the same (version, ds)
        after = c.get("/v1/models/churn/predictions/9").json()
    assert after["run_id"] == run != before["run_id"]
    assert salt_of(after["score"]) == 13
    assert after["committed_at"] > before["committed_at"]


def test_docs_can_be_switched_off(seeded: Seeded, serve: Any) -> None:
    on = serve(seeded.url)
    off = serve(seeded.url, docs_enabled=False)
    with on.client() as c:
        assert c.get("/openapi.json").status_code == 200
        assert c.get("/docs").status_code == 200
    with off.client() as c:
        assert c.get("/openapi.json").status_code == 404
        assert c.get("/docs").status_code == 404
    with off.client(make_key(seeded.store, "*")) as c:
        assert c.get("/v1/models/churn/predictions/1").status_code == 200


def test_no_write_routes(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url)
    schema = api.app.openapi()
    methods = {m for ops in schema["paths"].values() for m in ops}
    assert methods <= {"get", "post"}
    # The one POST is the batch read; nothing else accepts a body.
    assert [p for p, ops in schema["paths"].items() if "post" in ops] == ["/v1/models/{model}/predictions/batch"]
    with api.client(make_key(seeded.store, "*")) as c:
        for method in ("PUT", "PATCH", "DELETE"):
            assert c.request(method, "/v1/models/churn/predictions/1").status_code == 405


@pytest.mark.slow
def test_serves_a_partition_scored_by_the_real_pipeline(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, serve: Any
) -> None:
    from nightshift.db import open_store
    from nightshift.scoring import score_partition
    from tests.conftest import SCORE_DS

    settings = make_settings(store_url)
    registered(settings)
    summary = score_partition(settings, "churn", SCORE_DS, client=dask_client)
    store = open_store(settings)
    expected = {p.entity_id: p for p in store.lookup("churn", 1, SCORE_DS, ["1", "2", "3"])}
    api = serve(store_url)
    with api.client(make_key(store, "churn")) as c:
        r = c.post("/v1/models/churn/predictions/batch", json={"ids": ["1", "2", "3"]})
    store.dispose()
    body = r.json()
    assert (body["version"], body["ds"], body["run_id"]) == (1, SCORE_DS.isoformat(), summary.run_id)
    for p in body["predictions"]:
        assert p["score"] == pytest.approx(expected[p["entity_id"]].score, abs=1e-6)
        assert p["label"] == expected[p["entity_id"]].label


@pytest.mark.parametrize(
    "url", ["postgresql://root@127.0.0.1:1/nowhere", "sqlite:////nonexistent/dir/store.db"], ids=["pg", "sqlite"]
)
def test_without_the_database_it_starts_not_ready_and_answers_503(url: str, serve: Any) -> None:
    api = serve(url, db_timeout_s=1)
    with api.client() as c:
        assert c.get("/healthz").status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["database"] == "unreachable"
        assert "nightshift_api_database_up 0.0" in c.get("/metrics").text
    key = "nsk_0123456789ab_" + "A" * 43  # well-formed: the key lookup itself needs the database
    with api.client(key) as c:
        r = c.get("/v1/models/churn/predictions/1")
        assert (r.status_code, r.json(), r.headers["retry-after"]) == (503, {"detail": "database unavailable"}, "1")


def test_refuses_to_start_on_another_schema_revision(seeded: Seeded, serve: Any) -> None:
    import sqlalchemy as sa

    with seeded.store.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0001'"))
    with pytest.raises(RuntimeError, match="did not start"):
        serve(seeded.url)
