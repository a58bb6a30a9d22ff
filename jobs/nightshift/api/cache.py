"""Lookup answers cached per committed run: a bounded in-process LRU and an optional Redis tier shared by workers.

A committed run's rows never change, so an answer is a fact about (run, entity) forever: the
key names the run (its id and commit time), never the partition or "the newest". A re-commit
makes a new run and so new keys; nothing is ever invalidated, old keys just stop being asked
for (they fall out of the LRU, and expire in Redis). Which run answers a request is NOT cached
here: the reader resolves it with a statement that starts after the request arrived
(PredictionReader.many), and only then are the entities looked up under that run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from nightshift.errors import NightshiftError

log = logging.getLogger("nightshift.api")

#: (run_id, commit time in µs since the epoch): a committed run. The commit time guards against a
#: run id being reused by a re-created store that shares the Redis (ids restart at 1; times do not).
RunKey = tuple[int, int]

#: What a lookup found for one entity: (score, label, value of a regression or probabilities of a multiclass), and
#: with `?explain=true` its reasons, [(feature, contribution)] (such hits are never cached).
Hit = tuple[float, int | None, Any] | tuple[float, int | None, Any, list[tuple[str, float]]]
#: What the cache holds for one entity: its hit, or None for "the run has no row for this entity" (also a
#: fact about the run, cached like a hit).
Cached = Hit | None

#: An absent entity in Redis (a hit is a JSON array).
_ABSENT = b"-"
#: How long the Redis tier is skipped after an error (seconds): a down Redis costs one timeout per period.
REDIS_RETRY_S = 5.0
#: Background Redis writes in flight at most; past that a write is dropped (the entries are re-read later).
MAX_PENDING_WRITES = 64


class RedisTier:
    """Answers shared by every API worker: key `<prefix><run_id>.<µs>:<entity_id>`, values with a TTL.

    Reads are one MGET per batch (one round trip for up to `api.max_batch_ids` ids); writes are one
    pipelined round of `SET key value EX ttl`, sent in the background after the answer. Any error
    (down, slow, full) makes the tier a miss for REDIS_RETRY_S: the database answers meanwhile, and
    `nightshift_api_answer_cache_redis_errors_total` counts it.
    """

    def __init__(self, url: str, *, prefix: str, ttl_s: int, timeout_s: float) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise NightshiftError(
                "api.redis_url is set but the `redis` Python package is not installed (pip install redis)"
            ) from exc
        self.url = url
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._client: Any = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30
        )
        self._down_until = 0.0
        self._writes: set[asyncio.Task[None]] = set()
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.dropped_writes = 0

    def key(self, run: RunKey, entity_id: str) -> str:
        return f"{self.prefix}{run[0]}.{run[1]}:{entity_id}"

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        if self.available:
            log.warning(
                "redis %s failed (%s: %s); answering from the database for %.0fs",
                what,
                type(exc).__name__,
                exc,
                REDIS_RETRY_S,
            )
        self._down_until = time.monotonic() + REDIS_RETRY_S

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s * 4):
                await self._client.ping()
        except Exception as exc:  # noqa: BLE001 - a missing Redis degrades to the database, loudly
            self._failed("ping", exc)
            return False
        return True

    async def get_many(self, run: RunKey, entity_ids: Sequence[str]) -> list[bytes | None]:
        """The stored values of some entities of a run (None: not stored), one MGET; all None while down."""
        if not self.available:
            self.misses += len(entity_ids)
            return [None] * len(entity_ids)
        try:
            async with asyncio.timeout(self.timeout_s):
                values: list[bytes | None] = await self._client.mget([self.key(run, e) for e in entity_ids])
        except Exception as exc:  # noqa: BLE001
            self._failed("read", exc)
            self.misses += len(entity_ids)
            return [None] * len(entity_ids)
        found = sum(v is not None for v in values)
        self.hits += found
        self.misses += len(values) - found
        return values

    def put_many(self, run: RunKey, items: Iterable[tuple[str, bytes]]) -> None:
        """Store values in the background (one pipelined round trip): the answer does not wait for it."""
        if not self.available:
            return
        if len(self._writes) >= MAX_PENDING_WRITES:
            self.dropped_writes += 1
            return
        pairs = [(self.key(run, e), v) for e, v in items]
        if not pairs:
            return
        task = asyncio.get_running_loop().create_task(self._write(pairs))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, pairs: list[tuple[str, bytes]]) -> None:
        try:
            async with asyncio.timeout(self.timeout_s * 4):
                pipe = self._client.pipeline(transaction=False)
                for key, value in pairs:
                    pipe.set(key, value, ex=self.ttl_s)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001
            self._failed("write", exc)

    async def flush(self) -> None:
        """Wait for the background writes in flight (tests, shutdown)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def close(self) -> None:
        await self.flush()
        with contextlib.suppress(Exception):  # closing a broken connection
            await self._client.aclose()


def encode(value: Cached) -> bytes:
    """A cached answer as Redis stores it: JSON `[score, label, extra]` (floats round-trip exactly), or "-"."""
    if value is None:
        return _ABSENT
    return json.dumps(value, separators=(",", ":")).encode()


def decode(raw: bytes) -> Cached:
    if raw == _ABSENT:
        return None
    score, label, extra = json.loads(raw)
    return (score, label, extra)


_UNKNOWN: Any = object()


class AnswerCache:
    """(run, entity) → answer: at most `entries` per worker process, then Redis (optional), then the database.

    Least-recently-used, approximated by two generations (as in a generational GC): lookups find
    an entry in the young or the old generation, an old entry that is read moves to the young
    one, and when the young generation holds `entries` / 2 answers the old one is dropped and the
    young one becomes old. So an answer read at least once per generation stays, at most
    `entries` are held, and a hit costs one dict lookup by entity id (an exact LRU, an
    OrderedDict with `move_to_end` per hit as functools.lru_cache keeps, cost as much per id as
    the database row it saved). 0 entries and no Redis switch the cache off.
    """

    def __init__(self, entries: int, redis: RedisTier | None = None) -> None:
        self.entries = entries
        self.redis = redis
        self._young: dict[RunKey, dict[str, Cached]] = {}
        self._old: dict[RunKey, dict[str, Cached]] = {}
        self._young_size = 0
        self._old_size = 0
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.entries > 0 or self.redis is not None

    def __len__(self) -> int:
        return self._young_size + self._old_size

    def clear(self) -> None:
        self._young, self._old = {}, {}
        self._young_size = self._old_size = 0

    async def get_many(self, run: RunKey, entity_ids: Sequence[str]) -> tuple[dict[str, Hit], list[str]]:
        """The cached hits among some entities of a run, and the ids cached in no tier. An entity known to
        have no row in that run is in neither (its answer is "not found")."""
        hits: dict[str, Hit] = {}
        missing: list[str] = []
        if self.entries > 0:
            young = self._young.get(run)
            old = self._old.get(run)
            if young is None and old is None:
                missing = list(entity_ids)
            else:
                if young is None:
                    young = self._young[run] = {}
                old = old or {}
                promoted = 0
                for entity_id in entity_ids:
                    value = young.get(entity_id, _UNKNOWN)
                    if value is _UNKNOWN:
                        value = old.get(entity_id, _UNKNOWN)
                        if value is _UNKNOWN:
                            missing.append(entity_id)
                            continue
                        young[entity_id] = value
                        promoted += 1
                    if value is not None:
                        hits[entity_id] = value
                if promoted:
                    self._young_size += promoted
                    self._age()
            self.misses += len(missing)
            self.hits += len(entity_ids) - len(missing)
        else:
            missing = list(entity_ids)
        if missing and self.redis is not None:
            values = await self.redis.get_many(run, missing)
            still: list[str] = []
            shared: dict[str, Cached] = {}
            for entity_id, raw in zip(missing, values, strict=True):
                if raw is None:
                    still.append(entity_id)
                else:
                    value = shared[entity_id] = decode(raw)
                    if value is not None:
                        hits[entity_id] = value
            self._remember(run, shared)
            missing = still
        return hits, missing

    def put_many(self, run: RunKey, answers: dict[str, Cached]) -> None:
        """Answers just read from the database: into this worker's cache now, into Redis in the background."""
        self._remember(run, answers)
        if self.redis is not None:
            self.redis.put_many(run, ((e, encode(v)) for e, v in answers.items()))

    def _remember(self, run: RunKey, answers: dict[str, Cached]) -> None:
        if self.entries <= 0 or not answers:
            return
        young = self._young.get(run)
        if young is None:
            young = self._young[run] = {}
        before = len(young)
        young.update(answers)
        self._young_size += len(young) - before
        self._age()

    def _age(self) -> None:
        """The young generation is full: it becomes the old one, and the old one is dropped."""
        if self._young_size < max(1, self.entries // 2):
            return
        self._old, self._old_size = self._young, self._young_size
        self._young, self._young_size = {}, 0
