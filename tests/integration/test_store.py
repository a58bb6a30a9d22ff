"""The store and registry on real SQLite and PostgreSQL: migrations, staging, commit rules, locks, aliases."""

from __future__ import annotations

import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa

from nightshift.db.engine import StoreError, StoreUnavailable, redact
from nightshift.db.staging import stage_chunk
from nightshift.db.store import Store
from nightshift.errors import ArtifactIntegrityError, CommitError, ModelNotFound, RunLockTimeout
from nightshift.models.registry import Registry

DS = date(2026, 11, 18)


def _chunk(ids: list[str], score: float = 0.25) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    n = len(ids)
    return pa.array(ids), np.full(n, score, np.float32), np.zeros(n, np.int16)


def test_migrations_are_idempotent_and_current(store_url: str) -> None:
    store = Store(store_url)
    store.upgrade()  # a second upgrade is a no-op
    store.ensure_current()
    assert store.current_revision() == store.head_revision()


def test_an_unmigrated_store_says_how_to_fix_it(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'fresh.db'}")
    with pytest.raises(StoreError, match="run `nightshift db upgrade`"):
        store.ensure_current()


def test_an_unreachable_store_fails_after_bounded_retries() -> None:
    store = Store("postgresql://nobody:secret@127.0.0.1:1/none", connect_retries=2)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"cannot reach the store at .*127\.0\.0\.1:1/none after 3 attempt") as e:
        store.ensure_current()
    assert "secret" not in str(e.value)
    assert time.monotonic() - t0 < 30


def test_unsupported_and_in_memory_urls_are_refused() -> None:
    with pytest.raises(StoreError, match="unsupported database 'mysql'"):
        Store("mysql://u@h/db")
    with pytest.raises(StoreError, match="in-memory SQLite"):
        Store("sqlite://")
    assert "secret" not in redact("postgresql://u:secret@h/db")


def test_staging_is_idempotent_per_chunk_and_commit_checks_counts(store_url: str) -> None:
    store = Store(store_url)
    with store.run_lock("m", DS, 5):
        run = store.start_run("m", 1, DS, input_rows=4)
        assert stage_chunk(store.url, run, "a", *_chunk(["1", "2"])) == 2
        # A recomputed task writes nothing the second time.
        assert stage_chunk(store.url, run, "a", *_chunk(["1", "2"])) == 2
        assert store.count_predictions(run) == 2
        with pytest.raises(CommitError, match=r"row count check failed: input 4 rows, ledger 2, stored 2"):
            store.commit_run(run, 4)
        assert store.partition("m", 1, DS) is None
        stage_chunk(store.url, run, "b", *_chunk(["3", "4"]))
        result = store.commit_run(run, 4)
    assert result.rows == 4
    part = store.partition("m", 1, DS)
    assert part is not None
    assert part.row_count == 4
    with pytest.raises(CommitError, match="status is 'committed'"):
        store.commit_run(run, 4)


def test_a_crashed_runs_rows_are_abandoned_and_removed_by_the_next_run(store_url: str) -> None:
    store = Store(store_url)
    crashed = store.start_run("m", 1, DS, input_rows=2)
    stage_chunk(store.url, crashed, "a", *_chunk(["1", "2"]))
    # No commit, no failure record: the process "died". The next run cleans up.
    with store.run_lock("m", DS, 5):
        run = store.start_run("m", 1, DS, input_rows=1)
        stage_chunk(store.url, run, "a", *_chunk(["9"]))
        store.commit_run(run, 1)
    statuses = {r["run_id"]: r["status"] for r in store.runs("m")}
    assert statuses == {crashed: "abandoned", run: "committed"}
    assert store.count_predictions(crashed) == 0


def test_the_run_lock_serialises_and_times_out(store_url: str) -> None:
    store = Store(store_url)
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with store.run_lock("m", DS, 5):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    with (
        pytest.raises(RunLockTimeout, match=r"another run of model 'm' ds=2026-11-18 still holds the lock"),
        store.run_lock("m", DS, 0.3),
    ):
        pass
    # Another partition is not blocked.
    with store.run_lock("m", date(2026, 11, 19), 1):
        pass
    release.set()
    t.join()
    with store.run_lock("m", DS, 1):
        pass


def test_registry_versions_aliases_history_and_integrity(store_url: str, tmp_path: Path) -> None:
    registry = Registry(Store(store_url), str(tmp_path / "models"))
    meta = {
        "algorithm": "a",
        "hyperparameters": {"C": 1.0},
        "libraries": {"x": "1"},
        "features": [{"name": "f", "type": "float64"}],
        "input_schema": [],
        "output_schema": [],
        "training_data": {"rows": 10, "content_sha256": "abc"},
        "metrics": {"roc_auc": 0.8},
        "parity": {"max_abs_diff": 0.0},
        "feature_importance": {"f": 1.0},
        "decision_threshold": 0.5,
    }
    v1 = registry.register("m", b"model-one", **meta)  # type: ignore[arg-type]
    v2 = registry.register("m", b"model-two", **meta)  # type: ignore[arg-type]
    assert (v1.version, v2.version) == (1, 2)
    assert registry.get("m", 2).training_data["content_sha256"] == "abc"
    assert list((Path(v2.artifact_uri).parent / "cards").glob("v2-*.json"))
    with pytest.raises(ModelNotFound, match=r"has no .champion. alias .*versions 1, 2 exist"):
        registry.resolve("m")
    assert registry.set_alias("m", "champion", 1, reason="first") is None
    assert registry.set_alias("m", "champion", 2, reason="better", by="alice") == 1
    assert registry.resolve("m").version == 2
    assert registry.resolve("m", version=1).version == 1
    history = [(e["old_version"], e["new_version"], e["by"], e["reason"]) for e in registry.alias_history("m")]
    assert history[-1] == (1, 2, "alice", "better")
    assert len(history) == 2
    with pytest.raises(ModelNotFound, match="has no version 7"):
        registry.set_alias("m", "champion", 7, reason="x")
    with pytest.raises(ValueError, match="alias 'Bad Alias'"):
        registry.set_alias("m", "Bad Alias", 1, reason="x")
    assert registry.load_bytes(v1) == b"model-one"
    Path(v1.artifact_uri).write_bytes(b"model-0ne")
    with pytest.raises(ArtifactIntegrityError, match="changed after registration"):
        registry.load_bytes(v1)


def test_the_committed_view_shows_only_committed_rows(store_url: str) -> None:
    store = Store(store_url)
    with store.run_lock("m", DS, 5):
        run = store.start_run("m", 1, DS, input_rows=1)
        stage_chunk(store.url, run, "a", *_chunk(["1"]))
        with store.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM committed_predictions")).scalar_one() == 0
        store.commit_run(run, 1)
    with store.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM committed_predictions")).scalar_one() == 1


def test_retention_expires_old_days_and_gc_removes_dead_rows(store_url: str) -> None:
    store = Store(store_url)
    days = [date(2026, 11, d) for d in (10, 11, 12)]
    for d in days:
        with store.run_lock("m", d, 5):
            run = store.start_run("m", 1, d, input_rows=2)
            stage_chunk(store.url, run, "a", *_chunk(["1", "2"]))
            store.commit_run(run, 2)
    # A crashed run on another day leaves staged rows behind.
    crashed = store.start_run("m", 1, date(2026, 11, 9), input_rows=2)
    stage_chunk(store.url, crashed, "a", *_chunk(["1", "2"]))
    expired = store.expire("m", before=date(2026, 11, 12))
    assert sorted(p.ds for p in expired) == days[:2]
    assert [p.ds for p in store.list_partitions("m")] == [days[2]]
    assert store.lookup("m", 1, days[0], ["1"]) == []
    assert [h.entity_id for h in store.lookup("m", 1, days[2], ["1"])] == ["1"]
    for info in expired:
        assert store.count_predictions(info.run_id) == 0
    # The crashed run was killed and never re-run: it stays `running`. Nobody holds its partition's
    # lock, so gc knows it is dead, marks it abandoned and removes its rows, counting them exactly.
    dry = store.gc("m", dry_run=True)
    assert dry.dry_run
    assert dry.abandoned == [crashed]
    assert [(r["run_id"], r["status"], r["rows"]) for r in dry.runs] == [(crashed, "abandoned", 2)]
    assert store.count_predictions(crashed) == 2  # a dry run changes nothing
    assert store.runs("m", limit=1)[0]["status"] == "running"
    report = store.gc("m")
    assert report.abandoned == [crashed]
    assert [(r["run_id"], r["status"], r["rows"]) for r in report.runs] == [(crashed, "abandoned", 2)]
    assert report.rows == 2
    assert store.count_predictions(crashed) == 0
    with store.connect() as conn:
        total = conn.execute(sa.text("SELECT count(*) FROM predictions")).scalar_one()
    assert total == 2
    assert store.gc("m").runs == []  # nothing left: gc does not revisit what it collected


def test_gc_never_takes_a_live_run_for_dead(store_url: str) -> None:
    store = Store(store_url)
    with store.run_lock("m", DS, 5):
        live = store.start_run("m", 1, DS, input_rows=2)
        stage_chunk(store.url, live, "a", *_chunk(["1", "2"]))
        report = store.gc("m")
        assert report.abandoned == []
        assert report.runs == []
        assert store.count_predictions(live) == 2
        store.commit_run(live, 2)
    assert store.partition("m", 1, DS) is not None


def test_migrations_downgrade_to_base_and_upgrade_again(store_url: str) -> None:
    store = Store(store_url)
    head = store.head_revision()
    store.downgrade("base")
    assert store.current_revision() is None
    store.upgrade()
    assert store.current_revision() == head


def test_migrations_downgrade_to_base_with_a_model_and_its_alias_in_the_store(store_url: str) -> None:
    """A real store has versions and aliases: a downgrade must not trip their foreign keys (a batch rebuild of
    model_versions on SQLite drops the table model_aliases points at)."""
    from nightshift.db import schema

    store = Store(store_url)
    head = store.head_revision()
    now = datetime.now(UTC)
    with store.begin() as conn:
        conn.execute(
            schema.model_versions.insert().values(
                model="m", version=1, created_at=now, created_by="t", algorithm="a", hyperparameters={},
                libraries={}, features=["x"], input_schema={}, output_schema={}, training_data={}, metrics={},
                parity={}, feature_importance={}, decision_threshold=0.5, artifact_uri="file:///m", sha256="0" * 64,
                size_bytes=1,
            )
        )  # fmt: skip
        conn.execute(
            schema.model_aliases.insert().values(model="m", alias="champion", version=1, updated_at=now, updated_by="t")
        )
    store.downgrade("base")
    assert store.current_revision() is None
    store.upgrade()
    assert store.current_revision() == head
    with store.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.model_versions)).scalar() == 0
    store.dispose()


@pytest.mark.postgres
def test_a_streamed_chunk_that_fails_midway_leaves_nothing_and_can_be_redone(pg_url: str) -> None:
    from nightshift.db.staging import chunk_writer
    from nightshift.errors import ContractError

    store = Store(pg_url)
    run = store.start_run("m", 1, DS, input_rows=3)

    def fail_midway() -> None:
        with chunk_writer(store.url, run, "a") as writer:
            writer.write(*_chunk(["1", "2"]))
            raise ContractError("bad second batch")

    with pytest.raises(ContractError, match="bad second batch"):
        fail_midway()
    assert store.count_predictions(run) == 0
    with chunk_writer(store.url, run, "a") as writer:
        assert writer.done is None
        writer.write(*_chunk(["1", "2"]))
        writer.write(*_chunk(["3"]))
    assert writer.rows == 3
    assert store.commit_run(run, 3).rows == 3


@pytest.mark.postgres
def test_two_attempts_of_one_chunk_at_once_stage_it_once(pg_url: str) -> None:
    """A Dask task recomputed while its first attempt still runs: the later ledger row loses, its rows go."""
    from nightshift.db.staging import chunk_writer

    store = Store(pg_url)
    run = store.start_run("m", 1, DS, input_rows=2)
    first_wrote = threading.Event()
    second_done = threading.Event()
    results: dict[str, tuple[int | None, int]] = {}

    def first() -> None:
        with chunk_writer(store.url, run, "a") as writer:
            writer.write(*_chunk(["1", "2"], 0.1))
            first_wrote.set()
            assert second_done.wait(30)
        results["first"] = (writer.done, writer.rows)

    def second() -> None:
        assert first_wrote.wait(30)
        with chunk_writer(store.url, run, "a") as writer:
            assert writer.done is None  # the first attempt's ledger row is not committed yet
            writer.write(*_chunk(["1", "2"], 0.9))
        results["second"] = (writer.done, writer.rows)
        second_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {"second": (None, 2), "first": (2, 2)}
    assert store.count_predictions(run) == 2
    store.commit_run(run, 2)
    rows = store.lookup("m", 1, DS, ["1", "2"])
    assert [round(p.score, 3) for p in rows] == [0.9, 0.9]


def _score_day(store: Store, ids: list[str], score: float, history_days: float) -> int:
    with store.run_lock("m", DS, 5):
        run = store.start_run("m", 1, DS, input_rows=len(ids), history_days=history_days)
        stage_chunk(store.url, run, "a", *_chunk(ids, score))
        store.commit_run(run, len(ids), history_days=history_days)
    return run


def test_a_replaced_day_stays_readable_for_its_history_window_then_gc_removes_it(store_url: str) -> None:
    from nightshift.db.engine import utcnow

    store = Store(store_url)
    first = _score_day(store, ["1", "2"], 0.25, history_days=7)
    between = utcnow()
    second = _score_day(store, ["1", "2"], 0.75, history_days=7)
    # Re-scoring replaced the first run, but inside the window its rows stay, and "what served at T" is exact.
    assert {r["run_id"]: r["status"] for r in store.runs("m")} == {first: "superseded", second: "committed"}
    assert store.count_predictions(first) == 2
    then = store.served_run("m", 1, DS, between)
    now = store.served_run("m", 1, DS, utcnow())
    assert then is not None
    assert then.run_id == first
    assert now is not None
    assert now.run_id == second
    assert store.served_run("m", 1, DS, datetime(2026, 1, 1, tzinfo=UTC)) is None  # before anything was committed
    # gc honours the window; without one, the replaced rows go, and the current run is untouched.
    assert store.gc("m", history_days={"m": 7}).rows == 0
    assert store.count_predictions(first) == 2
    report = store.gc("m", dry_run=True, history_days={"m": 0})
    assert [(r["run_id"], r["rows"]) for r in report.runs] == [(first, 2)]
    assert store.count_predictions(first) == 2  # a dry run removes nothing
    assert store.gc("m").rows == 2
    assert store.count_predictions(first) == 0
    assert store.count_predictions(second) == 2
    assert store.served_run("m", 1, DS, utcnow()).run_id == second  # type: ignore[union-attr]


def test_without_a_history_window_a_replaced_day_goes_at_commit(store_url: str) -> None:
    store = Store(store_url)
    first = _score_day(store, ["1"], 0.25, history_days=0)
    second = _score_day(store, ["1"], 0.5, history_days=0)
    assert store.count_predictions(first) == 0
    assert store.count_predictions(second) == 1
