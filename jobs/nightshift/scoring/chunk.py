"""One chunk of one file on a worker: read its Arrow batches ONCE, run every model's session on each batch,
and stage each model's rows under its own run (or hand them back to the driver).

Several model versions over the same partition (a champion and its challenger, or several models of
one dataset) share the read: Parquet decoding happens once per batch whatever the number of models, and
so does building the model inputs for versions of one contract and input layout (`_SharedInputs`).
A failure that belongs to one model (its inputs break its contract, it outputs NaN) fails only that
model's part of the chunk (a broken contract: every model reading that contract) — its rows are rolled
back and the result says why — while the others go on; a failure of the data itself (an unreadable page)
fails the chunk for all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nightshift.contracts import FeatureContract
from nightshift.data import TaskSlice, iter_batches
from nightshift.db.staging import Rows, SqliteImage, can_pack_sqlite, process_token, sqlite_image
from nightshift.errors import ContractError, DuplicateEntityError, NightshiftError
from nightshift.scoring.outputs import OutputReader
from nightshift.scoring.reasons import ExplainSpec
from nightshift.scoring.sessions import ModelHandle, get_session

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime as ort
    import pyarrow as pa

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRun:
    """One model version scored in a chunk: its session, how it is fed and read, and the run it stages under."""

    model: str
    version: int
    handle: ModelHandle
    contract: FeatureContract
    run_id: int
    outputs: OutputReader = field(default_factory=OutputReader)
    #: The version's signature inputs (how to feed the graph); None: nightshift's own one-input-per-column layout.
    inputs: dict[str, Any] | None = None
    #: Reasons (`[models.explain]`): the version's explainer and k; None: scores only, nothing extra computed.
    explain: ExplainSpec | None = None

    @property
    def name(self) -> str:
        return f"{self.model} v{self.version}"


@dataclass(frozen=True)
class ChunkTask:
    """One task: the row groups of one file, or several small files read one after the other
    (`data.bundle_slices`), staged as one chunk per model."""

    slices: tuple[TaskSlice, ...]
    runs: tuple[ModelRun, ...]
    batch_rows: int
    #: Set: the worker stages its rows itself (PostgreSQL). None: rows go back to the driver (SQLite).
    store_url: str | None
    #: Set: rows that go back to the driver go as a SQLite image the driver merges in C (`staging.SqliteImage`),
    #: not as `Rows` (which the end-to-end gate reads) — by a worker in a process other than the driver's, whose
    #: `staging.process_token()` this is: the driver never loads the library that builds images.
    driver_token: str | None = None

    @property
    def rows(self) -> int:
        """The rows the footers promise."""
        return sum(s.rows for s in self.slices)

    @property
    def chunk_id(self) -> str:
        """The staged chunk's name in the run's ledger: the slice's, or the first and last slices' of a bundle
        (the same plan gives the same names, so a retried task finds what it staged)."""
        first, last = self.slices[0], self.slices[-1]
        return first.chunk_id if len(self.slices) == 1 else f"{first.chunk_id}..{last.chunk_id}"

    @property
    def source(self) -> str:
        """The task's file(s), for messages."""
        first = self.slices[0].uri
        return first if len(self.slices) == 1 else f"{first} and {len(self.slices) - 1} more file(s)"

    @classmethod
    def single(
        cls,
        slice: TaskSlice,
        contract: FeatureContract,
        handle: ModelHandle,
        batch_rows: int,
        run_id: int,
        store_url: str | None,
        outputs: OutputReader | None = None,
    ) -> ChunkTask:
        """A chunk of one model (the end-to-end gate, tests)."""
        reader = outputs or OutputReader(threshold=handle.decision_threshold)
        return cls((slice,), (ModelRun("model", 0, handle, contract, run_id, reader),), batch_rows, store_url)

    @property
    def read_columns(self) -> list[str]:
        """Every column any of the models reads, once."""
        return list(dict.fromkeys(c for run in self.runs for c in run.contract.read_columns))

    @property
    def dictionary_columns(self) -> list[str]:
        return list(dict.fromkeys(c.name for run in self.runs for c in run.contract.categorical))


@dataclass
class ModelChunk:
    """One model's part of a chunk: its rows staged (or carried back), its time, or why it failed."""

    run_id: int
    rows: int = 0
    infer_s: float = 0.0
    #: Seconds spent on reasons (`[models.explain]`): every feature's contribution and the top k.
    explain_s: float = 0.0
    write_s: float = 0.0
    #: Seconds the worker spent packing the rows into a SQLite image for the driver (`ChunkTask.driver_token`).
    pack_s: float = 0.0
    #: Why this model's part failed (the original exception: it pickles back to the driver), or None.
    error: NightshiftError | None = None
    #: The rows for the driver to stage (SQLite), sorted by entity id: packed when the task says so.
    data: Rows | SqliteImage | None = None
    #: The worker's explainer of this model (built on first use; never sent back: see `score_chunk`).
    explainer: Any = None


@dataclass
class ChunkResult:
    chunk: str
    read_s: float
    pid: int
    peak_rss_bytes: int
    models: dict[int, ModelChunk]

    def of(self, run_id: int) -> ModelChunk:
        return self.models[run_id]


class _Failed(NightshiftError):
    """Internal: this model's part of the chunk failed; roll its rows back (the connection stays)."""


def _batches(task: ChunkTask, clock: dict[str, float]) -> Iterator[tuple[pa.RecordBatch, str]]:
    """The task's record batches, each with its file, read once; adds the read time to `clock`."""
    for piece in task.slices:
        batches = iter_batches(piece, task.read_columns, task.batch_rows, task.dictionary_columns)
        while True:
            t = time.perf_counter()
            try:
                batch = next(batches, None)
            except (OSError, ValueError) as exc:  # pyarrow's errors (ArrowInvalid, ArrowIOError) are both
                # A footer that reads but a damaged data page: pyarrow's message names no file.
                where = f"row group(s) {', '.join(map(str, piece.row_groups))}"
                raise ContractError(f"{piece.uri} {where}: unreadable data ({type(exc).__name__}: {exc})") from exc
            clock["read_s"] += time.perf_counter() - t
            if batch is None:
                break
            yield batch, piece.uri


class _SharedInputs:
    """A batch's model inputs and entity ids, built once for every run of one feed: runs whose contracts and
    input layouts are equal get the same inputs from a batch (and the same refusal), so five models of one
    dataset's contract cast and check its columns once, not five times. Equal means the whole contract (its
    monitoring hints, such as a column's min and max, too): contracts that differ only there build their
    inputs each — slower, never wrong. What it hands out is shared: read only."""

    def __init__(self, runs: tuple[ModelRun, ...]) -> None:
        #: run id → the index of the first run with an equal contract and layout (its feed).
        self._feed = {
            run.run_id: next(j for j, o in enumerate(runs) if o.contract == run.contract and o.inputs == run.inputs)
            for run in runs
        }
        self._built: dict[int, tuple[dict[str, Any], pa.Array] | NightshiftError] = {}

    def get(self, run: ModelRun, batch: pa.RecordBatch, source: str) -> tuple[dict[str, Any], pa.Array]:
        """The ONNX Runtime feeds and entity ids of `batch` for `run`; raises the contract error the batch gives."""
        from nightshift.data.features import entity_ids, model_inputs, onnx_feeds

        feed = self._feed[run.run_id]
        if feed not in self._built:
            try:
                if run.inputs is None:
                    feeds = model_inputs(batch, run.contract, source)
                else:
                    feeds = onnx_feeds(batch, run.contract, run.inputs, source)
                self._built[feed] = feeds, entity_ids(batch, run.contract, source)
            except NightshiftError as exc:
                self._built[feed] = exc
        built = self._built[feed]
        if isinstance(built, NightshiftError):
            raise built.with_traceback(None)  # one error object for every run of the feed: no traceback piles up
        return built

    def next_batch(self) -> None:
        """Let the batch's inputs go (before the next batch is read, not after)."""
        self._built.clear()


def _score(
    run: ModelRun,
    session: ort.InferenceSession,
    batch: pa.RecordBatch,
    source: str,
    part: ModelChunk,
    inputs: _SharedInputs,
) -> Rows:
    """One model's rows for one batch (with their reasons when the run explains), from the batch's inputs for its
    feed; adds the seconds ONNX Runtime (and the reasons) took to `part`."""
    feeds, ids = inputs.get(run, batch, source)
    t = time.perf_counter()
    raw = session.run([run.outputs.output], feeds)[0]
    part.infer_s += time.perf_counter() - t
    rows = run.outputs.rows(ids, raw, source)
    if run.explain is not None:
        from nightshift.scoring.reasons import explain_batch, make_explainer

        t = time.perf_counter()
        if part.explainer is None:
            part.explainer = make_explainer(run.explain)
        rows.reason_features, rows.reason_contributions = explain_batch(
            part.explainer, run.explain.k, batch, feeds, rows.labels, source
        )
        part.explain_s += time.perf_counter() - t
    return rows


def score_chunk(task: ChunkTask) -> ChunkResult:
    """Score one task (a slice of one file, or several small files) for every model: Arrow batches (read once)
    → each model's ONNX Runtime session → each model's staged rows (or rows back to the driver).

    PostgreSQL: each batch is streamed into each model's run table as soon as it is scored, one
    transaction per (model, chunk) (`staging.chunk_writer`); entity ids repeated within or across
    files are found by the primary key each commit builds. SQLite: the rows go back to the driver
    sorted by id, and ids repeated within the chunk are found here (neighbours after the sort).
    """
    source = task.source
    clock = {"read_s": 0.0}
    parts = {run.run_id: ModelChunk(run.run_id) for run in task.runs}
    sessions = {run.run_id: get_session(run.handle) for run in task.runs}
    if task.store_url is None:
        return _score_for_driver(task, sessions, parts, clock)

    from nightshift.db.staging import chunk_writer

    writers: dict[int, Any] = {}
    contexts: dict[int, Any] = {}
    try:
        for slot, run in enumerate(task.runs):
            ctx = chunk_writer(
                task.store_url,
                run.run_id,
                task.chunk_id,
                run.outputs.task,
                slot=slot,
                reasons=run.explain is not None,
            )
            writer = ctx.__enter__()
            if writer.done is None:
                contexts[run.run_id], writers[run.run_id] = ctx, writer
            else:  # an earlier attempt of this chunk staged this model's rows: write nothing twice
                parts[run.run_id].rows = writer.done
                _close(ctx, None)
        # Rows scored and not yet written: a bundle of small files gives small batches, written together once
        # they reach a batch's rows (one COPY write per batch_rows, whatever the files' sizes).
        pending: dict[int, list[Rows]] = {run_id: [] for run_id in writers}

        def flush(run_id: int, part: ModelChunk) -> None:
            buffered = pending[run_id]
            if buffered:
                t = time.perf_counter()
                writers[run_id].write(buffered[0] if len(buffered) == 1 else Rows.concat(buffered))
                part.write_s += time.perf_counter() - t
                buffered.clear()

        def fail(run_id: int, part: ModelChunk, exc: NightshiftError) -> None:
            """This model's failure: roll its rows back, the others go on."""
            part.error = exc
            pending.pop(run_id, None)
            _close(contexts.pop(run_id), _Failed(str(exc)))
            writers.pop(run_id)

        inputs = _SharedInputs(task.runs)
        for batch, uri in _batches(task, clock) if writers else ():
            for run in task.runs:
                if run.run_id not in writers:
                    continue
                part = parts[run.run_id]
                try:
                    pending[run.run_id].append(_score(run, sessions[run.run_id], batch, uri, part, inputs))
                    if sum(len(r) for r in pending[run.run_id]) >= task.batch_rows:
                        flush(run.run_id, part)
                except NightshiftError as exc:
                    fail(run.run_id, part, exc)
            inputs.next_batch()
        for run_id in list(writers):
            try:
                flush(run_id, parts[run_id])
            except NightshiftError as exc:
                fail(run_id, parts[run_id], exc)
        for run_id in list(writers):
            writer, part = writers.pop(run_id), parts[run_id]
            if writer.rows != task.rows:
                part.error = ContractError(f"{source}: read {writer.rows} rows, the footers say {task.rows}")
                _close(contexts.pop(run_id), _Failed(str(part.error)))
                continue
            t = time.perf_counter()
            _close(contexts.pop(run_id), None)  # the COPY's end and the ledger row's commit
            part.write_s += time.perf_counter() - t
            part.rows = writer.rows
    finally:
        abort = _Failed("the chunk failed")
        for ctx in contexts.values():  # anything still open: a read error or a crash rolls back every model
            with contextlib.suppress(BaseException):
                _close(ctx, abort)
    return _result(task, clock, parts)


def _close(ctx: Any, exc: BaseException | None) -> None:
    """Leave a chunk writer's context: commit (no exception) or roll back (an exception, not re-raised)."""
    if exc is None:
        ctx.__exit__(None, None, None)
        return
    with contextlib.suppress(_Failed):
        ctx.__exit__(type(exc), exc, exc.__traceback__)


def _score_for_driver(
    task: ChunkTask,
    sessions: dict[int, ort.InferenceSession],
    parts: dict[int, ModelChunk],
    clock: dict[str, float],
) -> ChunkResult:
    import pyarrow.compute as pc

    source = task.source
    collected: dict[int, list[Rows]] = {run.run_id: [] for run in task.runs}
    inputs = _SharedInputs(task.runs)
    for batch, uri in _batches(task, clock):
        for run in task.runs:
            part = parts[run.run_id]
            if part.error is not None:
                continue
            try:
                rows = _score(run, sessions[run.run_id], batch, uri, part, inputs)
            except NightshiftError as exc:
                part.error = exc
                collected[run.run_id] = []
                continue
            collected[run.run_id].append(rows)
        inputs.next_batch()
    for run in task.runs:
        part = parts[run.run_id]
        if part.error is not None:
            continue
        rows = Rows.concat(collected.pop(run.run_id))
        if len(rows) != task.rows:
            part.error = ContractError(f"{source}: read {len(rows)} rows, the footers say {task.rows}")
            continue
        rows = _sort_by_id(rows)
        ids = rows.ids
        if len(ids) > 1:
            repeated = pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1))
            if pc.any(repeated).as_py():
                dupes = ids.slice(1).filter(repeated).unique()[:5].to_pylist()
                raise DuplicateEntityError(
                    f"{source}: entity id(s) {', '.join(map(repr, dupes))} appear more than once in "
                    f"{'this file' if len(task.slices) == 1 else 'these files'}; "
                    "duplicate entity ids are an error",
                    tuple(str(d) for d in dupes),
                )
        part.rows = len(rows)
        _pack(part, rows, task.driver_token, source)
    return _result(task, clock, parts)


def _pack(part: ModelChunk, rows: Rows, driver_token: str | None, source: str) -> None:
    """Set `part.data`: a SQLite image of the rows where the driver asked for one (`ChunkTask.driver_token`) and
    this is not the driver's process; else (or if packing fails) the rows themselves, for the driver to bind."""
    part.data = rows
    if driver_token is None or driver_token == process_token() or not can_pack_sqlite():
        return
    t = time.perf_counter()
    try:
        part.data = sqlite_image(rows)
    except Exception as exc:  # noqa: BLE001 - the rows still go, the driver binds them
        log.warning(
            "%s: packing %s rows as a SQLite image failed (%s: %s); sending the rows",
            source,
            len(rows),
            type(exc).__name__,
            exc,
        )
    part.pack_s += time.perf_counter() - t


def _sort_by_id(rows: Rows) -> Rows:
    """The rows in entity-id order: the driver inserts them into SQLite's B-tree, and neighbours after the sort
    show a repeated id. (A function of its own so the benchmark's profile can name the stage.)"""
    import pyarrow.compute as pc

    from nightshift.data.features import numpy_values

    return rows.take(numpy_values(pc.sort_indices(rows.ids), "<u8"))


def _result(task: ChunkTask, clock: dict[str, float], parts: dict[int, ModelChunk]) -> ChunkResult:
    for part in parts.values():
        part.explainer = None  # the worker's own (a booster): it stays here, cached, and never travels back
    return ChunkResult(task.chunk_id, clock["read_s"], os.getpid(), _peak_rss(), parts)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
