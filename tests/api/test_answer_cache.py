"""The answer cache (per-worker LRU, shared Redis): same bytes as the database, never a replaced set, counted."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nightshift.api.cache import AnswerCache, decode, encode
from tests.api.conftest import DS1, DS2, Seeded, commit_partition, make_key
from tests.conftest import IN_CI

pytestmark = pytest.mark.timeout(300)

REDIS_URL = os.environ.get("NIGHTSHIFT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def salt_of(score: float) -> int:
    return round(score * 1_000_000) // 1000


def _redis_reachable() -> str | None:
    try:
        import redis
    except ImportError:
        return "the `redis` Python package is not installed"
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
        client.ping()
        client.close()
    except Exception as exc:  # any failure means: no Redis to test with
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own (the keys are deleted afterwards); skips without Redis."""
    why = _redis_reachable()
    if why is not None:
        msg = f"Redis at {REDIS_URL} is not usable ({why})"
        if IN_CI:
            pytest.fail(f"{msg}: under CI=true the Redis tests must run, not skip")
        pytest.skip(f"{msg}; set NIGHTSHIFT_TEST_REDIS_URL to run these tests")
    import redis

    prefix = f"nstest:{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def metric(api: Any, name: str, **labels: str) -> float:
    with api.client() as c:
        text = c.get("/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


_AGE = re.compile(rb'"age_seconds":[-0-9.e+]+')


def same_bytes(body: bytes) -> bytes:
    """The body with its age (seconds since the commit, at the moment of answering) fixed."""
    return _AGE.sub(b'"age_seconds":0', body)


TIERS = {
    "memory": {"cache_entries": 10_000},
    "redis": {"cache_entries": 0},  # Redis alone: every hit comes from the shared tier
    "memory+redis": {"cache_entries": 10_000},
}


def tier_settings(tier: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    out: dict[str, Any] = dict(TIERS[tier])
    if "redis" in tier:
        out.update(redis_url=REDIS_URL, redis_prefix=request.getfixturevalue("redis_prefix"))
    return out


# -- unit: values and bounds ----------------------------------------------------------------------


def test_encoded_answers_round_trip_exactly() -> None:
    for value in [
        (0.1, 1, None),
        (0.012041999958455563, 0, None),
        (1.0, None, 123456.78901234567),
        (0.5, 2, [0.25, 0.5, 0.25]),
        (3.4028234663852886e38, None, -1e-300),
        None,
    ]:
        assert decode(encode(value)) == value
    assert encode(None) == b"-"


def test_the_cache_is_bounded_keeps_what_is_read_and_is_keyed_by_run() -> None:
    asyncio.run(_bounded_and_keyed_by_run())


async def _bounded_and_keyed_by_run() -> None:
    hit = (0.25, 1, None)
    cache = AnswerCache(4)  # two generations of two
    cache.put_many((7, 100), {"a": hit, "gone": None})
    hits, missing = await cache.get_many((7, 100), ["a", "gone", "d"])
    assert hits == {"a": hit}  # "gone" is known to have no row in that run: neither a hit nor missing
    assert missing == ["d"]
    # Another run (or the same run id committed at another time: a re-created store) shares nothing.
    assert (await cache.get_many((8, 100), ["a"]))[1] == ["a"]
    assert (await cache.get_many((7, 101), ["a"]))[1] == ["a"]
    # Least recently used goes first: x is read again, y is not; then z comes in.
    cache = AnswerCache(4)
    cache.put_many((1, 1), {"x": hit})
    cache.put_many((1, 1), {"y": hit})
    assert (await cache.get_many((1, 1), ["x"]))[1] == []
    cache.put_many((1, 1), {"z": hit})
    hits, missing = await cache.get_many((1, 1), ["x", "y", "z"])
    assert (sorted(hits), missing) == (["x", "z"], ["y"])
    for i in range(100):
        cache.put_many((2, 2), {str(i): hit})
        assert len(cache) <= 4
    assert (cache.hits, cache.misses) == (3, 1)


# -- over HTTP --------------------------------------------------------------------------------------


def _single(c: Any, entity: str, **params: Any) -> Any:
    return c.get(f"/v1/models/churn/predictions/{entity}", params=params or None)


def _batch(c: Any, ids: list[str], **params: Any) -> Any:
    return c.post("/v1/models/churn/predictions/batch", json={"ids": ids}, params=params or None)


@pytest.mark.parametrize("tier", list(TIERS))
def test_cached_answers_are_byte_identical_to_the_database(
    seeded: Seeded, serve: Any, tier: str, request: pytest.FixtureRequest
) -> None:
    plain = serve(seeded.url, cache_entries=0)
    cached = serve(seeded.url, **tier_settings(tier, request))
    key = make_key(seeded.store, "*")
    ids = ["1", "2", "42", "no-such-id", "499"]
    selections: list[dict[str, Any]] = [{}, {"ds": DS1.isoformat()}, {"alias": "challenger"}, {"version": 2}]
    hit_metric = "nightshift_api_answer_cache_total"
    tier_label = "redis" if tier == "redis" else "memory"
    with plain.client(key) as p, cached.client(key) as c:
        for attempt in range(3):  # cold, then warm (Redis is written in the background: a third pass)
            for params in selections:
                for entity in ids:
                    want, got = _single(p, entity, **params), _single(c, entity, **params)
                    assert got.status_code == want.status_code, (entity, params)
                    assert same_bytes(got.content) == same_bytes(want.content), (entity, params, attempt)
                want, got = _batch(p, ids, **params), _batch(c, ids, **params)
                assert same_bytes(got.content) == same_bytes(want.content), (params, attempt)
            if attempt == 1 and tier == "redis":
                time.sleep(0.2)
    assert metric(cached, hit_metric, tier=tier_label, result="hit") > 0
    assert metric(plain, hit_metric) == 0  # cache off: no series


def test_workers_share_answers_through_redis(seeded: Seeded, serve: Any, redis_prefix: str) -> None:
    """Two API processes (workers) on one Redis: what one read from the database, the other answers from Redis."""
    shared = {"redis_url": REDIS_URL, "redis_prefix": redis_prefix}
    first = serve(seeded.url, **shared)
    second = serve(seeded.url, cache_entries=0, **shared)  # no LRU: its hits can only come from Redis
    plain = serve(seeded.url, cache_entries=0)
    key = make_key(seeded.store, "*")
    ids = [str(i) for i in range(1, 101)]
    with first.client(key) as a, second.client(key) as b, plain.client(key) as p:
        assert _batch(a, ids).status_code == 200
        deadline = time.monotonic() + 10
        while metric(second, "nightshift_api_answer_cache_total", tier="redis", result="hit") < len(ids):
            assert time.monotonic() < deadline, "the second worker never read the first one's answers from Redis"
            got = _batch(b, ids)
        assert same_bytes(got.content) == same_bytes(_batch(p, ids).content)
        assert same_bytes(_single(b, "7").content) == same_bytes(_single(p, "7").content)


@pytest.mark.parametrize("tier", list(TIERS))
def test_a_recommit_is_never_answered_from_the_cache(
    seeded: Seeded, serve: Any, tier: str, request: pytest.FixtureRequest
) -> None:
    api = serve(seeded.url, **tier_settings(tier, request))
    key = make_key(seeded.store, "churn")
    hot = [str(i) for i in range(1, 31)]
    with api.client(key) as c:
        for salt in (51, 52, 53):
            for _ in range(3):  # warm every tier with the current run
                assert _batch(c, hot).status_code == 200
                for entity in hot[:10]:
                    assert _single(c, entity).status_code == 200
                time.sleep(0.05)  # Redis writes land in the background
            run_id = commit_partition(seeded.store, "churn", 1, DS2, salt=salt)
            # The very first answers after the commit returned: the new run, every id, every route.
            body = _batch(c, hot).json()
            assert body["run_id"] == run_id
            assert {salt_of(p["score"]) for p in body["predictions"]} == {salt}
            for entity in hot[:10]:
                single = _single(c, entity).json()
                assert (single["run_id"], salt_of(single["score"])) == (run_id, salt), (tier, entity)
    hits = metric(api, "nightshift_api_answer_cache_total", result="hit")
    assert hits > 0, "the cache was never used: this test would prove nothing"


@pytest.mark.parametrize("tier", ["memory", "memory+redis"])
def test_concurrent_lookups_during_commits_never_see_a_replaced_set(
    seeded: Seeded, serve: Any, tier: str, request: pytest.FixtureRequest
) -> None:
    """Hot entities are read all the time while the partition is re-committed: every answer is one complete
    run, and no request that started after a commit returned is answered from the run it replaced."""
    api = serve(seeded.url, **tier_settings(tier, request))
    key = make_key(seeded.store, "churn")
    salt_of_run = {seeded.runs[("churn", 1, DS2)]: 12}
    order = [seeded.runs[("churn", 1, DS2)]]  # runs in commit order
    committed: list[tuple[float, int]] = []  # (when the commit returned, its run)
    answers: list[tuple[float, int, set[int]]] = []  # (when the request started, run, salts seen)
    failures: list[str] = []
    stop = threading.Event()
    hot = [str(i) for i in range(1, 21)]

    def batch_reader() -> None:
        with api.client(key) as c:
            while not stop.is_set():
                t = time.monotonic()
                r = _batch(c, hot)
                if r.status_code != 200 or r.json()["missing"]:
                    failures.append(f"batch {r.status_code}: {r.text[:200]}")
                    continue
                body = r.json()
                answers.append((t, body["run_id"], {salt_of(p["score"]) for p in body["predictions"]}))

    def single_reader(offset: int) -> None:
        with api.client(key) as c:
            n = offset
            while not stop.is_set():
                n += 1
                t = time.monotonic()
                r = _single(c, hot[n % len(hot)])
                if r.status_code != 200:
                    failures.append(f"single {r.status_code}: {r.text[:200]}")
                    continue
                body = r.json()
                answers.append((t, body["run_id"], {salt_of(body["score"])}))

    readers = [threading.Thread(target=batch_reader)] + [
        threading.Thread(target=single_reader, args=(i * 7,)) for i in range(3)
    ]
    for t in readers:
        t.start()
    try:
        stop.wait(0.5)
        for salt in (61, 62, 63, 64, 65):
            run_id = commit_partition(seeded.store, "churn", 1, DS2, salt=salt)
            committed.append((time.monotonic(), run_id))
            salt_of_run[run_id] = salt
            order.append(run_id)
            stop.wait(0.4)
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=60)
    assert not failures, failures[:10]
    assert len(answers) > 50
    rank = {run: i for i, run in enumerate(order)}
    for started, run_id, salts in answers:
        assert salts == {salt_of_run[run_id]}, f"run {run_id} answered with salts {salts}"
        # The newest run committed before this request started: nothing older may answer it.
        newest = max((rank[r] for done, r in committed if done < started), default=0)
        assert rank[run_id] >= newest, f"a request started after run {order[newest]} committed got run {run_id}"
    assert len({run for _, run, _ in answers}) >= 4  # the readers saw the commits happen
    assert metric(api, "nightshift_api_answer_cache_total", tier="memory", result="hit") > 0


def test_a_redis_that_is_down_degrades_to_the_database(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url, cache_entries=0, redis_url="redis://127.0.0.1:9/0", redis_timeout_s=0.05)
    key = make_key(seeded.store, "*")
    with api.client(key) as c:
        r = _single(c, "42")
        assert r.status_code == 200
        assert salt_of(r.json()["score"]) == 12
        assert _batch(c, ["1", "2"]).status_code == 200
        ready = c.get("/readyz")
    assert ready.status_code in (200, 503)  # readiness is about the database, not the cache
    assert metric(api, "nightshift_api_answer_cache_redis_errors_total") >= 1
