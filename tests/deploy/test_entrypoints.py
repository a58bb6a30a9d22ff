"""The images' entrypoint and helper scripts: what each compose service would run, and the scripts themselves, for real.

Every service's command goes through docker/bin/nightshift-entrypoint in dry-run mode with the
environment compose would give it; each printed program must exist in that service's image
environment. Then the API is started through the same entrypoint and must pass its compose
healthcheck. (Dask: test_distributed.py; `init` and Airflow against PostgreSQL: test_postgres.py.)
"""

from __future__ import annotations

import http.server
import json
import shlex
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.deploy.conftest import (
    ENTRYPOINT,
    HEALTHCHECK,
    SQL_RUNNER,
    ImageEnv,
    Processes,
    base_env,
    free_port,
    healthcheck_argv,
    healthcheck_passes,
    real_secrets,
    service_environment,
    wait_healthy,
)

#: The image (runtime target) each service runs.
IMAGE = {
    "init": "airflow",
    "cli": "airflow",
    "airflow-apiserver": "airflow",
    "airflow-scheduler": "airflow",
    "airflow-dag-processor": "airflow",
    "airflow-triggerer": "airflow",
    "dask-scheduler": "dask-worker",
    "dask-worker": "dask-worker",
    "api": "api",
}


def _dry_run(argv: list[str], env: dict[str, str]) -> list[list[str]]:
    res = subprocess.run(
        [str(ENTRYPOINT), *argv], env={**env, "NIGHTSHIFT_ENTRYPOINT_DRY_RUN": "1"}, capture_output=True, text=True
    )
    assert res.returncode == 0, f"{argv}: exit {res.returncode}\n{res.stderr}"
    return [shlex.split(line) for line in res.stdout.splitlines() if line and not line.startswith("#")]


@pytest.mark.slow
@pytest.mark.parametrize("service", sorted(IMAGE))
def test_each_services_command_resolves_to_a_program_of_its_image(
    service: str, compose: dict[str, Any], env_example: dict[str, str], image_envs: dict[str, ImageEnv]
) -> None:
    image = image_envs[IMAGE[service]]
    secrets = real_secrets(env_example)
    svc_env = service_environment(compose, service, secrets)
    command = compose["services"][service]["command"]
    commands = _dry_run(command, base_env(image.bin, **svc_env))
    assert commands, f"{service}: nothing to run"
    for argv in commands:
        program = argv[0]
        assert (image.bin / program).exists() or (ENTRYPOINT.parent / program).exists(), (
            f"{service}: {program} is not in the {IMAGE[service]} image"
        )
        # Secrets stay in the environment: never in a command line (ps, logs).
        for name, value in secrets.items():
            if "change-me" in env_example.get(name, ""):
                assert value not in " ".join(argv), f"{service}: {name} appears in the command line"
    if service == "init":
        assert [c[:3] for c in commands] == [
            ["nightshift", "db", "upgrade"],
            ["nightshift-sql", "--url-env", "NIGHTSHIFT_STORE_URL"],
            ["airflow", "db", "migrate"],
        ]
        assert commands[1][-1] == f"api_role={secrets['NIGHTSHIFT_API_DB_USER']}"
    if service == "dask-worker":
        argv = commands[0]
        assert argv[:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
        assert argv[argv.index("--nthreads") + 1] == secrets["DASK_WORKER_NTHREADS"]
        assert argv[argv.index("--memory-limit") + 1] == secrets["DASK_WORKER_MEMORY_LIMIT"]
        assert argv[argv.index("--dashboard-address") + 1] == ":8788"
    if service == "dask-scheduler":
        argv = commands[0]
        assert argv[argv.index("--port") + 1] == "8786"
        assert argv[argv.index("--dashboard-address") + 1] == ":8787"
    if service == "api":
        assert commands == [["nightshift", "api"]]


def test_placeholder_secrets_are_refused(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    env = base_env(**service_environment(compose, "airflow-scheduler", env_example))
    res = subprocess.run(
        [str(ENTRYPOINT), "airflow", "scheduler"],
        env={**env, "NIGHTSHIFT_ENTRYPOINT_DRY_RUN": "1"},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 78
    assert "AIRFLOW__CORE__FERNET_KEY" in res.stderr
    assert "change-me" in res.stderr
    assert res.stdout == ""


def test_the_airflow_password_file_is_written_from_the_environment(tmp_path: Path) -> None:
    passwords = tmp_path / "home" / "passwords.json"
    env = base_env(
        AIRFLOW_ADMIN_USER="ops",
        AIRFLOW_ADMIN_PASSWORD="s3cr3t-value",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
    )
    # A stand-in `airflow` on PATH: the entrypoint writes the file, then execs it.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "airflow").write_text('#!/usr/bin/env bash\necho "airflow $*"\n')
    (fake / "airflow").chmod(0o755)
    env["PATH"] = f"{fake}:{env['PATH']}"
    res = subprocess.run([str(ENTRYPOINT), "airflow", "api-server"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "airflow api-server"
    assert json.loads(passwords.read_text()) == {"ops": "s3cr3t-value"}
    assert passwords.stat().st_mode & 0o777 == 0o600


# -- nightshift-healthcheck -----------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, bytes]]] = {}

    def do_GET(self) -> None:
        status, body = self.routes.get(self.path, (404, b"{}"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    _Handler.routes = {
        "/ok": (200, b'{"metadatabase": {"status": "healthy"}}'),
        "/sick": (200, b'{"metadatabase": {"status": "unhealthy"}}'),
        "/down": (503, b"{}"),
        "/text": (200, b"ok"),
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_the_healthcheck_script(http_server: str) -> None:
    def check(*args: str) -> int:
        return subprocess.run([str(HEALTHCHECK), *args], env=base_env(), capture_output=True).returncode

    assert check(f"{http_server}/ok") == 0
    assert check(f"{http_server}/text") == 0
    assert check(f"{http_server}/ok", "--expect", "metadatabase.status=healthy") == 0
    assert check(f"{http_server}/sick", "--expect", "metadatabase.status=healthy") == 1
    assert check(f"{http_server}/text", "--expect", "a=b") == 1
    assert check(f"{http_server}/down") == 1
    assert check(f"{http_server}/missing") == 1
    assert check(f"http://127.0.0.1:{free_port()}/health", "--timeout", "2") == 1


def test_the_sql_runner_substitutes_like_psql() -> None:
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("nightshift_sql", str(SQL_RUNNER))
    spec = importlib.util.spec_from_loader("nightshift_sql", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    statements = module.render(
        '-- a comment\nGRANT SELECT ON TABLE a, b\n  TO :"role";\nALTER ROLE :"role" SET x = :\'value\';\n',
        {"role": 'we"ird', "value": "it's"},
    )
    assert statements == [
        'GRANT SELECT ON TABLE a, b\n  TO "we""ird";',
        """ALTER ROLE "we""ird" SET x = 'it''s';""",
    ]
    with pytest.raises(KeyError):
        module.render('GRANT x TO :"nobody";', {})


# -- the API, started by the entrypoint as the api service would ---------------------------------------------


@pytest.mark.slow
def test_the_api_starts_through_the_entrypoint_and_passes_its_healthcheck(
    compose: dict[str, Any],
    env_example: dict[str, str],
    image_envs: dict[str, ImageEnv],
    processes: Processes,
    tmp_path: Path,
    sqlite_url: str,
) -> None:
    api = image_envs["api"]
    project = tmp_path / "nightshift.toml"
    project.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    port = free_port()
    svc_env = service_environment(compose, "api", real_secrets(env_example))
    # The compose environment, with the store and the address moved to this machine.
    svc_env.update(
        NIGHTSHIFT_CONFIG=str(project),
        NIGHTSHIFT_STATE_DIR=str(tmp_path / "state"),
        NIGHTSHIFT_STORE_URL=sqlite_url,
        NIGHTSHIFT_API__STORE_URL=sqlite_url,
        NIGHTSHIFT_API__HOST="127.0.0.1",
        NIGHTSHIFT_API__PORT=str(port),
        NIGHTSHIFT_API__WORKERS="1",
    )
    env = base_env(api.bin, **svc_env)
    proc = processes.start("api", [str(ENTRYPOINT), *compose["services"]["api"]["command"]], env)
    check = healthcheck_argv(compose, "api", {"127.0.0.1:8000": f"127.0.0.1:{port}"})
    wait_healthy(proc, lambda: healthcheck_passes(check, env), 60, "passing healthcheck")
    # Docs are off, as configured for production.
    assert healthcheck_passes(["nightshift-healthcheck", f"http://127.0.0.1:{port}/docs"], env) is False
