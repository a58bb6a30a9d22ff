"""One chunk of one file on a worker: Arrow batches → ONNX Runtime → staged rows (or back to the driver)."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nightshift.contracts import PROBABILITIES, FeatureContract
from nightshift.data import TaskSlice, iter_batches
from nightshift.errors import ContractError, DuplicateEntityError
from nightshift.scoring.sessions import ModelHandle, get_session

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnxruntime as ort
    import pyarrow as pa


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


def _check_scores(scores: np.ndarray, source: str) -> None:
    import numpy as np

    if len(scores) and not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise ContractError(f"{source}: the model produced {bad} non-finite score(s); nothing was written")


def _scored_batches(
    task: ChunkTask, session: ort.InferenceSession, clock: dict[str, float]
) -> Iterator[tuple[pa.Array, np.ndarray, np.ndarray]]:
    """(entity ids, P(1) as float32, labels as int16) of each batch of the task's rows.

    Adds the seconds spent reading (Parquet decode and conversion to model inputs) and in
    ONNX Runtime to `clock`; the time the consumer spends between batches is not counted.
    """
    import numpy as np

    from nightshift.data.features import entity_ids, model_inputs

    contract = task.contract
    source = task.slice.uri
    categorical = [c.name for c in contract.categorical]
    batches = iter_batches(task.slice, contract.read_columns, task.batch_rows, categorical)
    while True:
        t = time.perf_counter()
        try:
            batch = next(batches, None)
        except (OSError, ValueError) as exc:  # pyarrow's errors (ArrowInvalid, ArrowIOError) are both
            # A footer that reads but a damaged data page: pyarrow's message names no file.
            where = f"row group(s) {', '.join(map(str, task.slice.row_groups))}"
            raise ContractError(f"{source} {where}: unreadable data ({type(exc).__name__}: {exc})") from exc
        if batch is None:
            clock["read_s"] += time.perf_counter() - t
            return
        feeds = model_inputs(batch, contract, source)
        ids = entity_ids(batch, contract, source)
        t1 = time.perf_counter()
        probabilities = session.run([PROBABILITIES], feeds)[0]
        scores = np.ascontiguousarray(probabilities[:, 1], dtype=np.float32)
        clock["read_s"] += t1 - t
        clock["infer_s"] += time.perf_counter() - t1
        _check_scores(scores, source)
        yield ids, scores, (scores >= task.model.decision_threshold).astype(np.int16)


def score_chunk(task: ChunkTask) -> ChunkResult:
    """Score one slice of one file: Arrow batches → ONNX Runtime → staged rows (or back to the driver).

    PostgreSQL: each batch is streamed into the run's table as soon as it is scored, in one
    transaction per chunk (`store.chunk_writer`); entity ids repeated within or across files are
    found by the primary key the commit builds. SQLite: the rows go back to the driver sorted by
    id, and ids repeated within the chunk are found here (neighbours after the sort).
    """
    session = get_session(task.model)
    source = task.slice.uri
    clock = {"read_s": 0.0, "infer_s": 0.0, "write_s": 0.0}
    if task.store_url is not None:
        from nightshift.db.store import chunk_writer

        with chunk_writer(task.store_url, task.run_id, task.slice.chunk_id) as writer:
            if writer.done is None:
                for ids, scores, labels in _scored_batches(task, session, clock):
                    t = time.perf_counter()
                    writer.write(ids, scores, labels)
                    clock["write_s"] += time.perf_counter() - t
                if writer.rows != task.slice.rows:
                    raise ContractError(f"{source}: read {writer.rows} rows, its footer says {task.slice.rows}")
            t = time.perf_counter()
        clock["write_s"] += time.perf_counter() - t  # the COPY's end and the ledger row's commit
        return ChunkResult(
            task.slice.chunk_id,
            writer.rows,
            clock["read_s"],
            clock["infer_s"],
            clock["write_s"],
            os.getpid(),
            _peak_rss(),
        )
    return _score_for_driver(task, session, clock)


def _score_for_driver(task: ChunkTask, session: ort.InferenceSession, clock: dict[str, float]) -> ChunkResult:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from nightshift.data.features import numpy_values

    source = task.slice.uri
    parts = list(_scored_batches(task, session, clock))
    ids: pa.Array = pa.concat_arrays([p[0] for p in parts]) if parts else pa.array([], pa.string())
    scores = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float32)
    labels = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int16)
    if len(ids) != task.slice.rows:
        raise ContractError(f"{source}: read {len(ids)} rows, its footer says {task.slice.rows}")
    # The driver inserts these into SQLite's B-tree: in key order the inserts append.
    order = pc.sort_indices(ids)
    ids = ids.take(order)
    order_np = numpy_values(order, "<u8")
    if len(ids) > 1:
        repeated = pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1))
        if pc.any(repeated).as_py():
            dupes = ids.slice(1).filter(repeated).unique()[:5].to_pylist()
            raise DuplicateEntityError(
                f"{source}: entity id(s) {', '.join(map(repr, dupes))} appear more than once in this file; "
                "duplicate entity ids are an error",
                tuple(str(d) for d in dupes),
            )
    return ChunkResult(
        task.slice.chunk_id,
        len(ids),
        clock["read_s"],
        clock["infer_s"],
        clock["write_s"],
        os.getpid(),
        _peak_rss(),
        ids,
        scores[order_np],
        labels[order_np],
    )


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
