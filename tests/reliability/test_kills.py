"""Real processes killed with SIGKILL: a Dask worker mid-partition; the scoring process mid-load, and after commit."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nightshift.db import open_store
from nightshift.scoring import score_partition
from tests.conftest import SCORE_DS
from tests.reliability.conftest import (
    MODEL,
    Cli,
    ConsistentReader,
    assert_exactly_once,
    catalog_run,
    committed,
    full_pipe,
    input_ids,
    ledger,
    load,
    pg_connect,
    project,
    run_of,
    runs,
    score_args,
    start_cli,
    statuses,
    stored_rows,
    wait_for,
    worker_pids,
)

pytestmark = pytest.mark.slow


def _times_processed(client: Any, run_id: int, since: float) -> dict[str, int]:
    """How many times the scheduler sent each task of a run to a worker (since a time: run ids repeat across stores)."""

    def count(dask_scheduler: Any) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in dask_scheduler.transition_log:
            if t.timestamp < since:
                continue
            if isinstance(t.key, str) and f"-r{run_id}-" in t.key and t.finish == "processing":
                out[t.key] = out.get(t.key, 0) + 1
        return out

    return dict(client.run_on_scheduler(count))


def test_a_worker_killed_mid_partition_is_recomputed_and_committed_once(
    store_url: str, tmp_path: Path, many_files_root: Path, registered: Any, killable_client: Any
) -> None:
    settings = load(project(tmp_path, store_url, many_files_root))
    registered(settings)
    store = open_store(settings)
    expected = input_ids(many_files_root)
    killable_client.wait_for_workers(2, timeout=60)
    first = score_partition(settings, MODEL, SCORE_DS, client=killable_client)
    baseline = assert_exactly_once(store, expected)

    outcome: dict[str, Any] = {}

    def second_run() -> None:
        try:
            outcome["summary"] = score_partition(settings, MODEL, SCORE_DS, client=killable_client)
        except BaseException as exc:
            outcome["error"] = exc

    before = worker_pids(killable_client)
    since = time.time()
    with ConsistentReader(store, len(expected)) as reader:
        thread = threading.Thread(target=second_run)
        thread.start()
        run_id = wait_for("the second run", lambda: next((r["run_id"] for r in runs(store)[1:]), None))
        # Some chunks are staged (and their tasks' results sit in the workers' memory), most
        # are not: kill one worker process outright. Its running task and the results it
        # held are lost, and Dask recomputes them on the survivor and on its replacement.
        wait_for("two staged chunks", lambda: ledger(store).get(run_id, 0) >= 2)
        staged_at_kill = ledger(store).get(run_id, 0)
        # A worker that is running a task of the run right now (a fixed pick could be between tasks, its
        # results already consumed: then nothing is lost and nothing recomputed, and the test tests nothing).
        busy = wait_for(
            "a worker running a task of the run",
            lambda: next((a for a, keys in sorted(killable_client.processing().items()) if keys and a in before), None),
        )
        victim = before[busy]
        os.kill(victim, signal.SIGKILL)
        thread.join(timeout=300)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert summary.run_id == run_id
    assert staged_at_kill < summary.tasks, "the run finished before the kill: nothing was tested"

    # The worker really died and was replaced, and Dask really ran some tasks twice.
    after = worker_pids(killable_client)
    assert victim not in after.values()
    processed = _times_processed(killable_client, run_id, since)
    assert len(processed) == summary.tasks
    assert max(processed.values()) >= 2, f"no task was recomputed after the kill: {processed}"

    # Exactly once: right count, each id once, nothing else stored, identical scores.
    assert summary.rows == len(expected)
    assert summary.replaced_run_id == first.run_id
    assert assert_exactly_once(store, expected) == baseline
    assert ledger(store) == {run_id: summary.tasks}
    assert statuses(store) == ["superseded", "committed"]
    reader.check(first.run_id, run_id)


def test_the_scoring_process_killed_mid_load_leaves_the_old_rows_and_the_next_run_cleans_up(
    store_url: str,
    tmp_path: Path,
    many_files_root: Path,
    registered: Any,
    dask_client: Any,
    cli_processes: list[Cli],
) -> None:
    config = project(tmp_path, store_url, many_files_root)
    settings = load(config)
    registered(settings)
    store = open_store(settings)
    expected = input_ids(many_files_root)
    first = score_partition(settings, MODEL, SCORE_DS, client=dask_client)
    baseline = assert_exactly_once(store, expected)

    with ConsistentReader(store, len(expected)) as reader:
        cli = start_cli(score_args(), config)
        cli_processes.append(cli)
        dead = wait_for("the CLI's run", lambda: run_of(store, cli.pid) or (not cli.alive() and -1), timeout=180)
        assert dead != -1, f"the CLI ended before it started a run:\n{cli.stderr()}"
        wait_for("its first staged chunk", lambda: ledger(store).get(dead, 0) >= 1 or not cli.alive(), timeout=180)
        assert cli.alive(), f"the CLI ended before it was killed:\n{cli.stderr()}"
        cli.kill_group()

        # Killed mid-load: nobody could record the failure, and the old rows still serve.
        staged = ledger(store).get(dead, 0)
        dead_run = next(r for r in runs(store) if r["run_id"] == dead)
        assert dead_run["status"] == "running"
        assert catalog_run(store) == first.run_id
        assert committed(store) == baseline
        assert 0 < stored_rows(store).get(dead, 0) < len(expected), "the kill did not land mid-load"
        assert staged < dead_run["files"]

        # The next run of the partition (Airflow's retry) finds the dead run, marks it
        # abandoned, removes what it staged, and commits.
        summary = score_partition(settings, MODEL, SCORE_DS, client=dask_client)
    reader.check(first.run_id, summary.run_id)
    assert summary.replaced_run_id == first.run_id
    by_id = {r["run_id"]: r for r in runs(store)}
    assert by_id[dead]["status"] == "abandoned"
    assert "process ended before commit" in by_id[dead]["error"]
    assert statuses(store) == ["superseded", "abandoned", "committed"]
    assert assert_exactly_once(store, expected) == baseline


def test_the_scoring_process_killed_after_its_commit_is_retried_to_identical_predictions(
    store_url: str,
    tmp_path: Path,
    many_files_root: Path,
    registered: Any,
    dask_client: Any,
    cli_processes: list[Cli],
) -> None:
    config = project(tmp_path, store_url, many_files_root)
    settings = load(config)
    registered(settings)
    store = open_store(settings)
    expected = input_ids(many_files_root)
    first = score_partition(settings, MODEL, SCORE_DS, client=dask_client)
    baseline = assert_exactly_once(store, expected)

    # The CLI reports success on stdout only after its commit; a pipe nobody reads, already
    # full, holds it right there: committed, but never reported done to its orchestrator.
    r, w = full_pipe()
    snapshot = None
    if not store.is_sqlite:
        # A long reader on PostgreSQL: its snapshot predates the commit. The commit does not
        # wait for it, but removing the replaced run's partition does, so the process is
        # also held between its commit and its cleanup.
        import psycopg

        snapshot = pg_connect(store.url, autocommit=False)
        snapshot.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        count_old = snapshot.execute(
            "SELECT count(*), min(run_id) FROM committed_predictions WHERE model = %s AND ds = %s", (MODEL, SCORE_DS)
        ).fetchone()
        assert count_old == (len(expected), first.run_id)
    try:
        with ConsistentReader(store, len(expected)) as reader:
            cli = start_cli(score_args(), config, stdout=w)
            cli_processes.append(cli)
            os.close(w)
            killed = wait_for("the CLI's run", lambda: run_of(store, cli.pid) or (not cli.alive() and -1), timeout=180)
            assert killed != -1, f"the CLI ended before it started a run:\n{cli.stderr()}"
            wait_for("its commit", lambda: catalog_run(store) == killed or not cli.alive(), timeout=180)
            assert cli.alive(), f"the CLI ended on its own:\n{cli.stderr()}"
            cli.kill_group()
            assert cli.proc.returncode == -signal.SIGKILL

            if snapshot is not None:
                # The snapshot reader still sees the complete old set, after the new commit.
                again = snapshot.execute(
                    "SELECT count(*), count(DISTINCT entity_id), min(run_id), max(run_id) "
                    "FROM committed_predictions WHERE model = %s AND ds = %s",
                    (MODEL, SCORE_DS),
                ).fetchone()
                assert again == (len(expected), len(expected), first.run_id, first.run_id)
                snapshot.rollback()
                snapshot.close()
                snapshot = None
                # The dead process's session finishes what it was waiting for, then goes away.
                with pg_connect(store.url) as admin:
                    wait_for(
                        "the killed process's sessions to end",
                        lambda: (
                            not admin.execute(
                                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                                "AND query ILIKE '%%DETACH PARTITION%%' AND pid <> pg_backend_pid()"
                            ).fetchone()
                        ),
                        timeout=60,
                        interval=0.05,
                    )

            # Its commit stands: a reader gets the new run, complete and identical.
            assert statuses(store) == ["superseded", "committed"]
            assert committed(store) == baseline

            # The orchestrator saw a failure, so it retries: one committed copy, same predictions.
            summary = score_partition(settings, MODEL, SCORE_DS, client=dask_client)
        reader.check(first.run_id, killed, summary.run_id)
        assert summary.replaced_run_id == killed
        assert statuses(store) == ["superseded", "superseded", "committed"]
        assert assert_exactly_once(store, expected) == baseline
    finally:
        os.close(r)
        if snapshot is not None:
            snapshot.close()
