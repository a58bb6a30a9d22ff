"""A month of chaos (issue 19 §3): nights of data through `nightshift night` with faults injected at random points.

Every process a fault hits is real and this harness's own, so a fault never disturbs another test:

- a private PostgreSQL cluster (initdb in a temporary folder, on a free loopback port), restarted with
  `pg_ctl restart -m immediate` (a crash: the server recovers from its WAL) in the middle of a night;
- an external Dask cluster (`dask scheduler`, `dask worker` with 2 worker processes behind a nanny) whose
  workers or scheduler are SIGKILLed mid-scoring;
- the lookup API (`nightshift api`), SIGKILLed under lookups and started again;
- `nightshift night` itself, its process group SIGKILLed mid-run;
- the data: a night delivered with a corrupt (truncated) Parquet file, or without its `_SUCCESS` marker yet.

After every night (and its retries, as Airflow would make them) the invariants are checked: committed rows =
input rows, each input id once; no duplicate keys; a reader never saw a mix (statement by statement, in its
own thread); what the API serves equals what the catalog says; nothing of a dead run is stored after
`nightshift gc`; every failed run says why in `runs`. The report lists each night's fault and its outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.deploy.conftest import free_port
from tests.reliability.conftest import (
    MODEL,
    VERSION,
    Cli,
    ConsistentReader,
    committed,
    input_ids,
    runs,
    start_cli,
    stored_rows,
    wait_for,
)

#: Every fault the soak injects; a night gets one (`none`: a clean night between faults).
FAULTS = (
    "worker_kill",
    "scheduler_kill",
    "cli_kill",
    "pg_restart",
    "api_restart",
    "corrupt_file",
    "late_success",
    "none",
)
#: Faults that fail the night's first attempt by design (a retry after the fault ends must commit it).
DATA_FAULTS = ("corrupt_file", "late_success")
#: How many times a night is run in all (Airflow's retries): the first attempt and two retries.
ATTEMPTS = 3


#: Run beside the soak in a session of its own: when the test process is gone (killed, a cancelled CI job), it
#: SIGKILLs every process of the soak (their command lines name its folder or its Dask port) and stops its
#: PostgreSQL, which would otherwise outlive it.
_WATCHDOG = """
import os, shutil, signal, subprocess, sys, time
import psutil
parent, folder, port, pg_ctl, data = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
done = os.path.join(folder, ".soak-done")
def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
while alive(parent) and not os.path.exists(done):
    time.sleep(1)
if not os.path.exists(done):
    inside, address = folder.rstrip(os.sep) + os.sep, "tcp://127.0.0.1:" + port
    for p in psutil.process_iter(["pid", "cmdline"]):
        args = p.info["cmdline"] or []
        ours = any(a.startswith(inside) or a == address for a in args) or any(
            a == "--port" and b == port for a, b in zip(args, args[1:])
        )
        if ours and p.pid != os.getpid():
            try:
                os.kill(p.pid, signal.SIGKILL)
            except OSError:
                pass
    subprocess.run(["runuser", "-u", "postgres", "--", pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"],
                   timeout=60)
    shutil.rmtree(os.path.dirname(data), ignore_errors=True)
"""


def chaos_unavailable() -> str | None:
    """Why this machine cannot run the soak (None: it can). It needs root (to run PostgreSQL's tools as the
    postgres user) and PostgreSQL's server binaries."""
    if os.geteuid() != 0:
        return "the chaos soak runs a private PostgreSQL cluster as the postgres user: it needs root"
    if not _pg_bin():
        return "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql"
    if shutil.which("runuser") is None:
        return "no runuser to start PostgreSQL as the postgres user"
    return None


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


class PrivatePostgres:
    """A PostgreSQL cluster of this harness's own, so restarting it never touches another test's database."""

    def __init__(self) -> None:
        import pwd

        bin_dir = _pg_bin()
        assert bin_dir is not None
        self.bin = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="nightshift-chaos-pg-"))
        user = pwd.getpwnam("postgres")
        os.chown(self.folder, user.pw_uid, user.pw_gid)
        self.data = self.folder / "data"
        self.port = free_port()
        self.restarts = 0
        try:
            self._start()
        except BaseException:
            self.stop()  # a half-started cluster leaves neither a server nor its folder behind
            raise

    def _start(self) -> None:
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 "
            "-c synchronous_commit=on"
        )
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"), "-w",
                          "-o", options, "start")  # fmt: skip
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> None:
        run = subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"{' '.join(args)}: {run.stdout}{run.stderr}"

    def restart(self) -> None:
        """A crash and a restart: immediate shutdown (no checkpoint; WAL recovery at start)."""
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"), "-m",
                          "immediate", "-w", "restart")  # fmt: skip
        self.restarts += 1

    def stop(self) -> None:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


class DaskCluster:
    """`dask scheduler` and `dask worker` (2 worker processes, 1 thread each, behind nannies) on loopback."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        dask = str(Path(sys.executable).parent / "dask")
        self.scheduler = _spawn(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"],
            self.folder / "scheduler.log",
        )
        self.workers = _spawn(
            [dask, "worker", self.address, "--nworkers", "2", "--nthreads", "1", "--host", "127.0.0.1",
             "--no-dashboard", "--memory-limit", "2GiB", "--death-timeout", "60"],
            self.folder / "workers.log",
        )  # fmt: skip
        wait_for("two Dask workers", lambda: len(self.worker_pids()) == 2, timeout=120, interval=0.5)
        self.starts += 1

    def worker_pids(self) -> list[int]:
        """The worker processes' pids, as the scheduler knows them (a short-lived client: the scheduler may be
        gone, and this process never forks)."""
        from distributed import Client

        if self.scheduler is None or self.scheduler.poll() is not None:
            return []
        try:
            with Client(self.address, timeout=10) as client:
                return sorted(int(pid) for pid in client.run(os.getpid).values())
        except Exception:
            return []

    def stop(self) -> None:
        for proc in (self.workers, self.scheduler):
            if proc is not None:
                _kill_group(proc)
        self.workers = self.scheduler = None

    def restart(self) -> None:
        self.stop()
        self.start()


class Api:
    """`nightshift api` on a free loopback port, and a lookup loop that checks each answer it gets."""

    def __init__(self, config: Path, folder: Path, key: str) -> None:
        self.config, self.folder, self.key = config, folder, key
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        self.proc = _spawn(
            [sys.executable, "-m", "nightshift.cli", "api", "-c", str(self.config), "--host", "127.0.0.1",
             "--port", str(self.port), "--no-access-log"],
            self.folder / "api.log",
        )  # fmt: skip
        wait_for("the API to answer", self._healthy, timeout=120, interval=0.2)

    def _healthy(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200
        return False

    def kill(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)
            self.kills += 1
        self.proc = None

    def batch(self, ds: date, ids: list[str], client: httpx.Client | None = None) -> httpx.Response:
        c = client or httpx
        return c.post(  # type: ignore[no-any-return]
            f"http://127.0.0.1:{self.port}/v1/models/{MODEL}/predictions/batch",
            params={"ds": ds.isoformat()},
            json={"ids": ids},
            headers={"X-API-Key": self.key},
            timeout=10,
        )


class ApiReader:
    """Lookups of one night's ids through the API in a thread, as a business app makes them. Each 200 must hold
    every id asked, from one committed run; 404 (nothing committed yet), 503 (the store is restarting) and a
    refused connection (the API is restarting) are counted, never a mix or a wrong run."""

    def __init__(self, api: Api, ds: date, ids: list[str], seed: int) -> None:
        self.api, self.ds, self.ids = api, ds, ids
        self.rng = random.Random(seed)
        self.counts: dict[str, int] = {}
        self.runs_seen: set[int] = set()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="api-reader", daemon=True)

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def _loop(self) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set():
                asked = self.rng.sample(self.ids, 25)
                try:
                    r = self.api.batch(self.ds, asked, client)
                except httpx.HTTPError:
                    self._count("connection refused or reset")
                    time.sleep(0.1)
                    continue
                self._count(str(r.status_code))
                if r.status_code == 200:
                    body = r.json()
                    got = {p["entity_id"] for p in body["predictions"]}
                    if got != set(asked) or body.get("missing"):
                        self.errors.append(f"a 200 without every id asked: {sorted(set(asked) - got)[:5]}")
                    self.runs_seen.add(int(body["run_id"]))
                elif r.status_code not in (404, 503):
                    self.errors.append(f"{r.status_code}: {r.text[:200]}")
                time.sleep(0.02)

    def __enter__(self) -> ApiReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@dataclass
class Attempt:
    exit_code: int
    error: str
    seconds: float


@dataclass
class Night:
    ds: date
    fault: str
    attempts: list[Attempt] = field(default_factory=list)
    injected: str = ""
    rows: int = 0
    api: dict[str, int] = field(default_factory=dict)
    reader_reads: int = 0
    gc: str = ""

    def line(self) -> str:
        tries = "; ".join(
            f"attempt {i + 1}: exit {a.exit_code} in {a.seconds:.1f}s" + (f" ({a.error})" if a.error else "")
            for i, a in enumerate(self.attempts)
        )
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(self.api.items()))
        return (
            f"{self.ds} {self.fault:<14} {self.injected or '-'} | {tries} | committed {self.rows:,} rows; "
            f"API answers {answers}; reader {self.reader_reads} reads; gc: {self.gc or 'nothing'}"
        )


def _error_line(cli: Cli) -> str:
    """The night's error as the CLI said it (its --json error, or the last stderr line)."""
    out = cli.stdout().strip()
    with contextlib.suppress(ValueError):
        body = json.loads(out)
        if isinstance(body, dict) and "error" in body:
            return " ".join(f"{body['error']}: {body.get('message', '')}".split())[:400]
    lines = [line for line in cli.stderr().strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class Chaos:
    """The soak: a project on the private cluster, its data delivered night by night, faults, invariants."""

    def __init__(self, folder: Path, *, nights: int, rows: int, files: int, seed: int, task_rows: int) -> None:
        from nightshift.config import load_settings
        from nightshift.demo import generate
        from tests.conftest import write_project

        self.folder, self.seed = folder, seed
        self.rng = random.Random(seed)
        self.pg = PrivatePostgres()
        self.dask = DaskCluster(folder)
        # From here on, if this process dies, the watchdog stops what the soak started (PostgreSQL included).
        self._watchdog = _spawn(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(folder), str(self.dask.port),
             str(self.pg.bin / "pg_ctl"), str(self.pg.data)],
            folder / "watchdog.log",
        )  # fmt: skip
        self.source = folder / "source"  # every day as the upstream job writes it; delivered night by night
        self.live = folder / "data"
        self.start = date(2026, 10, 1)
        self.history = 2  # labelled days before the first night: the model is trained on them
        generate(self.source / "features", self.source / "labels", start=self.start, days=self.history + nights,
                 rows_per_day=rows, files_per_day=files, seed=seed)  # fmt: skip
        self.nights = [self.start + timedelta(days=self.history + i) for i in range(nights)]
        (self.live / "features").mkdir(parents=True)
        (self.live / "labels").mkdir(parents=True)
        for i in range(self.history):
            self.deliver(self.start + timedelta(days=i))
        self.dask.start()
        self._clis: list[Cli] = []
        (folder / "project").mkdir()
        self.config = write_project(
            folder / "project",
            self.pg.url,
            self.live,
            dask=f'scheduler_address = "{self.dask.address}"\nconnect_timeout_s = 20\ntask_min_rows = {task_rows}\n',
        )
        self.settings = load_settings(self.config)
        self._ok(self.cli(["db", "upgrade"]))
        last = self.start + timedelta(days=self.history - 1)
        self._ok(self.cli(["train", "-m", MODEL, "--ds", last.isoformat()]), timeout=600)
        key = json.loads(self._ok(self.cli(["keys", "create", "-n", "chaos", "-m", MODEL, "--json"])))["key"]
        self.api = Api(self.config, folder, key)
        self.api.start()
        self.report: list[Night] = []

    # -- processes --------------------------------------------------------------------------------

    def cli(self, args: list[str]) -> Cli:
        cli = start_cli(args, self.config, env={"NIGHTSHIFT_DASK__SCHEDULER_ADDRESS": self.dask.address})
        self._clis.append(cli)
        return cli

    def _ok(self, cli: Cli, timeout: float = 300) -> str:
        code, out, err = cli.finish(timeout=timeout)
        assert code == 0, f"exit {code}\nstdout: {out}\nstderr: {err}"
        return out

    def close(self) -> None:
        for cli in getattr(self, "_clis", []):  # one a timeout left running, with its process group
            if cli.alive():
                with contextlib.suppress(Exception):
                    cli.kill_group()
        for part, stop in (("api", "kill"), ("dask", "stop"), ("pg", "stop")):
            with contextlib.suppress(Exception):
                getattr(getattr(self, part), stop)()
        with contextlib.suppress(Exception):
            (self.folder / ".soak-done").touch()  # the watchdog's work is done: it exits
            self._watchdog.wait(timeout=10)

    def store(self) -> Any:
        from nightshift.db import open_store

        return open_store(self.settings)

    # -- data ---------------------------------------------------------------------------------------

    def deliver(self, ds: date, *, corrupt: bool = False, marker: bool = True) -> None:
        """Copy a day's files into the live dataset as the upstream job would: data files, then _SUCCESS.
        `corrupt`: one file cut in half (a truncated upload); `marker`: False leaves the marker out (late)."""
        for kind in ("features", "labels"):
            src = self.source / kind / f"ds={ds.isoformat()}"
            dst = self.live / kind / f"ds={ds.isoformat()}"
            dst.mkdir(parents=True, exist_ok=True)
            files = sorted(src.glob("*.parquet"))
            for i, f in enumerate(files):
                data = f.read_bytes()
                if corrupt and kind == "features" and i == len(files) // 2:
                    data = data[: len(data) // 2]
                (dst / f.name).write_bytes(data)
            if marker:
                (dst / "_SUCCESS").touch()

    # -- faults ---------------------------------------------------------------------------------------

    def _running_run(self, store: Any, pid: int) -> bool:
        with contextlib.suppress(Exception):
            return any(r["pid"] == pid and r["status"] == "running" for r in runs(store))
        return False

    def _phase(self, store: Any, pid: int) -> tuple[str, bool]:
        """Where the night's run is: (words for the report, whether it is still scoring)."""
        from tests.reliability.conftest import ledger

        mine = [r for r in runs(store) if r["pid"] == pid]
        if not mine:
            return "before its run started", False
        run = mine[-1]
        if run["status"] != "running":
            return f"after its run {run['status']} (monitoring, deciding)", False
        return f"while scoring ({ledger(store).get(int(run['run_id']), 0)} chunk(s) staged)", True

    def _inject(self, fault: str, night: Night, cli: Cli, store: Any, workers: list[int]) -> None:
        """In its own thread: wait until the night's run is under way, then, at a random point of it, the fault.
        The Dask faults and the CLI kill aim at the scoring (after its first staged chunk); the others anywhere."""
        try:
            t0 = time.monotonic()
            wait_for("the night's run to start", lambda: self._running_run(store, cli.pid) or not cli.alive(),
                     timeout=120, interval=0.02)  # fmt: skip
            if fault in ("worker_kill", "scheduler_kill", "cli_kill"):
                wait_for("a staged chunk", lambda: self._phase(store, cli.pid)[0] != "while scoring (0 chunk(s) "
                         "staged)" or not cli.alive(), timeout=120, interval=0.01)  # fmt: skip
                time.sleep(self.rng.uniform(0.0, 0.1))
            else:
                time.sleep(self.rng.uniform(0.0, 1.5))
            if not cli.alive():
                night.injected = "the run ended before the fault"
                return
            phase, _ = self._phase(store, cli.pid)
            at = f"at +{time.monotonic() - t0:.2f}s, {phase}"
            if fault == "worker_kill":
                os.kill(self.rng.choice(workers), signal.SIGKILL)
                night.injected = f"SIGKILL a Dask worker {at}"
            elif fault == "scheduler_kill":
                assert self.dask.scheduler is not None
                _kill_group(self.dask.scheduler)
                night.injected = f"SIGKILL the Dask scheduler {at}"
            elif fault == "cli_kill":
                cli.kill_group()
                night.injected = f"SIGKILL `nightshift night` {at}"
            elif fault == "pg_restart":
                self.pg.restart()
                night.injected = f"PostgreSQL crashed and restarted {at}"
            elif fault == "api_restart":
                self.api.kill()
                time.sleep(0.5)
                self.api.start()
                night.injected = f"SIGKILL the API {at}, restarted"
        except Exception as exc:  # the report says so; the invariants still decide
            night.injected = f"fault not injected: {type(exc).__name__}: {exc}"

    # -- one night ----------------------------------------------------------------------------------------

    def night(self, ds: date, fault: str) -> Night:
        night = Night(ds, fault)
        self.deliver(ds, corrupt=fault == "corrupt_file", marker=fault != "late_success")
        if fault == "corrupt_file":
            night.injected = "one features file truncated to half"
        elif fault == "late_success":
            night.injected = "_SUCCESS not yet written"
        expected = input_ids(self.source, ds)
        ids = sorted(expected)
        store = self.store()
        try:
            with (
                ConsistentReader(store, len(expected), ds) as reader,
                ApiReader(self.api, ds, ids, self.seed + len(self.report)) as api_reader,
            ):
                workers: list[int] = []
                if fault == "worker_kill":  # both workers up (a nanny may still be restarting one)
                    workers = wait_for("two Dask workers", lambda: self._two_workers(), timeout=60, interval=0.5)
                for attempt in range(ATTEMPTS):
                    t = time.monotonic()
                    cli = self.cli(["night", "-m", MODEL, "--ds", ds.isoformat(), "--json"])
                    injector = None
                    if attempt == 0 and fault not in (*DATA_FAULTS, "none"):
                        injector = threading.Thread(
                            target=self._inject, args=(fault, night, cli, store, workers), daemon=True
                        )
                        injector.start()
                    code, _out, _err = cli.finish(timeout=300)
                    if injector is not None:
                        injector.join(timeout=120)
                    night.attempts.append(Attempt(code, "" if code == 0 else _error_line(cli), time.monotonic() - t))
                    if code == 0:
                        break
                    self._recover(fault, ds)
                time.sleep(0.3)  # a few more reads of the committed night
            self._heal()
        finally:
            store.dispose()
        store = self.store()  # its pool may hold connections of a PostgreSQL that restarted
        try:
            self.check(night, store, reader, api_reader, expected)
        finally:
            store.dispose()
        self.report.append(night)
        return night

    def _two_workers(self) -> list[int]:
        pids = self.dask.worker_pids()
        return pids if len(pids) == 2 else []

    def _heal(self) -> None:
        """Whatever a fault left down after the night's last attempt comes back before the next night."""
        if self.dask.scheduler is None or self.dask.scheduler.poll() is not None:
            self.dask.restart()
        elif len(self.dask.worker_pids()) < 2:
            wait_for("the nanny to restart its worker", lambda: len(self.dask.worker_pids()) == 2, timeout=60)
        if self.api.proc is None or self.api.proc.poll() is not None:
            self.api.start()

    def _recover(self, fault: str, ds: date) -> None:
        """What an operator (or the platform) does before the retry: the fault is over."""
        if fault == "scheduler_kill":
            self.dask.restart()
        if fault == "worker_kill" and len(self.dask.worker_pids()) < 2:
            wait_for("the nanny to restart its worker", lambda: len(self.dask.worker_pids()) == 2, timeout=60)
        if fault in DATA_FAULTS:
            self.deliver(ds)  # the upstream job's re-delivery, or its late marker

    # -- invariants ---------------------------------------------------------------------------------------

    def check(self, night: Night, store: Any, reader: ConsistentReader, api: ApiReader, expected: set[str]) -> None:
        ds = night.ds
        if night.fault not in (*DATA_FAULTS, "none"):  # a soak that injected nothing proves nothing
            missed = night.injected.startswith(("fault not injected", "the run ended before the fault"))
            assert night.injected, f"{ds}: {night.fault} was never injected"
            assert not missed, f"{ds}: {night.fault}: {night.injected}"
        assert night.attempts[-1].exit_code == 0, f"{ds}: the night never committed: {night.line()}"
        if night.fault in DATA_FAULTS:  # refused first, with the cause named, then committed
            first = night.attempts[0]
            assert first.exit_code != 0, f"{ds}: a {night.fault} night was not refused: {night.line()}"
            named = ".parquet" if night.fault == "corrupt_file" else "_SUCCESS"
            assert named in first.error, f"{ds}: the refusal does not name the cause: {first.error}"
        # committed rows = input rows, each input id once
        part = store.partition(MODEL, VERSION, ds)
        assert part is not None, f"{ds}: nothing committed"
        rows = committed(store, ds)
        assert part.row_count == len(expected) == len(rows), (part.row_count, len(expected), len(rows))
        assert set(rows) == expected
        night.rows = len(rows)
        # a reader never saw a mix (one complete set of one committed run, or nothing yet)
        reader.check()
        night.reader_reads = reader.reads
        # the API answered from committed runs only, every id asked; and serves what the catalog says now
        assert not api.errors, f"{ds}: {api.errors[:5]}"
        night.api = dict(api.counts)
        sample = sorted(expected)[:200]
        served = self.api.batch(ds, sample)
        assert served.status_code == 200, served.text
        body = served.json()
        assert (body["run_id"], body["version"]) == (part.run_id, VERSION), body
        assert {p["entity_id"]: p["score"] for p in body["predictions"]} == {i: rows[i] for i in sample}
        ever = {
            int(r["run_id"])
            for r in runs(store)
            if str(r["ds"]) == str(ds) and r["status"] in ("committed", "superseded")
        }
        assert api.runs_seen <= ever, f"{ds}: the API answered from runs {api.runs_seen - ever}, never committed"
        # nothing of a dead run stays after gc; no run is left running; every failure says why
        gc = self._ok(self.cli(["gc", "-m", MODEL, "--json"]))
        report = json.loads(gc)
        night.gc = (
            f"{len(report['runs'])} dead run(s), {report['rows']:,} row(s) removed, "
            f"{len(report['abandoned'])} marked abandoned"
            if report["runs"] or report["abandoned"]
            else ""
        )
        all_runs = runs(store)
        assert not [r for r in all_runs if r["status"] == "running"], all_runs
        for r in all_runs:
            if r["status"] in ("failed", "abandoned"):
                assert r["error"], f"run {r['run_id']} {r['status']} without a word: {r}"
        stored = stored_rows(store)
        live = self._committed_runs(store)
        assert set(stored) <= live, f"rows of dead runs are stored: {set(stored) - live}"

    def _committed_runs(self, store: Any) -> set[int]:
        return {p.run_id for p in store.list_partitions(MODEL)}

    def schedule(self, faults: list[str] | None = None) -> list[str]:
        """One fault per night: `faults` in order, or every kind as often as the nights allow (a tenth of the
        nights clean), in a seeded random order."""
        if faults is not None:
            assert len(faults) == len(self.nights), faults
            return list(faults)
        kinds = [k for k in FAULTS if k != "none"]
        clean = len(self.nights) // 10
        plan = (kinds * len(self.nights))[: len(self.nights) - clean] + ["none"] * clean
        self.rng.shuffle(plan)
        return plan

    def run(self, faults: list[str] | None = None) -> list[Night]:
        for ds, fault in zip(self.nights, self.schedule(faults), strict=True):
            self.night(ds, fault)
        return self.report

    def summary(self) -> str:
        lines = [f"# nightshift chaos soak: {len(self.report)} nights, seed {self.seed}", ""]
        lines += [n.line() for n in self.report]
        by_fault: dict[str, int] = {}
        for n in self.report:
            by_fault[n.fault] = by_fault.get(n.fault, 0) + 1
        lines += ["", "faults: " + ", ".join(f"{k} × {v}" for k, v in sorted(by_fault.items()))]
        lines += [f"PostgreSQL restarts {self.pg.restarts}, Dask cluster starts {self.dask.starts}, "
                  f"API kills {self.api.kills}"]  # fmt: skip
        return "\n".join(lines)


@contextlib.contextmanager
def chaos(folder: Path, *, nights: int, rows: int, files: int, seed: int, task_rows: int) -> Iterator[Chaos]:
    """The soak, its processes stopped however it ends. `task_rows`: dask.task_min_rows (how many tasks a
    night's scoring has, so a kill can land between them)."""
    soak = Chaos.__new__(Chaos)
    try:
        soak.__init__(folder, nights=nights, rows=rows, files=files, seed=seed, task_rows=task_rows)  # type: ignore[misc]
        yield soak
    finally:
        soak.close()
