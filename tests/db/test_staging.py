"""Each task's outputs are staged and read back exactly, on both stores (binary COPY on PostgreSQL)."""

from __future__ import annotations

from datetime import date

import numpy as np
import pyarrow as pa
import pytest

from nightshift.db import Store
from nightshift.db.staging import Rows, chunk_writer, stage_chunk

DS = date(2026, 11, 20)


def _rows(layout: str, n: int = 5) -> Rows:
    ids = pa.array([f"e{i}" for i in range(n)], pa.string())
    rng = np.random.default_rng(3)
    if layout == "multiclass":
        probs = rng.dirichlet(np.ones(4), size=n).astype(np.float32)
        labels = probs.argmax(axis=1).astype(np.int16)
        return Rows(ids, probs.max(axis=1), labels, probs=probs)
    if layout == "regression":
        values = rng.normal(1234.5678, 500.0, size=n) * np.array([1, 1, 1e6, 1, -1])[:n]
        return Rows(ids, values.astype(np.float32), values=values)
    scores = rng.random(n).astype(np.float32)
    return Rows(ids, scores, (scores >= 0.5).astype(np.int16))


def _with_reasons(rows: Rows, k: int = 3) -> Rows:
    """The rows with top-k reasons: feature indices (int16, one above 255 and one negative contribution) and
    float32 contributions."""
    rng = np.random.default_rng(5)
    n = len(rows)
    rows.reason_features = np.stack([rng.permutation(300)[:k] for _ in range(n)]).astype(np.int16)
    rows.reason_contributions = (rng.normal(0, 2, size=(n, k)) * np.array([1e-3, -1, 1e4])[:k]).astype(np.float32)
    return rows


@pytest.mark.parametrize("reasons", [False, True], ids=["scores", "with-reasons"])
@pytest.mark.parametrize("layout", ["binary", "multiclass", "regression"])
def test_each_task_round_trips_through_staging_and_commit(store_url: str, layout: str, reasons: bool) -> None:
    store = Store(store_url)
    rows = _with_reasons(_rows(layout)) if reasons else _rows(layout)
    with store.run_lock("m", DS, 5):
        run = store.start_run("m", 1, DS, input_rows=len(rows))
        if store.dialect == "postgresql":  # what Dask workers do: stream into the run's table
            with chunk_writer(store.url, run, "chunk-a", layout, reasons=reasons) as writer:
                writer.write(rows.take(np.arange(0, 2)))
                writer.write(rows.take(np.arange(2, len(rows))))
        else:  # what the driver does for SQLite
            stage_chunk(store.url, run, "chunk-a", rows)
        store.commit_run(run, len(rows))
    got = {p.entity_id: p for p in store.lookup("m", 1, DS, [f"e{i}" for i in range(len(rows))])}
    assert sorted(got) == [f"e{i}" for i in range(len(rows))]
    for i, entity in enumerate(rows.ids.to_pylist()):
        p = got[entity]
        assert p.score == pytest.approx(float(rows.scores[i]), rel=1e-7)
        if layout == "regression":
            assert p.label is None
            assert p.value == float(rows.values[i])  # type: ignore[index] - float8, exactly
            assert p.probs is None
        elif layout == "multiclass":
            assert p.label == int(rows.labels[i])  # type: ignore[index]
            assert p.probs == pytest.approx(rows.probs[i].tolist(), rel=1e-7)  # type: ignore[index]
            assert p.value is None
        else:
            assert p.label == int(rows.labels[i])  # type: ignore[index]
            assert (p.value, p.probs) == (None, None)
        if reasons:  # exactly the int16 indices and float32 contributions, in their order
            assert rows.reason_features is not None
            assert rows.reason_contributions is not None
            assert p.reasons is not None
            assert [c for c, _ in p.reasons] == rows.reason_features[i].tolist()
            values = np.array([v for _, v in p.reasons], dtype=np.float32)  # PostgreSQL: a real as its shortest text
            assert values.tolist() == rows.reason_contributions[i].tolist()
        else:
            assert p.reasons is None
    store.dispose()


def test_a_writer_refuses_a_batch_of_another_task(pg_url: str) -> None:
    store = Store(pg_url)
    with store.run_lock("m", DS, 5):
        run = store.start_run("m", 1, DS, input_rows=5)
        with pytest.raises(ValueError, match="a regression batch for a binary chunk writer"):  # noqa: SIM117
            with chunk_writer(store.url, run, "chunk-a") as writer:
                writer.write(_rows("regression"))
        with pytest.raises(ValueError, match="a batch without reasons for this chunk writer"):  # noqa: SIM117
            with chunk_writer(store.url, run, "chunk-b", reasons=True) as writer:
                writer.write(_rows("binary"))
        store.fail_run(run, "test")
    store.dispose()


@pytest.mark.postgres
def test_migration_0013_packs_stored_probabilities_and_unpacks_them_exactly(pg_url: str) -> None:
    """0013 turns PostgreSQL's real[] probabilities into the packed float32 bytes SQLite stores, in every run's
    partition, bit for bit (NaN, -0.0 and a subnormal too); its downgrade gives the same real[] back."""
    import sqlalchemy as sa

    store = Store(pg_url)
    store.downgrade("0012")
    probs = np.array(
        [[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, -0.0, 1e-40], [np.nan, 0.25, 0.5, 0.25], [1 / 3, 2 / 3, 0.0, 0.0]],
        dtype=np.float32,
    )
    with store.begin() as conn:  # rows as PostgreSQL held them before 0013: a real[] per row
        run = store.start_run("m", 1, DS, input_rows=5)  # its own table, attached below as a commit does
        for i, row in enumerate(probs):
            conn.execute(
                sa.text(
                    f"INSERT INTO predictions_r{run} (run_id, entity_id, score, label, probs) "
                    "VALUES (:run, :id, 0.5, 0, CAST(:probs AS real[]))"
                ),
                {"run": run, "id": f"e{i}", "probs": [float(p) for p in row]},
            )
        conn.execute(
            sa.text(f"INSERT INTO predictions_r{run} (run_id, entity_id, score, label) VALUES ({run}, 'binary', 1, 1)")
        )
        conn.execute(sa.text(f"ALTER TABLE predictions ATTACH PARTITION predictions_r{run} FOR VALUES IN ({run})"))

    def stored() -> dict[str, object]:
        with store.connect() as conn:
            return dict(conn.execute(sa.text(f"SELECT entity_id, probs FROM predictions WHERE run_id = {run}")).all())

    store.upgrade()
    packed = stored()
    for i, row in enumerate(probs):
        assert bytes(packed[f"e{i}"]) == row.astype("<f4").tobytes()  # type: ignore[arg-type]
    assert packed["binary"] is None
    store.downgrade("0012")
    back = stored()
    for i, row in enumerate(probs):
        assert np.array(back[f"e{i}"], dtype=np.float32).tobytes() == row.tobytes()
    assert back["binary"] is None
    store.upgrade()
    store.dispose()


@pytest.mark.postgres
def test_a_cached_staging_connection_whose_server_hung_up_is_replaced_not_failed(pg_url: str) -> None:
    """A long-lived worker keeps its staging connection between chunks. When the server ends it (a restart, a
    crash, an administrator), the next chunk connects again instead of failing: without this, every cached
    connection failed one chunk (one run) after each database restart."""
    import time

    import psycopg
    from sqlalchemy.engine import make_url

    from nightshift.db.staging import _staging_connection

    store = Store(pg_url)
    rows = _rows("binary", n=4)
    with store.run_lock("m", DS, 5):
        run = store.start_run("m", 1, DS, input_rows=8)
        with chunk_writer(store.url, run, "chunk-a") as writer:
            writer.write(rows)
        cached = _staging_connection(store.url)
        pid = cached.info.backend_pid
        admin = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(admin, autocommit=True) as other:
            assert other.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        import select

        poller = select.poll()  # the server's goodbye reaches the idle socket (a loaded machine may take a while)
        poller.register(cached.fileno(), select.POLLIN | select.POLLHUP)
        deadline = time.monotonic() + 15
        while not poller.poll(50) and time.monotonic() < deadline:
            pass
        assert poller.poll(0), "the server's goodbye never reached the idle connection"
        later = Rows(pa.array([f"f{i}" for i in range(4)], pa.string()), rows.scores, rows.labels)
        with chunk_writer(store.url, run, "chunk-b") as writer:
            writer.write(later)
        assert _staging_connection(store.url).info.backend_pid != pid
        store.commit_run(run, 8)
    assert store.partition("m", 1, DS).row_count == 8  # type: ignore[union-attr]
    store.dispose()
