"""Prediction store: staged writes, the atomic commit of one (model, version, ds), the catalog and reads.

How a partition becomes visible
-------------------------------
A scoring run gets a fresh ``run_id`` and stages its rows under it, chunk by chunk, each
chunk in its own short transaction together with a ``run_chunks`` ledger row, so a chunk
recomputed by Dask is never written twice. Readers only ever see rows whose ``run_id`` the
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
import io
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

from nightshift import schema
from nightshift.errors import CommitError, DuplicateEntityError, NightshiftError, RunLockTimeout

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa


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
        cfg.set_main_option("script_location", "nightshift:migrations")
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
        self.cleanup(model, version, ds)
        return run_id

    def commit_run(self, run_id: int, expected_rows: int, timings: dict[str, Any] | None = None) -> CommitResult:
        """Make run `run_id` the visible truth of its partition, if its row counts match the input."""
        t0 = time.perf_counter()
        r, p, c = schema.runs, schema.partitions, schema.run_chunks
        with self.begin() as conn:
            run = conn.execute(sa.select(r).where(r.c.run_id == run_id)).mappings().first()
            if run is None:
                raise CommitError(f"run {run_id} does not exist")
            where = f"model {run['model']!r} version {run['version']} ds={run['ds']} (run {run_id})"
            if run["status"] != "running":
                raise CommitError(f"{where}: cannot commit a run whose status is {run['status']!r}")
            staged = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(c.c.rows), 0)).where(c.c.run_id == run_id)
            ).scalar_one()
            stored = conn.execute(
                sa.select(sa.func.count()).select_from(schema.predictions).where(schema.predictions.c.run_id == run_id)
            ).scalar_one()
            if not (int(staged) == int(stored) == int(expected_rows)):
                raise CommitError(
                    f"{where}: row count check failed: input {expected_rows} rows, ledger {staged}, "
                    f"stored {stored}; nothing committed, the previous predictions still serve"
                )
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
        self.cleanup(run["model"], run["version"], run["ds"])
        return CommitResult(run_id=run_id, rows=int(stored), replaced_run_id=old, seconds=seconds)

    def fail_run(self, run_id: int, error: str) -> None:
        """Mark a run failed and drop its staged rows. The committed partition is untouched."""
        r = schema.runs
        with self.begin() as conn:
            conn.execute(
                r.update()
                .where(r.c.run_id == run_id, r.c.status == "running")
                .values(status="failed", finished_at=utcnow(), error=error[:4000])
            )
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

    def _delete_run_rows(self, run_ids: Sequence[int]) -> int:
        if not run_ids:
            return 0
        deleted = 0
        with self.begin() as conn:
            for rid in run_ids:
                res = conn.execute(schema.predictions.delete().where(schema.predictions.c.run_id == rid))
                deleted += int(res.rowcount or 0)
                conn.execute(schema.run_chunks.delete().where(schema.run_chunks.c.run_id == rid))
        return deleted

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

    def count_predictions(self, run_id: int) -> int:
        with self.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(schema.predictions)
                    .where(schema.predictions.c.run_id == run_id)
                ).scalar_one()
            )


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
        conn.execute("INSERT INTO run_chunks (run_id, chunk, rows) VALUES (?, ?, ?)", (run_id, chunk, n))
        try:
            conn.executemany(
                "INSERT INTO predictions (run_id, entity_id, score, label) VALUES (?, ?, ?, ?)",
                zip([run_id] * n, ids.to_pylist(), scores.tolist(), labels.tolist(), strict=True),
            )
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise
            conn.execute("ROLLBACK")
            dupes = _existing_ids_sqlite(conn, run_id, ids)
            raise DuplicateEntityError(
                f"{chunk}: entity id(s) {', '.join(map(repr, dupes[:5]))} appear more than once in the partition "
                "(also in another file); duplicate entity ids are an error"
            ) from None
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


def _csv_payload(run_id: int, ids: pa.Array, scores: np.ndarray, labels: np.ndarray) -> bytes:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    n = len(ids)
    table = pa.table(
        {
            "run_id": pa.array([run_id], pa.int64()).take(pa.array([0] * n)) if n else pa.array([], pa.int64()),
            "entity_id": ids,
            "score": pa.array(scores, pa.float32()),
            "label": pa.array(labels, pa.int16()),
        }
    )
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False))
    return buf.getvalue()


def _stage_postgres(url: str, run_id: int, chunk: str, ids: pa.Array, scores: np.ndarray, labels: np.ndarray) -> int:
    import psycopg
    from psycopg import errors as pg_errors

    conn: psycopg.Connection[Any] = _staging_connection(url)
    n = len(ids)
    payload = _csv_payload(run_id, ids, scores, labels)
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT rows FROM run_chunks WHERE run_id = %s AND chunk = %s", (run_id, chunk))
            row = cur.fetchone()
            if row is not None:
                return int(row[0])
            cur.execute("INSERT INTO run_chunks (run_id, chunk, rows) VALUES (%s, %s, %s)", (run_id, chunk, n))
            with cur.copy("COPY predictions (run_id, entity_id, score, label) FROM STDIN WITH (FORMAT csv)") as cp:
                cp.write(payload)
    except pg_errors.UniqueViolation as exc:
        constraint = getattr(exc.diag, "constraint_name", "") or ""
        if "run_chunks" in constraint:
            # A concurrent attempt of the same chunk committed first: its rows stand.
            with conn.cursor() as cur:
                cur.execute("SELECT rows FROM run_chunks WHERE run_id = %s AND chunk = %s", (run_id, chunk))
                row = cur.fetchone()
                conn.rollback()
            if row is not None:
                return int(row[0])
            raise
        detail = (exc.diag.message_detail or "").strip()
        raise DuplicateEntityError(
            f"{chunk}: an entity id appears more than once in the partition ({detail}); "
            "duplicate entity ids are an error"
        ) from None
    return n
