"""Async, read-only database access for the API: a small pool over psycopg (PostgreSQL) or aiosqlite (SQLite)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy.engine import make_url

from nightshift.db.engine import normalize_url, redact
from nightshift.errors import NightshiftError


class DatabaseUnavailable(NightshiftError):
    """The database cannot be reached or did not answer in time (HTTP 503)."""


class Database(Protocol):
    """What the API needs from a database: run one read statement, get its rows."""

    dialect: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]: ...


C = TypeVar("C")


class _Pool(Generic[C]):
    """At most `size` connections in use; idle ones are reused last-in first-out (the warmest first)."""

    def __init__(self, size: int, timeout_s: float) -> None:
        self.size = size
        self.timeout_s = timeout_s
        self._idle: list[C] = []
        self._slots = asyncio.Semaphore(size)

    async def acquire(self) -> None:
        """Take a slot (a right to hold one connection); 503 after `timeout_s` of waiting."""
        if not self._slots.locked():
            await self._slots.acquire()
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise DatabaseUnavailable(
                f"no database connection free after {self.timeout_s:.1f}s ({self.size} in the pool)"
            ) from None

    def release(self) -> None:
        self._slots.release()

    def take_idle(self) -> C | None:
        return self._idle.pop() if self._idle else None

    def give_back(self, conn: C) -> None:
        self._idle.append(conn)

    def drain(self) -> list[C]:
        conns, self._idle = self._idle, []
        return conns


def _named_to_pyformat(sql: str) -> str:
    return re.sub(r"(?<![:\w]):([a-z_][a-z0-9_]*)", r"%(\1)s", sql)


class PostgresDatabase:
    """psycopg 3 async connections: autocommit, read-only sessions, server-side prepared statements.

    Not SQLAlchemy's async engine: a point lookup through it costs ~0.6 ms of client CPU
    (greenlet hop, pool checkout and reset, result processing) against ~0.05 ms for the driver
    itself, measured on this machine; at that price the database path, not HTTP, would bound
    the API. The statements are plain SQL with bound parameters only (queries.py).
    """

    dialect = "postgresql"

    def __init__(self, url: str, *, pool_size: int, timeout_s: float, statement_timeout_ms: int) -> None:
        parsed = make_url(normalize_url(url))
        self._conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self._where = redact(url)
        # force_generic_plan: predictions is partitioned (one LIST partition per run), and PostgreSQL
        # kept re-planning each execution (custom plans, ~0.1 ms of planning for a 0.02 ms lookup);
        # generic plans prune partitions at run time from the catalog row instead.
        # repeatable read: the statement's rows come from the snapshot it took BEFORE its plan saw the
        # partitions. Under read committed, execution takes a newer snapshot than the one the plan was
        # checked with, so a commit (ATTACH + catalog pointer, one transaction) landing in between showed
        # the new pointer without its partition: a partition with none of its rows (a 404 for an entity
        # that is there; seen under load by test_consistency). Read-only, it never fails to serialize.
        self._options = (
            "-c default_transaction_read_only=on -c plan_cache_mode=force_generic_plan "
            "-c default_transaction_isolation=repeatable\\ read "
            f"-c statement_timeout={statement_timeout_ms}"
        )
        self._timeout_s = timeout_s
        self._pool: _Pool[Any] = _Pool(pool_size, timeout_s)
        self._sql: dict[str, str] = {}

    async def _connect(self) -> Any:
        """A new connection and the one cursor it keeps (a cursor per query costs ~10 µs)."""
        import psycopg

        try:
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,
                options=self._options,
                connect_timeout=max(1, int(self._timeout_s)),
                application_name="nightshift-api",
            )
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cannot reach {self._where}: {_first_line(exc)}") from exc
        return conn, conn.cursor()

    async def open(self) -> None:
        self._pool.give_back(await self._connect())  # fail at startup, not at the first request

    async def close(self) -> None:
        for conn, _cur in self._pool.drain():
            with contextlib.suppress(Exception):
                await conn.close()

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        import psycopg
        from psycopg import pq

        query = self._sql.get(sql)
        if query is None:
            query = self._sql[sql] = _named_to_pyformat(sql)
        await self._pool.acquire()
        try:
            # A connection idle in the pool may have died (server restart): retry once on a fresh one.
            for attempt in (0, 1):
                entry = self._pool.take_idle() if attempt == 0 else None
                fresh = entry is None
                if entry is None:
                    entry = await self._connect()
                conn, cur = entry
                try:
                    await cur.execute(query, params, prepare=True)
                    rows: list[tuple[Any, ...]] = await cur.fetchall()
                except psycopg.OperationalError as exc:
                    with contextlib.suppress(Exception):
                        await conn.close()
                    if fresh or attempt == 1:
                        raise DatabaseUnavailable(f"{self._where}: {_first_line(exc)}") from exc
                    continue
                except BaseException:
                    if conn.broken or conn.info.transaction_status != pq.TransactionStatus.IDLE:
                        with contextlib.suppress(Exception):
                            await conn.close()
                    else:
                        self._pool.give_back(entry)
                    raise
                self._pool.give_back(entry)
                return rows
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self._pool.release()


class SqliteDatabase:
    """aiosqlite connections (one thread each), read-only (`query_only`), on an existing file."""

    dialect = "sqlite"

    def __init__(self, url: str, *, pool_size: int, timeout_s: float) -> None:
        parsed = make_url(url)
        if not parsed.database or parsed.database == ":memory:":
            raise DatabaseUnavailable("the API needs a SQLite file, not an in-memory database")
        self._path = parsed.database
        self._timeout_s = timeout_s
        self._pool: _Pool[Any] = _Pool(pool_size, timeout_s)

    async def _connect(self) -> Any:
        import aiosqlite

        try:
            # mode=rw: never create an empty database where the store should be.
            conn = await aiosqlite.connect(
                f"file:{self._path}?mode=rw", uri=True, timeout=self._timeout_s, isolation_level=None
            )
            await conn.execute("PRAGMA query_only = 1")
            await conn.execute(f"PRAGMA busy_timeout = {int(self._timeout_s * 1000)}")
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(f"cannot open the SQLite store {self._path}: {exc}") from exc
        return conn

    async def open(self) -> None:
        self._pool.give_back(await self._connect())

    async def close(self) -> None:
        for conn in self._pool.drain():
            with contextlib.suppress(Exception):
                await conn.close()

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        await self._pool.acquire()
        try:
            conn = self._pool.take_idle() or await self._connect()
            try:
                rows = await conn.execute_fetchall(sql, params)
            except sqlite3.OperationalError as exc:
                with contextlib.suppress(Exception):
                    await conn.close()
                if str(exc).startswith(("no such table", "no such column")):
                    raise  # a schema problem, not an outage
                raise DatabaseUnavailable(f"SQLite store {self._path}: {exc}") from exc
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.close()
                raise
            self._pool.give_back(conn)
            return list(rows)
        finally:
            self._pool.release()


def open_database(url: str, *, pool_size: int, timeout_s: float, statement_timeout_ms: int) -> Database:
    """The Database for a store URL (not connected yet: call `open()` in the app's lifespan)."""
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        return PostgresDatabase(
            url, pool_size=pool_size, timeout_s=timeout_s, statement_timeout_ms=statement_timeout_ms
        )
    if backend == "sqlite":
        return SqliteDatabase(url, pool_size=pool_size, timeout_s=timeout_s)
    raise DatabaseUnavailable(f"unsupported database {backend!r} for {redact(url)} (sqlite or postgresql)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
