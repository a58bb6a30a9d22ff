"""The store's engine and its small shared pieces: URLs, the SQLite connection pragmas, time and date values."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, make_url

from nightshift.errors import NightshiftError


class StoreError(NightshiftError):
    """The store is unreachable, not migrated, or refused an operation."""


class StoreUnavailable(StoreError):
    """The store could not be reached after the configured retries."""


#: SQLite's result codes for a refusal by the file's environment, not by the statement (`sqlite_errorname`).
_SQLITE_ENVIRONMENT = (
    "SQLITE_FULL",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_READONLY",
    "SQLITE_CANTOPEN",
    "SQLITE_IOERR",
)


def sqlite_environment_error(exc: BaseException) -> bool:
    """Whether a SQLite error is the disk's or the file's (full, locked, read-only, unopenable, I/O), not a bug
    (a missing table or column, a syntax error)."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    return name.startswith(_SQLITE_ENVIRONMENT)


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


def libpq_url(url: URL) -> str:
    """A libpq connection string (for psycopg directly) from a SQLAlchemy URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def dialect_insert(dialect: str, table: sa.Table) -> Any:
    """The dialect's INSERT (both support ON CONFLICT)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def as_date(v: Any) -> date:
    if isinstance(v, datetime):
        return v.date()
    if isinstance(v, date):
        return v
    return date.fromisoformat(str(v))


def as_utc(v: Any) -> datetime:
    if isinstance(v, str):
        v = datetime.fromisoformat(v)
    if v.tzinfo is None:
        v = v.replace(tzinfo=UTC)
    return v


def sqlite_on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event start transactions, so they can be IMMEDIATE.
    dbapi_conn.isolation_level = None
    sqlite_pragmas(dbapi_conn)


def sqlite_on_begin(conn: Connection) -> None:
    # Take the write lock up front: a deferred transaction that reads then writes can
    # fail at once with "database is locked" instead of waiting for its turn.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def sqlite_pragmas(dbapi_conn: sqlite3.Connection) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
