"""A chunk packed by a worker as a SQLite image (`staging.SqliteImage`) is merged by the driver exactly as the
same rows bound one by one: same stored bytes, once, in the rows' transaction, with the same errors."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from nightshift.db import Store
from nightshift.db.engine import StoreError
from nightshift.db.staging import Rows, SqliteImage, sqlite_image, stage_chunk
from nightshift.errors import DuplicateEntityError
from tests.db.test_staging import _rows, _with_reasons

DS = date(2026, 11, 20)


def _stored(url: str, run: int) -> list[tuple[object, ...]]:
    """Each stored row as SQLite holds it: every value's storage class and exact text (REAL as its 17
    significant digits, BLOBs as hex), so an INTEGER stored as a REAL, or a float rounded, differs."""
    path = url.removeprefix("sqlite:///")
    exact = ", ".join(
        f"typeof({c}), {'hex' if c in ('probs', 'reasons') else 'quote'}({c})"
        for c in ("entity_id", "score", "label", "value", "probs", "reasons")
    )
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT {exact} FROM predictions WHERE run_id = ? ORDER BY entity_id", (run,)).fetchall()


def _ids(url: str, run: int) -> list[object]:
    return [r[1] for r in _stored(url, run)]


def _ledger(url: str, run: int) -> list[tuple[object, ...]]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return conn.execute("SELECT chunk, rows FROM run_chunks WHERE run_id = ? ORDER BY chunk", (run,)).fetchall()


def _attached(url: str) -> list[str]:
    """The schemas the driver's cached staging connection (this thread's) has attached."""
    from nightshift.db.staging import _staging_connection

    conn = _staging_connection(url)
    return [r[1] for r in conn.execute("PRAGMA database_list")]


@pytest.mark.parametrize("reasons", [False, True], ids=["scores", "with-reasons"])
@pytest.mark.parametrize("layout", ["binary", "multiclass", "regression"])
def test_an_image_stores_the_same_bytes_as_the_rows_bound_one_by_one(
    sqlite_url: str, layout: str, reasons: bool
) -> None:
    rows = _with_reasons(_rows(layout)) if reasons else _rows(layout)
    image = sqlite_image(rows)
    assert isinstance(image, SqliteImage)
    assert (len(image), image.columns) == (len(rows), rows.columns[1:])
    store = Store(sqlite_url)
    runs = []
    for version, staged in ((1, rows), (2, image)):
        with store.run_lock("m", DS, 5):
            run = store.start_run("m", version, DS, input_rows=len(rows))
            assert stage_chunk(store.url, run, "chunk-a", staged) == len(rows)
            store.commit_run(run, len(rows))
        runs.append(run)
    by_rows, by_image = (_stored(sqlite_url, r) for r in runs)
    assert len(by_image) == len(rows)
    assert by_image == by_rows
    assert _ledger(sqlite_url, runs[1]) == [("chunk-a", len(rows))]
    assert "nightshift_chunk" not in _attached(store.url)  # each image is freed after its merge
    store.dispose()


def test_a_retried_image_writes_nothing_twice(sqlite_url: str) -> None:
    rows = _rows("binary", 5)
    store = Store(sqlite_url)
    with store.run_lock("m", DS, 5):
        run = store.start_run("m", 1, DS, input_rows=5)
        assert stage_chunk(store.url, run, "chunk-a", sqlite_image(rows)) == 5
        # Dask recomputed the task after its worker died: the ledger says it is staged; nothing is written again.
        assert stage_chunk(store.url, run, "chunk-a", sqlite_image(rows)) == 5
        store.commit_run(run, 5)
    assert len(_stored(sqlite_url, run)) == 5
    assert _ledger(sqlite_url, run) == [("chunk-a", 5)]
    store.dispose()


def test_an_image_repeating_another_chunks_ids_fails_by_name_and_keeps_nothing_of_itself(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    first = Rows(pa.array(["a", "b", "c"]), np.array([0.1, 0.2, 0.3], np.float32), np.array([0, 0, 0], np.int16))
    second = Rows(pa.array(["b", "c", "d"]), np.array([0.4, 0.5, 0.6], np.float32), np.array([0, 1, 1], np.int16))
    third = Rows(pa.array(["e"]), np.array([0.7], np.float32), np.array([1], np.int16))
    with store.run_lock("m", DS, 5):
        run = store.start_run("m", 1, DS, input_rows=7)
        stage_chunk(store.url, run, "chunk-a", sqlite_image(first))
        with pytest.raises(DuplicateEntityError) as err:
            stage_chunk(store.url, run, "chunk-b", sqlite_image(second))
        assert "chunk-b: entity id(s) 'b', 'c' appear more than once in the partition" in str(err.value)
        assert err.value.entity_ids == ("b", "c")
        # Nothing of chunk-b was kept, and the connection goes on: its image was detached.
        assert _ids(sqlite_url, run) == ["'a'", "'b'", "'c'"]
        assert _ledger(sqlite_url, run) == [("chunk-a", 3)]
        assert "nightshift_chunk" not in _attached(store.url)
        stage_chunk(store.url, run, "chunk-c", sqlite_image(third))
    assert _ids(sqlite_url, run) == ["'a'", "'b'", "'c'", "'e'"]
    store.dispose()


def test_an_image_the_store_refuses_fails_in_one_line_and_keeps_nothing(sqlite_url: str, tmp_path: Path) -> None:
    store = Store(sqlite_url)
    rows = _rows("binary", 5)
    with store.run_lock("m", DS, 5):
        run = store.start_run("m", 1, DS, input_rows=5)
    # Another connection holds the write lock past the (shortened) busy timeout: SQLite refuses the chunk.
    path = sqlite_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    from nightshift.db.staging import _staging_connection

    _staging_connection(store.url).execute("PRAGMA busy_timeout=50")
    try:
        with pytest.raises(StoreError) as err:
            stage_chunk(store.url, run, "chunk-a", sqlite_image(rows))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert str(err.value).startswith(f"SQLite refused chunk-a of run {run} (5 rows), nothing of it was kept: ")
    assert "\n" not in str(err.value)
    assert _stored(sqlite_url, run) == []
    # The refused connection was dropped; the retry attaches afresh and stages the chunk.
    assert stage_chunk(store.url, run, "chunk-a", sqlite_image(rows)) == 5
    assert len(_stored(sqlite_url, run)) == 5
    store.dispose()


def test_an_image_is_for_sqlite_only() -> None:
    image = sqlite_image(_rows("binary", 2))
    with pytest.raises(TypeError, match="chunk-a: a SQLite image cannot be staged into postgresql"):
        stage_chunk("postgresql://nobody@127.0.0.1:1/none", 1, "chunk-a", image)


def test_an_image_bound_in_slices_holds_every_row_in_key_order(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nightshift.db.staging as staging

    monkeypatch.setattr(staging, "_IMAGE_SLICE_ROWS", 3)  # 10 rows: slices of 3, 3, 3 and 1
    rows = _with_reasons(_rows("multiclass", 10))
    store = Store(sqlite_url)
    runs = []
    for version, staged in ((1, rows), (2, sqlite_image(rows))):
        with store.run_lock("m", DS, 5):
            run = store.start_run("m", version, DS, input_rows=len(rows))
            stage_chunk(store.url, run, "chunk-a", staged)
            store.commit_run(run, len(rows))
        runs.append(run)
    assert len(_stored(sqlite_url, runs[1])) == 10
    assert _stored(sqlite_url, runs[1]) == _stored(sqlite_url, runs[0])
    store.dispose()


FORK_STRESS = """
import os, signal, sqlite3, sys, threading
import numpy as np, pyarrow as pa
from nightshift.db import staging

stop = threading.Event()

def busy():  # the driver's threads inside Python's sqlite3 all the time: its mutexes held at random moments
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.execute("CREATE TABLE t (a, b)")
    while not stop.is_set():
        conn.executemany("INSERT INTO t VALUES (?, ?)", ((i, str(i)) for i in range(2000)))
        conn.execute("DELETE FROM t")

threads = [threading.Thread(target=busy) for _ in range(2)]
for t in threads:
    t.start()
scores = np.linspace(0, 1, 5000, dtype=np.float32)
rows = staging.Rows(pa.array([f"id{i:05d}" for i in range(5000)]), scores, (scores >= 0.5).astype(np.int16))
try:
    for _ in range(int(sys.argv[1])):
        pid = os.fork()
        if pid == 0:  # a worker a nanny forked: it builds an image at once
            signal.alarm(20)  # a child stuck on a mutex dies, failing the test, rather than outliving it
            try:
                staging.sqlite_image(rows)
            except BaseException as exc:
                print(f"child: {exc!r}", file=sys.stderr, flush=True)
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
finally:
    stop.set()
    for t in threads:
        t.join()
print("ok")
"""


def test_a_worker_forked_while_the_driver_is_inside_sqlite3_still_builds_images() -> None:
    """Images are built with APSW, whose SQLite is compiled into its own extension: a child forked while the
    parent's threads hold Python sqlite3's mutexes (as a nanny forks a worker from the driver) builds them; with
    sqlite3 itself this child could block forever on a mutex copied locked (the kill test hung so, once; this
    script, its children building with sqlite3, hung in 3 runs of 3)."""
    import subprocess
    import sys

    import apsw

    assert apsw.using_amalgamation  # SQLite inside APSW's extension, not the libsqlite3 Python's sqlite3 loads
    out = subprocess.run(
        [sys.executable, "-c", FORK_STRESS, "40"], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_images_need_apsw_with_its_own_sqlite_and_a_process_other_than_the_drivers() -> None:
    """`can_pack_sqlite` holds only for an APSW with SQLite compiled in; the driver's token is not a forked
    child's (nor a process's on another host: no pid is compared)."""
    import subprocess
    import sys

    from nightshift.db import staging

    assert staging.can_pack_sqlite()
    assert staging.can_merge_sqlite()
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys\nfrom nightshift.db import staging\nparent = staging.process_token()\n"
            "r, w = os.pipe()\npid = os.fork()\nif pid == 0:\n    os.write(w, staging.process_token().encode())\n"
            "    os._exit(0)\nos.waitpid(pid, 0)\nprint(parent != os.read(r, 64).decode())",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.stdout.strip() == "True", child.stderr
    assert staging.process_token() == staging.process_token()  # stable within a process


def test_a_chunk_whose_image_cannot_be_built_sends_its_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    import nightshift.scoring.chunk as chunk

    def broken(rows: Rows) -> SqliteImage:
        raise MemoryError("no room for the image")

    monkeypatch.setattr(chunk, "sqlite_image", broken)
    rows = _rows("binary", 4)
    part = chunk.ModelChunk(run_id=1)
    chunk._pack(part, rows, "other-process", "f.parquet")
    assert part.data is rows
