"""A partition bigger than a worker's memory limit: scored in bounded pieces, or a bounded, clear failure."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nightshift.db import open_store
from nightshift.scoring import score_partition
from tests.conftest import SCORE_DS
from tests.reliability.conftest import (
    MODEL,
    Cli,
    assert_exactly_once,
    catalog_run,
    committed,
    expect_fixed,
    input_ids,
    load,
    partition_dir,
    project,
    runs,
    score_args,
    start_cli,
)

pytestmark = pytest.mark.slow

MiB = 2**20
#: One file, decoded bigger than the worker memory limit below (about 320 bytes a row in Arrow).
BIG_ROWS = 1_750_000
WORKER_LIMIT = 512 * MiB
#: Rows per ONNX Runtime call for this test: a worker's footprint is its start-up size plus a
#: few batches' worth, whatever the partition size.
BATCH_ROWS = 16_384


@pytest.fixture(scope="session")
def big_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nightshift.demo import generate

    root = tmp_path_factory.mktemp("big")
    generate(root / "features", root / "labels", start=SCORE_DS, days=1, rows_per_day=BIG_ROWS, files_per_day=1, seed=5)
    return root


class WorkerMemory:
    """Polls the RSS of every process a CLI started (its Dask workers), keeping each one's peak."""

    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.peaks: dict[int, int] = {}
        self.info: dict[int, str] = {}  # pid: command line and start time, for messages
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil

        try:
            parent = psutil.Process(self.cli.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                children = parent.children(recursive=True)
            except psutil.Error:
                return
            for p in children:
                try:
                    if "resource_tracker" in " ".join(p.cmdline()):
                        continue
                    if p.pid not in self.info:
                        self.info[p.pid] = f"{' '.join(p.cmdline())[:80]} @{p.create_time() - self.cli.started:.1f}"
                    self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), p.memory_info().rss)
                except psutil.Error:
                    continue
            time.sleep(0.01)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def workers(self) -> dict[int, int]:
        """Peak RSS of each worker process seen (tiny helper processes left out)."""
        return {pid: rss for pid, rss in self.peaks.items() if rss > 32 * MiB}


@pytest.mark.postgres
def test_a_partition_larger_than_a_workers_memory_limit_is_scored_in_bounded_pieces(
    pg_url: str, tmp_path: Path, big_root: Path, registered: Any, cli_processes: list[Cli]
) -> None:
    # PostgreSQL: there the workers also build and send the COPY of their rows in 16k-row batches.
    # (On SQLite they pack a chunk's sorted rows into a SQLite image for the driver, binding 64k rows
    # at a time: the image itself, ~19 bytes a row plus the id, is what a chunk adds; scoring is the same.)
    import pyarrow.parquet as pq

    (file,) = sorted(partition_dir(big_root).glob("*.parquet"))
    # Decoded, the partition does not fit in one worker.
    decoded = pq.read_table(file).nbytes
    assert decoded > WORKER_LIMIT, decoded
    config = project(tmp_path, pg_url, big_root, model=f"batch_rows = {BATCH_ROWS}")
    settings = load(config)
    registered(settings)
    env = {"NIGHTSHIFT_DASK__MEMORY_LIMIT": f"{WORKER_LIMIT // MiB}MiB", "NIGHTSHIFT_DASK__N_WORKERS": "2"}
    cli = start_cli([*score_args(), "--json"], config, env=env)
    cli_processes.append(cli)
    with WorkerMemory(cli) as memory:
        rc, out, err = cli.finish(timeout=400)
    assert rc == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["rows"] == BIG_ROWS
    assert summary["tasks"] >= 2  # a file bigger than one task's rows is split by row groups
    # Every worker process stayed below the share of its limit at which Dask kills it (95 %),
    # both as polled from outside and as the tasks measured it themselves (ru_maxrss).
    assert len(memory.workers) >= 2, memory.peaks
    peak = max(memory.workers.values())
    assert peak < 0.95 * WORKER_LIMIT, f"worker peak RSS {peak / MiB:.0f} MiB: {memory.info}"
    assert summary["peak_worker_rss_bytes"] < 0.95 * WORKER_LIMIT
    store = open_store(settings)
    assert_exactly_once(store, {str(i) for i in range(1, BIG_ROWS + 1)})


def test_a_worker_memory_limit_below_one_batch_fails_boundedly_and_clearly(
    tmp_path: Path, big_root: Path, registered: Any, dask_client: Any, data_root: Path, cli_processes: list[Cli]
) -> None:
    # SQLite: the failure happens in the worker, before anything is staged, on either store.
    url = f"sqlite:///{tmp_path / 'state' / 'store.db'}"
    from nightshift.db.store import Store

    Store(url).upgrade()
    # 64k-row batches (the default is 16k): one batch of this model needs more than the 300 MiB below.
    config = project(tmp_path, url, big_root, model="batch_rows = 65536")
    settings = load(config)
    registered(settings)
    # Yesterday's predictions of this partition come from a healthy run on a small copy.
    small = load(project(tmp_path / "small", url, data_root))
    first = score_partition(small, MODEL, SCORE_DS, client=dask_client)
    store = open_store(settings)
    before = committed(store)
    env = {"NIGHTSHIFT_DASK__MEMORY_LIMIT": "300MiB"}
    t0 = time.monotonic()
    cli = start_cli(score_args(), config, env=env)
    cli_processes.append(cli)
    rc, _, err = cli.finish(timeout=300)
    elapsed = time.monotonic() - t0
    # Bounded: Dask gives up after its allowed failures; never an endless restart loop.
    assert rc == 1, err[-3000:]
    assert elapsed < 240
    # Nothing lost: the old predictions serve, and the run is recorded as failed.
    assert catalog_run(store) == first.run_id
    assert committed(store) == before
    failed = runs(store)[-1]
    assert failed["status"] == "failed"
    assert_exactly_once(store, input_ids(data_root))
    # Clear: the error names the file it could not score and the memory limit.
    text = " ".join(err.split()) + " " + failed["error"]
    expect_fixed(
        "part-00000.parquet" in text and "memory" in text.lower(),
        f"the error names neither the file nor the memory limit: {failed['error'][:300]}",
    )
    expect_fixed("Traceback" not in err, "the CLI prints a traceback for a worker that ran out of memory")
