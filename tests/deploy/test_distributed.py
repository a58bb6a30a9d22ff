"""Scoring on an existing Dask cluster, by configuration only: a real scheduler and two workers, separate processes.

The scheduler and the workers are started the way the compose services start them: through
docker/bin/nightshift-entrypoint, from the dask-worker image's environment (nightshift[score],
installed from the lock), on loopback, each in its own process group. nightshift reaches them
through `dask.scheduler_address` alone, with the features and the model artifacts addressed by
`file://` URIs. The committed predictions must equal those of a local-cluster run, on SQLite
(rows return to the driver) and on PostgreSQL (each worker COPYs its own rows).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import DEMO_FILES, DEMO_ROWS, SCORE_DS, write_project
from tests.deploy.conftest import (
    ENTRYPOINT,
    ImageEnv,
    Processes,
    base_env,
    free_port,
    healthcheck_argv,
    healthcheck_passes,
    wait_healthy,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(
    image_envs: dict[str, ImageEnv], compose: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`tcp://127.0.0.1:<port>` of a scheduler with two single-threaded workers, all healthy."""
    from distributed import Client

    worker_env = image_envs["dask-worker"]
    log_dir = tmp_path_factory.mktemp("dask")
    procs = Processes(log_dir)
    try:
        port, dashboard = free_port(), free_port()
        env = base_env(
            worker_env.bin,
            DASK_SCHEDULER_HOST="127.0.0.1",
            DASK_SCHEDULER_LISTEN_HOST="127.0.0.1",
            DASK_SCHEDULER_PORT=str(port),
            DASK_DASHBOARD_PORT=str(dashboard),
        )
        scheduler = procs.start("dask-scheduler", [str(ENTRYPOINT), "dask-scheduler"], env)
        check = healthcheck_argv(compose, "dask-scheduler", {"127.0.0.1:8787": f"127.0.0.1:{dashboard}"})
        wait_healthy(scheduler, lambda: healthcheck_passes(check, env), 60, "passing healthcheck")
        address = f"tcp://127.0.0.1:{port}"
        workers = []
        for i in range(2):
            worker_dashboard = free_port()
            wenv = base_env(
                worker_env.bin,
                DASK_SCHEDULER_ADDRESS=address,
                DASK_WORKER_HOST="127.0.0.1",
                DASK_WORKER_LISTEN_HOST="127.0.0.1",
                DASK_WORKER_DASHBOARD_PORT=str(worker_dashboard),
                DASK_WORKER_NTHREADS="1",
                DASK_WORKER_MEMORY_LIMIT="1GiB",
                DASK_WORKER_NAME=f"w{i}",
                DASK_WORKER_LOCAL_DIRECTORY=str(log_dir / f"w{i}"),
            )
            proc = procs.start(f"dask-worker-{i}", [str(ENTRYPOINT), "dask-worker"], wenv)
            workers.append((proc, wenv, worker_dashboard))
        for proc, wenv, worker_dashboard in workers:
            wcheck = healthcheck_argv(compose, "dask-worker", {"127.0.0.1:8788": f"127.0.0.1:{worker_dashboard}"})
            wait_healthy(proc, lambda c=wcheck, e=wenv: healthcheck_passes(c, e), 90, "passing healthcheck")
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        procs.stop_all()


def _committed(store: Any, run_id: int) -> dict[str, float]:
    with store.connect() as conn:
        rows = conn.execute(sa.text("SELECT entity_id, score FROM predictions WHERE run_id = :r"), {"r": run_id}).all()
    return {r[0]: float(r[1]) for r in rows}


def _sessions_on_workers(address: str) -> dict[str, list[str]]:
    """Worker name -> the model artifacts it holds an ONNX Runtime session for (it ran scoring tasks)."""
    from distributed import Client

    with Client(address, timeout="30s") as client:
        by_address = client.run(lambda: __import__("nightshift.scoring.sessions", fromlist=["_"]).cached_artifacts())
        names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
    return {str(names[a]): v for a, v in by_address.items()}


def test_scoring_through_an_existing_cluster_commits_what_a_local_cluster_commits(
    store_url: str,
    cluster: str,
    data_root: Path,
    tmp_path: Path,
    registered: Any,
    dask_client: Any,
) -> None:
    from nightshift.config import load_settings
    from nightshift.db import open_store
    from nightshift.scoring import score_partition

    # Configuration is all it takes: the scheduler address, and file:// URIs for the features
    # and the artifacts (what an NFS mount or an object store bucket would be addressed by).
    # A task per file (task_min_rows = 1): the demo's small files would otherwise share one task on one worker.
    project = write_project(
        tmp_path, store_url, data_root, dask=f'scheduler_address = "{cluster}"\ntask_min_rows = 1\n'
    )
    text = project.read_text().replace(f'dataset = "{data_root}/features"', f'dataset = "file://{data_root}/features"')
    assert "file://" in text
    project.write_text(text)
    settings = load_settings(project, artifacts=f"file://{tmp_path}/artifacts")
    assert settings.dask.scheduler_address == cluster
    mv = registered(settings)
    assert mv.artifact_uri.startswith("file://")

    remote = score_partition(settings, "churn", SCORE_DS, run_key="remote")
    assert (remote.rows, remote.files, remote.tasks) == (DEMO_ROWS, DEMO_FILES, DEMO_FILES)
    # The tasks ran on the cluster's workers: they built ONNX Runtime sessions for this model.
    sessions = _sessions_on_workers(cluster)
    assert set(sessions) == {"w0", "w1"}
    assert any(mv.artifact_uri in uris for uris in sessions.values()), sessions

    store = open_store(settings)
    try:
        remote_scores = _committed(store, remote.run_id)
        assert len(remote_scores) == DEMO_ROWS
        # The same partition scored on a local cluster replaces it with identical predictions.
        local = score_partition(settings, "churn", SCORE_DS, client=dask_client, run_key="local")
        assert local.replaced_run_id == remote.run_id
        assert _committed(store, local.run_id) == remote_scores
        part = store.partition("churn", mv.version, SCORE_DS)
        assert part is not None
        assert (part.run_id, part.row_count) == (local.run_id, DEMO_ROWS)
        hits = store.lookup("churn", mv.version, SCORE_DS, ["1", "2"])
        assert {h.entity_id: h.score for h in hits} == {k: remote_scores[k] for k in ("1", "2")}
    finally:
        store.dispose()


def test_features_and_models_at_object_storage_uris_need_no_code_change(
    sqlite_url: str, data_root: Path, tmp_path: Path, registered: Any
) -> None:
    """An fsspec URI in place of each path (memory:// standing in for s3://, which needs s3fs and a bucket).

    memory:// lives in one process, so this run uses a threaded local cluster; the processes of
    the test above read file:// URIs. An s3:// or gs:// location differs only in the filesystem
    package (s3fs, gcsfs) and its credentials.
    """
    import fsspec

    from nightshift.config import load_settings
    from nightshift.db import open_store
    from nightshift.scoring import score_partition

    bucket = f"/nightshift-{tmp_path.name}"
    memory = fsspec.filesystem("memory")
    part = f"ds={SCORE_DS.isoformat()}"
    for src in sorted((data_root / "features" / part).iterdir()):
        memory.pipe(f"{bucket}/features/{part}/{src.name}", src.read_bytes())
    try:
        project = write_project(tmp_path, sqlite_url, data_root, dask="processes = false")
        text = project.read_text().replace(
            f'dataset = "{data_root}/features"', f'dataset = "memory://{bucket}/features"'
        )
        project.write_text(text)
        settings = load_settings(project, artifacts=f"memory://{bucket}/models")
        mv = registered(settings)
        assert mv.artifact_uri.startswith(f"memory://{bucket}/models/")
        assert memory.exists(mv.artifact_uri.removeprefix("memory://"))
        remote = score_partition(settings, "churn", SCORE_DS, run_key="object-storage")
        assert (remote.rows, remote.files) == (DEMO_ROWS, DEMO_FILES)
        store = open_store(settings)
        try:
            from_uris = _committed(store, remote.run_id)
            # The same model over the same files read from the local disk: the same scores.
            (tmp_path / "local").mkdir()
            local_project = write_project(tmp_path / "local", sqlite_url, data_root, dask="processes = false")
            local_settings = load_settings(local_project, artifacts=f"memory://{bucket}/models")
            local = score_partition(local_settings, "churn", SCORE_DS)
            assert local.replaced_run_id == remote.run_id
            assert _committed(store, local.run_id) == from_uris
        finally:
            store.dispose()
    finally:
        memory.rm(bucket, recursive=True)
