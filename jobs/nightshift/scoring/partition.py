"""Dask-parallel scoring of one partition with ONNX Runtime, committed atomically to the store."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from nightshift.config import DaskSettings, Settings
from nightshift.contracts import FeatureContract
from nightshift.data import inspect_partition
from nightshift.db.store import CommitResult, Store, stage_chunk
from nightshift.errors import ContractError, DuplicateEntityError, NightshiftError
from nightshift.models.registry import ModelVersion, Registry, read_artifact
from nightshift.scoring.chunk import ChunkResult, ChunkTask, score_chunk
from nightshift.scoring.sessions import ModelHandle, check_model_inputs, make_session

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

log = logging.getLogger(__name__)

#: Largest number of rows one Dask task scores; bigger files are split by row groups.
MAX_ROWS_PER_TASK = 1_000_000


@dataclass
class RunSummary:
    model: str
    version: int
    ds: date
    run_id: int
    rows: int
    files: int
    tasks: int
    seconds: float
    rows_per_s: float
    replaced_run_id: int | None
    store: str
    peak_worker_rss_bytes: int
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ds"] = self.ds.isoformat()
        return d


class WorkerLost(NightshiftError):
    """A task's Dask worker died on every attempt (usually: out of memory)."""


# -- the driver side ------------------------------------------------------------------------


@contextlib.contextmanager
def dask_client(settings: DaskSettings, client: Client | None = None) -> Iterator[Client]:
    """The configured Dask client: an existing scheduler, or a local cluster for this run."""
    if client is not None:
        yield client
        return
    import dask
    from distributed import Client, LocalCluster

    if settings.scheduler_address:
        with Client(settings.scheduler_address, timeout="30s") as c:
            yield c
        return
    with (
        dask.config.set({"distributed.worker.multiprocessing-method": settings.start_method}),
        LocalCluster(
            n_workers=settings.local_workers(),
            threads_per_worker=settings.threads_per_worker,
            processes=settings.processes,
            memory_limit=settings.memory_limit,
            dashboard_address="127.0.0.1:0",  # its HTTP server runs anyway: a free loopback port
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def _locate_duplicates(exc: BaseException, partition: Any, contract: FeatureContract) -> DuplicateEntityError | None:
    """A duplicate-id failure restated with the files and rows that hold each repeated id."""
    if not isinstance(exc, DuplicateEntityError) or not exc.entity_ids:
        return None
    from nightshift.data import describe_duplicates, locate_entity_ids

    try:
        found = locate_entity_ids([f.uri for f in partition.files], contract.entity_id, list(exc.entity_ids))
    except Exception:  # the original error still says which ids
        log.exception("could not locate the duplicate entity ids")
        return None
    lines = describe_duplicates(found)
    if not lines:
        return None
    return DuplicateEntityError(
        f"partition {partition.uri}: duplicate entity ids are an error; nothing committed, the previous "
        "predictions still serve:\n  " + "\n  ".join(lines),
        exc.entity_ids,
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def score_partition(
    settings: Settings,
    model: str,
    ds: date,
    *,
    version: int | None = None,
    alias: str | None = None,
    run_key: str | None = None,
    client: Client | None = None,
    store: Store | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RunSummary:
    """Score partition `ds` of `model` and commit it atomically. Raises, leaving the old predictions, on failure."""
    t0 = time.perf_counter()
    cfg = settings.model(model)
    own_store = store is None
    store = store or Store(settings.resolved_store_url, connect_retries=settings.connect_retries)
    try:
        store.ensure_current()
        mv = Registry(store, settings.artifacts_uri).resolve(model, version=version, alias=alias)
        # The model is checked before any data is read: a missing or changed file, or
        # inputs that do not fit the contract, fail here with the database untouched.
        session = make_session(read_artifact(mv.artifact_uri, mv.sha256), 1)
        check_model_inputs(session, cfg.contract, f"model {model} v{mv.version} ({mv.artifact_uri})")
        del session
        t_model = time.perf_counter()
        partition = inspect_partition(
            cfg.dataset_uri(settings), cfg.partition_key, ds, cfg.contract, cfg.success_marker
        )
        if partition.rows == 0 and cfg.empty_partition == "error":
            raise ContractError(
                f"partition {partition.uri} has no rows ({len(partition.files)} file(s)); nothing committed, "
                'the previous predictions still serve (set empty_partition = "commit" to commit it empty)'
            )
        t_plan = time.perf_counter()
        with store.run_lock(model, ds, settings.run_lock_timeout_s):
            lock_wait = time.perf_counter() - t_plan
            if lock_wait > 1.0:
                log.info(
                    "%s ds=%s: waited %.1fs for the run lock (another run of this partition)", model, ds, lock_wait
                )
            return _run(
                settings,
                cfg.contract,
                cfg.batch_rows,
                mv,
                partition,
                ds,
                run_key,
                client,
                store,
                progress,
                t0,
                t_model,
                t_plan,
            )
    finally:
        if own_store:
            store.dispose()


def _run(
    settings: Settings,
    contract: FeatureContract,
    batch_rows: int,
    mv: ModelVersion,
    partition: Any,
    ds: date,
    run_key: str | None,
    client: Client | None,
    store: Store,
    progress: Callable[[int, int], None] | None,
    t0: float,
    t_model: float,
    t_plan: float,
) -> RunSummary:
    t_locked = time.perf_counter()
    slices = partition.slices(MAX_ROWS_PER_TASK)
    run_id = store.start_run(
        mv.model, mv.version, ds, run_key=run_key, input_rows=partition.rows, files=len(partition.files)
    )
    handle = ModelHandle(mv.artifact_uri, mv.sha256, settings.dask.ort_intra_op_threads, mv.decision_threshold)
    staged_by_workers = store.parallel_staging
    tasks = [
        ChunkTask(s, contract, handle, batch_rows, run_id, store.url if staged_by_workers else None) for s in slices
    ]
    totals = {"read_s": 0.0, "infer_s": 0.0, "write_s": 0.0}
    peak = 0
    done_rows = 0
    # Submitted and not yet consumed: cancelled on failure. A consumed future is dropped at once,
    # so Dask frees its result (on SQLite, a whole chunk's rows) instead of keeping it to the end.
    outstanding: set[Any] = set()
    try:
        t_cluster = time.perf_counter()
        with dask_client(settings.dask, client) as c:
            from distributed import KilledWorker, as_completed

            t_submit = time.perf_counter()
            # Keys unique across stores and processes sharing one cluster (run ids restart per store).
            token = uuid.uuid4().hex[:12]
            by_key: dict[Any, ChunkTask] = {}

            def submit(i: int) -> Any:
                fut = c.submit(
                    score_chunk, tasks[i], key=f"nightshift-score-{mv.model}-r{run_id}-{token}-{i}", pure=False
                )
                by_key[fut.key] = tasks[i]
                outstanding.add(fut)
                return fut

            # Workers that stage their own rows get every task at once. When the driver writes
            # (SQLite), at most `window` chunks are in flight, and the window adapts: a result
            # already there when the driver asks for the next one means the driver is the
            # bottleneck (a cheap model), so fewer chunks go out and idle workers leave the driver
            # its CPU; a driver that had to wait lets more out, up to two per worker thread (an
            # expensive model keeps every core scoring). Either way the driver's backlog is bounded.
            most = len(tasks) if staged_by_workers else max(2, 2 * sum(c.nthreads().values()))
            window = most
            pending = as_completed([submit(i) for i in range(min(window, len(tasks)))])
            next_task = len(outstanding)
            results = iter(pending)
            while True:
                t_wait = time.perf_counter()
                fut = next(results, None)
                if fut is None:
                    break
                outstanding.discard(fut)
                if not staged_by_workers:
                    waited = time.perf_counter() - t_wait > 0.01
                    window = min(most, window + 1) if waited else max(1, window - 1)
                # Top up before staging this chunk, so the next ones score meanwhile.
                while next_task < len(tasks) and len(outstanding) < window:
                    pending.add(submit(next_task))
                    next_task += 1
                try:
                    res: ChunkResult = fut.result()
                except KilledWorker:
                    task = by_key[fut.key]
                    raise WorkerLost(
                        f"{task.slice.uri} ({task.slice.chunk_id}, {task.slice.rows:,} rows): the Dask worker scoring "
                        f"it died every time it tried (out of memory? local memory limit "
                        f"{settings.dask.memory_limit!r} per worker); nothing committed, the previous predictions "
                        "still serve"
                    ) from None
                if not staged_by_workers:
                    t = time.perf_counter()
                    if res.ids is None or res.scores is None or res.labels is None:
                        raise RuntimeError(f"chunk {res.chunk} came back without its rows")
                    stage_chunk(store.url, run_id, res.chunk, res.ids, res.scores, res.labels)
                    res.write_s = time.perf_counter() - t
                for k in totals:
                    totals[k] += getattr(res, k)
                peak = max(peak, res.peak_rss_bytes)
                done_rows += res.rows
                if progress:
                    progress(done_rows, partition.rows)
            t_scored = time.perf_counter()
        timings = {
            "model_check_s": round(t_model - t0, 4),
            "contract_check_s": round(t_plan - t_model, 4),
            "lock_wait_s": round(t_locked - t_plan, 4),
            "cluster_start_s": round(t_submit - t_cluster, 4),
            "score_s": round(t_scored - t_submit, 4),
            **{f"tasks_{k}": round(v, 4) for k, v in totals.items()},
        }
        commit: CommitResult = store.commit_run(run_id, partition.rows, timings)
    except BaseException as exc:
        for fut in outstanding:
            with contextlib.suppress(Exception):
                fut.cancel()
        located = _locate_duplicates(exc, partition, contract)
        with contextlib.suppress(Exception):
            store.fail_run(run_id, _describe(located or exc))
        if located is not None:
            raise located from None
        raise
    seconds = time.perf_counter() - t0
    timings["commit_s"] = round(commit.seconds, 4)
    return RunSummary(
        model=mv.model,
        version=mv.version,
        ds=ds,
        run_id=run_id,
        rows=commit.rows,
        files=len(partition.files),
        tasks=len(tasks),
        seconds=round(seconds, 3),
        rows_per_s=round(commit.rows / seconds, 1) if seconds > 0 else 0.0,
        replaced_run_id=commit.replaced_run_id,
        store=store.dialect,
        peak_worker_rss_bytes=peak,
        timings=timings,
    )
