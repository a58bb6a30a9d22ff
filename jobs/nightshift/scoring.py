"""Dask-parallel scoring of one partition with ONNX Runtime, committed atomically to the store."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from nightshift.config import DaskSettings, Settings
from nightshift.contracts import FeatureContract
from nightshift.data import TaskSlice, inspect_partition, iter_batches
from nightshift.errors import ContractError, DuplicateEntityError, ModelSchemaError, NightshiftError
from nightshift.registry import ModelVersion, Registry, read_artifact
from nightshift.store import CommitResult, Store, stage_chunk

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnxruntime as ort
    import pyarrow as pa
    from distributed import Client

log = logging.getLogger(__name__)

#: Largest number of rows one Dask task scores; bigger files are split by row groups.
MAX_ROWS_PER_TASK = 1_000_000
PROBABILITIES = "probabilities"


@dataclass(frozen=True)
class ModelHandle:
    """What a worker needs to build its own session. Sessions are never pickled."""

    artifact_uri: str
    sha256: str
    intra_op_threads: int
    decision_threshold: float


@dataclass(frozen=True)
class ChunkTask:
    slice: TaskSlice
    contract: FeatureContract
    model: ModelHandle
    batch_rows: int
    run_id: int
    #: Set: the worker stages its rows itself (PostgreSQL). None: rows go back to the driver (SQLite).
    store_url: str | None


@dataclass
class ChunkResult:
    chunk: str
    rows: int
    read_s: float
    infer_s: float
    write_s: float
    pid: int
    peak_rss_bytes: int
    ids: pa.Array | None = None
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None


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


# -- the worker side ------------------------------------------------------------------------

_sessions: dict[tuple[str, str, int], ort.InferenceSession] = {}


def check_model_inputs(session: ort.InferenceSession, contract: FeatureContract, source: str) -> None:
    """Raise ModelSchemaError if the ONNX graph's inputs or outputs do not fit the contract."""
    inputs = {i.name: i for i in session.get_inputs()}
    problems = []
    for col in contract.columns:
        node = inputs.get(col.name)
        expected = "tensor(string)" if col.type.is_categorical else "tensor(float)"
        if node is None:
            problems.append(f"no input named {col.name!r}")
        elif node.type != expected:
            problems.append(f"input {col.name!r} is {node.type}, the contract needs {expected}")
        elif len(node.shape) != 2 or node.shape[1] not in (1, "1"):
            problems.append(f"input {col.name!r} has shape {node.shape}, expected [N, 1]")
    extra = sorted(set(inputs) - set(contract.feature_names))
    if extra:
        problems.append(f"inputs not in the contract: {', '.join(extra)}")
    outputs = {o.name: o for o in session.get_outputs()}
    if PROBABILITIES not in outputs:
        problems.append(f"no {PROBABILITIES!r} output (got {', '.join(outputs) or 'none'})")
    if problems:
        raise ModelSchemaError(f"{source}: the model does not match the feature contract: " + "; ".join(problems))


def make_session(onnx_bytes: bytes, intra_op_threads: int) -> ort.InferenceSession:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def get_session(handle: ModelHandle) -> ort.InferenceSession:
    """This process's session for a model artifact, created (and hash-checked) on first use."""
    key = (handle.artifact_uri, handle.sha256, handle.intra_op_threads)
    session = _sessions.get(key)
    if session is None:
        session = make_session(read_artifact(handle.artifact_uri, handle.sha256), handle.intra_op_threads)
        _sessions[key] = session
    return session


def _duplicate_examples(ids: pa.Array, limit: int = 5) -> list[str]:
    import pyarrow.compute as pc

    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    return [str(v) for v in dup.field("values").to_pylist()[:limit]]


def score_chunk(task: ChunkTask) -> ChunkResult:
    """Score one slice of one file: Arrow batches → ONNX Runtime → staged rows (or back to the driver)."""
    import numpy as np
    import pyarrow as pa

    from nightshift.features import entity_ids, model_inputs

    session = get_session(task.model)
    contract = task.contract
    source = task.slice.uri
    out_ids: list[pa.Array] = []
    out_scores: list[np.ndarray] = []
    read_s = infer_s = 0.0
    t = time.perf_counter()
    categorical = [c.name for c in contract.categorical]
    for batch in iter_batches(task.slice, contract.read_columns, task.batch_rows, categorical):
        feeds = model_inputs(batch, contract, source)
        out_ids.append(entity_ids(batch, contract, source))
        t1 = time.perf_counter()
        read_s += t1 - t
        probabilities = session.run([PROBABILITIES], feeds)[0]
        out_scores.append(np.asarray(probabilities[:, 1], dtype=np.float32))
        t = time.perf_counter()
        infer_s += t - t1
    ids: pa.Array = pa.concat_arrays(out_ids) if out_ids else pa.array([], pa.string())
    scores = np.concatenate(out_scores) if out_scores else np.zeros(0, np.float32)
    if len(ids) != task.slice.rows:
        raise ContractError(f"{source}: read {len(ids)} rows, its footer says {task.slice.rows}")
    if len(ids) and not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise ContractError(f"{source}: the model produced {bad} non-finite score(s); nothing was written")
    dupes = _duplicate_examples(ids)
    if dupes:
        raise DuplicateEntityError(
            f"{source}: entity id(s) {', '.join(map(repr, dupes))} appear more than once in this file; "
            "duplicate entity ids are an error"
        )
    labels = (scores >= task.model.decision_threshold).astype(np.int16)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if task.store_url is None:
        # The driver inserts these into SQLite's B-tree: in key order the inserts append.
        import pyarrow.compute as pc

        order = pc.sort_indices(ids)
        ids = ids.take(order)
        order_np = order.to_numpy()
        scores, labels = scores[order_np], labels[order_np]
        return ChunkResult(task.slice.chunk_id, len(ids), read_s, infer_s, 0.0, os.getpid(), peak, ids, scores, labels)
    t = time.perf_counter()
    rows = stage_chunk(task.store_url, task.run_id, task.slice.chunk_id, ids, scores, labels)
    write_s = time.perf_counter() - t
    return ChunkResult(task.slice.chunk_id, rows, read_s, infer_s, write_s, os.getpid(), peak)


# -- the driver side ------------------------------------------------------------------------


@contextlib.contextmanager
def dask_client(
    settings: DaskSettings, client: Client | None = None, *, store_is_sqlite: bool = False
) -> Iterator[Client]:
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
            n_workers=settings.local_workers(store_is_sqlite),
            threads_per_worker=settings.threads_per_worker,
            processes=settings.processes,
            memory_limit=settings.memory_limit,
            dashboard_address="127.0.0.1:0",  # its HTTP server runs anyway: a free loopback port
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


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
    futures: list[Any] = []
    try:
        t_cluster = time.perf_counter()
        with dask_client(settings.dask, client, store_is_sqlite=not staged_by_workers) as c:
            from distributed import KilledWorker, as_completed

            t_submit = time.perf_counter()
            # Keys unique across stores and processes sharing one cluster (run ids restart per store).
            token = uuid.uuid4().hex[:12]
            futures = [
                c.submit(score_chunk, task, key=f"nightshift-score-{mv.model}-r{run_id}-{token}-{i}", pure=False)
                for i, task in enumerate(tasks)
            ]
            by_key = {fut.key: task for fut, task in zip(futures, tasks, strict=True)}
            for fut in as_completed(futures):
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
            "cluster_start_s": round(t_submit - t_cluster, 4),
            "score_s": round(t_scored - t_submit, 4),
            **{f"tasks_{k}": round(v, 4) for k, v in totals.items()},
        }
        commit: CommitResult = store.commit_run(run_id, partition.rows, timings)
    except BaseException as exc:
        for fut in futures:
            with contextlib.suppress(Exception):
                fut.cancel()
        with contextlib.suppress(Exception):
            store.fail_run(run_id, _describe(exc))
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
