"""Staging a chunk's predictions under a run, exactly once: what Dask workers (PostgreSQL) or the driver (SQLite) call.

One chunk (a file, or a range of its row groups) is written in ONE transaction together with
its `run_chunks` ledger row, so a chunk Dask recomputes after a worker died is never written
twice. PostgreSQL: binary COPY into the run's own table, streamed batch by batch (`chunk_writer`).
SQLite: on a cluster of two or more worker threads in processes of their own, the worker packs a chunk's rows,
in key order, into a small in-memory SQLite database (APSW's) and sends its image (`SqliteImage`); the driver,
SQLite's one writer, merges it into the one predictions table with `INSERT … SELECT`, in C (`stage_chunk`).
Otherwise (one worker thread, workers that are threads of the driver) the rows come as `Rows`, which the driver
inserts by executemany.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from nightshift.db.engine import StoreError, libpq_url, normalize_url, redact, sqlite_environment_error, sqlite_pragmas
from nightshift.errors import CommitError, DuplicateEntityError, NightshiftError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa


def staging_table(run_id: int) -> str:
    """The PostgreSQL table a run's rows are staged in (and attached as its partition)."""
    return f"predictions_r{int(run_id)}"


#: The predictions columns each task writes (the others stay NULL), in COPY and INSERT order.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "binary": ("run_id", "entity_id", "score", "label"),
    "multiclass": ("run_id", "entity_id", "score", "label", "probs"),
    "regression": ("run_id", "entity_id", "score", "value"),
}
#: The columns a run scored with reasons (`[models.explain]`) writes after its task's: one packed value per row
#: (`pack_reasons`).
REASON_COLUMNS = ("reasons",)


def columns_of(layout: str, reasons: bool = False) -> tuple[str, ...]:
    """The predictions columns a run writes: its task's (LAYOUTS), then the reasons' when it has them."""
    return LAYOUTS[layout] + (REASON_COLUMNS if reasons else ())


@dataclass
class Rows:
    """One batch of predictions, column by column: what a chunk stages.

    scores: float32, the score every task has (P(1); the predicted class's probability; the value
    as float32). labels: int16 predicted class (None for a regression). values: float64 regression
    values. probs: float32 [N, K] class probabilities (multiclass). reason_features: int16 [N, k] the top-k
    features' indices into the version's features, largest |contribution| first; reason_contributions: float32
    [N, k] their contributions (both None without reasons).
    """

    ids: pa.Array
    scores: np.ndarray
    labels: np.ndarray | None = None
    values: np.ndarray | None = None
    probs: np.ndarray | None = None
    reason_features: np.ndarray | None = None
    reason_contributions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def layout(self) -> str:
        if self.probs is not None:
            return "multiclass"
        if self.values is not None:
            return "regression"
        return "binary"

    @property
    def has_reasons(self) -> bool:
        return self.reason_features is not None

    @property
    def columns(self) -> tuple[str, ...]:
        """The predictions columns these rows fill, in COPY and INSERT order."""
        return columns_of(self.layout, self.has_reasons)

    def take(self, order: np.ndarray) -> Rows:
        """The rows in `order` (numpy integer indices)."""
        import numpy as np
        import pyarrow as pa

        # From the numpy buffer, not pa.array(order): that one imports pandas (seconds in a fresh worker).
        index = np.ascontiguousarray(order, dtype=np.int64)
        arrow_index = pa.Array.from_buffers(pa.int64(), len(index), [None, pa.py_buffer(index)])
        return Rows(
            self.ids.take(arrow_index),
            self.scores[index],
            None if self.labels is None else self.labels[index],
            None if self.values is None else self.values[index],
            None if self.probs is None else self.probs[index],
            None if self.reason_features is None else self.reason_features[index],
            None if self.reason_contributions is None else self.reason_contributions[index],
        )

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        import numpy as np
        import pyarrow as pa

        if not parts:
            return Rows(pa.array([], pa.string()), np.zeros(0, np.float32), np.zeros(0, np.int16))
        first = parts[0]
        return Rows(
            pa.concat_arrays([p.ids for p in parts]),
            np.concatenate([p.scores for p in parts]),
            None if first.labels is None else np.concatenate([p.labels for p in parts]),
            None if first.values is None else np.concatenate([p.values for p in parts]),
            None if first.probs is None else np.concatenate([p.probs for p in parts]),
            None if first.reason_features is None else np.concatenate([p.reason_features for p in parts]),
            None if first.reason_contributions is None else np.concatenate([p.reason_contributions for p in parts]),
        )


@dataclass(frozen=True)
class SqliteImage:
    """One chunk's rows for a SQLite store, packed by the worker process that scored them: the serialized image
    of an in-memory SQLite database whose table `rows` holds `columns` (the predictions columns after `run_id`)
    in key order. The driver merges it with one `INSERT … SELECT` (`stage_chunk`): SQLite's C code does the work
    that binding Python tuples one by one (executemany) did on the driver, its one writer. Building the tuples
    and the image moves to the workers, which run in parallel."""

    data: bytes
    rows: int
    columns: tuple[str, ...]

    def __len__(self) -> int:
        return self.rows


#: The attached schema a `SqliteImage` is opened as, on the driver's connection.
_IMAGE_SCHEMA = "nightshift_chunk"
#: Rows bound into an image per executemany: the Python objects of one slice at a time, not of a whole chunk.
_IMAGE_SLICE_ROWS = 65_536


@functools.cache
def can_pack_sqlite() -> bool:
    """Whether this process can build an image: APSW with SQLite compiled into it (the amalgamation), so its
    SQLite is its own copy, not the libsqlite3 Python's `sqlite3` uses (see `sqlite_image`). An APSW built
    against the system's SQLite (a distribution's package) shares that library, and so its mutexes: never
    used."""
    try:
        import apsw
    except ImportError:
        return False
    return bool(getattr(apsw, "using_amalgamation", False))


def can_merge_sqlite() -> bool:
    """Whether this process's `sqlite3` can open an image (`Connection.deserialize`: SQLite ≥ 3.36, built
    with it): the driver asks for images only then."""
    return hasattr(sqlite3.Connection, "deserialize")


_process_token = uuid.uuid4().hex


def _new_process_token() -> None:
    global _process_token
    _process_token = uuid.uuid4().hex


os.register_at_fork(after_in_child=_new_process_token)


def process_token() -> str:
    """This process's identity, different in every process (a forked child draws its own): unlike a pid, not
    shared by processes on other hosts or in other PID namespaces."""
    return _process_token


def sqlite_image(rows: Rows) -> SqliteImage:
    """Pack `rows` (already in key order) for the driver: see `SqliteImage`.

    Built with APSW, never with Python's `sqlite3`: APSW compiles its own SQLite into its extension (no symbol
    of it exported, no libsqlite3 loaded; `can_pack_sqlite` checks), so its mutexes are not the ones the
    driver's threads hold. A Dask worker that a nanny forked from the driver while another thread of it was
    inside `sqlite3` inherits those mutexes locked; building the image with the same library there hung a
    worker on its first one (the kill test did, once in two runs). The driver only reads images
    (`sqlite3.Connection.deserialize`) and never builds one itself (`ChunkTask.driver_token`), so no thread of
    a process that forks workers is ever inside APSW's SQLite."""
    import apsw

    columns = rows.columns[1:]  # run_id: the driver's, bound once
    conn = apsw.Connection(":memory:")
    try:
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=OFF")  # a private image built in one go: nothing to roll back
        cur.execute(f"CREATE TABLE rows ({', '.join(columns)})")
        cur.execute("BEGIN")
        insert = f"INSERT INTO rows VALUES ({', '.join('?' * len(columns))})"
        for start in range(0, len(rows), _IMAGE_SLICE_ROWS):
            cur.executemany(insert, _sqlite_tuples(None, rows, start, start + _IMAGE_SLICE_ROWS))
        cur.execute("COMMIT")
        return SqliteImage(conn.serialize("main"), len(rows), columns)
    finally:
        conn.close()


_conn_cache: dict[tuple[int, str, int], Any] = {}
_conn_lock = threading.Lock()


def _staging_connection(url: str, slot: int = 0) -> Any:
    """One raw DBAPI connection per process, thread, URL and slot (a chunk staging several models at once
    uses one slot per model), reused across chunks."""
    key = (threading.get_ident(), url, slot)
    with _conn_lock:
        conn = _conn_cache.get(key)
    if conn is not None:
        if getattr(conn, "closed", False) or _server_hung_up(conn):
            _drop_staging_connection(url, slot)
            conn = None
        else:
            return conn
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database
        conn = sqlite3.connect(parsed.database, timeout=60, isolation_level=None, check_same_thread=False)
        sqlite_pragmas(conn)
    else:
        import psycopg

        conn = psycopg.connect(libpq_url(parsed))
    with _conn_lock:
        _conn_cache[key] = conn
    return conn


def _server_hung_up(conn: Any) -> bool:
    """Whether an idle PostgreSQL connection's server has closed it (restarted, crashed, or ended the session):
    between transactions the server sends nothing, so a readable socket means its goodbye (an error message or
    end of file). Free: a zero-timeout poll, no round trip. A long-lived worker would otherwise fail one chunk
    per cached connection after every database restart."""
    if isinstance(conn, sqlite3.Connection):
        return False
    import select

    try:
        fd = conn.fileno()
    except Exception:  # noqa: BLE001 - psycopg raises when the connection is already closed
        return True
    poller = select.poll()  # not select(): it refuses descriptors >= 1024, which a busy worker may hold
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


def _drop_staging_connection(url: str, slot: int = 0) -> None:
    key = (threading.get_ident(), url, slot)
    with _conn_lock:
        conn = _conn_cache.pop(key, None)
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def stage_chunk(
    url: str,
    run_id: int,
    chunk: str,
    ids: pa.Array | Rows | SqliteImage,
    scores: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> int:
    """Write one chunk's predictions under `run_id`, exactly once. Returns the chunk's row count.

    Pass a `Rows`, a `SqliteImage` (SQLite only), or (ids, scores, labels) for a binary model. A second
    attempt for the same (run_id, chunk) — a Dask task recomputed after its worker died after writing —
    finds the ledger row and writes nothing.
    """
    rows = ids if isinstance(ids, Rows | SqliteImage) else Rows(ids, scores, labels)  # type: ignore[arg-type]
    url = normalize_url(url)
    try:
        if make_url(url).get_backend_name() == "sqlite":
            return _stage_sqlite(url, run_id, chunk, rows)
        if isinstance(rows, SqliteImage):
            raise TypeError(f"{chunk}: a SQLite image cannot be staged into {redact(url)}")
        return _stage_postgres(url, run_id, chunk, rows)
    except DuplicateEntityError:
        raise
    except Exception:
        # A broken connection must not be reused by the next chunk.
        _drop_staging_connection(url)
        raise


def _sqlite_tuples(
    run_id: int | None, rows: Rows, start: int = 0, stop: int | None = None
) -> Iterator[tuple[Any, ...]]:
    """Rows [start, stop) as executemany's tuples, in `rows.columns` order (without `run_id` when it is None)."""
    stop = len(rows) if stop is None else min(stop, len(rows))
    if start or stop != len(rows):
        rows = _slice(rows, start, stop)
    n = len(rows)
    columns: list[Any] = [] if run_id is None else [[run_id] * n]
    columns += [rows.ids.to_pylist(), rows.scores.tolist()]
    if rows.layout == "regression":
        columns.append(rows.values.tolist())  # type: ignore[union-attr]
    else:
        columns.append(rows.labels.tolist())  # type: ignore[union-attr]
    if rows.layout == "multiclass":
        probs = rows.probs.astype("<f4", copy=False)  # type: ignore[union-attr]
        columns.append([probs[i].tobytes() for i in range(n)])
    if rows.reason_features is not None and rows.reason_contributions is not None:
        packed = pack_reasons(rows.reason_features, rows.reason_contributions)
        width = packed.dtype.itemsize
        flat = packed.tobytes()
        columns.append([flat[i : i + width] for i in range(0, len(flat), width)])
    return zip(*columns, strict=True)


def _slice(rows: Rows, start: int, stop: int) -> Rows:
    """Rows [start, stop), as views (no copy)."""

    def cut(a: Any) -> Any:
        return None if a is None else a[start:stop]

    return Rows(
        rows.ids.slice(start, stop - start),
        rows.scores[start:stop],
        cut(rows.labels),
        cut(rows.values),
        cut(rows.probs),
        cut(rows.reason_features),
        cut(rows.reason_contributions),
    )


def reasons_dtype(k: int, prefix: list[Any] | None = None) -> np.dtype:
    """One row's packed reasons (`predictions.reasons`): k little-endian int16 feature indices, then k
    little-endian float32 contributions; 6k bytes. `prefix`: fields before them (a COPY row's tail)."""
    import numpy as np

    return np.dtype([*(prefix or []), ("reason_features", "<i2", (k,)), ("reason_contributions", "<f4", (k,))])


def pack_reasons(features: np.ndarray, contributions: np.ndarray) -> np.ndarray:
    """[N, k] feature indices and contributions as N packed values (a structured array of `reasons_dtype(k)`)."""
    import numpy as np

    packed = np.empty(len(features), reasons_dtype(features.shape[1]))
    packed["reason_features"], packed["reason_contributions"] = features, contributions
    return packed


def _stage_sqlite(url: str, run_id: int, chunk: str, rows: Rows | SqliteImage) -> int:
    conn: sqlite3.Connection = _staging_connection(url)
    n = len(rows)
    image = rows if isinstance(rows, SqliteImage) else None
    try:
        if image is not None:  # attached before the chunk's transaction, detached after it
            conn.execute(f"ATTACH DATABASE ':memory:' AS {_IMAGE_SCHEMA}")
            conn.deserialize(image.data, name=_IMAGE_SCHEMA)
        conn.execute("BEGIN IMMEDIATE")  # inside: a locked file (after the busy timeout) is a StoreError too
        row = conn.execute("SELECT rows FROM run_chunks WHERE run_id = ? AND chunk = ?", (run_id, chunk)).fetchone()
        if row is not None:
            conn.execute("ROLLBACK")
            return int(row[0])
        try:
            if isinstance(rows, SqliteImage):
                stored = conn.execute(
                    f"INSERT INTO main.predictions (run_id, {', '.join(rows.columns)}) "
                    f"SELECT ?, {', '.join(rows.columns)} FROM {_IMAGE_SCHEMA}.rows ORDER BY rowid",  # key order
                    (run_id,),
                ).rowcount
            else:
                marks = ", ".join("?" * len(rows.columns))
                stored = conn.executemany(
                    f"INSERT INTO predictions ({', '.join(rows.columns)}) VALUES ({marks})",
                    _sqlite_tuples(run_id, rows),
                ).rowcount
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise
            conn.execute("ROLLBACK")
            dupes = _existing_ids_sqlite(conn, run_id, rows)
            raise DuplicateEntityError(
                f"{chunk}: entity id(s) {', '.join(map(repr, dupes[:5]))} appear more than once in the partition "
                "(also in another file); duplicate entity ids are an error",
                tuple(dupes[:5]),
            ) from None
        if stored != n:
            raise CommitError(f"{chunk}: sent {n} rows, SQLite stored {stored}")
        # The ledger holds the count SQLite reports, in the rows' transaction (see commit_run).
        conn.execute("INSERT INTO run_chunks (run_id, chunk, rows) VALUES (?, ?, ?)", (run_id, chunk, stored))
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError) and sqlite_environment_error(exc):  # full, locked, read-only
            _drop_staging_connection(url)
            raise StoreError(
                f"SQLite refused {chunk} of run {run_id} ({n:,} rows), nothing of it was kept: {exc} "
                f"(store {redact(url)})"
            ) from exc
        raise
    finally:
        if image is not None:
            _detach_image(url, conn)
    return n


def _detach_image(url: str, conn: sqlite3.Connection) -> None:
    """Free a chunk's image; a connection that cannot detach it is dropped, so the next chunk attaches afresh."""
    try:
        if any(r[1] == _IMAGE_SCHEMA for r in conn.execute("PRAGMA database_list")):
            conn.execute(f"DETACH DATABASE {_IMAGE_SCHEMA}")
    except sqlite3.Error:  # closed already (dropped above), or busy
        _drop_staging_connection(url)


def _existing_ids_sqlite(conn: sqlite3.Connection, run_id: int, rows: Rows | SqliteImage) -> list[str]:
    """Up to 5 of the chunk's entity ids another chunk of the run already stored."""
    if isinstance(rows, SqliteImage):
        return [
            r[0]
            for r in conn.execute(
                f"SELECT c.entity_id FROM {_IMAGE_SCHEMA}.rows AS c WHERE EXISTS (SELECT 1 FROM main.predictions "
                "AS p WHERE p.run_id = ? AND p.entity_id = c.entity_id) LIMIT 5",
                (run_id,),
            )
        ]
    found: list[str] = []
    values = rows.ids.to_pylist()
    for i in range(0, len(values), 500):
        part = values[i : i + 500]
        marks = ",".join("?" * len(part))
        found += [
            r[0]
            for r in conn.execute(
                f"SELECT entity_id FROM predictions WHERE run_id = ? AND entity_id IN ({marks})",
                (run_id, *part),
            )
        ]
        if len(found) >= 5:
            break
    return found


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_COPY_TRAILER = b"\xff\xff"


def _copy_tail(rows: Rows) -> np.ndarray:
    """The fixed-width part of each row after the id, big-endian, for the rows' layout (and reasons)."""
    import numpy as np

    n = len(rows)
    if rows.layout == "regression":
        fields: list[Any] = [("l3", ">i4"), ("score", ">f4"), ("l4", ">i4"), ("value", ">f8")]
    else:
        fields = [("l3", ">i4"), ("score", ">f4"), ("l4", ">i4"), ("label", ">i2")]
    probs = rows.probs if rows.layout == "multiclass" else None
    if probs is not None:
        # A bytea of K little-endian float32 values (migration 0013): its length, then the bytes as they are stored.
        fields += [("probs_len", ">i4"), ("probs", "<f4", (probs.shape[1],))]
    features, contributions = rows.reason_features, rows.reason_contributions
    if features is not None and contributions is not None:
        # A bytea of the packed reasons (see `reasons_dtype`): its length, then its bytes as they are stored.
        tail = np.empty(n, reasons_dtype(features.shape[1], [*fields, ("reasons_len", ">i4")]))
    else:
        tail = np.empty(n, np.dtype(fields))
    tail["l3"], tail["score"] = 4, rows.scores
    if rows.layout == "regression":
        tail["l4"], tail["value"] = 8, rows.values
    else:
        tail["l4"], tail["label"] = 2, rows.labels
    if probs is not None:
        tail["probs_len"], tail["probs"] = 4 * probs.shape[1], probs
    if features is not None and contributions is not None:
        tail["reasons_len"] = 6 * features.shape[1]
        tail["reason_features"], tail["reason_contributions"] = features, contributions
    return tail


def _binary_copy_body(run_id: int, ids: pa.Array | Rows, scores: np.ndarray | None = None, labels: Any = None) -> Any:
    """The rows of a binary COPY in the rows' layout (see LAYOUTS), built in Arrow/numpy.

    Each row is a fixed 18-byte head (field count, run_id, id length), the id's bytes, and a
    fixed tail per layout (binary: score float4 + label int2 in 14 bytes); Arrow joins the three
    columns row by row in C++.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from nightshift.data.features import numpy_values

    rows = ids if isinstance(ids, Rows) else Rows(ids, scores, labels)  # type: ignore[arg-type]
    n = len(rows)
    id_bytes = rows.ids.cast(pa.binary())
    lengths = numpy_values(pc.binary_length(id_bytes), "<i4")
    head = np.empty(n, np.dtype([("fields", ">i2"), ("len1", ">i4"), ("run_id", ">i8"), ("len2", ">i4")]))
    head["fields"], head["len1"], head["run_id"], head["len2"] = len(rows.columns), 8, run_id, lengths
    tail = _copy_tail(rows)
    width = tail.dtype.itemsize
    heads = pa.FixedSizeBinaryArray.from_buffers(pa.binary(18), n, [None, pa.py_buffer(head)]).cast(pa.binary())
    tails = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(tail)]).cast(pa.binary())
    # The empty separator as an array, not b"": a Python scalar argument makes pyarrow import pandas.
    empty = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(np.zeros(n + 1, np.int32)), pa.py_buffer(b"")])
    joined = pc.binary_join_element_wise(heads, id_bytes, tails, empty)
    offsets = np.frombuffer(joined.buffers()[1], np.int32, count=n + 1, offset=joined.offset * 4)
    data = joined.buffers()[2]
    if data is None:
        return pa.py_buffer(b"")
    return data.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


class ChunkWriter:
    """Streams one chunk's rows into a PostgreSQL run table inside one transaction (see `chunk_writer`)."""

    def __init__(
        self, run_id: int, copy: Any = None, done: int | None = None, layout: str = "binary", reasons: bool = False
    ) -> None:
        self.run_id = run_id
        self.rows = done or 0
        #: Rows an earlier attempt of this chunk already staged (then write nothing), or None.
        self.done = done
        self.layout = layout
        #: Whether its rows carry reasons (the run was scored with `[models.explain]`).
        self.reasons = reasons
        self._copy = copy

    def write(self, ids: pa.Array | Rows, scores: np.ndarray | None = None, labels: np.ndarray | None = None) -> None:
        """Stream a batch: a `Rows` of the writer's layout, or (ids, scores, labels) for a binary model."""
        if self._copy is None:
            raise RuntimeError("this chunk was already staged; write nothing")
        rows = ids if isinstance(ids, Rows) else Rows(ids, scores, labels)  # type: ignore[arg-type]
        if rows.layout != self.layout:
            raise ValueError(f"a {rows.layout} batch for a {self.layout} chunk writer")
        if rows.has_reasons != self.reasons:
            raise ValueError(f"a batch {'with' if rows.has_reasons else 'without'} reasons for this chunk writer")
        if len(rows):
            self._copy.write(memoryview(_binary_copy_body(self.run_id, rows)))
            self.rows += len(rows)


@contextlib.contextmanager
def chunk_writer(
    url: str, run_id: int, chunk: str, layout: str = "binary", *, slot: int = 0, reasons: bool = False
) -> Iterator[ChunkWriter]:
    """Stage one chunk into a PostgreSQL run table, exactly once, streaming batch by batch.

    One transaction holds the binary COPY of every batch written to the writer and, at the end,
    the chunk's ledger row with its row count: the database parses the rows while the worker
    scores the next batch, and a chunk is either wholly staged or not at all. If an earlier
    attempt of the chunk (a task Dask recomputed) already staged it, `writer.done` holds its
    row count and nothing is written. An exception inside the block rolls the chunk back.
    `layout` is the model's task (see LAYOUTS): which columns its rows fill; `reasons`, whether they carry
    reasons too (REASON_COLUMNS, in the same COPY: a reason is staged with its prediction). Writers open at the same
    time in one thread (one per model of a chunk) need distinct `slot`s: each has its own connection.
    """
    import psycopg
    from psycopg import errors as pg_errors

    url = normalize_url(url)
    conn: psycopg.Connection[Any] = _staging_connection(url, slot)
    table = staging_table(run_id)
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT rows FROM run_chunks WHERE run_id = %s AND chunk = %s", (run_id, chunk))
            row = cur.fetchone()
            if row is not None:
                yield ChunkWriter(run_id, done=int(row[0]), layout=layout, reasons=reasons)
                return
            columns = ", ".join(columns_of(layout, reasons))
            with cur.copy(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT binary)") as cp:
                cp.write(_COPY_HEADER)
                writer = ChunkWriter(run_id, cp, layout=layout, reasons=reasons)
                yield writer
                cp.write(_COPY_TRAILER)
            # The ledger records the rows PostgreSQL says it stored ("COPY n"), in the same
            # transaction as the rows: the commit trusts the ledger without counting the table.
            if cur.rowcount != writer.rows:
                raise CommitError(f"{chunk}: sent {writer.rows} rows, PostgreSQL stored {cur.rowcount}")
            try:
                with conn.transaction():
                    stored = cur.rowcount
                    ledger = "INSERT INTO run_chunks (run_id, chunk, rows) VALUES (%s, %s, %s)"
                    cur.execute(ledger, (run_id, chunk, stored))
            except pg_errors.UniqueViolation:
                # A concurrent attempt of the same chunk committed its ledger row first: its rows stand, ours go.
                cur.execute("SELECT rows FROM run_chunks WHERE run_id = %s AND chunk = %s", (run_id, chunk))
                found = cur.fetchone()
                if found is None:
                    raise
                writer.done = writer.rows = int(found[0])
                raise _ChunkSuperseded from None
    except _ChunkSuperseded:
        return
    except pg_errors.UndefinedTable:
        raise CommitError(f"{chunk}: run {run_id} is no longer staging (it failed or was replaced)") from None
    except NightshiftError:
        raise  # bad data, or this model's part of the chunk failed: the transaction rolled back, the connection is fine
    except BaseException:
        # A broken connection must not be reused by the next chunk.
        _drop_staging_connection(url, slot)
        raise


class _ChunkSuperseded(Exception):
    """Internal: roll this attempt's rows back, another attempt of the chunk committed first."""


def _stage_postgres(url: str, run_id: int, chunk: str, rows: Rows) -> int:
    with chunk_writer(url, run_id, chunk, rows.layout, reasons=rows.has_reasons) as writer:
        if writer.done is None:
            writer.write(rows)
    return writer.rows
