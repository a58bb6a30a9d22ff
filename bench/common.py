"""Timing, memory sampling, databases and result records shared by every benchmark."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PG_ADMIN_URL = os.environ.get("NIGHTSHIFT_BENCH_PG_URL", "postgresql://root@127.0.0.1:5432/postgres")


#: The SQLite baseline in nightshift's order (`limits.sqlite_bulk_insert_chunks`): its name in results and report.
SQLITE_BULK_CHUNKS = "SQLite bulk insert, one chunk per file"
#: The pipelined limit + primary key run a second time in each PostgreSQL round: the noise floor of a paired ratio.
LIMIT_PK_AGAIN = "pipelined limit + primary key, again"


@dataclass
class Measurement:
    """N wall-clock runs of one thing on `rows` rows; rates are rows / seconds."""

    name: str
    group: str
    rows: int
    seconds: list[float]
    model: str | None = None
    what: str = ""
    extras: list[dict[str, Any]] = field(default_factory=list)
    #: Measurements with the same block were timed round-robin together: their runs pair by round.
    block: str = ""

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> dict[str, float]:
        """Rows per second: median, and the min/max over runs (from the slowest and fastest run)."""
        return {
            "median": self.rows / self.median_s,
            "min": self.rows / max(self.seconds),
            "max": self.rows / min(self.seconds),
        }

    def record(self) -> dict[str, Any]:
        return {
            "kind": "measurement",
            "name": self.name,
            "group": self.group,
            "model": self.model,
            "what": self.what,
            "rows": self.rows,
            "runs": len(self.seconds),
            "seconds": [round(s, 4) for s in self.seconds],
            "median_s": round(self.median_s, 4),
            "min_s": round(min(self.seconds), 4),
            "max_s": round(max(self.seconds), 4),
            "rows_per_s": {k: round(v, 1) for k, v in self.rate.items()},
            "extras": self.extras,
            "block": self.block,
        }


class Recorder:
    """Appends one JSON line per record to `path` (each benchmark process appends its own)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def add(self, m: Measurement) -> Measurement:
        self.write(m.record())
        rate = m.rate
        print(
            f"  {m.group:>9} {m.model or '-':>6} {m.name:<34} {m.median_s:8.3f} s "
            f"[{min(m.seconds):.3f}-{max(m.seconds):.3f}]  {rate['median'] / 1e3:9.1f} k rows/s",
            flush=True,
        )
        return m


@dataclass
class Contender:
    """One thing to time: `run` is timed; `setup` before and `after` after each run are not.

    `run` may return a dict of extras to keep with the run; an extra "seconds" replaces the
    wall time (for work timed inside a child process).
    """

    run: Callable[[], dict[str, Any] | None]
    setup: Callable[[], None] | None = None
    after: Callable[[], None] | None = None


#: Set by the suite for the cases it spawns: the PostgreSQL server `quiesce` checkpoints ("" for none).
QUIESCE_ENV = "NIGHTSHIFT_BENCH_QUIESCE_PG_URL"
#: Servers `quiesce` could not CHECKPOINT in this process: said once, not tried again.
_NO_CHECKPOINT: set[str] = set()


def quiesce() -> None:
    """Let the storage settle before a timed run: PostgreSQL writes its dirty buffers (CHECKPOINT), the
    kernel its dirty pages (sync).

    Without it a run paid for the writes of the run before it. The pipelined limit leaves its table
    for the kernel to write back while the next contender runs; a nightshift run drops its database
    afterwards (untimed), and pages of a deleted file are never written. So nightshift, timed right
    after the limit, paid for the limit's writes: its commit (the primary key's build) took 1.3-1.6 s
    there against 1.0-1.1 s after a sync, the limit's own key 1.0-1.1 s (4M rows, 2026-12-05).
    """
    url = os.environ.get(QUIESCE_ENV, PG_ADMIN_URL)
    if url and url not in _NO_CHECKPOINT:
        try:
            import psycopg

            with psycopg.connect(libpq(url), autocommit=True, connect_timeout=5) as conn:
                conn.execute("CHECKPOINT")
        except Exception as exc:  # no server, or no right to checkpoint: the sync still helps
            _NO_CHECKPOINT.add(url)
            print(f"bench: CHECKPOINT before timed runs skipped ({type(exc).__name__}: {exc}); sync only", flush=True)
    os.sync()


def interleave(contenders: dict[str, Contender], repeats: int) -> dict[str, tuple[list[float], list[dict[str, Any]]]]:
    """Time each contender `repeats` times, round-robin (A B C A B C ...) so that load drift on a
    shared machine hits all of them alike, each run from settled storage (`quiesce`, untimed).
    Returns, per name, the wall times and the extras."""
    out: dict[str, tuple[list[float], list[dict[str, Any]]]] = {name: ([], []) for name in contenders}
    for round_no in range(repeats):
        for name, c in contenders.items():
            if c.setup is not None:
                c.setup()
            quiesce()
            t = time.perf_counter()
            extra = dict(c.run() or {})
            seconds = time.perf_counter() - t
            if c.after is not None:
                c.after()
            seconds = float(extra.pop("seconds", seconds))
            extra["round"] = round_no
            out[name][0].append(seconds)
            out[name][1].append(extra)
    return out


class RssSampler:
    """Samples the resident memory of processes every `interval` s and keeps each one's peak.

    Without `pids`, it follows this process's descendants (re-listed every `rescan` s: listing
    scans /proc, reading one process's RSS does not). Dask worker processes, and the baselines'
    forked processes, are descendants of the process that started them.
    """

    def __init__(self, pids: set[int] | None = None, interval: float = 0.1, rescan: float = 1.0) -> None:
        self.fixed = pids
        self.interval = interval
        self.rescan = rescan
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="bench-rss-sampler")

    def _loop(self) -> None:
        import psutil

        procs: dict[int, psutil.Process] = {}
        listed = 0.0
        while not self._stop.is_set():
            if self.fixed is None and time.monotonic() - listed >= self.rescan:
                procs = {p.pid: procs.get(p.pid, p) for p in psutil.Process().children(recursive=True)}
                listed = time.monotonic()
            elif self.fixed is not None and not procs:
                procs = {pid: psutil.Process(pid) for pid in self.fixed}
            for pid, p in list(procs.items()):
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    procs.pop(pid, None)
                    continue
                if rss > self.peaks.get(pid, 0):
                    self.peaks[pid] = rss
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self) -> int:
        """The largest peak of any sampled process."""
        return max(self.peaks.values(), default=0)


#: Imported before the clock starts in an isolated process: the in-process contenders have them loaded too.
WARM_IMPORTS = ("pandas", "pyarrow.parquet", "sklearn.pipeline", "dask.dataframe", "distributed", "psycopg")


def _isolated_main(fn: Callable[..., Any], args: tuple[Any, ...], conn: Any) -> None:
    import importlib

    os.setpgrp()
    for name in WARM_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    try:
        t = time.perf_counter()
        result = fn(*args)
        conn.send(("ok", time.perf_counter() - t, result))
    except BaseException as exc:
        conn.send(("error", 0.0, f"{type(exc).__name__}: {exc}"))


def run_isolated(fn: Callable[..., Any], *args: Any, timeout: float = 900) -> dict[str, Any]:
    """Run `fn(*args)` in a fresh spawned process and time it there (start-up and imports excluded).

    For programs that start their own Dask cluster: forking workers from a process that already
    ran other clusters (and holds their threads) can leave the new cluster without workers. A
    program that overruns `timeout` is ended with everything it started. Returns {"seconds", "result"}.
    """
    import multiprocessing
    import signal

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_isolated_main, args=(fn, args, child), name=f"bench-{fn.__name__}")
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise TimeoutError(f"{fn.__name__} did not finish in {timeout:.0f} s")
        status, seconds, result = parent.recv()
    finally:
        if proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.join(10)
    if status != "ok":
        raise RuntimeError(f"{fn.__name__} failed: {result}")
    return {"seconds": seconds, "result": result}


# -- databases ----------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


def libpq(url: str) -> str:
    """A URL psycopg accepts (no SQLAlchemy driver suffix)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def pg_available(admin_url: str = PG_ADMIN_URL) -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(admin_url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def create_database(admin_url: str = PG_ADMIN_URL, *, template: str | None = None, prefix: str = "ns_bench") -> str:
    """A new PostgreSQL database (optionally a copy of `template`); returns its name."""
    import psycopg

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return name


def drop_database(name: str, admin_url: str = PG_ADMIN_URL) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def scratch_database(admin_url: str = PG_ADMIN_URL, *, template: str | None = None) -> Iterator[str]:
    """A PostgreSQL database for the duration of the block (its URL), dropped afterwards."""
    name = create_database(admin_url, template=template)
    try:
        yield with_database(admin_url, name)
    finally:
        drop_database(name, admin_url)


#: The plain table every baseline writes: nightshift's staging table without its check constraint.
PLAIN_TABLE_DDL = (
    'CREATE TABLE {table} (run_id BIGINT NOT NULL, entity_id TEXT COLLATE "C" NOT NULL, '
    "score REAL NOT NULL, label SMALLINT NOT NULL{pk})"
)


def reset_plain_table(url: str, table: str, *, primary_key: bool = False) -> None:
    """(Re)create `table` empty, with or without a primary key on (entity_id, run_id), as nightshift's."""
    import psycopg

    pk = ", PRIMARY KEY (entity_id, run_id)" if primary_key else ""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(PLAIN_TABLE_DDL.format(table=table, pk=pk))


def count_rows(url: str, table: str) -> int:
    import psycopg

    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


@contextlib.contextmanager
def local_cluster(n_workers: int, *, memory_limit: str = "2GiB") -> Iterator[Any]:
    """A local Dask cluster like nightshift's default one: forked worker processes, one thread each."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    with (
        dask.config.set({"distributed.worker.multiprocessing-method": "fork"}),
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=":0",  # None would still try :8787 and warn when another cluster holds it
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


class ClusterHolder:
    """A pre-started local cluster for one timed run: `start` in a contender's setup, `stop` in its after,
    so that it exists only while its own contender runs and shares the round-robin with the others."""

    def __init__(self, n_workers: int) -> None:
        self.n_workers = n_workers
        self._stack: contextlib.ExitStack | None = None
        self.client: Any = None

    def start(self) -> None:
        self.stop()
        self._stack = contextlib.ExitStack()
        self.client = self._stack.enter_context(local_cluster(self.n_workers))
        self.client.wait_for_workers(self.n_workers, timeout=120)

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack, self.client = None, None


def worker_pids(client: Any) -> set[int]:
    return {int(pid) for pid in client.run(os.getpid).values()}
