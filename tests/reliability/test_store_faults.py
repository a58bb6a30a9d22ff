"""The database misbehaving: unreachable at start, connections dropped mid-transaction, runs racing, re-runs."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nightshift.db import open_store
from nightshift.db.backends import lock_key
from nightshift.scoring import score_partition
from tests.conftest import SCORE_DS
from tests.reliability.conftest import (
    MODEL,
    Cli,
    ConsistentReader,
    assert_exactly_once,
    catalog_run,
    committed,
    expect_fixed,
    input_ids,
    ledger,
    load,
    pg_connect,
    project,
    runs,
    score_args,
    start_cli,
    statuses,
    stored_rows,
    wait_for,
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_database_at_start_fails_clearly_after_bounded_retries(
    tmp_path: Path, data_root: Path, cli_processes: list[Cli]
) -> None:
    port = _closed_port()
    url = f"postgresql://nightshift:s3cret-pw@127.0.0.1:{port}/nightshift"
    config = project(tmp_path / "project", url, data_root, top="connect_retries = 2")
    before = {p: p.stat().st_mtime_ns for p in data_root.rglob("*")}
    t0 = time.monotonic()
    cli = start_cli(score_args(), config)
    cli_processes.append(cli)
    rc, out, err = cli.finish(timeout=120)
    elapsed = time.monotonic() - t0
    text = " ".join(err.split())
    assert rc == 1, err
    assert (
        f"error: StoreUnavailable: cannot reach the store at postgresql+psycopg://nightshift:***@127.0.0.1:{port}"
        f"/nightshift after 3 attempt(s)" in text
    ), err
    assert "Connection refused" in text
    assert "s3cret" not in out + err
    assert "Traceback" not in err
    # Bounded: three attempts with backoff (0.5 s, 1 s) plus start-up, never a hang.
    assert elapsed < 60
    # Nothing written anywhere: no local state, the data untouched.
    assert not (config.parent / "state").exists()
    assert {p: p.stat().st_mtime_ns for p in data_root.rglob("*")} == before


# -- connections dropped mid-transaction (PostgreSQL: the test terminates the backends) ------------


def _backends(admin: Any, where: str) -> list[int]:
    return [
        int(r[0])
        for r in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND "
            + where
        ).fetchall()
    ]


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


@pytest.mark.slow
@pytest.mark.postgres
def test_worker_connections_dropped_mid_copy_fail_the_run_and_the_old_rows_serve(
    pg_url: str, tmp_path: Path, many_files_root: Path, registered: Any, dask_client: Any
) -> None:
    settings = load(project(tmp_path, pg_url, many_files_root))
    registered(settings)
    store = open_store(settings)
    expected = input_ids(many_files_root)
    first = score_partition(settings, MODEL, SCORE_DS, client=dask_client)
    baseline = assert_exactly_once(store, expected)

    with ConsistentReader(store, len(expected)) as reader, pg_connect(pg_url) as admin:
        thread, outcome = _in_thread(lambda: score_partition(settings, MODEL, SCORE_DS, client=dask_client))
        run_id = wait_for("the second run", lambda: next((r["run_id"] for r in runs(store)[1:]), None))
        wait_for("a staged chunk", lambda: ledger(store).get(run_id, 0) >= 1)
        # Hold the run's table: the workers' next COPY waits inside its chunk transaction,
        # after the chunk's ledger row was written. Then cut those connections.
        with pg_connect(pg_url, autocommit=False) as blocker:
            blocker.execute(f"LOCK TABLE predictions_r{run_id} IN SHARE MODE")
            copying = wait_for(
                "a worker blocked in COPY",
                lambda: _backends(admin, "wait_event_type = 'Lock' AND query LIKE 'COPY predictions_r%%'"),
                timeout=60,
                interval=0.02,
            )
            for pid in copying:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            blocker.rollback()
        thread.join(timeout=300)
    assert not thread.is_alive()
    reader.check(first.run_id, run_id)
    if "error" in outcome:
        # Loud: the run failed, said why, and left nothing of itself; the old rows serve.
        error = outcome["error"]
        assert "terminating connection" in str(error), repr(error)
        failed = next(r for r in runs(store) if r["run_id"] == run_id)
        assert failed["status"] == "failed"
        assert "terminating connection" in failed["error"]
        assert catalog_run(store) == first.run_id
        assert committed(store) == baseline
        assert stored_rows(store) == {first.run_id: len(expected)}
        assert set(ledger(store)) == {first.run_id}
    else:
        # Or it retried the chunks: then it committed everything exactly once.
        assert outcome["result"].rows == len(expected)
        assert assert_exactly_once(store, expected) == baseline
    # Either way the next run commits exactly once.
    score_partition(settings, MODEL, SCORE_DS, client=dask_client)
    assert assert_exactly_once(store, expected) == baseline


@pytest.mark.postgres
def test_the_commit_connection_dropped_mid_commit_leaves_the_old_rows_serving(
    pg_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    settings = make_settings(pg_url)
    registered(settings)
    store = open_store(settings)
    expected = input_ids(data_root)
    first = score_partition(settings, MODEL, SCORE_DS, client=dask_client)
    baseline = assert_exactly_once(store, expected)

    with (
        ConsistentReader(store, len(expected)) as reader,
        pg_connect(pg_url) as admin,
        pg_connect(pg_url, autocommit=False) as blocker,
    ):
        # Hold the catalog row: the commit transaction (index built, partition attached)
        # waits on it; then its connection is cut.
        blocker.execute("SELECT * FROM partitions WHERE model = %s AND ds = %s FOR UPDATE", (MODEL, SCORE_DS))
        thread, outcome = _in_thread(lambda: score_partition(settings, MODEL, SCORE_DS, client=dask_client))
        committing = wait_for(
            "the commit waiting on the catalog row",
            lambda: _backends(admin, "wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO partitions%%'"),
            timeout=120,
            interval=0.02,
        )
        run_id = int(runs(store)[-1]["run_id"])
        for pid in committing:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        blocker.rollback()
        thread.join(timeout=300)
    assert not thread.is_alive()
    reader.check(first.run_id)
    assert "error" in outcome, "the run committed although its commit connection was cut"
    assert "terminating connection" in str(outcome["error"])
    failed = next(r for r in runs(store) if r["run_id"] == run_id)
    assert failed["status"] == "failed"
    assert "terminating connection" in failed["error"]
    assert catalog_run(store) == first.run_id
    assert committed(store) == baseline
    assert stored_rows(store) == {first.run_id: len(expected)}
    score_partition(settings, MODEL, SCORE_DS, client=dask_client)
    assert assert_exactly_once(store, expected) == baseline


def _table_exists(admin: Any, run_id: int) -> bool:
    return admin.execute("SELECT to_regclass(%s)", (f"predictions_r{run_id}",)).fetchone()[0] is not None


def _lock_holders(admin: Any, model: str, ds: Any) -> list[int]:
    """Backends holding the (model, ds) advisory run lock."""
    return [
        int(r[0])
        for r in admin.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
            "((classid::bigint << 32) | objid::bigint) = %s::bigint",
            (lock_key(model, ds),),
        ).fetchall()
    ]


@pytest.mark.postgres
def test_a_run_that_lost_its_lock_session_never_leaves_its_commit_dropped(
    pg_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    settings = make_settings(pg_url)
    registered(settings)
    store = open_store(settings)
    expected = input_ids(data_root)
    inside_commit = "wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO partitions%%'"
    with (
        pg_connect(pg_url) as admin,
        pg_connect(pg_url, autocommit=False) as hold_a,
        pg_connect(pg_url, autocommit=False) as hold_b,
    ):
        # Run A reaches its commit transaction (index built, partition attached) and waits
        # there on the catalog, held by the test ...
        hold_a.execute("LOCK TABLE partitions IN SHARE ROW EXCLUSIVE MODE")
        thread_a, outcome_a = _in_thread(lambda: score_partition(settings, MODEL, SCORE_DS, client=dask_client))
        wait_for("run A's commit", lambda: _backends(admin, inside_commit), timeout=120, interval=0.02)
        run_a = int(runs(store)[-1]["run_id"])
        # ... when the session holding its run lock dies (a failover, a proxy, a network cut).
        (holder,) = _lock_holders(admin, MODEL, SCORE_DS)
        admin.execute("SELECT pg_terminate_backend(%s)", (holder,))
        # Run B of the same partition gets the lock, and ends up waiting on run A (before the
        # fix: its cleanup's DROP of A's "abandoned" table; now: its marking of A as abandoned).
        thread_b, _ = _in_thread(lambda: score_partition(settings, MODEL, SCORE_DS, client=dask_client))
        wait_for(
            "run B to wait on run A",
            lambda: _backends(admin, "wait_event_type = 'Lock' AND query NOT ILIKE 'INSERT INTO partitions%%'"),
            timeout=120,
            interval=0.02,
        )
        # A commits; B's own commit will wait on the catalog, so readers can be asked
        # what A's success left them, before B replaces it.
        hold_a.rollback()
        thread_a.join(timeout=300)
        hold_b.execute("LOCK TABLE partitions IN SHARE ROW EXCLUSIVE MODE")
        wait_for(
            "run B to drop run A's table, reach its commit, or end",
            lambda: not _table_exists(admin, run_a) or _backends(admin, inside_commit) or not thread_b.is_alive(),
            timeout=120,
            interval=0.02,
        )
        catalog, seen = catalog_run(store), committed(store)
        hold_b.rollback()
        thread_b.join(timeout=300)
    assert not thread_a.is_alive()
    assert not thread_b.is_alive()
    if "error" not in outcome_a:
        assert catalog == run_a
        expect_fixed(
            len(seen) == len(expected),
            f"run {run_a} reported success, then readers got {len(seen)} of its {len(expected)} rows: the run that "
            "took its lock over marked it abandoned and dropped its committed table",
        )
    # B either commits or fails loudly; a further run leaves exactly one complete copy.
    score_partition(settings, MODEL, SCORE_DS, client=dask_client)
    assert_exactly_once(store, expected)


def test_a_failure_in_the_cleanup_after_a_commit_never_removes_the_committed_rows(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    settings = make_settings(store_url)
    registered(settings)
    store = open_store(settings)
    expected = input_ids(data_root)
    first = score_partition(settings, MODEL, SCORE_DS, client=dask_client)
    assert_exactly_once(store, expected)
    # Removing the replaced run's leftovers after the commit fails (a full disk, a lock
    # timeout behind a long reader, a dropped connection ...): the database refuses it.
    with store.begin() as conn:
        if store.is_sqlite:
            conn.exec_driver_sql(
                f"CREATE TRIGGER fail_cleanup BEFORE DELETE ON predictions WHEN OLD.run_id = {first.run_id} "
                "BEGIN SELECT RAISE(ABORT, 'injected cleanup failure'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION fail_cleanup() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'injected cleanup failure'; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER fail_cleanup BEFORE DELETE ON run_chunks FOR EACH ROW "
                f"WHEN (OLD.run_id = {first.run_id}) EXECUTE FUNCTION fail_cleanup()"
            )
    try:
        outcome = repr(score_partition(settings, MODEL, SCORE_DS, client=dask_client))
    except Exception as exc:  # reporting the cleanup failure is allowed; losing the commit is not
        outcome = repr(exc)
    assert "Error" not in outcome or "injected cleanup failure" in outcome, outcome
    # The commit happened: the partition must stay complete, whatever the run reported.
    part = store.partition(MODEL, 1, SCORE_DS)
    assert part is not None
    assert part.run_id != first.run_id
    now = committed(store)
    expect_fixed(
        len(now) == len(expected),
        f"the catalog points at run {part.run_id} ({part.row_count} rows) but readers get {len(now)} rows; "
        f"the run reported {outcome!r}",
    )
    assert next(r for r in runs(store) if r["run_id"] == part.run_id)["status"] == "committed"
    # The replaced run's rows are still there (invisible) until a later run removes them.
    with store.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER fail_cleanup" + ("" if store.is_sqlite else " ON run_chunks"))
    score_partition(settings, MODEL, SCORE_DS, client=dask_client)
    assert_exactly_once(store, expected)


@pytest.fixture(scope="module")
def shared_client() -> Any:
    """A cluster of its own, shared by two stores in one test (as a `scheduler_address` is in production)."""
    import dask
    from distributed import Client, LocalCluster

    with (
        dask.config.set({"distributed.worker.multiprocessing-method": "fork"}),
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.mark.slow
def test_two_stores_sharing_a_dask_cluster_never_get_each_others_scores(
    tmp_path: Path, many_files_root: Path, registered: Any, shared_client: Any, trained_model: Any
) -> None:
    import shutil
    import sqlite3

    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from nightshift.data.features import model_inputs
    from nightshift.db.store import Store
    from nightshift.training import onnx_scores
    from tests.reliability.conftest import partition_dir

    # Store B scores other data for the same customers: every monthly charge is 50 % higher.
    root_b = tmp_path / "data_b"
    shutil.copytree(many_files_root, root_b)
    for f in partition_dir(root_b).glob("*.parquet"):
        t = pq.read_table(f)
        i = t.schema.get_field_index("monthly_charges")
        pq.write_table(t.set_column(i, "monthly_charges", pc.multiply(t.column(i), 1.5)), f)
    stores = {}
    for name, root in (("a", many_files_root), ("b", root_b)):
        url = f"sqlite:///{tmp_path / name / 'store.db'}"
        Store(url).upgrade()
        settings = load(project(tmp_path / name, url, root))
        registered(settings)
        stores[name] = (settings, open_store(settings))
    (settings_a, store_a), (settings_b, store_b) = stores["a"], stores["b"]

    def keys_in_flight() -> list[str]:
        def keys(dask_scheduler: Any) -> list[str]:
            return [str(k) for k in dask_scheduler.tasks if str(k).startswith("nightshift-score-")]

        return list(shared_client.run_on_scheduler(keys))

    # Run 1 of store A is scoring (its tasks are on the cluster, its driver is staging) ...
    thread_a, outcome_a = _in_thread(lambda: score_partition(settings_a, MODEL, SCORE_DS, client=shared_client))
    wait_for("store A's tasks", keys_in_flight, timeout=120, interval=0.01)
    hold_a = sqlite3.connect(store_a.sqlite_path, timeout=60, isolation_level=None)
    try:
        hold_a.execute("BEGIN IMMEDIATE")  # A's driver now waits to stage its next chunk
        assert thread_a.is_alive()
        # ... when run 1 of store B starts on the same cluster.
        summary_b = score_partition(settings_b, MODEL, SCORE_DS, client=shared_client)
    finally:
        hold_a.rollback()
        hold_a.close()
    thread_a.join(timeout=300)
    assert "error" not in outcome_a, outcome_a.get("error")
    assert summary_b.run_id == outcome_a["result"].run_id == 1
    contract = settings_b.model(MODEL).contract
    expected_b: dict[str, float] = {}
    for f in sorted(partition_dir(root_b).glob("*.parquet")):
        t = pq.read_table(f)
        scores = np.float32(onnx_scores(trained_model.onnx_bytes, model_inputs(t, contract)))
        expected_b.update(zip([str(i) for i in t.column("customer_id").to_pylist()], scores.tolist(), strict=True))
    got_b = {k: float(np.float32(v)) for k, v in assert_exactly_once(store_b, set(expected_b)).items()}
    wrong = [k for k in expected_b if got_b[k] != expected_b[k]]
    got_a = committed(store_a)
    expect_fixed(
        not wrong,
        f"store B committed {len(wrong)} of {len(expected_b)} scores that are not its data's; "
        f"{sum(got_b[k] == np.float32(got_a[k]) for k in wrong)} of them are store A's scores",
    )


# -- two runs at once, and re-runs -----------------------------------------------------------------


@pytest.mark.slow
def test_two_runs_of_one_partition_in_separate_processes_are_serialised(
    store_url: str, make_settings: Any, registered: Any, data_root: Path, cli_processes: list[Cli]
) -> None:
    settings = make_settings(store_url)
    config = Path(settings.project_dir) / "nightshift.toml"
    registered(settings)
    store = open_store(settings)
    expected = input_ids(data_root)
    with ConsistentReader(store, len(expected)) as reader:
        a = start_cli(score_args(SCORE_DS, "--run-key", "a"), config)
        b = start_cli(score_args(SCORE_DS, "--run-key", "b"), config)
        cli_processes += [a, b]
        # While the first run holds the lock, the other process is alive and waiting for it.
        wait_for("a run", lambda: runs(store) or not (a.alive() and b.alive()), timeout=180)
        assert a.alive(), a.stderr()
        assert b.alive(), b.stderr()
        (rc_a, _, err_a), (rc_b, _, err_b) = a.finish(), b.finish()
    assert (rc_a, rc_b) == (0, 0), err_a + err_b
    both = runs(store)
    assert [r["run_key"] for r in both] in (["a", "b"], ["b", "a"])
    assert {r["pid"] for r in both} == {a.pid, b.pid}
    earlier, later = both
    # Serialised: the second run started only after the first had committed.
    assert later["started_at"] >= earlier["finished_at"]
    assert statuses(store) == ["superseded", "committed"]
    reader.check(int(earlier["run_id"]), int(later["run_id"]))
    assert reader.runs_seen[-1] == int(later["run_id"])
    assert_exactly_once(store, expected)


@pytest.mark.slow
def test_rerunning_a_finished_date_gives_identical_predictions(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    settings = make_settings(store_url)
    registered(settings)
    store = open_store(settings)
    expected = input_ids(data_root)
    first = score_partition(settings, MODEL, SCORE_DS, client=dask_client)
    baseline = assert_exactly_once(store, expected)
    # Again on a cluster of another shape, started by the run itself as in production (one
    # worker, fresh ONNX sessions, other task placement), then once more on the first.
    one_worker = settings.model_copy(update={"dask": settings.dask.model_copy(update={"n_workers": 1})})
    second = score_partition(one_worker, MODEL, SCORE_DS)
    assert second.replaced_run_id == first.run_id
    assert assert_exactly_once(store, expected) == baseline
    third = score_partition(settings, MODEL, SCORE_DS, client=dask_client)
    assert third.replaced_run_id == second.run_id
    assert assert_exactly_once(store, expected) == baseline
    assert statuses(store) == ["superseded", "superseded", "committed"]
