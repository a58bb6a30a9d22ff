"""Reads of committed predictions for the API: one statement per answer, shared by concurrent lookups."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from nightshift.api.cache import AnswerCache, RunKey
from nightshift.api.cache import Hit as Hit  # what a lookup found; routes and responses import it from here
from nightshift.api.db import Database
from nightshift.api.queries import Kind, Queries
from nightshift.db.store import decode_probs, decode_reasons
from nightshift.models.explainers import feature_names, no_reasons_message, reason_name
from nightshift.models.registry import CHAMPION

#: The alias that keeps answering while a newly promoted champion has no committed partition.
PREVIOUS = "previous"

#: Distinct selections cached per process (each key is small; requests choose the keys).
CACHE_MAX_ENTRIES = 4096
#: How long a process trusts its view of a model's canary share.
CANARY_TTL_S = 1.0


class NotFound(Exception):
    """Nothing to answer. `unknown_model` answers must look the same for every caller."""

    #: The HTTP status it answers.
    status = 404

    def __init__(self, detail: str, *, unknown_model: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.unknown_model = unknown_model

    def again(self) -> NotFound:
        """The same answer as a new exception (each waiter of a shared read raises its own)."""
        return type(self)(self.detail, unknown_model=self.unknown_model)


class Gone(NotFound):
    """An as-of read whose run served then, but whose rows have been removed since (`nightshift gc`)."""

    status = 410


class NoReasons(NotFound):
    """`?explain=true` for a run scored without reasons: the model (or this day) has none to give."""

    status = 409


def no_reasons_detail(part: Partition) -> str:
    return f"{no_reasons_message(part.model, part.version, part.ds, part.run_id)}, or ask without explain"


def unknown_model_detail(model: str) -> str:
    """The one answer for a model that does not exist or that the key may not read."""
    return f"model {model!r} not found"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which partition a request reads: a version or an alias (default: champion), newest or a given ds,
    as the API resolved it now or, with `as_of` (a past moment, UTC), as it resolved it then."""

    model: str
    version: int | None = None
    alias: str | None = None
    ds: date | None = None
    as_of: datetime | None = None
    #: `?explain=true`: each answer carries its reasons (read from the database, never the answer cache).
    explain: bool = False

    @property
    def by_alias(self) -> bool:
        return self.version is None

    @property
    def kind(self) -> Kind:
        return self.version is None, self.ds is not None, self.as_of is not None

    def describe(self) -> str:
        what = f"v{self.version}" if self.version is not None else f"alias {self.alias or CHAMPION!r}"
        return (
            f"{self.model} {what}"
            + (f" ds={self.ds}" if self.ds else "")
            + (f" as of {self.as_of.isoformat()}" if self.as_of else "")
        )


@dataclass(frozen=True, slots=True)
class Partition:
    model: str
    version: int
    ds: date
    run_id: int
    committed_at: datetime
    #: The answer's leading JSON members, rendered once per statement, not once per lookup.
    json_head: str = field(default="", compare=False)
    #: binary, multiclass or regression: what an answer carries besides score and label.
    task: str = "binary"
    #: A multiclass version's class names, in its probabilities' order.
    classes: tuple[str, ...] = ()
    #: The version's feature names: what the codes of its stored reasons index.
    features: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def of(
        cls,
        model: str,
        version: int,
        ds: date,
        run_id: int,
        committed_at: datetime,
        task: str = "binary",
        classes: tuple[str, ...] = (),
        features: tuple[str, ...] = (),
    ) -> Partition:
        head = (
            f'{{"model":"{model}","version":{version},"ds":"{ds.isoformat()}","run_id":{run_id},'
            f'"committed_at":"{committed_at.isoformat()}",'
        )
        if task != "binary":  # binary answers keep the shape they always had
            head += f'"task":"{task}",'
        return cls(model, version, ds, run_id, committed_at, head, task, classes, features)

    @property
    def run_key(self) -> RunKey:
        """The committed run that answers: (run_id, commit time in µs), the answer cache's key."""
        return self.run_id, (self.committed_at - _EPOCH) // _MICROSECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class ModelStatus:
    model: str
    version: int | None
    ds: date | None
    committed_at: datetime | None
    rows: int | None
    aliases: dict[str, int]

    def age_seconds(self, now: datetime | None = None) -> float | None:
        if self.committed_at is None:
            return None
        return ((now or datetime.now(UTC)) - self.committed_at).total_seconds()


def as_date(v: Any) -> date:
    if isinstance(v, datetime):
        return v.date()
    if isinstance(v, date):
        return v
    return date.fromisoformat(str(v))


def as_utc(v: Any) -> datetime:
    if not isinstance(v, datetime):
        v = datetime.fromisoformat(str(v))
    return v if v.tzinfo else v.replace(tzinfo=UTC)


_F32 = struct.Struct("f")


def shortest_float32(x: float) -> float:
    """The shortest decimal that is the same float32 as `x` (scores are stored as float32).

    PostgreSQL's text output of a `real` already is this; SQLite keeps the float32 widened to a
    double (0.012042 reads back as 0.012041999958455563), so both stores answer the same digits.
    """
    target = _F32.pack(x)
    for digits in (6, 7, 8):
        candidate = float(f"{x:.{digits}g}")
        if _F32.pack(candidate) == target:
            return candidate
    return float(f"{x:.9g}")


class ResolutionCache:
    """Selection → Partition, each entry trusted for `ttl_s` seconds (0 disables the cache).

    It maps (model, version|alias, ds|newest) to the partition last resolved for it (version,
    ds). A hit skips the alias and newest-ds resolution but still reads through the catalog
    row of that (version, ds) in the same statement, so a re-commit of that partition is seen
    at once (new run_id, new committed_at, new rows, never a mix). What it can delay, by at
    most `ttl_s` per process, is noticing that the alias moved or that a newer ds was
    committed. The benchmark (bench/api_bench.py) measured no gain from it (the resolution is
    two index probes inside a statement that runs anyway), so it is off unless
    `api.resolve_cache_ttl_s` is set; coalescing (Coalescer) is what pays.
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[Selection, tuple[float, Partition]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def get(self, sel: Selection) -> Partition | None:
        if not self.enabled:
            return None
        entry = self._entries.get(sel)
        if entry is None or entry[0] < time.monotonic():
            self.misses += 1
            return None
        self.hits += 1
        return entry[1]

    def put(self, sel: Selection, part: Partition) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if len(self._entries) >= CACHE_MAX_ENTRIES and sel not in self._entries:
            self._entries = {k: v for k, v in self._entries.items() if v[0] >= now}
            if len(self._entries) >= CACHE_MAX_ENTRIES:
                self._entries.clear()
        self._entries[sel] = (now + self.ttl_s, part)

    def drop(self, sel: Selection) -> None:
        self._entries.pop(sel, None)

    def clear(self) -> None:
        self._entries.clear()


class PredictionReader:
    """Answers lookups from the committed catalog, one statement per answer."""

    def __init__(
        self,
        db: Database,
        queries: Queries,
        cache: ResolutionCache,
        *,
        coalesce: bool = True,
        max_ids: int = 1000,
        answers: AnswerCache | None = None,
    ) -> None:
        self.db = db
        self.q = queries
        self.cache = cache
        #: Answers per committed run (None or disabled: every lookup reads the database).
        self.answers = answers if answers is not None and answers.enabled else None
        #: The run each selection resolved to last: only a guess of which run's cache to try first.
        self._last_run: dict[Selection, Partition] = {}
        self._score = float if db.dialect == "postgresql" else shortest_float32
        self.coalescer = Coalescer(self, max_ids) if coalesce else None
        self._canary: dict[str, tuple[float, float | None]] = {}
        #: (model, version) → (task, classes, feature names): a registered version never changes, so it is read once.
        self._versions: dict[tuple[str, int], tuple[str, tuple[str, ...], tuple[str, ...]]] = {}

    async def canary_share(self, model: str) -> float | None:
        """The share of entities a running canary serves from the challenger (None: no canary).

        Cached per process for CANARY_TTL_S: a canary that starts or stops is followed within a
        second. Each answer still comes from one version: a canary entity read after the canary
        ended falls back to the champion (see the routes).
        """
        now = time.monotonic()
        cached = self._canary.get(model)
        if cached is not None and now - cached[0] < CANARY_TTL_S:
            return cached[1]
        rows = await self.db.fetch(self.q.canary, {"model": model})
        share = float(rows[0][0]) if rows and rows[0][0] is not None else None
        if len(self._canary) > CACHE_MAX_ENTRIES:
            self._canary.clear()
        self._canary[model] = (now, share)
        return share

    def _params(self, sel: Selection) -> dict[str, Any]:
        return {
            "model": sel.model,
            "version": sel.version,
            "alias": sel.alias or CHAMPION,
            "ds": self._ds_param(sel.ds),
            "at": self._at_param(sel.as_of),
        }

    def _at_param(self, at: datetime | None) -> Any:
        """A moment as the store compares it: timestamptz on PostgreSQL; on SQLite, the text SQLAlchemy
        writes (UTC, `YYYY-MM-DD HH:MM:SS.ffffff`), which orders as the moments do."""
        if at is None or self.db.dialect == "postgresql":
            return at
        return at.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")

    def _ds_param(self, ds: date | None) -> Any:
        if ds is None:
            return None
        return ds if self.db.dialect == "postgresql" else ds.isoformat()

    async def _version(self, model: str, version: int) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        key = (model, version)
        found = self._versions.get(key)
        if found is None:
            rows = await self.db.fetch(self.q.version_task, {"model": model, "version": version})
            task, signature, features = (rows[0][0], rows[0][1], rows[0][2]) if rows else ("binary", None, None)
            if isinstance(signature, str):
                signature = json.loads(signature)
            if isinstance(features, str):
                features = json.loads(features)
            classes = tuple(str(c) for c in ((signature or {}).get("outputs") or {}).get("classes") or ())
            names = feature_names(features)
            found = (str(task or "binary"), classes, names)
            if len(self._versions) >= CACHE_MAX_ENTRIES:
                self._versions.clear()
            self._versions[key] = found
        return found

    async def _partition(self, model: str, row: Sequence[Any]) -> Partition:
        version = int(row[0])
        task, classes, features = await self._version(model, version)
        return Partition.of(model, version, as_date(row[1]), int(row[2]), as_utc(row[3]), task, classes, features)

    def _hit(self, task: str, score: Any, label: Any, value: Any, probs: Any) -> Hit:
        if task == "binary":
            return self._score(score), int(label), None
        if task == "regression":
            return self._score(score), None, float(value) if value is not None else None
        decoded = decode_probs(probs)
        return self._score(score), int(label), [self._score(p) for p in decoded] if decoded is not None else None

    def _explained(self, part: Partition, hit: Hit, raw: Any) -> Hit:
        """A hit with its reasons as a 4th member: [(feature name, contribution)], largest |contribution| first.
        A row without reasons means its run was scored without them: NoReasons (409)."""
        reasons = decode_reasons(raw)
        if reasons is None:
            raise NoReasons(no_reasons_detail(part))
        # Contributions are float32 unpacked from bytes on both stores: their shortest digits, always.
        named = [(reason_name(part.features, c), shortest_float32(v)) for c, v in reasons]
        return (*hit, named)

    async def _fetch(self, sel: Selection, statements: dict[Kind, str], extra: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Rows of the selected partition: through the cached (version, ds) when fresh, else resolved.

        As-of reads never use the resolution cache: it pins today's catalog row, not the run of then."""
        live = sel.as_of is None
        pinned = self.cache.get(sel) if live else None
        if pinned is not None:
            params = {"model": sel.model, "version": pinned.version, "ds": self._ds_param(pinned.ds), **extra}
            rows = await self.db.fetch(statements[(False, True, False)], params)
            if rows:
                return rows
            self.cache.drop(sel)  # that partition is gone: resolve again
        rows = await self.db.fetch(statements[sel.kind], {**self._params(sel), **extra})
        head = next((r for r in rows if r[0] is not None), None)
        if live and head is not None and self.cache.enabled:
            self.cache.put(sel, await self._partition(sel.model, head))
        return rows

    async def _gone(self, sel: Selection, part: Partition) -> Gone | None:
        """For an as-of read that found none of its entities: whether the run lost its rows since (gc)."""
        if sel.as_of is None or not await self.db.fetch(self.q.gone, {"run_id": part.run_id}):
            return None
        return Gone(
            f"{part.model} v{part.version} ds={part.ds} was served by run {part.run_id} as of "
            f"{sel.as_of.isoformat()}, but its predictions have been removed since: the model's history_days "
            "window (or retention) no longer holds them"
        )

    async def one(self, sel: Selection, entity_id: str) -> tuple[Partition, Hit | None]:
        """The partition a selection resolves to, and the entity's hit (score, label, extra) in it if any."""
        if self.coalescer is not None:
            result: tuple[Partition, Hit | None] = await self.coalescer.load(sel, entity_id)
            return result
        return await self.one_alone(sel, entity_id)

    async def one_alone(self, sel: Selection, entity_id: str) -> tuple[Partition, Hit | None]:
        """`one` with its own point statement, not shared with concurrent lookups."""
        if self.answers is not None and not sel.explain:
            part, found = await self.many(sel, [entity_id])
            return part, found.get(entity_id)
        rows = await self._fetch(sel, self.q.one_explain if sel.explain else self.q.one, {"entity_id": entity_id})
        if not rows:
            raise await self._why_not_found(sel)
        row = rows[0]
        part = await self._partition(sel.model, row)
        if row[4] is None and sel.as_of is not None and (gone := await self._gone(sel, part)) is not None:
            raise gone
        if row[4] is None:
            return part, None
        hit = self._hit(part.task, row[4], row[5], row[6], row[7])
        return part, (self._explained(part, hit, row[8]) if sel.explain else hit)

    async def many(self, sel: Selection, entity_ids: Sequence[str]) -> tuple[Partition, dict[str, Hit]]:
        """The partition, and the hit of each requested entity found in it: one statement (with the answer
        cache: one statement too, a cheaper one when every entity is cached; see `_many_cached`)."""
        unique = list(dict.fromkeys(entity_ids))
        if self.answers is not None and not sel.explain:  # answers with reasons are read, never cached
            return await self._many_cached(sel, unique)
        return await self._many_db(sel, unique)

    async def _many_cached(self, sel: Selection, unique: list[str]) -> tuple[Partition, dict[str, Hit]]:
        """`many` through the answer cache, never answering from a run that is no longer the selection's.

        Every answer's run is confirmed by a statement that started after the request arrived:
        either the resolution alone (alias → version, newest ds → the catalog's run; two index
        probes), when every entity is cached under the run the selection had last time, or the
        ordinary read of the missing entities, which resolves in the same statement. If that
        statement names another run than the cached entries', the entries are not used: the
        whole answer is read again, in one statement, from the run it names. So a commit that
        finished before a request arrived is always seen, and no answer mixes two runs.
        """
        answers = self.answers
        assert answers is not None
        guess = self._last_run.get(sel)
        cached: dict[str, Hit] = {}
        missing = unique
        if guess is not None:
            cached, missing = await answers.get_many(guess.run_key, unique)
            if not missing:
                part = await self._resolve(sel)
                if part.run_key == guess.run_key:
                    return part, cached
                self._remember_run(sel, part)  # a new run: its entries may be cached (another worker, Redis)
                guess = part
                cached, missing = await answers.get_many(part.run_key, unique)
                if not missing:
                    return part, cached
        part, hits = await self._many_db(sel, missing)
        answers.put_many(part.run_key, {e: hits.get(e) for e in missing})
        self._remember_run(sel, part)
        if len(missing) < len(unique) and (guess is None or guess.run_key != part.run_key):
            # The cached entries were another run's (a commit landed between the two statements).
            part, hits = await self._many_db(sel, unique)
            answers.put_many(part.run_key, {e: hits.get(e) for e in unique})
            self._remember_run(sel, part)
            return part, hits
        cached.update(hits)
        return part, cached

    def _remember_run(self, sel: Selection, part: Partition) -> None:
        if len(self._last_run) >= CACHE_MAX_ENTRIES and sel not in self._last_run:
            self._last_run.clear()
        self._last_run[sel] = part

    async def _resolve(self, sel: Selection) -> Partition:
        """The partition (and so the run) a selection reads now: one statement, no prediction rows."""
        rows = await self._fetch(sel, self.q.resolve, {})
        if not rows:
            raise await self._why_not_found(sel)
        return await self._partition(sel.model, rows[0])

    async def _many_db(self, sel: Selection, unique: list[str]) -> tuple[Partition, dict[str, Hit]]:
        """The partition, and the hit of each entity found in it: one statement."""
        ids: Any = unique if self.db.dialect == "postgresql" else json.dumps(unique)
        rows = await self._fetch(sel, self.q.many_explain if sel.explain else self.q.many, {"ids": ids})
        head = next((r for r in rows if r[0] is not None), None)  # the partition's own row
        if head is None:
            raise await self._why_not_found(sel)
        part = await self._partition(sel.model, head)
        found: dict[str, Hit]
        if sel.explain:
            hit, explained = self._hit, self._explained
            found = {r[4]: explained(part, hit(part.task, r[5], r[6], r[7], r[8]), r[9]) for r in rows if r[0] is None}
        elif part.task == "binary":  # the hot path: no per-row branching
            score = self._score
            found = {r[4]: (score(r[5]), int(r[6]), None) for r in rows if r[0] is None}
        else:
            hit = self._hit
            found = {r[4]: hit(part.task, r[5], r[6], r[7], r[8]) for r in rows if r[0] is None}
        if not found and sel.as_of is not None and (gone := await self._gone(sel, part)) is not None:
            raise gone  # before anything is cached: "no row" would be false for a run that lost its rows
        return part, found

    async def _why_not_found(self, sel: Selection) -> NotFound:
        """Why a selection resolved to nothing (an extra statement, on this path only)."""
        alias = sel.alias or CHAMPION
        versions, has_version, alias_version = (
            await self.db.fetch(self.q.model_exists, {"model": sel.model, "version": sel.version, "alias": alias})
        )[0]
        if not versions:
            return NotFound(unknown_model_detail(sel.model), unknown_model=True)
        if sel.version is not None and not has_version:
            return NotFound(f"model {sel.model!r} has no version {sel.version}")
        if sel.as_of is not None:
            if sel.version is None and sel.ds is None:
                params = {"model": sel.model, "alias": alias, "at": self._at_param(sel.as_of)}
                if (await self.db.fetch(self.q.alias_at, params))[0][0] is None:
                    return NotFound(f"model {sel.model!r} had no {alias!r} alias as of {sel.as_of.isoformat()}")
            return NotFound(f"nothing was committed for {sel.describe()}")
        if sel.version is None and alias_version is None:
            return NotFound(f"model {sel.model!r} has no {alias!r} alias")
        return NotFound(f"no committed partition for {sel.describe()}")

    async def models(self) -> list[ModelStatus]:
        """Every model with an alias: its champion, the champion's newest committed partition, its aliases."""
        by_model: dict[str, dict[str, Any]] = {}
        for model, alias, version, ds, committed_at, row_count in await self.db.fetch(self.q.models, {}):
            entry = by_model.setdefault(model, {"aliases": {}, "newest": {}})
            entry["aliases"][alias] = int(version)
            entry["newest"][alias] = (int(version), ds, committed_at, row_count)
        out = []
        for model, entry in by_model.items():
            # What answers lookups: the champion's newest partition, or, while a just-promoted champion
            # has none yet, the version it replaced (see queries._partition).
            newest = entry["newest"]
            live = next((newest[a] for a in (CHAMPION, PREVIOUS) if a in newest and newest[a][1] is not None), None)
            if live is None and CHAMPION in newest:
                live = newest[CHAMPION]
            version, ds, committed_at, rows = live if live else (None, None, None, None)
            out.append(
                ModelStatus(
                    model=model,
                    version=version,
                    ds=as_date(ds) if ds is not None else None,
                    committed_at=as_utc(committed_at) if committed_at is not None else None,
                    rows=int(rows) if rows is not None else None,
                    aliases=entry["aliases"],
                )
            )
        return out


class Coalescer:
    """Single lookups that arrive in the same event-loop turn share ONE batch statement (DataLoader-style).

    Under concurrent load the fixed cost of a statement (driver, syscalls, the server's
    per-statement work) dominates a point lookup; lookups of the same selection waiting at
    the same moment are read together, with no timer and so no added latency: the flush runs
    right after the requests ready in this turn have reached their read. Every answer still
    comes from one statement, so from one committed partition.
    """

    def __init__(self, reader: PredictionReader, max_ids: int) -> None:
        self.reader = reader
        self.max_ids = max_ids
        self._pending: dict[Selection, list[tuple[str, asyncio.Future[Any]]]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.statements = 0
        self.lookups = 0

    def load(self, sel: Selection, entity_id: str) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        group = self._pending.setdefault(sel, [])
        group.append((entity_id, fut))
        if len(group) >= self.max_ids:
            self._start(sel, self._pending.pop(sel))
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for sel, group in pending.items():
            self._start(sel, group)

    def _start(self, sel: Selection, group: list[tuple[str, asyncio.Future[Any]]]) -> None:
        task = asyncio.get_running_loop().create_task(self._read(sel, group))
        self._tasks.add(task)  # a running task must stay referenced
        task.add_done_callback(self._tasks.discard)

    async def _read(self, sel: Selection, group: list[tuple[str, asyncio.Future[Any]]]) -> None:
        self.statements += 1
        self.lookups += len(group)
        try:
            part, found = await self.reader.many(sel, [entity_id for entity_id, _ in group])
        except NotFound as exc:
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(exc.again())
        except asyncio.CancelledError:
            for _, fut in group:
                fut.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every waiter gets the failure (503, or a 500)
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            for entity_id, fut in group:
                if not fut.done():
                    fut.set_result((part, found.get(entity_id)))
