"""Who is calling: API-key verification (hashed, constant-time, cached briefly) and a per-key rate limit."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from nightshift.api.db import Database
from nightshift.api.keys import ALL_MODELS, matches, parse_key
from nightshift.api.queries import Queries

#: Distinct key ids remembered per process, valid or not (an attacker picks the ids).
KEY_CACHE_MAX_ENTRIES = 10_000


class Unauthorized(Exception):
    """Missing, malformed, unknown or revoked key (HTTP 401)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class RateLimited(Exception):
    """The key spent its tokens (HTTP 429); `retry_after_s` is when the next one is there."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"rate limit exceeded; retry after {retry_after_s}s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated key and the models it may read."""

    key_id: str
    scopes: frozenset[str]

    def may_read(self, model: str) -> bool:
        return ALL_MODELS in self.scopes or model in self.scopes


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per key: `per_minute` tokens a minute, at most `burst` saved up.

    It lives in the process: the limit is per key *per worker process* (N workers allow N
    times the rate; run one worker per container and scale containers, or divide the limit).
    """

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key_id: str) -> None:
        """Spend one token of `key_id` or raise RateLimited."""
        now = time.monotonic()
        b = self._buckets.get(key_id)
        if b is None:
            b = self._buckets[key_id] = _Bucket(self.burst, now)
        else:
            b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
            b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return
        raise RateLimited(max(1, math.ceil((1.0 - b.tokens) / self.rate)))


@dataclass(frozen=True, slots=True)
class _KeyRow:
    key_hash: str
    scopes: frozenset[str]
    active: bool


class Authenticator:
    """Turns an `X-API-Key` value into a Caller, or raises Unauthorized / RateLimited.

    Key rows are cached for `cache_ttl_s` per process, so a revoked key stops working within
    that in every worker; unknown ids are cached too, so garbage keys do not reach the database.
    """

    def __init__(self, db: Database, queries: Queries, *, cache_ttl_s: float, limiter: RateLimiter) -> None:
        self.db = db
        self.q = queries
        self.cache_ttl_s = cache_ttl_s
        self.limiter = limiter
        self._cache: dict[str, tuple[float, _KeyRow | None]] = {}

    async def _row(self, key_id: str) -> _KeyRow | None:
        now = time.monotonic()
        hit = self._cache.get(key_id)
        if hit is not None and hit[0] >= now:
            return hit[1]
        rows = await self.db.fetch(self.q.api_key, {"key_id": key_id})
        row = _KeyRow(rows[0][0], frozenset(str(rows[0][1]).split(",")), rows[0][2] is None) if rows else None
        if self.cache_ttl_s > 0:
            if len(self._cache) >= KEY_CACHE_MAX_ENTRIES:
                self._cache = {k: v for k, v in self._cache.items() if v[0] >= now}
                if len(self._cache) >= KEY_CACHE_MAX_ENTRIES:
                    self._cache.clear()
            self._cache[key_id] = (now + self.cache_ttl_s, row)
        return row

    async def authenticate(self, token: str | None) -> Caller:
        if not token:
            raise Unauthorized("missing API key: send it in the X-API-Key header")
        key_id = parse_key(token)
        if key_id is None:
            raise Unauthorized("invalid or revoked API key")
        row = await self._row(key_id)
        # Unknown ids are compared too, so a bad key costs the same whether its id exists or not.
        ok = matches(token, row.key_hash if row else "0" * 64)
        if row is None or not ok or not row.active:
            raise Unauthorized("invalid or revoked API key")
        self.limiter.take(key_id)
        return Caller(key_id=key_id, scopes=row.scopes)
