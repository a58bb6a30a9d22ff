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
import hashlib
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import OperationalError
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from nightshift.db import schema
from nightshift.errors import CommitError, DuplicateEntityError, NightshiftError, RunLockTimeout

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa


log = logging.getLogger(__name__)


class StoreError(NightshiftError):
    """The store is unreachable, not migrated, or refused an operation."""


class StoreUnavailable(StoreError):
    """The store could not be reached after the configured retries."""


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
    label: int
    ds: date
    version: int
    run_id: int
    committed_at: datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def normalize_url(url: str) -> str:
    """SQLAlchemy URL with the driver nightshift uses (psycopg 3 for PostgreSQL)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL that does not parse is shown as given
        return url


def _libpq_url(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def staging_table(run_id: int) -> str:
    """The PostgreSQL table a run's rows are staged in (and attached as its partition)."""
    return f"predictions_r{int(run_id)}"


def lock_key(model: str, ds: date | str) -> int:
    """A stable signed 64-bit key for the (model, ds) run lock."""
    digest = hashlib.blake2b(f"nightshift:run:{model}:{ds}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


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
            sa.event.listen(self.engine, "connect", _sqlite_on_connect)
            sa.event.listen(self.engine, "begin", _sqlite_on_begin)
        else:
            self.engine = sa.create_engine(self.url, pool_pre_ping=True, pool_size=2, max_overflow=4)

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
        return not self.is_sqlite

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
        if self.is_sqlite:
            from filelock import FileLock, Timeout

            lock_dir = Path(self.sqlite_path + ".locks")
            lock_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(lock_dir / f"{model}__{ds}.lock"))
            try:
                lock.acquire(timeout=timeout_s)
            except Timeout:
                raise RunLockTimeout(
                    f"another run of model {model!r} ds={ds} still holds the lock after {timeout_s:.0f}s"
                ) from None
            try:
                yield
            finally:
                lock.release()
            return
        import psycopg

        key = lock_key(model, ds)
        conn = psycopg.connect(_libpq_url(self._url), autocommit=True)
        try:
            deadline = time.monotonic() + timeout_s
            pause = 0.05
            while True:
                got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                if got and got[0]:
                    break
                if time.monotonic() >= deadline:
                    raise RunLockTimeout(
                        f"another run of model {model!r} ds={ds} still holds the lock after {timeout_s:.0f}s"
                    )
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        finally:
            conn.close()

    def start_run(
        self,
        model: str,
        version: int,
        ds: date,
        *,
        run_key: str | None = None,
        input_rows: int | None = None,
        files: int | None = None,
    ) -> int:
        """Record a new run and return its id. Call under `run_lock`."""
        now = utcnow()
        with self.begin() as conn:
            # Under the run lock no other run of this partition is alive: any still marked
            # running crashed. Mark them so their staged rows are cleaned up.
            conn.execute(
                schema.runs.update()
                .where(
                    schema.runs.c.model == model,
                    schema.runs.c.ds == ds,
                    schema.runs.c.status == "running",
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
                )
            )
            pk = result.inserted_primary_key
            assert pk is not None
            run_id = int(pk[0])
            if not self.is_sqlite:
                table = staging_table(run_id)
                conn.exec_driver_sql(
                    f"CREATE TABLE {table} (LIKE predictions INCLUDING DEFAULTS, "
                    f"CONSTRAINT {table}_run CHECK (run_id = {run_id}))"
                )
        self.cleanup(model, version, ds)
        return run_id

    def commit_run(self, run_id: int, expected_rows: int, timings: dict[str, Any] | None = None) -> CommitResult:
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
            stored = self._staged_rows(conn, run_id, staged)
            if not (int(staged) == int(stored) == int(expected_rows)):
                raise CommitError(
                    f"{where}: row count check failed: input {expected_rows} rows, ledger {staged}, "
                    f"stored {stored}; nothing committed, the previous predictions still serve"
                )
            if not self.is_sqlite:
                self._attach_run(conn, run_id, where)
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
            insert = _dialect_insert(self.dialect, p).values(
                model=run["model"], version=run["version"], ds=run["ds"], **values
            )
            conn.execute(insert.on_conflict_do_update(index_elements=["model", "version", "ds"], set_=values))
            conn.execute(
                r.update()
                .where(r.c.run_id == run_id)
                .values(status="committed", rows=int(stored), finished_at=now, timings=timings)
            )
            if old is not None and old != run_id:
                conn.execute(r.update().where(r.c.run_id == old).values(status="superseded"))
        seconds = time.perf_counter() - t0
        try:
            self.cleanup(run["model"], run["version"], run["ds"])
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

    def cleanup(self, model: str, version: int, ds: date) -> int:
        """Delete the staged rows of replaced, failed and abandoned runs of one partition."""
        r = schema.runs
        with self.connect() as conn:
            dead = [
                int(x)
                for x in conn.execute(
                    sa.select(r.c.run_id).where(
                        r.c.model == model,
                        r.c.version == version,
                        r.c.ds == ds,
                        r.c.status.in_(("superseded", "failed", "abandoned")),
                    )
                ).scalars()
            ]
            conn.rollback()
        return self._delete_run_rows(dead)

    def expire(self, model: str, before: date) -> list[PartitionInfo]:
        """Retention: remove the committed partitions of `model` older than `before`, rows and all.

        On PostgreSQL each one is a table drop (detached concurrently, so readers never wait).
        """
        p, r = schema.partitions, schema.runs
        with self.begin() as conn:
            rows = conn.execute(sa.select(p).where(p.c.model == model, p.c.ds < before)).mappings().all()
            expired = [_partition_info(row) for row in rows]
            for info in expired:
                conn.execute(p.delete().where(p.c.model == model, p.c.version == info.version, p.c.ds == info.ds))
                conn.execute(r.update().where(r.c.run_id == info.run_id).values(status="expired"))
        self._delete_run_rows([i.run_id for i in expired])
        return expired

    def gc(self, model: str | None = None) -> int:
        """Remove what dead runs left (replaced, failed, abandoned, expired); returns rows removed."""
        r = schema.runs
        q = sa.select(r.c.run_id).where(r.c.status.in_(("superseded", "failed", "abandoned", "expired")))
        if model:
            q = q.where(r.c.model == model)
        with self.connect() as conn:
            dead = [int(x) for x in conn.execute(q).scalars()]
            conn.rollback()
        return self._delete_run_rows(dead)

    def _delete_run_rows(self, run_ids: Sequence[int]) -> int:
        if not run_ids:
            return 0
        if not self.is_sqlite:
            return self._drop_run_tables(run_ids)
        deleted = 0
        with self.begin() as conn:
            for rid in run_ids:
                res = conn.execute(schema.predictions.delete().where(schema.predictions.c.run_id == rid))
                deleted += int(res.rowcount or 0)
                conn.execute(schema.run_chunks.delete().where(schema.run_chunks.c.run_id == rid))
        return deleted

    def _drop_run_tables(self, run_ids: Sequence[int]) -> int:
        """Drop the tables of dead runs; attached ones are detached concurrently first, so readers never wait."""
        dropped = 0
        with self.connect() as conn:
            conn.exec_driver_sql("SET lock_timeout = '30s'")
            conn.commit()
            raw = conn.connection.dbapi_connection
            assert raw is not None
            raw.autocommit = True
            try:
                for rid in run_ids:
                    table = staging_table(rid)
                    attached = conn.exec_driver_sql(
                        "SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(%(t)s)", {"t": table}
                    ).scalar()
                    if attached:
                        try:
                            conn.exec_driver_sql(f"ALTER TABLE predictions DETACH PARTITION {table} CONCURRENTLY")
                        except sa.exc.DBAPIError:
                            # An earlier detach was interrupted: finish it.
                            conn.exec_driver_sql(f"ALTER TABLE predictions DETACH PARTITION {table} FINALIZE")
                    count = conn.exec_driver_sql(
                        "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%(t)s)", {"t": table}
                    ).scalar()
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
                    with self.begin() as c2:
                        c2.execute(schema.run_chunks.delete().where(schema.run_chunks.c.run_id == rid))
                    dropped += max(int(count or 0), 0)
            finally:
                raw.autocommit = False
        return dropped

    # -- reads ----------------------------------------------------------------------------

    def partition(self, model: str, version: int, ds: date) -> PartitionInfo | None:
        p = schema.partitions
        with self.connect() as conn:
            row = (
                conn.execute(
                    sa.select(p).where(
                        p.c.model == model, p.c.version == version, p.c.ds == ds, p.c.status == "committed"
                    )
                )
                .mappings()
                .first()
            )
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
        p, c = schema.predictions, schema.partitions
        q = (
            sa.select(p.c.entity_id, p.c.score, p.c.label, c.c.ds, c.c.version, c.c.run_id, c.c.committed_at)
            .select_from(c.join(p, p.c.run_id == c.c.run_id))
            .where(
                c.c.model == model,
                c.c.version == version,
                c.c.ds == ds,
                c.c.status == "committed",
                p.c.entity_id.in_(list(entity_ids)),
            )
        )
        with self.connect() as conn:
            return [
                Prediction(
                    entity_id=row.entity_id,
                    score=float(row.score),
                    label=int(row.label),
                    ds=_as_date(row.ds),
                    version=int(row.version),
                    run_id=int(row.run_id),
                    committed_at=_as_utc(row.committed_at),
                )
                for row in conn.execute(q)
            ]

    def read_partition(self, model: str, version: int, ds: date) -> tuple[list[str], list[float]] | None:
        """All committed (entity id, score) of one (model, version, ds), or None if it is not committed.

        Read in one snapshot through the catalog; meant for comparisons and reports, not lookups.
        """
        p, c = schema.predictions, schema.partitions
        q = (
            sa.select(p.c.entity_id, p.c.score)
            .select_from(c.join(p, p.c.run_id == c.c.run_id))
            .where(c.c.model == model, c.c.version == version, c.c.ds == ds, c.c.status == "committed")
        )
        with self.begin() as conn:
            committed = conn.execute(
                sa.select(c.c.run_id).where(
                    c.c.model == model, c.c.version == version, c.c.ds == ds, c.c.status == "committed"
                )
            ).scalar()
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
            return self._count_run_rows(conn, run_id)

    def _count_run_rows(self, conn: Connection, run_id: int) -> int:
        if self.is_sqlite:
            q = sa.select(sa.func.count()).select_from(schema.predictions).where(schema.predictions.c.run_id == run_id)
            return int(conn.execute(q).scalar_one())
        exists = conn.exec_driver_sql("SELECT to_regclass(%(t)s)", {"t": staging_table(run_id)}).scalar()
        if exists is None:
            return 0
        return int(conn.exec_driver_sql(f"SELECT count(*) FROM {staging_table(run_id)}").scalar_one())

    def _staged_rows(self, conn: Connection, run_id: int, ledger: int) -> int:
        """The ledger's count, once the run's rows are known to be there (0 if they are gone)."""
        if self.is_sqlite:
            p = schema.predictions
            q = sa.select(p.c.run_id).where(p.c.run_id == run_id).limit(1)
            return int(ledger) if conn.execute(q).first() is not None else 0
        exists = conn.exec_driver_sql("SELECT to_regclass(%(t)s)", {"t": staging_table(run_id)}).scalar()
        return int(ledger) if exists is not None else 0

    def _attach_run(self, conn: Connection, run_id: int, where: str) -> None:
        """Index a staged run's table and attach it as its partition (inside the commit transaction)."""
        from psycopg import errors as pg_errors

        table = staging_table(run_id)
        try:
            with conn.begin_nested():
                # A PRIMARY KEY constraint, not a bare unique index: only a constraint matches the
                # parent's, so ATTACH adopts it instead of building a second index (4M rows: 1.4 s
                # saved). Key order as the parent's (migration 0005): entity_id first sorts faster.
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (entity_id, run_id)")
        except sa.exc.IntegrityError as exc:
            if isinstance(exc.orig, pg_errors.UniqueViolation):
                detail = (exc.orig.diag.message_detail or "").strip()
                # The failure path may be slow: find the repeated ids exactly, for the error message.
                dupes = tuple(
                    str(v)
                    for (v,) in conn.exec_driver_sql(
                        f"SELECT entity_id FROM {table} GROUP BY entity_id HAVING count(*) > 1 "
                        "ORDER BY entity_id LIMIT 5"
                    )
                )
                shown = ", ".join(map(repr, dupes)) if dupes else detail
                raise DuplicateEntityError(
                    f"{where}: entity id(s) {shown} appear more than once in the partition; "
                    "duplicate entity ids are an error; nothing committed",
                    dupes,
                ) from None
            raise
        conn.exec_driver_sql(f"ALTER TABLE predictions ATTACH PARTITION {table} FOR VALUES IN ({int(run_id)})")


def _dialect_insert(dialect: str, table: sa.Table) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def _as_date(v: Any) -> date:
    if isinstance(v, datetime):
        return v.date()
    if isinstance(v, date):
        return v
    return date.fromisoformat(str(v))


def _as_utc(v: Any) -> datetime:
    if isinstance(v, str):
        v = datetime.fromisoformat(v)
    if v.tzinfo is None:
        v = v.replace(tzinfo=UTC)
    return v


def _partition_info(row: Any) -> PartitionInfo:
    return PartitionInfo(
        model=row["model"],
        version=int(row["version"]),
        ds=_as_date(row["ds"]),
        run_id=int(row["run_id"]),
        row_count=int(row["row_count"]),
        committed_at=_as_utc(row["committed_at"]),
        timings=row["timings"],
    )


def _sqlite_on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event start transactions, so they can be IMMEDIATE.
    dbapi_conn.isolation_level = None
    _sqlite_pragmas(dbapi_conn)


def _sqlite_on_begin(conn: Connection) -> None:
    # Take the write lock up front: a deferred transaction that reads then writes can
    # fail at once with "database is locked" instead of waiting for its turn.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_conn: sqlite3.Connection) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


# -- staging: runs inside Dask workers (PostgreSQL) or the driver (SQLite) -----------------

_conn_cache: dict[tuple[int, str], Any] = {}
_conn_lock = threading.Lock()


def _staging_connection(url: str) -> Any:
    """One raw DBAPI connection per process (and thread) and URL, reused across chunks."""
    key = (threading.get_ident(), url)
    with _conn_lock:
        conn = _conn_cache.get(key)
    if conn is not None:
        if getattr(conn, "closed", False):
            conn = None
        else:
            return conn
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database
        conn = sqlite3.connect(parsed.database, timeout=60, isolation_level=None, check_same_thread=False)
        _sqlite_pragmas(conn)
    else:
        import psycopg

        conn = psycopg.connect(_libpq_url(parsed))
    with _conn_lock:
        _conn_cache[key] = conn
    return conn


def _drop_staging_connection(url: str) -> None:
    key = (threading.get_ident(), url)
    with _conn_lock:
        conn = _conn_cache.pop(key, None)
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def stage_chunk(
    url: str,
    run_id: int,
    chunk: str,
    ids: pa.Array,
    scores: np.ndarray,
    labels: np.ndarray,
) -> int:
    """Write one chunk's predictions under `run_id`, exactly once. Returns the chunk's row count.

    A second attempt for the same (run_id, chunk) — a Dask task recomputed after its worker
    died after writing — finds the ledger row and writes nothing.
    """
    url = normalize_url(url)
    try:
        if make_url(url).get_backend_name() == "sqlite":
            return _stage_sqlite(url, run_id, chunk, ids, scores, labels)
        return _stage_postgres(url, run_id, chunk, ids, scores, labels)
    except DuplicateEntityError:
        raise
    except Exception:
        # A broken connection must not be reused by the next chunk.
        _drop_staging_connection(url)
        raise


def _stage_sqlite(url: str, run_id: int, chunk: str, ids: pa.Array, scores: np.ndarray, labels: np.ndarray) -> int:
    conn: sqlite3.Connection = _staging_connection(url)
    n = len(ids)
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT rows FROM run_chunks WHERE run_id = ? AND chunk = ?", (run_id, chunk)).fetchone()
        if row is not None:
            conn.execute("ROLLBACK")
            return int(row[0])
        try:
            stored = conn.executemany(
                "INSERT INTO predictions (run_id, entity_id, score, label) VALUES (?, ?, ?, ?)",
                zip([run_id] * n, ids.to_pylist(), scores.tolist(), labels.tolist(), strict=True),
            ).rowcount
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise
            conn.execute("ROLLBACK")
            dupes = _existing_ids_sqlite(conn, run_id, ids)
            raise DuplicateEntityError(
                f"{chunk}: entity id(s) {', '.join(map(repr, dupes[:5]))} appear more than once in the partition "
                "(also in another file); duplicate entity ids are an error",
                tuple(dupes[:5]),
            ) from None
        if stored != n:
            raise CommitError(f"{chunk}: sent {n} rows, SQLite stored {stored}")
        # The ledger holds the count SQLite reports, in the rows' transaction (see commit_run).
        conn.execute("INSERT INTO run_chunks (run_id, chunk, rows) VALUES (?, ?, ?)", (run_id, chunk, stored))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return n


def _existing_ids_sqlite(conn: sqlite3.Connection, run_id: int, ids: pa.Array) -> list[str]:
    found: list[str] = []
    values = ids.to_pylist()
    for i in range(0, len(values), 500):
        part = values[i : i + 500]
        marks = ",".join("?" * len(part))
        found += [
            r[0]
            for r in conn.execute(
                f"SELECT entity_id FROM predictions WHERE run_id = ? AND entity_id IN ({marks})",
                (run_id, *part),
            )
        ]
        if len(found) >= 5:
            break
    return found


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_COPY_TRAILER = b"\xff\xff"


def _binary_copy_body(run_id: int, ids: pa.Array, scores: np.ndarray, labels: np.ndarray) -> pa.Buffer:
    """The rows of a binary COPY (run_id int8, entity_id text, score float4, label int2), built in Arrow/numpy.

    Each row is a fixed 18-byte head (field count, run_id, id length), the id's bytes, and a
    fixed 14-byte tail (score, label); Arrow joins the three columns row by row in C++.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from nightshift.data.features import numpy_values

    n = len(ids)
    ids = ids.cast(pa.binary())
    lengths = numpy_values(pc.binary_length(ids), "<i4")
    head = np.empty(n, np.dtype([("fields", ">i2"), ("len1", ">i4"), ("run_id", ">i8"), ("len2", ">i4")]))
    head["fields"], head["len1"], head["run_id"], head["len2"] = 4, 8, run_id, lengths
    tail = np.empty(n, np.dtype([("len3", ">i4"), ("score", ">f4"), ("len4", ">i4"), ("label", ">i2")]))
    tail["len3"], tail["score"], tail["len4"], tail["label"] = 4, scores, 2, labels
    heads = pa.FixedSizeBinaryArray.from_buffers(pa.binary(18), n, [None, pa.py_buffer(head)]).cast(pa.binary())
    tails = pa.FixedSizeBinaryArray.from_buffers(pa.binary(14), n, [None, pa.py_buffer(tail)]).cast(pa.binary())
    # The empty separator as an array, not b"": a Python scalar argument makes pyarrow import pandas.
    empty = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(np.zeros(n + 1, np.int32)), pa.py_buffer(b"")])
    rows = pc.binary_join_element_wise(heads, ids, tails, empty)
    offsets = np.frombuffer(rows.buffers()[1], np.int32, count=n + 1, offset=rows.offset * 4)
    data = rows.buffers()[2]
    if data is None:
        return pa.py_buffer(b"")
    return data.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


class ChunkWriter:
    """Streams one chunk's rows into a PostgreSQL run table inside one transaction (see `chunk_writer`)."""

    def __init__(self, run_id: int, copy: Any = None, done: int | None = None) -> None:
        self.run_id = run_id
        self.rows = done or 0
        #: Rows an earlier attempt of this chunk already staged (then write nothing), or None.
        self.done = done
        self._copy = copy

    def write(self, ids: pa.Array, scores: np.ndarray, labels: np.ndarray) -> None:
        if self._copy is None:
            raise RuntimeError("this chunk was already staged; write nothing")
        if len(ids):
            self._copy.write(memoryview(_binary_copy_body(self.run_id, ids, scores, labels)))
            self.rows += len(ids)


@contextlib.contextmanager
def chunk_writer(url: str, run_id: int, chunk: str) -> Iterator[ChunkWriter]:
    """Stage one chunk into a PostgreSQL run table, exactly once, streaming batch by batch.

    One transaction holds the binary COPY of every batch written to the writer and, at the end,
    the chunk's ledger row with its row count: the database parses the rows while the worker
    scores the next batch, and a chunk is either wholly staged or not at all. If an earlier
    attempt of the chunk (a task Dask recomputed) already staged it, `writer.done` holds its
    row count and nothing is written. An exception inside the block rolls the chunk back.
    """
    import psycopg
    from psycopg import errors as pg_errors

    url = normalize_url(url)
    conn: psycopg.Connection[Any] = _staging_connection(url)
    table = staging_table(run_id)
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT rows FROM run_chunks WHERE run_id = %s AND chunk = %s", (run_id, chunk))
            row = cur.fetchone()
            if row is not None:
                yield ChunkWriter(run_id, done=int(row[0]))
                return
            with cur.copy(f"COPY {table} (run_id, entity_id, score, label) FROM STDIN WITH (FORMAT binary)") as cp:
                cp.write(_COPY_HEADER)
                writer = ChunkWriter(run_id, cp)
                yield writer
                cp.write(_COPY_TRAILER)
            # The ledger records the rows PostgreSQL says it stored ("COPY n"), in the same
            # transaction as the rows: the commit trusts the ledger without counting the table.
            if cur.rowcount != writer.rows:
                raise CommitError(f"{chunk}: sent {writer.rows} rows, PostgreSQL stored {cur.rowcount}")
            try:
                with conn.transaction():
                    stored = cur.rowcount
                    ledger = "INSERT INTO run_chunks (run_id, chunk, rows) VALUES (%s, %s, %s)"
                    cur.execute(ledger, (run_id, chunk, stored))
            except pg_errors.UniqueViolation:
                # A concurrent attempt of the same chunk committed its ledger row first: its rows stand, ours go.
                cur.execute("SELECT rows FROM run_chunks WHERE run_id = %s AND chunk = %s", (run_id, chunk))
                found = cur.fetchone()
                if found is None:
                    raise
                writer.done = writer.rows = int(found[0])
                raise _ChunkSuperseded from None
    except _ChunkSuperseded:
        return
    except pg_errors.UndefinedTable:
        raise CommitError(f"{chunk}: run {run_id} is no longer staging (it failed or was replaced)") from None
    except NightshiftError:
        raise  # bad data: the connection is fine
    except BaseException:
        # A broken connection must not be reused by the next chunk.
        _drop_staging_connection(url)
        raise


class _ChunkSuperseded(Exception):
    """Internal: roll this attempt's rows back, another attempt of the chunk committed first."""


def _stage_postgres(url: str, run_id: int, chunk: str, ids: pa.Array, scores: np.ndarray, labels: np.ndarray) -> int:
    with chunk_writer(url, run_id, chunk) as writer:
        if writer.done is None:
            writer.write(ids, scores, labels)
    return writer.rows
