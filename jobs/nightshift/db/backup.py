"""Back up and restore a SQLite store with SQLite's online backup API; a restore refuses while a process has it open.

Why a restore needs a tool: copying a backup over ``store.db`` while a process (the lookup API,
a scoring run, an Airflow task) still has the database open lets that process write its stale
pages and write-ahead log back over the restored file, silently undoing the restore. So
`restore` first looks for every process that has the database, its ``-wal``, ``-shm`` or
``-journal`` open, and refuses naming them; then it copies the backup in through SQLite itself
(the backup API), so nothing stale survives, and checks the result. PostgreSQL stores are backed
up and restored with PostgreSQL's own tools (``pg_dump -Fc`` / ``pg_restore``, see
docs/operations.md).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from nightshift.db import StoreError, normalize_url, redact

#: Files SQLite keeps beside a database while it is in use.
COMPANIONS = ("-wal", "-shm", "-journal")


class BackupError(StoreError):
    """A backup or restore was refused or failed; the live store is as it was."""


@dataclass(frozen=True)
class Holder:
    """A process that has one of the database's files open."""

    pid: int
    name: str
    path: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.name}) has {self.path} open"


@dataclass(frozen=True)
class BackupResult:
    """What a backup or restore copied."""

    source: str
    target: str
    bytes: int
    revision: str | None
    seconds: float


def sqlite_file(url: str, action: str) -> Path:
    """The database file of a SQLite store URL; BackupError naming PostgreSQL's own tools otherwise."""
    try:
        u = make_url(normalize_url(url))
    except Exception as exc:  # noqa: BLE001 - reported as the store's bad URL
        raise BackupError(f"store URL {redact(url)} is not a valid SQLAlchemy URL: {exc}") from None
    backend = u.get_backend_name()
    if backend == "postgresql":
        tool = "pg_dump -Fc" if action == "backup" else "pg_restore into an empty database"
        raise BackupError(
            f"the store at {redact(url)} is PostgreSQL: {action} it with {tool} "
            "(docs/operations.md, 'Back up and restore'); `nightshift db backup/restore` handle SQLite stores"
        )
    if backend != "sqlite" or not u.database or u.database == ":memory:":
        raise BackupError(f"cannot {action} the store at {redact(url)}: not a SQLite file or a PostgreSQL database")
    return Path(u.database).resolve()


def companions(db: Path) -> list[Path]:
    """The database file and the files SQLite keeps beside it."""
    return [db, *(db.with_name(db.name + suffix) for suffix in COMPANIONS)]


def holders(paths: Sequence[Path]) -> list[Holder]:
    """Other processes (of this user; others' are not visible) that have any of `paths` open."""
    wanted = {os.path.realpath(p) for p in paths}
    me = os.getpid()
    try:
        import psutil
    except ImportError:  # the API image has no psutil: read /proc directly
        return _proc_holders(wanted, me)
    found: list[Holder] = []
    for proc in psutil.process_iter(["pid", "name"]):
        if proc.pid == me:
            continue
        try:
            files = proc.open_files()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        found.extend(
            Holder(proc.pid, str(proc.info.get("name") or "?"), f.path)
            for f in files
            if os.path.realpath(f.path) in wanted
        )
    return found


def _proc_holders(wanted: set[str], me: int) -> list[Holder]:
    proc = Path("/proc")
    if not proc.is_dir():
        raise BackupError("cannot tell which processes have the database open here: install psutil (nightshift[score])")
    found: list[Holder] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target in wanted:
                        name = (entry / "comm").read_text().strip()
                        found.append(Holder(int(entry.name), name, target))
    return found


@contextlib.contextmanager
def _connect(path: Path, *, read_only: bool = False) -> Iterator[sqlite3.Connection]:
    if read_only:
        # A backup written by `backup` is one self-contained file: read it without creating -wal/-shm
        # beside it. A copy that has its -wal beside it is read through SQLite's normal path.
        wal = path.with_name(path.name + "-wal")
        uri = f"file:{path}?mode=ro" + ("" if wal.exists() else "&immutable=1")
        conn = sqlite3.connect(uri, uri=True, timeout=60)
    else:
        conn = sqlite3.connect(str(path), timeout=60)
    try:
        yield conn
    finally:
        conn.close()


def _revision(conn: sqlite3.Connection, what: str) -> str | None:
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{what} is not a nightshift store ({exc})") from None
    return str(row[0]) if row else None


def backup(url: str, target: str | Path) -> BackupResult:
    """Copy the live SQLite store to `target` (a new file) with SQLite's online backup API: consistent while
    the store is in use, one self-contained file (no -wal beside it)."""
    t0 = time.perf_counter()
    live = sqlite_file(url, "backup")
    if not live.is_file():
        raise BackupError(f"there is no store at {live}: nothing to back up")
    dst = Path(target).expanduser().resolve()
    if dst == live:
        raise BackupError(f"{dst} is the live store itself: back up to another file")
    if dst.exists():
        raise BackupError(f"{dst} already exists: back up to a new file (a backup never overwrites one)")
    partial = dst.with_name(dst.name + ".partial")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)
        with _connect(live) as src, _connect(partial) as out:
            revision = _revision(src, f"the store at {live}")
            src.backup(out)
            out.execute("PRAGMA journal_mode=DELETE")
        os.replace(partial, dst)
    except (sqlite3.Error, OSError) as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise BackupError(f"backing up {live} to {dst} failed: {exc}") from None
    return BackupResult(str(live), str(dst), dst.stat().st_size, revision, time.perf_counter() - t0)


def restore(url: str, source: str | Path) -> BackupResult:
    """Replace the SQLite store with the backup `source`.

    Refuses (BackupError, nothing changed) while any other process has the database or its -wal, -shm or
    -journal open: such a process would write its stale pages back over the restored file. Then copies the
    backup in through SQLite's backup API and leaves the store in WAL mode with no -wal/-shm behind.
    """
    t0 = time.perf_counter()
    live = sqlite_file(url, "restore")
    src = Path(source).expanduser().resolve()
    if not src.is_file():
        raise BackupError(f"backup {src} does not exist")
    if src == live:
        raise BackupError(f"{src} is the live store itself: restore from a backup file")
    with _connect(src, read_only=True) as conn:
        revision = _revision(conn, f"backup {src}")
    busy = holders([p for p in companions(live) if p.exists()])
    if busy:
        by_pid: dict[tuple[int, str], list[str]] = {}
        for h in busy:
            by_pid.setdefault((h.pid, h.name), []).append(Path(h.path).name)
        who = "; ".join(f"pid {pid} ({name}) has {', '.join(sorted(files))}" for (pid, name), files in by_pid.items())
        raise BackupError(
            f"refusing to restore {live}: other processes have it open ({who}). Stop them first (the lookup API, "
            "Airflow tasks, scoring runs): a process that keeps the database open writes its stale pages back over "
            "the restored file"
        )
    try:
        live.parent.mkdir(parents=True, exist_ok=True)
        with _connect(src, read_only=True) as conn, _connect(live) as out:
            conn.backup(out)
            out.execute("PRAGMA journal_mode=WAL")
            out.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except (sqlite3.Error, OSError) as exc:
        raise BackupError(f"restoring {live} from {src} failed: {exc}") from None
    # The last connection closed: SQLite removed its -wal and -shm. Whatever is left belongs to nobody.
    for extra in companions(live)[1:]:
        extra.unlink(missing_ok=True)
    with _connect(live) as conn:
        restored = _revision(conn, f"the restored store at {live}")
    if restored != revision:
        raise BackupError(f"the restored store at {live} is at revision {restored}, its backup at {revision}")
    return BackupResult(str(src), str(live), live.stat().st_size, revision, time.perf_counter() - t0)
