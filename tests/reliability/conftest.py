"""Fault and bad-input fixtures: real processes to kill, real databases to break, and the invariant checks.

The invariant every test here checks, for one (model, version, ds):

- the committed row count equals the input row count, and the committed entity ids are
  exactly the input's, each once;
- no other rows of the partition are left behind (staged rows of dead runs are removed);
- a reader sees the complete old set or the complete new set, never a mix;
- a failed run leaves the previous predictions serving and records what failed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import SCORE_DS, write_project

MODEL = "churn"
VERSION = 1

#: One day of many small files: a run lasts long enough (dozens of Dask tasks, one
#: staged chunk each) to be killed part way, and a baseline run stays around a second.
MANY_FILES = 40
MANY_ROWS = 40_000


class LibraryBug(AssertionError):
    """A check that guards against a library bug this suite found (see docs/reliability.md).

    While a bug is open, its test is marked ``xfail(strict=True, raises=LibraryBug)``: any
    other failure in it still fails the suite, and the fix makes it fail until the mark is
    removed.
    """


def expect_fixed(condition: bool, message: str) -> None:
    if not condition:
        raise LibraryBug(message)


# -- data -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def many_files_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SCORE_DS as MANY_FILES files of MANY_ROWS rows in all (read only: tests never change it)."""
    from nightshift.demo import generate

    root = tmp_path_factory.mktemp("many_files")
    generate(
        root / "features",
        root / "labels",
        start=SCORE_DS,
        days=1,
        rows_per_day=MANY_ROWS,
        files_per_day=MANY_FILES,
        seed=11,
    )
    return root


def partition_dir(root: Path, ds: date = SCORE_DS) -> Path:
    return root / "features" / f"ds={ds.isoformat()}"


def input_ids(root: Path, ds: date = SCORE_DS) -> set[str]:
    import pyarrow.parquet as pq

    ids: set[str] = set()
    for f in sorted(partition_dir(root, ds).glob("*.parquet")):
        ids.update(str(v) for v in pq.read_table(f, columns=["customer_id"]).column(0).to_pylist())
    return ids


# -- projects ---------------------------------------------------------------------------------


def project(
    folder: Path,
    store_url: str,
    root: Path,
    *,
    contract: str = "",
    model: str = "",
    top: str = "",
    not_nullable: tuple[str, ...] = (),
) -> Path:
    """The demo project file (tests.conftest.write_project) with extra keys where TOML needs them.

    `contract`: lines added to [models.contract]; `model`: lines added to [[models]];
    `top`: top-level lines; `not_nullable`: feature columns declared nullable = false.
    """
    folder.mkdir(parents=True, exist_ok=True)
    # A task per file (no bundling of small files): a run of MANY_FILES is dozens of chunks, killable part way.
    path = write_project(folder, store_url, root, extra_model=model, dask="task_min_rows = 1\n")
    text = path.read_text()
    if top:
        text = top.strip() + "\n" + text
    if contract:
        text = text.replace("[models.contract]\n", "[models.contract]\n" + contract.strip() + "\n", 1)
    for name in not_nullable:
        text, n = re.subn(rf'(\{{name = "{name}", type = "[a-z0-9]+", nullable = )true', r"\1false", text)
        assert n == 1, f"column {name} not found in the project file"
    path.write_text(text)
    return path


def load(path: Path) -> Any:
    from nightshift.config import load_settings

    return load_settings(path)


# -- the store, as a reader sees it -----------------------------------------------------------


def catalog_run(store: Any, ds: date = SCORE_DS) -> int | None:
    part = store.partition(MODEL, VERSION, ds)
    return part.run_id if part else None


def committed(store: Any, ds: date = SCORE_DS) -> dict[str, float]:
    """The committed predictions of (churn, v1, ds) as a reader gets them: through the catalog."""
    with store.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT entity_id, score FROM committed_predictions WHERE model = :m AND version = :v AND ds = :d"),
            {"m": MODEL, "v": VERSION, "d": ds},
        ).all()
    out = {str(r[0]): float(r[1]) for r in rows}
    assert len(out) == len(rows), "a reader sees an entity id more than once"
    return out


def runs(store: Any) -> list[dict[str, Any]]:
    """All runs of the model, oldest first."""
    return list(reversed(store.runs(MODEL, limit=1000)))


def statuses(store: Any) -> list[str]:
    return [r["status"] for r in runs(store)]


def stored_rows(store: Any) -> dict[int, int]:
    """Rows physically stored per run id, committed or staged, attached or not (PostgreSQL: every run table)."""
    with store.connect() as conn:
        if store.is_sqlite:
            return {
                int(r[0]): int(r[1])
                for r in conn.execute(sa.text("SELECT run_id, count(*) FROM predictions GROUP BY run_id"))
            }
        tables = [
            r[0]
            for r in conn.execute(
                sa.text("SELECT relname FROM pg_class WHERE relkind = 'r' AND relname ~ '^predictions_r[0-9]+$'")
            )
        ]
        out = {}
        for t in tables:
            out[int(t.removeprefix("predictions_r"))] = int(conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar())
        return out


def ledger(store: Any) -> dict[int, int]:
    """run_chunks: chunks recorded per run id."""
    with store.connect() as conn:
        return {
            int(r[0]): int(r[1])
            for r in conn.execute(sa.text("SELECT run_id, count(*) FROM run_chunks GROUP BY run_id"))
        }


def assert_exactly_once(store: Any, expected_ids: set[str], ds: date = SCORE_DS) -> dict[str, float]:
    """The partition is committed exactly once and nothing else of it is stored. Returns its predictions."""
    part = store.partition(MODEL, VERSION, ds)
    assert part is not None, "nothing committed"
    rows = committed(store, ds)
    assert part.row_count == len(expected_ids)
    assert len(rows) == len(expected_ids)
    assert set(rows) == expected_ids
    all_runs = runs(store)
    by_status: dict[str, list[int]] = {}
    for r in all_runs:
        by_status.setdefault(r["status"], []).append(int(r["run_id"]))
    assert by_status.get("committed") == [part.run_id], by_status
    assert "running" not in by_status, by_status
    # Nothing of dead runs is left: only the committed run's rows are stored.
    assert stored_rows(store) == {part.run_id: len(expected_ids)}
    assert set(ledger(store)) <= {part.run_id}
    return rows


class ConsistentReader:
    """A reader in a thread of its own that checks, statement after statement, that it sees one
    complete committed set: empty (nothing committed yet) or exactly `rows` distinct ids, all of
    one run. It reads like the lookup API does: its own connection, one statement at a time.
    """

    def __init__(self, store: Any, rows: int, ds: date = SCORE_DS) -> None:
        self.store, self.rows, self.ds = store, rows, ds
        self.seen: list[tuple[Any, ...]] = []
        self.errors: list[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="consistent-reader", daemon=True)

    def _connect(self) -> tuple[Any, str, Any]:
        # One statement, so one snapshot: the catalog row and the rows a reader gets through it.
        sql = (
            "SELECT (SELECT run_id FROM partitions WHERE model = {p} AND version = {p} AND ds = {p} "
            "AND status = 'committed'), "
            "(SELECT row_count FROM partitions WHERE model = {p} AND version = {p} AND ds = {p} "
            "AND status = 'committed'), "
            "count(*), count(DISTINCT entity_id), min(run_id), max(run_id) FROM committed_predictions "
            "WHERE model = {p} AND version = {p} AND ds = {p}"
        )
        if self.store.is_sqlite:
            import sqlite3

            conn = sqlite3.connect(self.store.sqlite_path, timeout=30, isolation_level=None)
            return conn, sql.format(p="?"), (MODEL, VERSION, self.ds.isoformat()) * 3
        return pg_connect(self.store.url), sql.format(p="%s"), (MODEL, VERSION, self.ds) * 3

    def _loop(self) -> None:
        conn, sql, params = self._connect()
        try:
            while not self._stop.is_set():
                try:
                    catalog, catalog_rows, n, distinct, lo, hi = conn.execute(sql, params).fetchone()
                except Exception as exc:  # a dropped connection is an error to report, not a mix
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    with contextlib.suppress(Exception):
                        conn.close()
                    while not self._stop.is_set():  # the server may be restarting: connect again until it answers
                        time.sleep(0.05)
                        try:
                            conn, sql, params = self._connect()
                            break
                        except Exception as down:
                            self.errors.append(f"{type(down).__name__}: {down}")
                    continue
                self.reads += 1
                obs = (catalog, catalog_rows, int(n), int(distinct), lo, hi)
                if not self.seen or self.seen[-1] != obs:
                    self.seen.append(obs)
                time.sleep(0.002)
        finally:
            conn.close()

    def __enter__(self) -> ConsistentReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def check(self, *allowed_runs: int) -> None:
        """Every observation was nothing committed, or one complete set of one of `allowed_runs`."""
        assert self.reads > 0, "the reader never got an answer"
        for catalog, catalog_rows, n, distinct, lo, hi in self.seen:
            if catalog is None:
                assert n == 0, f"a reader saw rows without a catalog entry: {self.seen}"
                continue
            assert (n, distinct, lo, hi) == (self.rows, self.rows, catalog, catalog), (
                f"a reader saw an incomplete, mixed or duplicated set (catalog run, catalog rows, rows, "
                f"distinct ids, min run, max run): {self.seen}"
            )
            assert catalog_rows == self.rows
            if allowed_runs:
                assert catalog in allowed_runs, f"a reader saw run {catalog}, expected one of {allowed_runs}"

    @property
    def runs_seen(self) -> list[int]:
        return [obs[0] for obs in self.seen if obs[0] is not None]


# -- waiting and killing ------------------------------------------------------------------------


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 120.0, interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


@dataclass
class Cli:
    """`python -m nightshift.cli ...` in a process group of its own (its Dask cluster included)."""

    proc: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    started: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill_group(self) -> None:
        """SIGKILL the CLI and every process it started, and wait until they are all gone."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        wait_for("the killed process group to disappear", lambda: not group_members(self.proc.pid), timeout=30)

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        """Wait for the process; returns (exit code, stdout, stderr)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise
        return self.proc.returncode, self.stdout(), self.stderr()

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")


CLI_ENV = {
    # One local worker per CLI run: several CLI processes share two cores in these tests.
    "NIGHTSHIFT_DASK__N_WORKERS": "1",
    "PYTHONUNBUFFERED": "1",
    "COLUMNS": "500",
}


def start_cli(
    args: list[str], config: Path, *, env: dict[str, str] | None = None, stdout: int | None = None, name: str = "cli"
) -> Cli:
    """Start the CLI with `config`. Its stdout and stderr go to files beside the config (or stdout to
    the given file descriptor), so a chatty process can never block on a full pipe by accident."""
    full_env = {**os.environ, **CLI_ENV, **(env or {})}
    n = len(list(config.parent.glob(f"{name}-*.err")))
    out_path = config.parent / f"{name}-{n}.out"
    err_path = config.parent / f"{name}-{n}.err"
    with err_path.open("wb") as err, contextlib.ExitStack() as stack:
        out: Any = stdout if stdout is not None else stack.enter_context(out_path.open("wb"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "nightshift.cli", *args, "--config", str(config)],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=config.parent,
            start_new_session=True,
        )
    return Cli(proc, out_path, err_path)


def full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is already full: a process writing to its write end blocks."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    for size in (65536, 4096, 1):
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(w, b"x" * size)
    os.set_blocking(w, True)
    return r, w


def score_args(ds: date = SCORE_DS, *extra: str) -> list[str]:
    return ["score", "-m", MODEL, "--ds", ds.isoformat(), *extra]


@pytest.fixture
def cli_processes() -> Iterator[list[Cli]]:
    """CLI processes a test started: whatever happens, none outlives the test."""
    started: list[Cli] = []
    yield started
    for c in started:
        if c.alive() or group_members(c.pid):
            c.kill_group()


def run_of(store: Any, pid: int) -> int | None:
    """The id of the run a process started (runs.pid), once it has started one."""
    for r in runs(store):
        if r["pid"] == pid:
            return int(r["run_id"])
    return None


# -- a Dask cluster whose workers the tests may kill --------------------------------------------


@pytest.fixture(scope="module")
def killable_client() -> Iterator[Any]:
    """A real local cluster (2 worker processes behind nannies) private to a module, so killing
    its workers never disturbs the session cluster other tests share."""
    import dask
    from distributed import Client, LocalCluster

    with (
        dask.config.set({"distributed.worker.multiprocessing-method": "fork"}),
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit="2GiB"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def worker_pids(client: Any) -> dict[str, int]:
    return dict(client.run(os.getpid))


# -- PostgreSQL helpers ---------------------------------------------------------------------------


def pg_database(url: str) -> str:
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    assert name
    return name


def pg_connect(url: str, autocommit: bool = True) -> Any:
    import psycopg
    from sqlalchemy.engine import make_url

    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(libpq, autocommit=autocommit)
