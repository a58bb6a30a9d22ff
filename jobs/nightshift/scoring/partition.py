"""Dask-parallel scoring of one partition with ONNX Runtime, committed atomically to the store."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from typing import TYPE_CHECKING, Any

from nightshift.config import DaskSettings, Settings
from nightshift.contracts import FeatureContract
from nightshift.data import bundle_slices, inspect_partition
from nightshift.db.staging import can_merge_sqlite, process_token, stage_chunk
from nightshift.db.store import CommitResult, Store
from nightshift.errors import ContractError, DuplicateEntityError, ModelSchemaError, NightshiftError
from nightshift.models.registry import ModelVersion, Registry, read_artifact
from nightshift.scoring.chunk import ChunkResult, ChunkTask, ModelRun, score_chunk
from nightshift.scoring.outputs import OutputReader
from nightshift.scoring.reasons import ExplainSpec
from nightshift.scoring.sessions import ModelHandle, check_model_inputs, make_session
from nightshift.telemetry import ScoringTelemetry

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


class ModelRunFailed(NightshiftError):
    """One model's part of a shared scoring pass failed (its inputs, its outputs); the others went on."""


# -- the driver side ------------------------------------------------------------------------


@contextlib.contextmanager
def dask_client(settings: DaskSettings, client: Client | None = None) -> Iterator[Client]:
    """The configured Dask client: an existing scheduler, or a local cluster for this run."""
    if client is not None:
        yield client
        return
    import dask
    from distributed import Client, LocalCluster

    from nightshift.errors import ClusterUnavailable

    if settings.scheduler_address:
        address, timeout = settings.scheduler_address, settings.connect_timeout_s
        try:
            remote = Client(address, timeout=f"{timeout}s")
        except (OSError, TimeoutError, ValueError) as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClusterUnavailable(
                f"cannot reach the Dask scheduler at {address} within {timeout:g}s (dask.scheduler_address, "
                f"dask.connect_timeout_s): {why}"
            ) from None
        with remote as c:
            yield c
        return
    # Workers log a failing task's traceback at ERROR; a caller that quieted the `distributed` logger
    # further (the CLI: the error reaches its user as one line) quiets the workers as much.
    quiet = max(logging.ERROR, logging.getLogger("distributed").getEffectiveLevel())
    with (
        _dask_log_level(settings.log_level),
        dask.config.set({"distributed.worker.multiprocessing-method": settings.start_method}),
        LocalCluster(
            n_workers=settings.local_workers(),
            threads_per_worker=settings.threads_per_worker,
            processes=settings.processes,
            memory_limit=settings.memory_limit,
            dashboard_address="127.0.0.1:0",  # its HTTP server runs anyway: a free loopback port
            silence_logs=quiet,
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@contextlib.contextmanager
def _dask_log_level(level: str) -> Iterator[None]:
    """Dask's loggers at `level` (dask.log_level) while this run's local cluster lives: its scheduler runs
    in this process and logs every start, connection and close at INFO, ~65 lines a night in an Airflow
    task's log. A caller that set them quieter stays quieter; the levels come back afterwards."""
    loggers = [logging.getLogger(n) for n in ("distributed", "tornado")]
    before = [lg.level for lg in loggers]
    wanted = logging.getLevelName(level)
    for lg in loggers:
        lg.setLevel(max(wanted, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, before, strict=True):
            lg.setLevel(lvl)


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


@dataclass
class _Target:
    """One model version of a scoring pass, with everything the driver knows about it before the read."""

    mv: ModelVersion
    cfg: Any
    partition: Any
    outputs: OutputReader
    run_id: int = 0
    staged: int = 0
    error: BaseException | None = None
    totals: dict[str, float] = field(default_factory=lambda: {"read_s": 0.0, "infer_s": 0.0, "write_s": 0.0})
    #: `[models.explain]` on: the version's explainer and k (the workers add the threads).
    explain: ExplainSpec | None = None


def _prepare(settings: Settings, store: Store, model: str, ds: date, version: int | None, alias: str | None) -> _Target:
    """Resolve the version and check it and its partition before any data is read: a missing or changed
    artifact, inputs that do not fit the contract, or a partition that breaks it fail here, database untouched."""
    cfg = settings.model(model)
    mv = Registry(store, settings.artifacts_uri).resolve(model, version=version, alias=alias)
    outputs = OutputReader.of(mv.task, mv.signature, mv.decision_threshold)
    source = f"model {model} v{mv.version} ({mv.artifact_uri})"
    session = make_session(read_artifact(mv.artifact_uri, mv.sha256), 1)
    inputs = (mv.signature or {}).get("inputs")
    if inputs is None:  # nightshift's own layout; the outputs are checked by the reader below
        check_model_inputs(session, cfg.contract, source, probabilities=False)
    else:
        from nightshift.models.importing import InputSpec, check_input_spec

        problems = check_input_spec(InputSpec.from_dict(inputs), cfg.contract)
        if problems:
            raise ModelSchemaError(f"{source}: the model does not match the feature contract: " + "; ".join(problems))
    outputs.check(session, source)
    del session
    explain = None
    if cfg.explain.enabled:
        from nightshift.models.explainers import require_explainer
        from nightshift.scoring.reasons import check_features

        require_explainer(model, mv.version, mv.explainer)
        assert mv.explainer is not None
        explain = ExplainSpec(mv.explainer, cfg.explain.top_k)
        check_features(explain, cfg.contract, source)
    partition = inspect_partition(cfg.dataset_uri(settings), cfg.partition_key, ds, cfg.contract, cfg.success_marker)
    if partition.rows == 0 and cfg.empty_partition == "error":
        raise ContractError(
            f"partition {partition.uri} has no rows ({len(partition.files)} file(s)); nothing committed, "
            'the previous predictions still serve (set empty_partition = "commit" to commit it empty)'
        )
    return _Target(mv, cfg, partition, outputs, explain=explain)


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
    result = score_partitions(
        settings, [(model, version, alias)], ds, run_key=run_key, client=client, store=store, progress=progress
    )
    [outcome] = result.values()
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def score_partitions(
    settings: Settings,
    targets: Sequence[tuple[str, int | None, str | None]],
    ds: date,
    *,
    run_key: str | None = None,
    client: Client | None = None,
    store: Store | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[tuple[str, int], RunSummary | BaseException]:
    """Score partition `ds` for several (model, version, alias) at once, each committed atomically on its own.

    Targets whose models read the same partition (the same dataset, or versions of one model) share ONE
    read of each file: every worker reads a chunk's Arrow batches once and runs every model's session on
    them. A target that fails (its version, its contract, its outputs, its commit) fails alone: its error
    names it and the previous predictions of its partition still serve; the others commit. Returns
    (model, version) → its RunSummary, or the exception that failed it. A target that cannot even be
    prepared (no such version, a broken contract) raises at once when it is the only one.
    """
    t0 = time.perf_counter()
    own_store = store is None
    store = store or Store(settings.resolved_store_url, connect_retries=settings.connect_retries)
    results: dict[tuple[str, int], RunSummary | BaseException] = {}
    try:
        store.ensure_current()
        prepared: list[_Target] = []
        for model, version, alias in targets:
            try:
                prepared.append(_prepare(settings, store, model, ds, version, alias))
            except NightshiftError as exc:
                if len(targets) == 1:
                    raise
                results[(model, version or 0)] = exc
        t_plan = time.perf_counter()
        # One read per partition (dataset): group the targets by the files they read.
        groups: dict[str, list[_Target]] = {}
        for target in prepared:
            groups.setdefault(target.partition.uri, []).append(target)
        for group in groups.values():
            models = sorted({t.mv.model for t in group})
            with contextlib.ExitStack() as locks:
                for model in models:  # always in name order: two passes never wait on each other in a cycle
                    locks.enter_context(store.run_lock(model, ds, settings.run_lock_timeout_s))
                lock_wait = time.perf_counter() - t_plan
                if lock_wait > 1.0:
                    log.info("ds=%s: waited %.1fs for the run lock(s) of %s", ds, lock_wait, ", ".join(models))
                results.update(_run(settings, group, ds, run_key, client, store, progress, t0, t_plan))
    finally:
        if own_store:
            store.dispose()
    return results


def _run(
    settings: Settings,
    group: list[_Target],
    ds: date,
    run_key: str | None,
    client: Client | None,
    store: Store,
    progress: Callable[[int, int], None] | None,
    t0: float,
    t_plan: float,
) -> dict[tuple[str, int], RunSummary | BaseException]:
    t_locked = time.perf_counter()
    partition = group[0].partition
    # What each run read (files, fingerprints, model) is stored with it; START/COMPLETE/FAIL events and
    # job metrics go wherever [lineage] and [metrics] say. None of it can fail the run. Once every run has
    # ended, the OpenLineage client is closed (its connections freed, what it still queues sent).
    telemetry = ScoringTelemetry(
        settings, store.url, partition, ds, dataset_uri=group[0].cfg.dataset_uri(settings), run_key=run_key, t0=t0
    )
    try:
        return _score(settings, group, ds, run_key, client, store, progress, t0, t_plan, t_locked, telemetry)
    finally:
        telemetry.close()


def _score(
    settings: Settings,
    group: list[_Target],
    ds: date,
    run_key: str | None,
    client: Client | None,
    store: Store,
    progress: Callable[[int, int], None] | None,
    t0: float,
    t_plan: float,
    t_locked: float,
    telemetry: ScoringTelemetry,
) -> dict[tuple[str, int], RunSummary | BaseException]:
    partition = group[0].partition
    slices = partition.slices(MAX_ROWS_PER_TASK)
    for target in group:
        manifest = telemetry.manifest(target.mv)
        target.run_id = store.start_run(
            target.mv.model,
            target.mv.version,
            ds,
            run_key=run_key,
            input_rows=partition.rows,
            files=len(partition.files),
            keep_running=[t.run_id for t in group if t.run_id],  # this pass's other versions are alive
            history_days=target.cfg.history_days,
            manifest=manifest,
        )
        telemetry.started(target.run_id, target.mv, manifest, target.cfg.contract)
    threads = settings.dask.ort_intra_op_threads
    runs = tuple(
        ModelRun(
            t.mv.model,
            t.mv.version,
            ModelHandle(t.mv.artifact_uri, t.mv.sha256, threads, t.mv.decision_threshold),
            t.cfg.contract,
            t.run_id,
            t.outputs,
            (t.mv.signature or {}).get("inputs"),
            None if t.explain is None else replace(t.explain, threads=threads),
        )
        for t in group
    )
    by_run = {t.run_id: t for t in group}
    staged_by_workers = store.parallel_staging
    batch_rows = min(t.cfg.batch_rows for t in group)
    bundles = bundle_slices(slices, settings.dask.task_min_rows, MAX_ROWS_PER_TASK)
    tasks = [ChunkTask(b, runs, batch_rows, store.url if staged_by_workers else None) for b in bundles]
    peak = 0
    done_rows = 0
    name = "+".join(f"{t.mv.model}-v{t.mv.version}" for t in group)
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
                key = f"nightshift-score-{name}-r{group[0].run_id}-{token}-{i}"
                task = tasks[i] if staged_by_workers else replace(tasks[i], driver_token=driver if pack else None)
                fut = c.submit(score_chunk, task, key=key, pure=False)
                by_key[fut.key] = tasks[i]
                outstanding.add(fut)
                return fut

            # Workers that stage their own rows get every task at once. When the driver writes
            # (SQLite), at most `window` chunks are in flight, and the window adapts: a result
            # already there when the driver asks for the next one means the driver is the
            # bottleneck (a cheap model), so fewer chunks go out and idle workers leave the driver
            # its CPU; a driver that had to wait lets more out, up to two per worker thread (an
            # expensive model keeps every core scoring). Either way the driver's backlog is bounded.
            worker_threads = sum(c.nthreads().values())
            most = len(tasks) if staged_by_workers else max(2, 2 * worker_threads)
            window = most
            # With two or more worker threads, the driver (SQLite's one writer) is the bottleneck of a cheap model:
            # the workers pack the rows into SQLite images it merges in C (`staging.SqliteImage`), about half its
            # work per row. One worker would then become the bottleneck: it sends the rows, the driver binds them.
            # (Measured, 4M rows, 2 cores, docs/performance.md: 6.61-6.88 -> 5.48-5.52 s with 2 workers; with one,
            # which sends rows, 6.28-6.42 s. With sqlite3 images, one worker that packed was 14.0 -> 16.0 s.
            # Switching with the window's signal instead flipped at every chunk and was no faster.)
            pack = worker_threads >= 2 and can_merge_sqlite()
            driver = process_token()  # a worker that is a thread of this process sends rows
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
                        f"{task.source} ({task.chunk_id}, {task.rows:,} rows): the Dask worker scoring "
                        f"it died every time it tried (out of memory? local memory limit "
                        f"{settings.dask.memory_limit!r} per worker); nothing committed, the previous predictions "
                        "still serve"
                    ) from None
                for run_id, part in res.models.items():
                    target = by_run[run_id]
                    if target.error is not None:
                        continue
                    if part.error is not None:
                        target.error = part.error  # the original exception, naming the file and column
                        continue
                    if not staged_by_workers:
                        t = time.perf_counter()
                        if part.data is None:
                            raise RuntimeError(f"chunk {res.chunk} came back without the rows of run {run_id}")
                        try:
                            stage_chunk(store.url, run_id, res.chunk, part.data)
                        except NightshiftError as exc:
                            target.error = exc
                            continue
                        part.write_s = time.perf_counter() - t  # the driver's staging; the workers' packing is pack_s
                        part.data = None
                    target.staged += part.rows
                    target.totals["read_s"] += res.read_s / len(res.models)
                    target.totals["infer_s"] += part.infer_s
                    if target.explain is not None:
                        target.totals["explain_s"] = target.totals.get("explain_s", 0.0) + part.explain_s
                    target.totals["write_s"] += part.write_s
                    if part.pack_s:
                        target.totals["pack_s"] = target.totals.get("pack_s", 0.0) + part.pack_s
                peak = max(peak, res.peak_rss_bytes)
                done_rows += max((p.rows for p in res.models.values()), default=0)
                if progress:
                    progress(done_rows, partition.rows)
                if all(t.error is not None for t in group):
                    break  # every model failed: stop scoring for none
            t_scored = time.perf_counter()
    except BaseException as exc:
        for fut in outstanding:
            with contextlib.suppress(Exception):
                fut.cancel()
        located = _locate_duplicates(exc, partition, group[0].cfg.contract)
        for target in group:
            with contextlib.suppress(Exception):
                store.fail_run(target.run_id, _describe(located or exc))
            telemetry.failed(target.run_id, located or exc, worker_peak_bytes=peak)
        if located is not None:
            raise located from None
        raise
    for fut in outstanding:
        with contextlib.suppress(Exception):
            fut.cancel()
    out: dict[tuple[str, int], RunSummary | BaseException] = {}
    shared = {
        "contract_check_s": round(t_plan - t0, 4),
        "lock_wait_s": round(t_locked - t_plan, 4),
        "cluster_start_s": round(t_submit - t_cluster, 4),
        "score_s": round(t_scored - t_submit, 4),
        "models_in_read": len(group),
    }
    for target in group:
        key = (target.mv.model, target.mv.version)
        if target.error is not None:
            error = _locate_duplicates(target.error, partition, target.cfg.contract) or target.error
            with contextlib.suppress(Exception):
                store.fail_run(target.run_id, _describe(error))
            telemetry.failed(target.run_id, error, worker_peak_bytes=peak)
            out[key] = error
            continue
        timings = {**shared, **{f"tasks_{k}": round(v, 4) for k, v in target.totals.items()}}
        try:
            commit: CommitResult = store.commit_run(
                target.run_id, partition.rows, timings, history_days=target.cfg.history_days
            )
        except BaseException as exc:
            located = _locate_duplicates(exc, partition, target.cfg.contract)
            with contextlib.suppress(Exception):
                store.fail_run(target.run_id, _describe(located or exc))
            telemetry.failed(target.run_id, located or exc, worker_peak_bytes=peak)
            out[key] = located or exc
            if not isinstance(exc, Exception):
                raise
            continue
        seconds = time.perf_counter() - t0
        timings["commit_s"] = round(commit.seconds, 4)
        out[key] = RunSummary(
            model=target.mv.model,
            version=target.mv.version,
            ds=ds,
            run_id=target.run_id,
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
        telemetry.committed(target.run_id, commit.rows, replaced_run_id=commit.replaced_run_id, worker_peak_bytes=peak)
    return out
