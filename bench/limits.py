"""The machine's limits: plain programs for each stage of scoring, and all stages pipelined without nightshift.

Each function does one thing the way the fastest plain program would, with no contract
check, no catalog, no atomic commit and no Dask: what is left is the cost of the work itself.
"""

from __future__ import annotations

import itertools
import multiprocessing
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import libpq

#: Rows per Arrow batch and ONNX Runtime call: nightshift's default `batch_rows`, so the limits score as it does.
BATCH_ROWS = 16_384
MISSING = "__missing__"  # what nightshift feeds the model for a null category (features.MISSING_CATEGORY)
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
COPY_TRAILER = b"\xff\xff"


def feature_columns() -> tuple[str, list[str], list[str]]:
    """(entity id, numeric features, categorical features) of the demo data."""
    from nightshift.demo import demo_contract

    contract = demo_contract()
    return contract.entity_id, [c.name for c in contract.numeric], [c.name for c in contract.categorical]


@dataclass(frozen=True)
class Feed:
    """How a graph is fed and read. The default is nightshift's own layout (one [N, 1] input per contract
    column: float32 numerics, strings for categoricals; output "probabilities"). `matrix` names the one
    float32 [N, F] input of a graph fed a matrix of `features` in order (a brought LightGBM, say), nulls as NaN.
    """

    matrix: str | None = None
    features: tuple[str, ...] = ()
    output: str = "probabilities"

    @classmethod
    def of(cls, signature: dict[str, Any]) -> Feed:
        """The feed of a registered version from its signature ({} or no inputs: nightshift's own layout)."""
        inputs = signature.get("inputs") or {}
        outputs = signature.get("outputs") or {}
        output = str(outputs.get("probabilities") or "probabilities")
        if inputs.get("layout") != "matrix":
            return cls(output=output)
        types = dict(inputs.get("element_types") or {})
        if len(types) != 1 or next(iter(types.values())) != "float32":
            raise ValueError(f"the limit feeds one float32 matrix; this graph wants {types}")
        if inputs.get("categories"):
            raise ValueError("the limit feeds numeric features only; this graph reads category codes")
        return cls(matrix=next(iter(types)), features=tuple(inputs["features"]), output=output)

    def columns(self) -> list[str]:
        """The columns a batch must hold for this feed (with the entity id)."""
        entity, numeric, categorical = feature_columns()
        return [entity, *(self.features if self.matrix else [*numeric, *categorical])]


DEFAULT_FEED = Feed()


def read_batches(path: str, batch_rows: int = BATCH_ROWS, columns: Sequence[str] | None = None) -> Iterator[Any]:
    """Arrow record batches of one file: the id and feature columns (or `columns`), categoricals as dictionaries."""
    import pyarrow.parquet as pq

    entity, numeric, categorical = feature_columns()
    columns = list(columns or [entity, *numeric, *categorical])
    pf = pq.ParquetFile(path, memory_map=True, read_dictionary=[c for c in categorical if c in columns])
    yield from pf.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False)


def matrix_feeds(batch: Any, feed: Feed) -> dict[str, Any]:
    """The one float32 [N, F] input of a matrix-fed graph: the features in order, nulls as NaN."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    assert feed.matrix is not None
    out = np.empty((batch.num_rows, len(feed.features)), dtype=np.float32)
    for j, name in enumerate(feed.features):
        out[:, j] = pc.cast(batch.column(name), pa.float32()).to_numpy(zero_copy_only=False)
    return {feed.matrix: out}


def onnx_feeds(batch: Any, feed: Feed = DEFAULT_FEED) -> dict[str, Any]:
    """ONNX Runtime inputs of a batch: float32 [N, 1] per numeric (null -> NaN), strings [N, 1] per categorical
    (nightshift's own layout), or the matrix a `feed` names."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if feed.matrix is not None:
        return matrix_feeds(batch, feed)
    _, numeric, categorical = feature_columns()
    feeds: dict[str, Any] = {}
    for name in numeric:
        col = pc.cast(batch.column(name), pa.float32())
        feeds[name] = col.to_numpy(zero_copy_only=False).reshape(-1, 1)
    for name in categorical:
        col = batch.column(name)
        values = np.asarray([*col.dictionary.to_pylist(), MISSING], dtype=object)
        codes = col.indices.fill_null(len(col.dictionary)).to_numpy(zero_copy_only=False)
        feeds[name] = values[codes].reshape(-1, 1)
    return feeds


def session(onnx_bytes: bytes, threads: int = 1) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def copy_body(run_id: int, ids: Any, scores: Any, labels: Any) -> Any:
    """Rows (run_id int8, entity_id text, score float4, label int2) in PostgreSQL's binary COPY format.

    Fixed-width heads and tails are numpy structured arrays; Arrow joins them around the ids in C++.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(ids)
    ids = ids.cast(pa.binary())
    head = np.empty(n, np.dtype([("nf", ">i2"), ("l1", ">i4"), ("run", ">i8"), ("l2", ">i4")]))
    head["nf"], head["l1"], head["run"], head["l2"] = 4, 8, run_id, pc.binary_length(ids).to_numpy()
    tail = np.empty(n, np.dtype([("l3", ">i4"), ("score", ">f4"), ("l4", ">i4"), ("label", ">i2")]))
    tail["l3"], tail["score"], tail["l4"], tail["label"] = 4, scores, 2, labels
    heads = pa.FixedSizeBinaryArray.from_buffers(pa.binary(18), n, [None, pa.py_buffer(head)])
    tails = pa.FixedSizeBinaryArray.from_buffers(pa.binary(14), n, [None, pa.py_buffer(tail)])
    rows = pc.binary_join_element_wise(heads.cast(pa.binary()), ids, tails.cast(pa.binary()), b"")
    offsets = rows.buffers()[1]
    start, end = np.frombuffer(offsets, np.int32)[[rows.offset, rows.offset + n]]
    return rows.buffers()[2].slice(int(start), int(end - start))


def score_batch(sess: Any, batch: Any, feed: Feed = DEFAULT_FEED) -> tuple[Any, Any, Any]:
    """(ids as strings, P(1) float32, label int16) of one batch."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    entity, _, _ = feature_columns()
    proba = sess.run([feed.output], onnx_feeds(batch, feed))[0]
    scores = np.ascontiguousarray(proba[:, 1], dtype=np.float32)
    return pc.cast(batch.column(entity), pa.string()), scores, (scores >= 0.5).astype(np.int16)


# -- stage by stage ----------------------------------------------------------------------------


def arrow_read(paths: Sequence[str]) -> int:
    """Arrow read rate: every file's id and feature columns, in 16k-row batches, one thread (what one worker reads)."""
    return sum(batch.num_rows for path in paths for batch in read_batches(path))


def load_feeds(paths: Sequence[str], max_rows: int | None = None) -> dict[str, Any]:
    """The whole feature matrix in memory as ONNX Runtime feeds (for the inference-only limits)."""
    import numpy as np

    parts: list[dict[str, Any]] = []
    rows = 0
    for path in paths:
        for batch in read_batches(path):
            parts.append(onnx_feeds(batch))
            rows += batch.num_rows
            if max_rows is not None and rows >= max_rows:
                break
        if max_rows is not None and rows >= max_rows:
            break
    feeds = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return {k: v[:max_rows] for k, v in feeds.items()} if max_rows else feeds


def onnx_in_batches(sess: Any, feeds: dict[str, Any], batch_rows: int = BATCH_ROWS) -> int:
    """ONNX Runtime alone on in-memory features, handed `batch_rows` rows per call (one thread)."""
    n = len(next(iter(feeds.values())))
    for lo in range(0, n, batch_rows):
        sess.run(["probabilities"], {k: v[lo : lo + batch_rows] for k, v in feeds.items()})
    return n


def onnx_whole(sess: Any, feeds: dict[str, Any]) -> int:
    """ONNX Runtime alone, handed the whole in-memory matrix in one call (one thread)."""
    return len(sess.run(["probabilities"], feeds)[0])


def copy_bodies(rows: int, files: int, run_id: int = 1) -> list[Any]:
    """Binary COPY bodies of `rows` prediction rows split like `files` files (ids '1'..'rows'), built untimed."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    bounds = np.linspace(0, rows, files + 1).astype(np.int64)
    bodies = []
    for lo, hi in itertools.pairwise(bounds):
        ids = pa.array(np.arange(lo + 1, hi + 1)).cast(pa.string())
        scores = rng.random(hi - lo, dtype=np.float32)
        bodies.append(copy_body(run_id, ids, scores, (scores >= 0.5).astype(np.int16)))
    return bodies


def pg_copy(url: str, table: str, bodies: Sequence[Any]) -> int:
    """PostgreSQL binary COPY rate: prebuilt bodies streamed over one connection in one transaction."""
    import psycopg

    with psycopg.connect(libpq(url)) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {table} (run_id, entity_id, score, label) FROM STDIN WITH (FORMAT binary)") as cp:
            cp.write(COPY_HEADER)
            for body in bodies:
                cp.write(memoryview(body))
            cp.write(COPY_TRAILER)
        n = cur.rowcount
    return int(n)


#: nightshift's predictions table on SQLite, every column (a test keeps it equal to db/schema.py): the task outputs
#: and reasons a binary run leaves NULL still widen each record (~4 % of executemany's time, measured).
SQLITE_DDL = (
    "CREATE TABLE predictions (run_id INTEGER NOT NULL, entity_id VARCHAR(128) NOT NULL, score FLOAT NOT NULL, "
    "label SMALLINT, value FLOAT, probs BLOB, reasons BLOB, PRIMARY KEY (run_id, entity_id)) WITHOUT ROWID"
)


def sqlite_rows(rows: int, run_id: int = 1) -> list[tuple[int, str, float, int]]:
    """Prediction rows as Python tuples in key order, built untimed."""
    import numpy as np

    scores = np.random.default_rng(0).random(rows).astype(np.float32).tolist()
    return sorted((run_id, str(i + 1), s, int(s >= 0.5)) for i, s in enumerate(scores))


def sqlite_rows_by_file(paths: Sequence[str], run_id: int = 1) -> list[list[tuple[int, str, float, int]]]:
    """The same kind of rows, one list per file of the data: the file's entity ids as text, sorted (as nightshift's
    workers sort a chunk for SQLite), built untimed. The bench's files hold consecutive integer ids, so as text
    (the stored key) every file's ids interleave with every other file's."""
    import numpy as np
    import pyarrow.parquet as pq

    from nightshift.demo import DEMO_ENTITY_ID

    rng = np.random.default_rng(0)
    chunks = []
    for path in paths:
        ids = pq.read_table(path, columns=[DEMO_ENTITY_ID]).column(0).to_pylist()
        scores = rng.random(len(ids)).astype(np.float32).tolist()
        chunks.append(sorted((run_id, str(i), s, int(s >= 0.5)) for i, s in zip(ids, scores, strict=True)))
    return chunks


def sqlite_bulk_insert_chunks(path: Path, chunks: list[list[tuple[int, str, float, int]]]) -> int:
    """Prebuilt tuples inserted by executemany, one transaction per chunk, the chunks one after the other, into
    nightshift's predictions table shape (WITHOUT ROWID, primary key), WAL + synchronous=NORMAL. With the files'
    chunks it is nightshift's order (what its driver does with the chunks its workers send); with one chunk of
    every row in key order, `sqlite_bulk_insert`."""
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(SQLITE_DDL)
        for rows in chunks:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO predictions (run_id, entity_id, score, label) VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
    finally:
        conn.close()
    return sum(len(rows) for rows in chunks)


def sqlite_bulk_insert(path: Path, rows: list[tuple[int, str, float, int]]) -> int:
    """SQLite's own bulk-insert rate: executemany of prebuilt tuples in key order, in one transaction,
    into nightshift's predictions table shape (WITHOUT ROWID, primary key), WAL + synchronous=NORMAL."""
    return sqlite_bulk_insert_chunks(path, [rows])


# -- pipelined ------------------------------------------------------------------------------------


def _pipeline_process(
    paths: Sequence[str], onnx_bytes: bytes, url: str | None, table: str, feed: Feed = DEFAULT_FEED
) -> int:
    import psycopg

    sess = session(onnx_bytes)
    columns = feed.columns()
    rows = 0
    if url is None:  # score only, write nothing
        for path in paths:
            for batch in read_batches(path, columns=columns):
                score_batch(sess, batch, feed)
                rows += batch.num_rows
        return rows
    copy = f"COPY {table} (run_id, entity_id, score, label) FROM STDIN WITH (FORMAT binary)"
    with psycopg.connect(libpq(url)) as conn, conn.cursor() as cur, cur.copy(copy) as cp:
        cp.write(COPY_HEADER)
        for path in paths:
            for batch in read_batches(path, columns=columns):
                cp.write(memoryview(copy_body(1, *score_batch(sess, batch, feed))))
                rows += batch.num_rows
        cp.write(COPY_TRAILER)
    return rows


def add_primary_key(url: str, table: str) -> None:
    """Index a loaded table the way a served predictions table must be: nightshift's primary key (entity_id, run_id)."""
    import psycopg

    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (entity_id, run_id)")


def _warm() -> None:
    """Pool initializer: import what each pipelined process needs before any round is timed."""
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401
    import psycopg  # noqa: F401
    import pyarrow.compute
    import pyarrow.parquet  # noqa: F401


class LimitWorkers:
    """The pipelined limit's processes, started once (spawned, imports warmed) and reused by every round.

    Spawned, never forked: the caller may run threads (a Dask client, Airflow's in-process API,
    pytest's), and a process forked while another thread holds a lock can block forever on it.
    Starting them outside the timed region keeps interpreter start-up out of the limit's time,
    as a pre-started Dask cluster keeps it out of nightshift's.
    """

    def __init__(self, processes: int = 2) -> None:
        self.processes = processes
        self._pool: Any = None

    def __enter__(self) -> LimitWorkers:
        self._pool = multiprocessing.get_context("spawn").Pool(self.processes, initializer=_warm)
        # Block until every process has started and imported: the first timed round must not pay for it.
        self._pool.map(_noop, range(self.processes), chunksize=1)
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.terminate()
        self._pool.join()

    def starmap(self, fn: Any, args: list[tuple[Any, ...]]) -> list[Any]:
        return list(self._pool.starmap(fn, args, chunksize=1))


def _noop(_: int) -> None:
    return None


def pipelined(
    paths: Sequence[str],
    onnx_bytes: bytes,
    url: str | None,
    table: str,
    processes: int = 2,
    workers: LimitWorkers | None = None,
    feed: Feed = DEFAULT_FEED,
) -> int:
    """The pipelined limit: `processes` processes, each reads its share of the files with Arrow,
    scores 16k-row batches with ONNX Runtime (one thread) and streams one binary COPY into a plain table.
    No contract check, no Dask, no atomic commit, no catalog. `url=None` scores without writing.

    `workers`: started processes to reuse (see LimitWorkers); without it, processes are spawned
    for this call alone, and their start-up counts in its time. `feed`: how the graph is fed and read
    (default: nightshift's own layout; `Feed.of(signature)` for a brought model's graph).
    """
    shares = [list(paths[i::processes]) for i in range(processes)]
    args = [(share, onnx_bytes, url, table, feed) for share in shares]
    if workers is not None and workers.processes == processes:
        return sum(workers.starmap(_pipeline_process, args))
    with LimitWorkers(processes) as own:
        return sum(own.starmap(_pipeline_process, args))
