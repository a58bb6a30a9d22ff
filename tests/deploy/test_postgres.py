"""The stack against a real PostgreSQL: its roles and databases, `init`, the API's read-only role, retention, Airflow.

The compose file's PostgreSQL init script runs against the test server (with unique role and
database names); then the `init` service's command runs through the entrypoint from the
Airflow image's environment, with the compose environment pointed at that server. What each
component would do in its container, it does here with the same command and environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa

from tests.conftest import write_project
from tests.deploy.conftest import (
    API_GRANTS,
    ENTRYPOINT,
    REPO,
    SQL_RUNNER,
    ImageEnv,
    PgStack,
    Processes,
    base_env,
    free_port,
    healthcheck_argv,
    healthcheck_passes,
    real_secrets,
    service_environment,
    wait_healthy,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

#: The tables the lookup API reads (jobs/nightshift/api/queries.py), granted by api-readonly.sql.
API_TABLES = [
    "alembic_version",
    "api_keys",
    "model_aliases",
    "model_versions",
    "partitions",
    "predictions",
    "served",
    "served_history",
]
#: What `?as_of=` reads of the histories: these columns only (api-readonly.sql).
API_HISTORY_COLUMNS = {
    "runs": "run_id, model, version, ds, status, rows, finished_at, replaced_at",
    "alias_events": "event_id, model, alias, new_version, at",
}


def compose_env(compose: dict[str, Any], env_example: dict[str, str], service: str, stack: PgStack) -> dict[str, str]:
    """A service's compose environment, with the database coordinates of the throwaway stack."""
    values = real_secrets(env_example)
    values.update(POSTGRES_HOST=stack.host, POSTGRES_PORT=str(stack.port), **stack.initdb_env())
    return service_environment(compose, service, values)


@pytest.fixture(scope="module")
def deploy_dir(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Path:
    folder = tmp_path_factory.mktemp("deploy")
    # The demo project; its store URL is overridden by NIGHTSHIFT_STORE_URL, as in the containers.
    write_project(folder, "sqlite:///unused.db", demo_root)
    for sub in ("airflow", "models", "reports", "state"):
        (folder / sub).mkdir()
    return folder


def local_paths(deploy_dir: Path) -> dict[str, str]:
    """The container paths of the images (Dockerfile ENV, volumes), moved into a folder of this machine."""
    return {
        "NIGHTSHIFT_CONFIG": str(deploy_dir / "nightshift.toml"),
        "NIGHTSHIFT_STATE_DIR": str(deploy_dir / "state"),
        "NIGHTSHIFT_ARTIFACTS": str(deploy_dir / "models"),
        "NIGHTSHIFT_REPORTS": str(deploy_dir / "reports"),
        "AIRFLOW_HOME": str(deploy_dir / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(deploy_dir / "airflow" / "passwords.json"),
        "NIGHTSHIFT_API_GRANTS_SQL": str(API_GRANTS),
    }


def run_entrypoint(image: ImageEnv, argv: list[str], env: dict[str, str], timeout: float = 180) -> str:
    res = subprocess.run(
        [str(ENTRYPOINT), *argv], env=base_env(image.bin, **env), capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, f"{' '.join(argv)}: exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def initialized(
    pg_stack: PgStack,
    image_envs: dict[str, ImageEnv],
    compose: dict[str, Any],
    env_example: dict[str, str],
    deploy_dir: Path,
) -> dict[str, str]:
    """Run the `init` service's command; returns its environment."""
    env = {**compose_env(compose, env_example, "init", pg_stack), **local_paths(deploy_dir)}
    run_entrypoint(image_envs["airflow"], compose["services"]["init"]["command"], env)
    return env


def test_init_migrates_both_databases_as_their_owners(
    pg_stack: PgStack, initialized: dict[str, str], image_envs: dict[str, ImageEnv]
) -> None:
    import psycopg

    from nightshift.db.store import Store

    store = Store(pg_stack.store_owner_url)
    try:
        assert store.current_revision() == store.head_revision()
    finally:
        store.dispose()
    with psycopg.connect(pg_stack.store_owner_url) as conn:
        owners = dict(
            conn.execute("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'").fetchall()
        )
    assert owners["predictions"] == pg_stack.names["store_user"]
    assert set(owners.values()) == {pg_stack.names["store_user"]}
    with psycopg.connect(pg_stack.url("airflow_user", "airflow_db")) as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'dag'").fetchone()
        assert owner == (pg_stack.names["airflow_user"],)
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    # Every `docker compose up` runs init again: the grants re-apply cleanly (the migrations are
    # idempotent by Alembic's and Airflow's own contract).
    out = run_entrypoint(
        image_envs["airflow"],
        [
            "nightshift-sql",
            "--url-env",
            "NIGHTSHIFT_STORE_URL",
            str(API_GRANTS),
            f"api_role={pg_stack.names['api_user']}",
        ],
        initialized,
    )
    assert "statement(s) applied" in out


def test_the_api_role_reads_what_lookups_need_and_nothing_else(pg_stack: PgStack, initialized: dict[str, str]) -> None:
    import psycopg
    from psycopg import errors

    with psycopg.connect(pg_stack.api_url, autocommit=True) as conn:
        for table in API_TABLES:
            conn.execute(f"SELECT * FROM {table} LIMIT 1").fetchall()
        for table, columns in API_HISTORY_COLUMNS.items():
            conn.execute(f"SELECT {columns} FROM {table} LIMIT 1").fetchall()
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("5s",)
        for statement in (
            "SELECT * FROM runs LIMIT 1",
            "SELECT * FROM run_chunks LIMIT 1",
            "SELECT * FROM alias_events LIMIT 1",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
        conn.execute("SET default_transaction_read_only = off")  # a session may lift it: the privileges still hold
        for statement in (
            "INSERT INTO api_keys (key_id, name, key_hash, models, created_at, created_by) "
            "VALUES ('x', 'x', 'x', '*', now(), 'x')",
            "UPDATE partitions SET status = 'x'",
            "DELETE FROM predictions",
            "CREATE TABLE mine (x int)",
            "TRUNCATE predictions",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
    # And it cannot reach Airflow's database at all.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_stack.url("api_user", "airflow_db")).close()


def _commit_partition(store: Any, model: str, version: int, ds: date, ids: list[str]) -> int:
    from nightshift.db.staging import stage_chunk

    with store.run_lock(model, ds, 10):
        run = store.start_run(model, version, ds, input_rows=len(ids))
        scores = np.linspace(0.1, 0.9, len(ids)).astype(np.float32)
        stage_chunk(store.url, run, "a", pa.array(ids), scores, (scores >= 0.5).astype(np.int16))
        store.commit_run(run, len(ids))
    return run


def test_the_api_serves_lookups_as_the_read_only_role(
    pg_stack: PgStack,
    initialized: dict[str, str],
    image_envs: dict[str, ImageEnv],
    compose: dict[str, Any],
    env_example: dict[str, str],
    deploy_dir: Path,
    registered: Any,
    processes: Processes,
) -> None:
    from nightshift.config import load_settings
    from nightshift.db.store import Store

    # As the owner: a champion, a committed partition, created after the grants (a new table
    # attached as a partition: the SELECT on the parent covers it), and a key (`cli` service).
    settings = load_settings(
        deploy_dir / "nightshift.toml", store_url=pg_stack.store_owner_url, artifacts=str(deploy_dir / "models")
    )
    mv = registered(settings)
    store = Store(pg_stack.store_owner_url)
    try:
        _commit_partition(store, "churn", mv.version, date.today() - timedelta(days=1), ["1", "2", "3"])
    finally:
        store.dispose()
    create_key = ["nightshift", "keys", "create", "--name", "deploy-test", "--models", "churn", "--json"]
    created = run_entrypoint(image_envs["airflow"], create_key, initialized)
    token = json.loads(created)["key"]

    port = free_port()
    env = {
        **compose_env(compose, env_example, "api", pg_stack),
        **local_paths(deploy_dir),
        "NIGHTSHIFT_API__HOST": "127.0.0.1",
        "NIGHTSHIFT_API__PORT": str(port),
        "NIGHTSHIFT_API__WORKERS": "1",
    }
    assert pg_stack.names["api_user"] in env["NIGHTSHIFT_API__STORE_URL"]
    api_env = base_env(image_envs["api"].bin, **env)
    proc = processes.start("api", [str(ENTRYPOINT), "api"], api_env)
    check = healthcheck_argv(compose, "api", {"127.0.0.1:8000": f"127.0.0.1:{port}"})
    wait_healthy(proc, lambda: healthcheck_passes(check, api_env), 60, "passing healthcheck")

    def get(path: str) -> tuple[int, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"X-API-Key": token})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    status, body = get("/v1/models/churn/predictions/2")
    assert status == 200, body
    assert (body["entity_id"], body["version"], body["label"]) == ("2", mv.version, 1)
    assert abs(body["score"] - 0.5) < 1e-6
    # A day by alias reads `served`; an as-of read, the granted columns of runs and alias_events.
    status, body = get(f"/v1/models/churn/predictions/2?ds={body['ds']}")
    assert status == 200, body
    status, body = get(f"/v1/models/churn/predictions/2?as_of={urllib.parse.quote(body['committed_at'])}")
    assert status == 200, body
    assert body["as_of"] == body["committed_at"]
    status, body = get("/v1/models/churn/predictions/2?as_of=2001-01-01T00:00:00Z")
    assert status == 404, body
    status, body = get("/v1/models")
    assert status == 200, body
    status, body = get("/readyz")
    assert status in (200, 503), body  # readiness may refuse stale data; it must not be a privilege error
    assert "permission" not in json.dumps(body).lower()
    assert "permission denied" not in proc.tail(200).lower()


def test_gc_drops_expired_partitions_and_their_rows(
    pg_url: str, image_envs: dict[str, ImageEnv], data_root: Path, tmp_path: Path
) -> None:
    """`nightshift gc` (the cli service) with retention_days: expired days' partition tables are dropped."""
    import psycopg

    from nightshift.db.staging import staging_table
    from nightshift.db.store import Store

    project = write_project(tmp_path, pg_url, data_root, extra_model="retention_days = 2")
    today = date(2026, 11, 20)
    days = [today - timedelta(days=n) for n in (4, 3, 2, 1)]  # 16, 17, 18, 19
    store = Store(pg_url)
    try:
        runs = {d: _commit_partition(store, "churn", 1, d, ["a", "b"]) for d in days}

        def attached() -> set[str]:
            with psycopg.connect(pg_url) as conn:
                rows = conn.execute(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'predictions'::regclass"
                ).fetchall()
            return {r[0] for r in rows}

        assert attached() == {staging_table(r) for r in runs.values()}
        out = run_entrypoint(
            image_envs["airflow"],
            ["nightshift", "gc", "--today", today.isoformat(), "--config", str(project)],
            {"NIGHTSHIFT_STORE_URL": pg_url, "NIGHTSHIFT_STATE_DIR": str(tmp_path / "state")},
        )
        assert "expired 2 partition(s) older than 2 days" in out
        expired, kept = days[:2], days[2:]
        assert attached() == {staging_table(runs[d]) for d in kept}
        with psycopg.connect(pg_url) as conn:
            for d in expired:
                assert conn.execute("SELECT to_regclass(%s)", (staging_table(runs[d]),)).fetchone() == (None,)
        for d in expired:
            assert store.lookup("churn", 1, d, ["a", "b"]) == []
            assert store.partition("churn", 1, d) is None
        for d in kept:
            assert sorted(p.entity_id for p in store.lookup("churn", 1, d, ["a", "b"])) == ["a", "b"]
        with store.connect() as conn:
            total = conn.execute(sa.text("SELECT count(*) FROM predictions")).scalar_one()
            statuses = dict(conn.execute(sa.text("SELECT run_id, status FROM runs")).all())
        assert total == 4
        assert {statuses[runs[d]] for d in expired} == {"expired"}
    finally:
        store.dispose()


def test_the_documented_backup_and_restore_of_the_store(pg_stack: PgStack, initialized: dict[str, str]) -> None:
    """pg_dump -Fc, then into a new database: createdb, database grants, pg_restore --no-owner, the API grants."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    from nightshift.db.staging import staging_table
    from nightshift.db.store import Store

    owner = Store(pg_stack.store_owner_url)
    try:
        run = _commit_partition(owner, "backup", 1, date(2026, 11, 20), ["x", "y"])
    finally:
        owner.dispose()
    admin = make_url(pg_stack.admin_url)
    pg_env = base_env(PGHOST=pg_stack.host, PGPORT=str(pg_stack.port), PGUSER=admin.username or "postgres")
    if admin.password:
        pg_env["PGPASSWORD"] = admin.password
    dump = Path(initialized["NIGHTSHIFT_STATE_DIR"]) / "store.dump"
    restored = f"ns_restored_{uuid.uuid4().hex[:8]}"
    store_user, api_user = pg_stack.names["store_user"], pg_stack.names["api_user"]
    commands = [
        ["pg_dump", "-Fc", "-d", pg_stack.names["store_db"], "-f", str(dump)],
        ["createdb", "-O", store_user, restored],
        [
            "psql",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "postgres",
            "-c",
            f'REVOKE ALL ON DATABASE "{restored}" FROM PUBLIC',
            "-c",
            f'GRANT CONNECT ON DATABASE "{restored}" TO "{api_user}"',
        ],
        ["pg_restore", "--no-owner", f"--role={store_user}", "-d", restored, str(dump)],
    ]
    try:
        for argv in commands:
            res = subprocess.run(argv, env=pg_env, capture_output=True, text=True)
            assert res.returncode == 0, f"{argv[0]}: {res.stderr}"
        restored_owner_url = pg_stack.store_owner_url.rsplit("/", 1)[0] + f"/{restored}"
        res = subprocess.run(
            [str(SQL_RUNNER), "--url-env", "URL", str(API_GRANTS), f"api_role={api_user}"],
            env=base_env(Path(sys.executable).parent, URL=restored_owner_url),
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        store = Store(restored_owner_url)
        try:
            assert store.current_revision() == store.head_revision()
            assert sorted(p.entity_id for p in store.lookup("backup", 1, date(2026, 11, 20), ["x", "y"])) == ["x", "y"]
        finally:
            store.dispose()
        with psycopg.connect(pg_stack.api_url.rsplit("/", 1)[0] + f"/{restored}") as conn:
            attached = conn.execute(
                "SELECT count(*) FROM pg_inherits WHERE inhrelid = to_regclass(%s)", (staging_table(run),)
            ).fetchone()
            assert attached == (1,)
            assert conn.execute("SELECT count(*) FROM predictions WHERE run_id = %s", (run,)).fetchone() == (2,)
    finally:
        with psycopg.connect(pg_stack.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{restored}" WITH (FORCE)')


# -- Airflow 3: the four components of the compose file, on the stack's metadata database --------------------


@pytest.fixture(scope="module")
def airflow_stack(
    pg_stack: PgStack,
    initialized: dict[str, str],
    image_envs: dict[str, ImageEnv],
    compose: dict[str, Any],
    env_example: dict[str, str],
    deploy_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """api-server, scheduler, dag-processor and triggerer, started as their services, each healthy."""
    airflow = image_envs["airflow"]
    api_port, health_port = free_port(), free_port()
    moved = {
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(health_port),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }
    replacements = {"127.0.0.1:8080": f"127.0.0.1:{api_port}", "127.0.0.1:8974": f"127.0.0.1:{health_port}"}
    procs = Processes(tmp_path_factory.mktemp("airflow-logs"))
    services = ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"]
    envs: dict[str, dict[str, str]] = {}
    try:
        started = {}
        for name in services:
            env = {**compose_env(compose, env_example, name, pg_stack), **local_paths(deploy_dir), **moved}
            envs[name] = base_env(airflow.bin, **env)
            started[name] = procs.start(name, [str(ENTRYPOINT), *compose["services"][name]["command"]], envs[name])
        # The HTTP checks are cheap to poll; `airflow jobs check` starts a whole Airflow CLI, so it
        # runs once, after the api-server reports the dag-processor's and triggerer's heartbeats.
        for name in ("airflow-apiserver", "airflow-scheduler"):
            check = healthcheck_argv(compose, name, replacements)
            wait_healthy(started[name], lambda c=check, e=envs[name]: healthcheck_passes(c, e), 180, "healthy")

        def heartbeats() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/api/v2/monitor/health", timeout=5) as r:
                    health = json.loads(r.read())
            except OSError:
                return False
            return all(health[c]["status"] == "healthy" for c in ("scheduler", "dag_processor", "triggerer"))

        wait_healthy(started["airflow-dag-processor"], heartbeats, 120, "heartbeats of every component")
        # Both `airflow jobs check ...` healthchecks, through Airflow's own CLI parser and command,
        # in one interpreter (two cold Airflow CLIs beside four running components cost ~20 s).
        argvs = [healthcheck_argv(compose, name)[1:] for name in ("airflow-dag-processor", "airflow-triggerer")]
        assert all(a[:2] == ["jobs", "check"] for a in argvs), argvs
        code = (
            "import json, sys\n"
            "from airflow.cli.cli_parser import get_parser\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    args = get_parser().parse_args(argv)\n"
            "    args.func(args)\n"
        )
        res = subprocess.run(
            [str(airflow.bin / "python"), "-c", code, json.dumps(argvs)],
            env=envs["airflow-dag-processor"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, f"airflow jobs check failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
        assert res.stdout.count("Found one alive job.") == 2, res.stdout
        yield {"port": api_port, "env": envs["airflow-apiserver"], "procs": started}
    finally:
        procs.stop_all(timeout=3)


def test_the_airflow_components_run_healthy_from_the_compose_environment(
    airflow_stack: dict[str, Any], env_example: dict[str, str]
) -> None:
    port = airflow_stack["port"]
    env = airflow_stack["env"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=10) as resp:
        health = json.loads(resp.read())
    assert health["metadatabase"]["status"] == "healthy"
    for component in ("scheduler", "triggerer", "dag_processor"):
        assert health[component]["status"] == "healthy", health
    # The admin logs in with the password from the environment (written by the entrypoint).
    body = json.dumps({"username": env["AIRFLOW_ADMIN_USER"], "password": env["AIRFLOW_ADMIN_PASSWORD"]}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/auth/token", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        token = json.loads(resp.read())["access_token"]
    # The dag-processor parsed the project's DAGs (the plugin on its path, the project file mounted).
    dag_ids: list[str] = []
    for _ in range(60):
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v2/dags?limit=100", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            dag_ids = [d["dag_id"] for d in json.loads(resp.read())["dags"]]
        if "score_churn" in dag_ids:
            break
        time.sleep(2)
    assert "score_churn" in dag_ids
    for name, proc in airflow_stack["procs"].items():
        assert proc.alive(), f"{name} exited:\n{proc.tail()}"
