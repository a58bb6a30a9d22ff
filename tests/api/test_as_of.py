"""`?as_of=T`: what the lookup API answered at a past moment, on SQLite and PostgreSQL.

One model's history is built step by step (alias set, a day committed, re-scored, the champion promoted
before its version has a partition, the new version's first commit), recording at each step what a live
client got. Afterwards each step is asked for with `as_of`: the same version, run, day and scores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa

from nightshift.db.engine import utcnow
from nightshift.db.staging import stage_chunk
from nightshift.db.store import Store
from nightshift.models.registry import Registry
from tests.api.conftest import DS1, DS2, ROWS, Seeded, make_key, register_version, score_of
from tests.api.test_answer_cache import TIERS, same_bytes, tier_settings
from tests.api.test_answer_cache import redis_prefix as redis_prefix  # the fixture tier_settings asks for

pytestmark = pytest.mark.timeout(300)

#: Replaced runs keep their rows this long (the model's `history_days`).
HISTORY_DAYS = 30.0
#: The entities every step records: found ones, and one no run has.
ENTITIES = ("7", "42", "no-such-id")
BATCH = ["1", "7", "no-such-id", "42"]


def salt_of(score: float) -> int:
    """Which run wrote a score (see conftest.score_of)."""
    return round(score * 1_000_000) // 1000


def commit_day(store: Store, version: int, ds: date, salt: int, *, history_days: float = HISTORY_DAYS) -> int:
    """conftest.commit_partition, keeping the run it replaces for `history_days` (as scoring does)."""
    ids = pa.array([str(i) for i in range(1, ROWS + 1)], pa.string())
    scores = np.array([score_of(salt, i) for i in range(1, ROWS + 1)], dtype=np.float32)
    labels = (np.arange(1, ROWS + 1) % 2).astype(np.int16)
    with store.run_lock("churn", ds, 60):
        run_id = store.start_run("churn", version, ds, input_rows=ROWS, history_days=history_days)
        stage_chunk(store.url, run_id, "synthetic", ids, scores, labels)
        store.commit_run(run_id, ROWS, history_days=history_days)
    return run_id


def moment() -> datetime:
    """Now, strictly after what came before and strictly before what comes next (µs timestamps)."""
    time.sleep(0.002)
    at = utcnow()
    time.sleep(0.002)
    return at


@dataclass
class Step:
    """A moment of the history, and what the live API answered right then."""

    name: str
    at: datetime
    singles: dict[tuple[str, str], httpx.Response] = field(default_factory=dict)
    batches: dict[str, httpx.Response] = field(default_factory=dict)


#: The selections every step records (query parameters besides as_of).
SELECTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "ds2": {"ds": DS2.isoformat()},
    "ds1": {"ds": DS1.isoformat()},
    "v1": {"version": 1},
    "v1-ds2": {"version": 1, "ds": DS2.isoformat()},
    "v2": {"version": 2},
}


@dataclass
class History:
    url: str
    store: Store
    registry: Registry
    key: str
    runs: dict[str, int]
    steps: list[Step]

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


def _record(c: httpx.Client, name: str) -> Step:
    step = Step(name, moment())
    for sel, params in SELECTIONS.items():
        for entity in ENTITIES:
            step.singles[(sel, entity)] = c.get(f"/v1/models/churn/predictions/{entity}", params=params)
        step.batches[sel] = c.post("/v1/models/churn/predictions/batch", params=params, json={"ids": BATCH})
    return step


@pytest.fixture
def history(store_url: str, tmp_path: Path, serve: Any) -> Iterator[History]:
    """churn's history, each step recorded live (by a server with every cache off) right after it happened:

    - `registered`: v1 and v2 registered, no alias yet
    - `aliased`: champion → v1, nothing committed
    - `first`: v1 DS1 (salt 11) and v1 DS2 (salt 12) committed
    - `rescored`: v1 DS2 re-scored (salt 13): run `v1-ds2` replaced by `v1-ds2-rescored`
    - `promoted`: champion → v2, previous → v1 (one switch); v2 has no partition yet
    - `v2`: v2 DS2 committed (salt 22)
    """
    store = Store(store_url)
    registry = Registry(store, str(tmp_path / "models"))
    register_version(registry, "churn")
    register_version(registry, "churn")
    key = make_key(store, "*")
    api = serve(store_url, cache_entries=0, coalesce_lookups=False)
    runs: dict[str, int] = {}
    steps: list[Step] = []
    with api.client(key) as c:
        steps.append(_record(c, "registered"))
        registry.set_alias("churn", "champion", 1, reason="tests", by="tests")
        steps.append(_record(c, "aliased"))
        runs["v1-ds1"] = commit_day(store, 1, DS1, 11)
        runs["v1-ds2"] = commit_day(store, 1, DS2, 12)
        steps.append(_record(c, "first"))
        runs["v1-ds2-rescored"] = commit_day(store, 1, DS2, 13)
        steps.append(_record(c, "rescored"))
        registry.switch_aliases("churn", {"champion": 2, "previous": 1}, reason="tests", by="tests")
        steps.append(_record(c, "promoted"))
        runs["v2-ds2"] = commit_day(store, 2, DS2, 22)
        steps.append(_record(c, "v2"))
    yield History(store_url, store, registry, key, runs, steps)
    store.dispose()


def _without_time(body: dict[str, Any]) -> dict[str, Any]:
    """An answer without the members that depend on when it was asked (age, the as_of echo)."""
    out = {k: v for k, v in body.items() if k not in ("age_seconds", "as_of")}
    if isinstance(out.get("canary"), dict):
        out["canary"] = _without_time(out["canary"])
    return out


def _same_answer(then: httpx.Response, replay: httpx.Response, what: Any) -> None:
    assert replay.status_code == then.status_code, (what, then.text, replay.text)
    if then.status_code == 200:
        assert _without_time(replay.json()) == _without_time(then.json()), what


def _single(c: httpx.Client, entity: str, **params: Any) -> httpx.Response:
    return c.get(f"/v1/models/churn/predictions/{entity}", params=params or None)


def _batch(c: httpx.Client, ids: list[str], **params: Any) -> httpx.Response:
    return c.post("/v1/models/churn/predictions/batch", json={"ids": ids}, params=params or None)


# -- what a client got then is what as_of answers --------------------------------------------------------


def test_every_recorded_moment_is_answered_as_it_was_then(history: History, serve: Any) -> None:
    """Each step's live answers (single and batch, every selection, found and missing entities, 404s) are
    what `as_of=<that step>` answers afterwards, with the cache on or off."""
    for api in (serve(history.url, cache_entries=0), serve(history.url, cache_entries=100_000)):
        with api.client(history.key) as c:
            for step in history.steps:
                at = step.at.isoformat()
                for (sel, entity), then in step.singles.items():
                    replay = _single(c, entity, **SELECTIONS[sel], as_of=at)
                    _same_answer(then, replay, (step.name, sel, entity))
                    if replay.status_code == 200:
                        assert replay.json()["as_of"] == at
                for sel, then in step.batches.items():
                    _same_answer(then, _batch(c, BATCH, **SELECTIONS[sel], as_of=at), (step.name, sel, "batch"))


def test_a_rescored_day_answers_the_replaced_run_before_the_rescore_and_the_new_one_after(
    history: History, serve: Any
) -> None:
    runs = history.runs
    first, rescored, promoted = (history.step(n).at.isoformat() for n in ("first", "rescored", "promoted"))
    api = serve(history.url)
    with api.client(history.key) as c:
        then = _single(c, "42", as_of=first).json()
        assert (then["version"], then["ds"], then["run_id"]) == (1, DS2.isoformat(), runs["v1-ds2"])
        assert salt_of(then["score"]) == 12  # v1's original scores
        # It names the run and when that run was committed, and its age at that moment.
        committed = datetime.fromisoformat(then["committed_at"])
        assert committed < history.step("first").at
        assert then["age_seconds"] == pytest.approx((history.step("first").at - committed).total_seconds(), abs=1e-3)
        after = _single(c, "42", as_of=rescored).json()
        assert (after["run_id"], salt_of(after["score"])) == (runs["v1-ds2-rescored"], 13)
        # The day asked for by ds, and v1 by number: the run that served that day at that moment.
        for params in ({"ds": DS2.isoformat()}, {"version": 1, "ds": DS2.isoformat()}, {"version": 1}):
            assert _single(c, "42", **params, as_of=first).json()["run_id"] == runs["v1-ds2"], params
            assert _single(c, "42", **params, as_of=rescored).json()["run_id"] == runs["v1-ds2-rescored"], params
        # Promoted before v2 had a partition: v1 (previous) kept answering, as the live API did.
        during = _single(c, "42", as_of=promoted).json()
        assert (during["version"], during["run_id"]) == (1, runs["v1-ds2-rescored"])
        # Now, and any moment not yet past: v2's run, exactly the live answer (no as_of member).
        live = _single(c, "42")
        assert (live.json()["version"], live.json()["run_id"], salt_of(live.json()["score"])) == (2, runs["v2-ds2"], 22)
        assert _single(c, "42", as_of=utcnow().isoformat()).json()["run_id"] == runs["v2-ds2"]
        future = _single(c, "42", as_of=(utcnow() + timedelta(days=1)).isoformat())
        assert "as_of" not in future.json()
        assert same_bytes(future.content) == same_bytes(live.content)
        for year in ("9999-12-31T23:59:59-05:00", "9999-12-31T23:59:59.999999"):
            assert _single(c, "42", as_of=year).json()["run_id"] == runs["v2-ds2"], year
        # A batch: one run for all its ids, the one of that moment.
        batch = _batch(c, ["1", "42", "nope"], as_of=first).json()
        assert (batch["run_id"], batch["missing"], batch["as_of"]) == (runs["v1-ds2"], ["nope"], first)
        assert {salt_of(p["score"]) for p in batch["predictions"]} == {12}
        assert {p["version"] for p in batch["predictions"]} == {1}


def test_naive_timestamps_are_utc_and_offsets_are_honoured(history: History, serve: Any) -> None:
    at = history.step("first").at  # v1-ds2 served from just before this until the re-score
    api = serve(history.url)
    forms = [
        at.isoformat(),  # +00:00
        at.replace(tzinfo=None).isoformat(),  # naive: UTC
        at.replace(tzinfo=None).isoformat(sep=" "),
        at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        at.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat(),
        at.astimezone(timezone(timedelta(hours=-7))).strftime("%Y-%m-%dT%H:%M:%S.%f-0700"),
    ]
    with api.client(history.key) as c:
        for text in forms:
            r = _single(c, "42", as_of=text)
            assert r.status_code == 200, (text, r.text)
            assert r.json()["run_id"] == history.runs["v1-ds2"], text
            assert r.json()["as_of"] == at.isoformat(), text  # echoed in UTC
        naive_later = history.step("rescored").at.replace(tzinfo=None).isoformat()
        assert _single(c, "42", as_of=naive_later).json()["run_id"] == history.runs["v1-ds2-rescored"]


# -- 404, 410, 422 -----------------------------------------------------------------------------------------


def test_before_anything_was_committed_is_a_404_naming_the_model_and_the_moment(history: History, serve: Any) -> None:
    api = serve(history.url)
    registered, aliased = history.step("registered").at, history.step("aliased").at
    with api.client(history.key) as c:
        r = _single(c, "42", as_of=registered.isoformat())
        assert r.status_code == 404
        assert r.json()["detail"] == f"model 'churn' had no 'champion' alias as of {registered.isoformat()}"
        r = _single(c, "42", as_of=aliased.isoformat())
        assert r.status_code == 404
        assert r.json()["detail"] == f"nothing was committed for churn alias 'champion' as of {aliased.isoformat()}"
        early = "2001-01-01T00:00:00+00:00"
        r = _batch(c, ["42"], version=1, ds=DS1.isoformat(), as_of="2001-01-01T00:00:00Z")
        assert r.status_code == 404
        assert r.json()["detail"] == f"nothing was committed for churn v1 ds={DS1} as of {early}"
        assert _single(c, "42", as_of="0001-01-01T00:00:00+01:00").status_code == 404  # before datetime's range
        # Unknown models look the same with or without as_of.
        assert _single(c, "42", as_of=early).status_code == 404
        unknown = c.get("/v1/models/nope/predictions/42", params={"as_of": early})
        assert (unknown.status_code, unknown.json()) == (404, {"detail": "model 'nope' not found"})
        # An entity the run of that moment had no row for.
        r = _single(c, "no-such-id", as_of=history.step("first").at.isoformat())
        assert r.status_code == 404
        assert "no prediction for entity 'no-such-id' in churn v1 ds=2026-11-18 as of" in r.json()["detail"]


def test_a_run_whose_rows_were_removed_answers_410(history: History, serve: Any) -> None:
    """Outside the history window the replaced run's rows are gone: as_of says so (410), never 'no such entity'."""
    store, runs = history.store, history.runs
    first = history.step("first").at.isoformat()
    api = serve(history.url)
    with api.client(history.key) as c:
        assert _single(c, "42", as_of=first).status_code == 200
        # gc with the model's window over: the replaced v1 DS2 run goes.
        report = store.gc("churn", history_days={"churn": 0})
        assert runs["v1-ds2"] in {r["run_id"] for r in report.runs}
        assert store.count_predictions(runs["v1-ds2"]) == 0
        for r in (
            _single(c, "7", as_of=first),  # not cached
            _single(c, "no-such-id", as_of=first),
            _batch(c, ["7", "nope"], as_of=first),
            _single(c, "7", version=1, ds=DS2.isoformat(), as_of=first),
        ):
            assert r.status_code == 410, r.text
            detail = r.json()["detail"]
            assert f"run {runs['v1-ds2']}" in detail, detail
            assert "history_days" in detail, detail
        # A re-score without a history window removes the run it replaces at once.
        before = moment()
        commit_day(store, 1, DS1, 14, history_days=0)
        r = _single(c, "7", ds=DS1.isoformat(), version=1, as_of=before.isoformat())
        assert r.status_code == 410, r.text
        assert _single(c, "7", ds=DS1.isoformat(), version=1).status_code == 200  # the live day is untouched
        # Retention: an expired day served until it expired, and its rows are gone too.
        live_v2 = _single(c, "7").json()
        expired_before = moment()
        assert [p.ds for p in store.expire("churn", DS2 + timedelta(days=1))]  # every day of churn
        assert _single(c, "7").status_code == 404  # nothing committed any more
        r = _single(c, "7", as_of=expired_before.isoformat())
        assert r.status_code == 410, r.text
        assert f"run {live_v2['run_id']}" in r.json()["detail"]


MALFORMED = [
    "yesterday",
    "2026-11-18",  # a day is not a moment: ds is for days
    "2026-13-01T00:00:00Z",
    "2026-11-18T25:00:00Z",
    "2026-11-18T06:00:00.1234567Z",
    "2026-11-18T06:00:00+25:00",
    "1763445600",
    "",
]


def test_a_malformed_as_of_is_a_422_naming_the_parameter(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url)
    with api.client(make_key(seeded.store, "*")) as c:
        for raw in MALFORMED:
            for r in (_single(c, "42", as_of=raw), _batch(c, ["42"], as_of=raw)):
                assert r.status_code == 422, (raw, r.text)
                (issue,) = r.json()["detail"]
                assert issue["loc"] == ["query", "as_of"]
                assert "ISO 8601" in issue["msg"]
                assert "UTC" in issue["msg"]
                assert "%2B" not in issue["msg"]
        # An offset's '+' sent unescaped reads as a space: the message says how to send it.
        r = c.get("/v1/models/churn/predictions/42?as_of=2026-11-18T06:00:00+01:00")
        assert r.status_code == 422
        assert "%2B" in r.json()["detail"][0]["msg"]


def test_the_openapi_document_describes_as_of(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url)
    with api.client() as c:
        spec = c.get("/openapi.json").json()
    for path, method in (
        ("/v1/models/{model}/predictions/{entity_id}", "get"),
        ("/v1/models/{model}/predictions/batch", "post"),
    ):
        op = spec["paths"][path][method]
        (param,) = [p for p in op["parameters"] if p["name"] == "as_of"]
        assert param["schema"] == {"type": "string", "format": "date-time"}
        assert "without an offset it is UTC" in param["description"]
        assert "410" in op["responses"]


# -- caches: an as-of answer and a live one never stand in for each other -------------------------------------

CACHE_SETTINGS: dict[str, dict[str, Any]] = {
    "off": {"cache_entries": 0},
    "resolution": {"cache_entries": 0, "resolve_cache_ttl_s": 60},
    **TIERS,
}


@pytest.mark.parametrize("cache", list(CACHE_SETTINGS))
def test_as_of_and_live_reads_of_the_same_entities_never_poison_each_other(
    history: History, serve: Any, cache: str, request: pytest.FixtureRequest
) -> None:
    """The same entities asked with and without as_of, in either order, repeatedly (warm caches, Redis
    written in the background): each answer is its own selection's, byte for byte an uncached server's."""
    settings = tier_settings(cache, request) if cache in TIERS else dict(CACHE_SETTINGS[cache])
    if cache in TIERS:
        settings["resolve_cache_ttl_s"] = 60  # every cache at once
    plain = serve(history.url, cache_entries=0)
    runs = history.runs
    first, rescored = history.step("first").at.isoformat(), history.step("rescored").at.isoformat()
    expected = {None: (runs["v2-ds2"], 22), first: (runs["v1-ds2"], 12), rescored: (runs["v1-ds2-rescored"], 13)}
    for order in ([None, first, rescored], [first, rescored, None], [rescored, None, first]):
        api = serve(history.url, **settings)  # a fresh server (cold caches) per order
        with api.client(history.key) as c, plain.client(history.key) as p:
            for attempt in range(3):
                for at in order:
                    params = {"as_of": at} if at else {}
                    for entity in ("7", "42", "no-such-id"):
                        got, want = _single(c, entity, **params), _single(p, entity, **params)
                        assert got.status_code == want.status_code, (order, at, entity)
                        assert same_bytes(got.content) == same_bytes(want.content), (order, at, entity, attempt)
                        if entity != "no-such-id":
                            body = got.json()
                            assert (body["run_id"], salt_of(body["score"])) == expected[at], (order, at, entity)
                    got, want = _batch(c, ["7", "42", "nope"], **params), _batch(p, ["7", "42", "nope"], **params)
                    assert same_bytes(got.content) == same_bytes(want.content), (order, at, "batch", attempt)
                    assert got.json()["run_id"] == expected[at][0]
                if "redis" in cache:
                    time.sleep(0.2)  # Redis is written in the background: let the next round read it


def test_concurrent_as_of_and_live_lookups_are_not_coalesced_together(history: History, serve: Any) -> None:
    """Lookups of one entity that arrive in the same event-loop turn share a statement only with their own
    selection: an as-of read and a live read, fired together, each get their own run."""
    api = serve(history.url)  # coalescing and the LRU on (the defaults)
    runs = history.runs
    first = history.step("first").at.isoformat()

    async def fire() -> list[tuple[str | None, int, int]]:
        async with httpx.AsyncClient(base_url=api.url, headers={"X-API-Key": history.key}, timeout=30) as c:

            async def one(at: str | None, entity: str) -> tuple[str | None, int, int]:
                r = await c.get(f"/v1/models/churn/predictions/{entity}", params={"as_of": at} if at else None)
                assert r.status_code == 200, r.text
                return at, r.json()["run_id"], salt_of(r.json()["score"])

            jobs = [one(at, str(i % 20 + 1)) for i in range(200) for at in (None, first)]
            return await asyncio.gather(*jobs)

    answers = asyncio.run(fire())
    assert {(at, run, salt) for at, run, salt in answers} == {(None, runs["v2-ds2"], 22), (first, runs["v1-ds2"], 12)}


def test_the_store_and_the_api_agree_on_what_served_when(history: History, serve: Any) -> None:
    """Store.served_run (lineage, the CLI) applies the API's rule: the same run for every recorded moment."""
    api = serve(history.url)
    with api.client(history.key) as c:
        for step in history.steps:
            r = _single(c, "42", version=1, ds=DS2.isoformat(), as_of=step.at.isoformat())
            served = history.store.served_run("churn", 1, DS2, step.at)
            assert (r.json()["run_id"] if r.status_code == 200 else None) == (served.run_id if served else None)
    assert history.store.served_run("churn", 1, DS2, datetime(2001, 1, 1, tzinfo=UTC)) is None


# -- a night re-run after a promotion (served, through the nightly path) -------------------------------


def test_a_night_re_run_after_a_promotion_answers_what_served_it_at_each_moment(
    store_url: str, tmp_path: Path, serve: Any
) -> None:
    """`?ds=D&as_of=T` by alias when D is re-run after a promotion: `served` is written by the nightly path
    (record_served). D scored with champion v1 and shadow v2, v2 promoted, D re-run (champion v2, previous
    v1), then re-run again: at every recorded moment as_of answers what the live API answered then (v1
    between the promotion and the re-run, not the alias's v2), and an unchanged role keeps its row."""
    from nightshift.db import schema
    from nightshift.models import CHAMPION
    from nightshift.nightly import NIGHTLY, NightPlan, record_served
    from nightshift.rollout import CHALLENGER, PREVIOUS

    store = Store(store_url)
    registry = Registry(store, str(tmp_path / "models"))
    register_version(registry, "churn")
    register_version(registry, "churn")
    key = make_key(store, "*")
    api = serve(store_url, cache_entries=0, coalesce_lookups=False)
    selections: dict[str, dict[str, Any]] = {
        "champion": {"ds": DS2.isoformat()},
        "challenger": {"alias": CHALLENGER, "ds": DS2.isoformat()},
        "previous": {"alias": PREVIOUS, "ds": DS2.isoformat()},
    }
    steps: list[Step] = []

    def night(versions: dict[str, int], salts: dict[int, int]) -> None:
        runs = {v: commit_day(store, v, DS2, salt) for v, salt in salts.items()}
        shares = {role: (1.0 if role == CHAMPION else 0.0) for role in versions}
        plan = NightPlan("churn", DS2, NIGHTLY, "tests", versions, shares)
        record_served(store, plan, {role: runs[v] for role, v in versions.items()})

    def served_rows() -> dict[str, tuple[int, datetime]]:
        t = schema.served
        with store.connect() as conn:
            rows = conn.execute(sa.select(t.c.role, t.c.version, t.c.recorded_at).where(t.c.model == "churn"))
            return {r.role: (int(r.version), r.recorded_at) for r in rows}

    with api.client(key) as c:

        def record(name: str) -> None:
            step = Step(name, moment())
            for sel, params in selections.items():
                step.singles[(sel, "42")] = _single(c, "42", **params)
                step.batches[sel] = _batch(c, BATCH, **params)
            steps.append(step)

        registry.switch_aliases("churn", {CHAMPION: 1, CHALLENGER: 2}, reason="tests", by="tests")
        record("aliased")
        night({CHAMPION: 1, CHALLENGER: 2}, {1: 12, 2: 22})
        record("scored")
        registry.switch_aliases("churn", {CHAMPION: 2, PREVIOUS: 1, CHALLENGER: None}, reason="tests", by="tests")
        record("promoted")
        night({CHAMPION: 2, PREVIOUS: 1}, {2: 23, 1: 13})
        record("re-run")
        first = served_rows()
        night({CHAMPION: 2, PREVIOUS: 1}, {2: 24, 1: 14})
        record("re-run-again")
        # A role whose version did not change keeps its row, and the moment it was recorded.
        assert served_rows() == first

    by_name = {s.name: s for s in steps}
    version_of = {n: by_name[n].singles[("champion", "42")].json()["version"] for n in ("scored", "promoted", "re-run")}
    assert version_of == {"scored": 1, "promoted": 1, "re-run": 2}  # what the live API answered
    assert by_name["promoted"].singles[("challenger", "42")].json()["version"] == 2  # v2's shadow run of D

    for server in (serve(store_url, cache_entries=0), serve(store_url, cache_entries=100_000)):
        with server.client(key) as c:
            for step in steps:
                at = step.at.isoformat()
                for (sel, entity), then in step.singles.items():
                    replay = _single(c, entity, **selections[sel], as_of=at)
                    _same_answer(then, replay, (step.name, sel, entity))
                    if replay.status_code == 200:
                        # Store.served_run names the same run for the version answered.
                        body = replay.json()
                        run = store.served_run("churn", body["version"], DS2, step.at)
                        assert run is not None, (step.name, sel)
                        assert run.run_id == body["run_id"], (step.name, sel)
                for sel, then in step.batches.items():
                    _same_answer(then, _batch(c, BATCH, **selections[sel], as_of=at), (step.name, sel, "batch"))
    store.dispose()
