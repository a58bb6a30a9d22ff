"""Prediction store: staged writes, the atomic commit of one (model, version, ds), the catalog and reads.

How a partition becomes visible
-------------------------------
A scoring run gets a fresh ``run_id`` and stages its rows under it, chunk by chunk, each
chunk in its own short transaction together with a ``run_chunks`` ledger row, so a chunk
recomputed by Dask is never written twice. On PostgreSQL a run stages into a table of its
own (``predictions_r<run_id>``, no index, binary COPY from every worker in parallel); the
commit builds its index and attaches it as a LIST partition of ``predictions``, and
replacing or expiring a run drops a table instead of deleting rows. On SQLite the driver
inserts into the one ``predictions`` table. Readers only ever see rows whose ``run_id`` the
catalog (``partitions``) points at. Committing is one small transaction that checks the row
counts against the input and moves that pointer: readers see the complete old set or the
complete new set, never a mix. Rows of the replaced run are deleted afterwards. Runs of the
same (model, ds) are serialised by a run lock (a PostgreSQL advisory lock, or a file lock
next to the SQLite database); a crashed run leaves only invisible rows, removed by the next
run of that partition.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import OperationalError
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from nightshift.db import schema
from nightshift.db.backends import BACKENDS, Backend
from nightshift.db.engine import (
    StoreError,
    StoreUnavailable,
    as_date,
    as_utc,
    dialect_insert,
    normalize_url,
    redact,
    sqlite_on_begin,
    sqlite_on_connect,
    utcnow,
)
from nightshift.errors import CommitError, RunLockTimeout

__all__ = ["CommitResult", "GcReport", "PartitionInfo", "Prediction", "Store", "StoreError", "StoreUnavailable"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionInfo:
    model: str
    version: int
    ds: date
    run_id: int
    row_count: int
    committed_at: datetime
    timings: dict[str, Any] | None


@dataclass(frozen=True)
class CommitResult:
    run_id: int
    rows: int
    replaced_run_id: int | None
    seconds: float


@dataclass(frozen=True)
class Prediction:
    entity_id: str
    score: float
    label: int | None
    ds: date
    version: int
    run_id: int
    committed_at: datetime
    #: A regression's value (None for classifiers).
    value: float | None = None
    #: A multiclass model's probability of each class, in its recorded class order (None otherwise).
    probs: list[float] | None = None
    #: Reasons (`[models.explain]`): the top-k (feature index into the version's features, contribution),
    #: largest |contribution| first; None when the run was scored without reasons.
    reasons: list[tuple[int, float]] | None = None


def decode_probs(raw: Any) -> list[float] | None:
    """A stored `probs` value as floats: K little-endian float32 values (both stores, migration 0013)."""
    if raw is None:
        return None
    import struct

    data = bytes(raw)
    if len(data) % 4:
        raise ValueError(f"a probs value of {len(data)} bytes: expected 4 per class")
    return list(struct.unpack(f"<{len(data) // 4}f", data))


def decode_reasons(raw: Any) -> list[tuple[int, float]] | None:
    """A stored `reasons` value as (feature index, contribution) pairs, largest |contribution| first: the packed
    bytes are k little-endian int16 indices, then k little-endian float32 contributions. None: the row has none."""
    if raw is None:
        return None
    import struct

    data = bytes(raw)
    k = len(data) // 6
    if len(data) != 6 * k:
        raise ValueError(f"a reasons value of {len(data)} bytes: expected 6 per reason")
    codes = struct.unpack_from(f"<{k}h", data)
    values = struct.unpack_from(f"<{k}f", data, 2 * k)
    return list(zip(codes, values, strict=True))


@dataclass
class GcReport:
    """What `Store.gc` removed (or, in a dry run, would remove): each dead run and the rows it held."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    #: Runs found still marked running whose lock nobody holds: their process died. Marked abandoned.
    abandoned: list[int] = field(default_factory=list)
    dry_run: bool = False

    @property
    def rows(self) -> int:
        return sum(int(r["rows"]) for r in self.runs)


class Store:
    """The prediction store behind one SQLAlchemy URL (SQLite or PostgreSQL)."""

    def __init__(self, url: str, *, connect_retries: int = 3) -> None:
        self.url = normalize_url(url)
        try:
            self._url = make_url(self.url)
        except Exception as exc:
            raise StoreError(f"store URL {url!r} is not a valid SQLAlchemy URL: {exc}") from exc
        backend = self._url.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise StoreError(f"store URL {redact(self.url)}: unsupported database {backend!r} (sqlite or postgresql)")
        self.dialect: str = backend
        self.connect_retries = connect_retries
        if self.dialect == "sqlite":
            db = self._url.database
            if not db or db == ":memory:":
                raise StoreError("an in-memory SQLite store cannot be shared between processes: give a file path")
            Path(db).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = sa.create_engine(
                self.url, connect_args={"timeout": 60, "check_same_thread": False}, poolclass=sa.pool.NullPool
            )
            sa.event.listen(self.engine, "connect", sqlite_on_connect)
            sa.event.listen(self.engine, "begin", sqlite_on_begin)
        else:
            self.engine = sa.create_engine(self.url, pool_pre_ping=True, pool_size=2, max_overflow=4)
        self.backend: Backend = BACKENDS[self.dialect](self, self._url)

    def __repr__(self) -> str:
        return f"Store({redact(self.url)})"

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def sqlite_path(self) -> str:
        assert self.is_sqlite
        assert self._url.database
        return self._url.database

    @property
    def parallel_staging(self) -> bool:
        """Whether Dask workers write their chunks themselves (PostgreSQL) or hand them to the driver (SQLite)."""
        return self.backend.parallel_staging

    def dispose(self) -> None:
        self.engine.dispose()

    # -- connections ----------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection, retried with backoff while the database is unreachable."""
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(self.connect_retries + 1),
                wait=wait_exponential(multiplier=0.5, max=5),
                retry=retry_if_exception_type(OperationalError),
                reraise=False,
            ):
                with attempt:
                    conn = self.engine.connect()
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise StoreUnavailable(
                f"cannot reach the store at {redact(self.url)} after {self.connect_retries + 1} attempt(s): "
                f"{str(cause).strip().splitlines()[0] if cause else 'unknown error'}"
            ) from cause
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.connect() as conn, conn.begin():
            yield conn

    # -- migrations -----------------------------------------------------------------------

    def _alembic_config(self) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", "nightshift.db:migrations")
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        return cfg

    def upgrade(self, revision: str = "head") -> None:
        """Apply migrations up to `revision` (`nightshift db upgrade`)."""
        from alembic import command

        cfg = self._alembic_config()
        with self.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()

    def downgrade(self, revision: str) -> None:
        """Undo migrations down to `revision` (`nightshift db downgrade`)."""
        from alembic import command

        cfg = self._alembic_config()
        with self.connect() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
            conn.commit()

    def head_revision(self) -> str | None:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    def current_revision(self) -> str | None:
        from alembic.migration import MigrationContext

        with self.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def ensure_current(self) -> None:
        """Raise StoreError unless the schema is at the code's migration head."""
        current, head = self.current_revision(), self.head_revision()
        if current != head:
            raise StoreError(
                f"the store at {redact(self.url)} is at schema revision {current or 'none'}, "
                f"this code needs {head}: run `nightshift db upgrade`"
            )

    # -- run lifecycle --------------------------------------------------------------------

    @contextlib.contextmanager
    def run_lock(self, model: str, ds: date, timeout_s: float) -> Iterator[None]:
        """Serialise runs of one (model, ds) across processes and machines."""
        with self.backend.run_lock(model, ds, timeout_s):
            yield

    def start_run(
        self,
        model: str,
        version: int,
        ds: date,
        *,
        run_key: str | None = None,
        input_rows: int | None = None,
        files: int | None = None,
        keep_running: Sequence[int] = (),
        history_days: float = 0,
        manifest: dict[str, Any] | None = None,
    ) -> int:
        """Record a new run and return its id. Call under `run_lock`.

        `keep_running`: runs of this (model, ds) started by the same pass (other versions scored in the
        same read), which are alive although they are running. `history_days`: replaced runs of the
        partition stay while their history window is open (see `cleanup`). `manifest`: what the run reads
        (nightshift.telemetry.manifest), stored with it for lineage.
        """
        now = utcnow()
        with self.begin() as conn:
            # Under the run lock no other run of this partition is alive: any still marked
            # running (but this pass's own) crashed. Mark them so their staged rows are cleaned up.
            conn.execute(
                schema.runs.update()
                .where(
                    schema.runs.c.model == model,
                    schema.runs.c.ds == ds,
                    schema.runs.c.status == "running",
                    schema.runs.c.run_id.not_in(list(keep_running)),
                )
                .values(status="abandoned", finished_at=now, error="process ended before commit or failure")
            )
            result = conn.execute(
                schema.runs.insert().values(
                    model=model,
                    version=version,
                    ds=ds,
                    run_key=run_key,
                    status="running",
                    input_rows=input_rows,
                    files=files,
                    started_at=now,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    manifest=manifest,
                )
            )
            pk = result.inserted_primary_key
            assert pk is not None
            run_id = int(pk[0])
            self.backend.create_run_storage(conn, run_id)
        self.cleanup(model, version, ds, history_days=history_days)
        return run_id

    def commit_run(
        self,
        run_id: int,
        expected_rows: int,
        timings: dict[str, Any] | None = None,
        *,
        history_days: float = 0,
    ) -> CommitResult:
        """Make run `run_id` the visible truth of its partition, if its row counts match the input."""
        t0 = time.perf_counter()
        r, p, c = schema.runs, schema.partitions, schema.run_chunks
        with self.begin() as conn:
            # FOR UPDATE: a run that lost its lock session must not commit over the 'abandoned' mark
            # of the run that took over (start_run's UPDATE waits for, or is seen by, this lock).
            run = conn.execute(sa.select(r).where(r.c.run_id == run_id).with_for_update()).mappings().first()
            if run is None:
                raise CommitError(f"run {run_id} does not exist")
            where = f"model {run['model']!r} version {run['version']} ds={run['ds']} (run {run_id})"
            if run["status"] != "running":
                raise CommitError(f"{where}: cannot commit a run whose status is {run['status']!r}")
            staged = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(c.c.rows), 0)).where(c.c.run_id == run_id)
            ).scalar_one()
            # Each ledger row holds the count the database reported for its chunk's rows (COPY's
            # "COPY n", executemany's rowcount), written in the same transaction as the rows:
            # counting a 4M-row run again would cost 0.1 s.
            stored = self.backend.stored_rows(conn, run_id, staged)
            if not (int(staged) == int(stored) == int(expected_rows)):
                raise CommitError(
                    f"{where}: row count check failed: input {expected_rows} rows, ledger {staged}, "
                    f"stored {stored}; nothing committed, the previous predictions still serve"
                )
            self.backend.publish(conn, run_id, where)
            old = conn.execute(
                sa.select(p.c.run_id).where(
                    p.c.model == run["model"], p.c.version == run["version"], p.c.ds == run["ds"]
                )
            ).scalar_one_or_none()
            now = utcnow()
            values = {
                "run_id": run_id,
                "status": "committed",
                "row_count": int(stored),
                "committed_at": now,
                "timings": timings,
            }
            insert = dialect_insert(self.dialect, p).values(
                model=run["model"], version=run["version"], ds=run["ds"], **values
            )
            conn.execute(insert.on_conflict_do_update(index_elements=["model", "version", "ds"], set_=values))
            conn.execute(
                r.update()
                .where(r.c.run_id == run_id)
                .values(status="committed", rows=int(stored), finished_at=now, timings=timings)
            )
            if old is not None and old != run_id:
                conn.execute(r.update().where(r.c.run_id == old).values(status="superseded", replaced_at=now))
        seconds = time.perf_counter() - t0
        try:
            self.cleanup(run["model"], run["version"], run["ds"], history_days=history_days)
        except Exception as exc:  # noqa: BLE001 - committed is committed; `nightshift gc` finishes the cleanup
            log.warning("run %s committed, but removing replaced rows failed (run `nightshift gc`): %s", run_id, exc)
        return CommitResult(run_id=run_id, rows=int(stored), replaced_run_id=old, seconds=seconds)

    def fail_run(self, run_id: int, error: str) -> None:
        """Mark a run failed and drop its staged rows. The committed partition is untouched."""
        r = schema.runs
        with self.begin() as conn:
            marked = conn.execute(
                r.update()
                .where(r.c.run_id == run_id, r.c.status == "running")
                .values(status="failed", finished_at=utcnow(), error=error[:4000])
            ).rowcount
        if marked:
            # Only a run that was still running loses its rows: never one that committed meanwhile.
            self._delete_run_rows([run_id])

    def cleanup(self, model: str, version: int, ds: date, *, history_days: float = 0) -> int:
        """Delete the staged rows of failed and abandoned runs of one partition, and of replaced runs that
        stopped serving more than `history_days` ago (until then they answer "what did we serve at T")."""
        r = schema.runs
        with self.connect() as conn:
            dead = [
                int(x)
                for x in conn.execute(
                    sa.select(r.c.run_id).where(
                        r.c.model == model,
                        r.c.version == version,
                        r.c.ds == ds,
                        sa.or_(
                            r.c.status.in_(("failed", "abandoned")),
                            sa.and_(r.c.status == "superseded", _replaced_before(r, history_days)),
                        ),
                    )
                ).scalars()
            ]
            conn.rollback()
        return self._delete_run_rows(dead)

    def expire(self, model: str, before: date, *, dry_run: bool = False) -> list[PartitionInfo]:
        """Retention: remove the committed partitions of `model` older than `before`, rows and all.

        On PostgreSQL each one is a table drop (detached concurrently, so readers never wait).
        With `dry_run`, return what would go and change nothing.
        """
        p, r = schema.partitions, schema.runs
        now = utcnow()
        with self.begin() as conn:
            rows = conn.execute(sa.select(p).where(p.c.model == model, p.c.ds < before)).mappings().all()
            expired = [_partition_info(row) for row in rows]
            if dry_run:
                conn.rollback()
                return expired
            for info in expired:
                conn.execute(p.delete().where(p.c.model == model, p.c.version == info.version, p.c.ds == info.ds))
                # replaced_at: it served until now (the API's ?as_of= then tells "removed" from "never served").
                conn.execute(r.update().where(r.c.run_id == info.run_id).values(status="expired", replaced_at=now))
        self._delete_run_rows([i.run_id for i in expired])
        return expired

    def abandon_dead_runs(self, model: str | None = None, *, dry_run: bool = False) -> list[int]:
        """Runs still marked `running` whose process is gone (nobody holds their (model, ds) run lock, so
        no live run of that partition exists): mark them abandoned, so gc collects what they staged.

        A run being scored holds its lock the whole time, so it is never taken for dead."""
        r = schema.runs
        q = sa.select(r.c.run_id, r.c.model, r.c.ds).where(r.c.status == "running")
        if model:
            q = q.where(r.c.model == model)
        with self.connect() as conn:
            running = [(int(x.run_id), str(x.model), as_date(x.ds)) for x in conn.execute(q)]
            conn.rollback()
        dead: list[int] = []
        for run_id, run_model, ds in running:
            try:
                with self.backend.run_lock(run_model, ds, timeout_s=0):
                    if dry_run:
                        dead.append(run_id)
                        continue
                    with self.begin() as conn:
                        marked = conn.execute(
                            r.update()
                            .where(r.c.run_id == run_id, r.c.status == "running")
                            .values(
                                status="abandoned", finished_at=utcnow(), error="process ended before commit or failure"
                            )
                        ).rowcount
                    if marked:
                        dead.append(run_id)
            except RunLockTimeout:
                continue  # alive: its run holds the lock
        return dead

    def gc(
        self, model: str | None = None, *, dry_run: bool = False, history_days: Mapping[str, float] | None = None
    ) -> GcReport:
        """Remove what dead runs left (replaced, failed, crashed, expired), with the rows each held.

        Runs whose process died without a word (still `running`, lock free) are marked abandoned first.
        Only runs that still hold rows or a table are visited. With `dry_run`, nothing changes.
        """
        abandoned = self.abandon_dead_runs(model, dry_run=dry_run)
        r = schema.runs
        q = sa.select(r).where(r.c.status.in_(("superseded", "failed", "abandoned", "expired")))
        if model:
            q = q.where(r.c.model == model)
        for kept_model, days in (history_days or {}).items():  # replaced runs inside their model's history window
            if days > 0:
                q = q.where(
                    sa.not_(
                        sa.and_(r.c.model == kept_model, r.c.status == "superseded", sa.not_(_replaced_before(r, days)))
                    )
                )
        with self.connect() as conn:
            dead = {int(row["run_id"]): dict(row) for row in conn.execute(q).mappings()}
            if dry_run:
                for run_id in abandoned:  # not marked in a dry run, but they would be
                    row = conn.execute(sa.select(r).where(r.c.run_id == run_id)).mappings().first()
                    if row is not None:
                        dead[run_id] = {**dict(row), "status": "abandoned"}
            left = self.backend.with_leftovers(conn, sorted(dead))
            conn.rollback()
        removed = self.backend.remove_runs(left, dry_run=dry_run)
        runs = [
            {
                "run_id": x.run_id,
                "model": dead[x.run_id]["model"],
                "version": int(dead[x.run_id]["version"]),
                "ds": as_date(dead[x.run_id]["ds"]),
                "status": dead[x.run_id]["status"],
                "rows": x.rows,
            }
            for x in removed
        ]
        return GcReport(runs=runs, abandoned=abandoned, dry_run=dry_run)

    def served_run(self, model: str, version: int, ds: date, at: datetime) -> PartitionInfo | None:
        """The run that served (model, version, ds) at time `at` (a replaced one while its history is kept).

        The lookup API's `?as_of=` applies the same rule (nightshift.api.queries); a replaced or expired run
        without `replaced_at` (recorded since migration 0008) has no known end and is left out."""
        r = schema.runs
        q = (
            sa.select(r)
            .where(
                r.c.model == model,
                r.c.version == version,
                r.c.ds == ds,
                r.c.status.in_(("committed", "superseded", "expired")),
                r.c.finished_at <= at,
                sa.or_(r.c.replaced_at > at, sa.and_(r.c.replaced_at.is_(None), r.c.status == "committed")),
            )
            .order_by(r.c.finished_at.desc())
            .limit(1)
        )
        with self.connect() as conn:
            row = conn.execute(q).mappings().first()
        if row is None:
            return None
        return PartitionInfo(
            model=row["model"],
            version=int(row["version"]),
            ds=as_date(row["ds"]),
            run_id=int(row["run_id"]),
            row_count=int(row["rows"] or 0),
            committed_at=as_utc(row["finished_at"]),
            timings=row["timings"],
        )

    def _delete_run_rows(self, run_ids: Sequence[int]) -> int:
        return sum(r.rows for r in self.backend.remove_runs(run_ids))

    # -- reads ----------------------------------------------------------------------------

    def partition(self, model: str, version: int, ds: date) -> PartitionInfo | None:
        p = schema.partitions
        with self.connect() as conn:
            row = conn.execute(sa.select(p).where(*_committed(p, model, version, ds))).mappings().first()
        return _partition_info(row) if row else None

    def latest_partition(self, model: str, version: int) -> PartitionInfo | None:
        p = schema.partitions
        with self.connect() as conn:
            row = (
                conn.execute(
                    sa.select(p)
                    .where(p.c.model == model, p.c.version == version, p.c.status == "committed")
                    .order_by(p.c.ds.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return _partition_info(row) if row else None

    def list_partitions(self, model: str | None = None, limit: int = 100) -> list[PartitionInfo]:
        p = schema.partitions
        q = sa.select(p).where(p.c.status == "committed")
        if model:
            q = q.where(p.c.model == model)
        q = q.order_by(p.c.model, p.c.ds.desc(), p.c.version.desc()).limit(limit)
        with self.connect() as conn:
            return [_partition_info(row) for row in conn.execute(q).mappings()]

    def runs(self, model: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        r = schema.runs
        q = sa.select(r)
        if model:
            q = q.where(r.c.model == model)
        q = q.order_by(r.c.run_id.desc()).limit(limit)
        with self.connect() as conn:
            return [dict(row) for row in conn.execute(q).mappings()]

    def lookup(self, model: str, version: int, ds: date, entity_ids: Sequence[str]) -> list[Prediction]:
        """Committed predictions of some entities, from one (model, version, ds), in one query."""
        if not entity_ids:
            return []
        q = lookup_statement(model, version, ds, entity_ids)
        with self.connect() as conn:
            return [
                Prediction(
                    entity_id=row.entity_id,
                    score=float(row.score),
                    label=int(row.label) if row.label is not None else None,
                    ds=as_date(row.ds),
                    version=int(row.version),
                    run_id=int(row.run_id),
                    committed_at=as_utc(row.committed_at),
                    value=float(row.value) if row.value is not None else None,
                    probs=decode_probs(row.probs),
                    reasons=decode_reasons(row.reasons),
                )
                for row in conn.execute(q)
            ]

    def read_partition(self, model: str, version: int, ds: date) -> tuple[list[str], list[float]] | None:
        """All committed (entity id, score) of one (model, version, ds), or None if it is not committed.

        Read in one snapshot through the catalog; meant for comparisons and reports, not lookups.
        """
        c = schema.partitions
        q = partition_statement(model, version, ds)
        with self.begin() as conn:
            committed = conn.execute(sa.select(c.c.run_id).where(*_committed(c, model, version, ds))).scalar()
            if committed is None:
                return None
            ids: list[str] = []
            scores: list[float] = []
            for part in conn.execute(q.execution_options(yield_per=50_000)).partitions():
                for entity_id, score in part:
                    ids.append(entity_id)
                    scores.append(float(score))
        return ids, scores

    def count_predictions(self, run_id: int) -> int:
        """Rows stored under a run, staged or committed (0 once its rows are gone)."""
        with self.connect() as conn:
            return self.backend.count_rows(conn, run_id)


def _committed(c: Any, model: str, version: int, ds: date) -> tuple[Any, ...]:
    """The conditions that pick the committed catalog row of (model, version, ds) in `c` (partitions, or an alias)."""
    return (c.c.model == model, c.c.version == version, c.c.ds == ds, c.c.status == "committed")


def _committed_run(model: str, version: int, ds: date) -> Any:
    """`predictions.run_id = (the catalog's committed run of (model, version, ds))`, as an uncorrelated scalar
    subquery: PostgreSQL then prunes `predictions` to that run's partition when the statement executes.
    Joined on the catalog row alone, the plan may scan or probe every partition (every retained run of every
    model) and drop the other runs' rows after the join (it did, for whole-partition reads and batches)."""
    c1 = schema.partitions.alias("c1")
    run = sa.select(c1.c.run_id).where(*_committed(c1, model, version, ds)).correlate(None).scalar_subquery()
    return schema.predictions.c.run_id == run


def lookup_statement(model: str, version: int, ds: date, entity_ids: Sequence[str]) -> Any:
    """Committed predictions of some entities of (model, version, ds), with the partition's columns (Store.lookup)."""
    p, c = schema.predictions, schema.partitions
    return (
        sa.select(
            p.c.entity_id,
            p.c.score,
            p.c.label,
            p.c.value,
            p.c.probs,
            p.c.reasons,
            c.c.ds,
            c.c.version,
            c.c.run_id,
            c.c.committed_at,
        )
        .select_from(c.join(p, p.c.run_id == c.c.run_id))
        .where(*_committed(c, model, version, ds))
        .where(_committed_run(model, version, ds), p.c.entity_id.in_(list(entity_ids)))
    )


def partition_statement(model: str, version: int, ds: date) -> Any:
    """Every committed (entity id, score) of (model, version, ds) (Store.read_partition)."""
    p = schema.predictions
    return sa.select(p.c.entity_id, p.c.score).where(_committed_run(model, version, ds))


def _replaced_before(r: sa.Table, days: float) -> Any:
    """A replaced run whose history window (`days` after it was replaced) is over (or never opened)."""
    if days <= 0:
        return sa.true()
    cutoff = utcnow() - timedelta(days=days)
    return sa.or_(r.c.replaced_at.is_(None), r.c.replaced_at < cutoff)


def _partition_info(row: Any) -> PartitionInfo:
    return PartitionInfo(
        model=row["model"],
        version=int(row["version"]),
        ds=as_date(row["ds"]),
        run_id=int(row["run_id"]),
        row_count=int(row["row_count"]),
        committed_at=as_utc(row["committed_at"]),
        timings=row["timings"],
    )
