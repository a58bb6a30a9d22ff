"""Readers hammering the API while commits replace a partition and the champion moves: only complete sets of one run."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.api.conftest import DS2, ROWS, Seeded, commit_partition, make_key

pytestmark = pytest.mark.timeout(300)

SALTS_V1 = [41, 42, 43, 44, 45, 46]
SALT_V2 = 77


def salt_of(score: float) -> int:
    return round(score * 1_000_000) // 1000


#: The answer cache off (the default) and on: neither may show a mix or lose an answer.
ANSWER_CACHE = pytest.mark.parametrize("cache_entries", [0, 100_000], ids=["cache-off", "cache-on"])


@ANSWER_CACHE
def test_readers_see_old_or_new_set_never_a_mix(seeded: Seeded, serve: Any, cache_entries: int) -> None:
    api = serve(seeded.url, resolve_cache_ttl_s=0.05, cache_entries=cache_entries)
    key = make_key(seeded.store, "churn")
    run_salt: dict[int, int] = {
        seeded.runs[("churn", 1, DS2)]: 12,
        seeded.runs[("churn", 2, DS2)]: 22,
    }
    version_of_salt = {12: 1, 22: 2, SALT_V2: 2, **dict.fromkeys(SALTS_V1, 1)}
    stop = threading.Event()
    failures: list[str] = []
    seen: list[tuple[int, int]] = []
    ids = [str(i) for i in range(1, ROWS + 1, 3)]

    def check(body: dict[str, Any], scores: list[float]) -> None:
        salts = {salt_of(s) for s in scores}
        if len(salts) != 1:
            failures.append(f"mixed runs in one answer: {sorted(salts)} (run {body['run_id']})")
            return
        (salt,) = salts
        if version_of_salt.get(salt) != body["version"]:
            failures.append(f"version {body['version']} answered with scores of salt {salt}")
        seen.append((body["run_id"], salt))

    def batch_reader() -> None:
        with api.client(key) as c:
            while not stop.is_set():
                r = c.post("/v1/models/churn/predictions/batch", json={"ids": ids})
                if r.status_code != 200:
                    failures.append(f"batch {r.status_code}: {r.text[:200]}")
                    continue
                body = r.json()
                if body["missing"]:
                    failures.append(f"incomplete set: {len(body['missing'])} ids missing (run {body['run_id']})")
                check(body, [p["score"] for p in body["predictions"]])

    def single_reader() -> None:
        with api.client(key) as c:
            n = 0
            while not stop.is_set():
                n += 1
                r = c.get(f"/v1/models/churn/predictions/{n % ROWS + 1}")
                if r.status_code != 200:
                    failures.append(f"single {r.status_code}: {r.text[:200]}")
                    continue
                check(r.json(), [r.json()["score"]])

    readers = [threading.Thread(target=batch_reader), threading.Thread(target=single_reader)]
    for t in readers:
        t.start()
    try:
        # Both readers answer before anything changes (their clients start slowly on a loaded machine).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(seen) < 2 and not failures:
            stop.wait(0.05)
        # Replace (churn, v1, DS2) again and again, then re-score DS2 with v2 and move the champion.
        for salt in SALTS_V1:
            run_salt[commit_partition(seeded.store, "churn", 1, DS2, salt=salt)] = salt
        run_salt[commit_partition(seeded.store, "churn", 2, DS2, salt=SALT_V2)] = SALT_V2
        seeded.registry.set_alias("churn", "champion", 2, reason="test switch", by="tests")
        # The old version keeps changing underneath; nobody reading the champion may notice.
        run_salt[commit_partition(seeded.store, "churn", 1, DS2, salt=SALTS_V1[1])] = SALTS_V1[1]
        # Read on until the readers have answered from the new champion (a loaded machine can starve them for
        # a while; a fixed second was flaky), at most 60 s: an API stuck on an old run still fails below.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(salt == SALT_V2 for _, salt in list(seen)):
            stop.wait(0.2)
        stop.wait(0.5)
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=60)
    assert not failures, failures[:10]
    assert len(seen) > 20
    for run_id, salt in seen:
        assert run_salt.get(run_id) == salt, (run_id, salt)
    # Readers saw the replacement happen: the new champion's run, and an older one before it.
    assert any(salt == SALT_V2 for _, salt in seen), sorted({salt for _, salt in seen})
    assert len({run for run, _ in seen}) >= 2
    with api.client(key) as c:
        final = c.get("/v1/models/churn/predictions/1").json()
    assert (final["version"], salt_of(final["score"])) == (2, SALT_V2)


@ANSWER_CACHE
def test_lookups_answer_throughout_a_promotion_to_a_version_without_predictions(
    seeded: Seeded, serve: Any, cache_entries: int
) -> None:
    """A champion promoted before it has a committed partition must not take the API down: the version it
    replaced keeps answering (and /readyz stays ready) until the new champion's first partition commits."""
    from tests.api.conftest import register_version

    key = make_key(seeded.store, "churn")
    api = serve(seeded.url, cache_entries=cache_entries)
    v3 = register_version(seeded.registry, "churn")
    statuses: list[tuple[int, int | None]] = []
    ready: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        with api.client(key) as c:
            n = 0
            while not stop.is_set():
                n += 1
                r = c.get(f"/v1/models/churn/predictions/{n % ROWS + 1}")
                statuses.append((r.status_code, r.json().get("version") if r.status_code == 200 else None))
                if n % 10 == 0:
                    ready.append(c.get("/readyz").status_code)

    t = threading.Thread(target=reader)
    t.start()
    try:
        stop.wait(0.3)
        # What `nightshift promote` (and a direct rollout) does: champion → v3, previous → v1, one transaction.
        seeded.registry.switch_aliases("churn", {"champion": v3, "previous": 1}, reason="test promotion", by="tests")
        stop.wait(0.5)
        commit_partition(seeded.store, "churn", v3, DS2, salt=33)  # v3's first night commits
        stop.wait(0.5)
    finally:
        stop.set()
        t.join(timeout=60)
    assert statuses, "no lookups were made"
    assert {code for code, _ in statuses} == {200}, [s for s in statuses if s[0] != 200][:5]
    assert set(ready) == {200}
    versions = [v for _, v in statuses]
    # v1 answered before and right after the switch; v3 from its first commit on, and never v1 again after.
    assert versions[0] == 1
    assert versions[-1] == v3
    first_v3 = versions.index(v3)
    assert set(versions[first_v3:]) == {v3}
