"""A local Airflow for nightshift: the environment (SQLite metadata, this repo's dags/), `make airflow`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nightshift_airflow.runtime import REPO_ROOT

DAGS_FOLDER = REPO_ROOT / "dags"
DEFAULT_HOME = REPO_ROOT / ".nightshift" / "airflow"
ADMIN_USER = "admin"
#: Local use only: the simple auth manager keeps passwords in a plain JSON file.
DEFAULT_PASSWORD = "admin"  # noqa: S105
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
#: SQLite metadata is shared by five processes (and the CLI): wait for a lock instead of failing after 5s.
SQLITE_CONNECT_ARGS = {"timeout": 60}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _secret(home: Path, name: str) -> str:
    """A random secret kept in AIRFLOW_HOME, so every component (and restart) shares it."""
    path = home / "nightshift_secrets.json"
    data: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    if name not in data:
        data[name] = secrets.token_urlsafe(64)
        path.write_text(json.dumps(data, indent=2))
        path.chmod(0o600)
    return data[name]


def airflow_env(
    home: Path = DEFAULT_HOME,
    *,
    port: int = 8080,
    project: Path | None = None,
    worker_log_port: int = 8793,
    trigger_log_port: int = 8794,
    parallelism: int = 8,
    metadata_url: str | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of every Airflow component: LocalExecutor, simple auth manager, this repo's dags/.
    The plugin loads from its `airflow.plugins` entry point.

    The metadata DB is SQLite in `home` unless `metadata_url` names a PostgreSQL database
    (`postgresql+psycopg://...`), which the CLI needs when it writes while the scheduler runs.
    """
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "simple_auth_manager_passwords.json"
    api = f"http://127.0.0.1:{port}"
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__API__SECRET_KEY": _secret(home, "api_secret_key"),
            "AIRFLOW__API_AUTH__JWT_SECRET": _secret(home, "jwt_secret"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log_port),
            "NIGHTSHIFT_CONFIG": str((project or REPO_ROOT / "nightshift.toml").resolve()),
        }
    )
    if metadata_url:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = metadata_url
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = metadata_url  # psycopg 3 is sync and async
        env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", None)
    else:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}"
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] = "nightshift_airflow.local.SQLITE_CONNECT_ARGS"
    return env


def set_admin_password(env: Mapping[str, str], password: str) -> None:
    """Write the simple auth manager's password file: `admin` logs in with `password`."""
    passwords = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    passwords.write_text(json.dumps({ADMIN_USER: password}))
    passwords.chmod(0o600)


def _airflow_executable() -> str:
    found = shutil.which("airflow") or str(Path(sys.executable).with_name("airflow"))
    return found


def main(argv: list[str] | None = None) -> None:
    """`python -m nightshift_airflow.local [standalone|env]`: start a local Airflow, or print its environment."""
    parser = argparse.ArgumentParser(prog="nightshift_airflow.local", description=main.__doc__)
    parser.add_argument("command", choices=["standalone", "env"], nargs="?", default="standalone")
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("NIGHTSHIFT_AIRFLOW_HOME", DEFAULT_HOME)))
    parser.add_argument("--port", type=int, default=int(os.environ.get("AIRFLOW_PORT", "8080")))
    parser.add_argument("--password", default=os.environ.get("NIGHTSHIFT_AIRFLOW_PASSWORD", DEFAULT_PASSWORD))
    parser.add_argument(
        "--metadata-url",
        default=os.environ.get("NIGHTSHIFT_AIRFLOW_DB_URL"),
        help="PostgreSQL metadata DB (postgresql+psycopg://...); default: SQLite in --home",
    )
    parser.add_argument(
        "--serve-logs",
        action="store_true",
        default=os.environ.get("NIGHTSHIFT_AIRFLOW_SERVE_LOGS", "") not in ("", "0", "false"),
        help="also start Airflow's log servers (ports: --worker-log-port, --trigger-log-port; Airflow binds them "
        "on every interface); default: none, the UI reads the local log files",
    )
    parser.add_argument("--worker-log-port", type=int, default=int(os.environ.get("AIRFLOW_WORKER_LOG_PORT", "8793")))
    parser.add_argument("--trigger-log-port", type=int, default=int(os.environ.get("AIRFLOW_TRIGGER_LOG_PORT", "8794")))
    args = parser.parse_args(argv)
    env = airflow_env(
        args.home,
        port=args.port,
        metadata_url=args.metadata_url,
        worker_log_port=args.worker_log_port,
        trigger_log_port=args.trigger_log_port,
    )
    if args.command == "env":
        for key in sorted(k for k in env if k.startswith(("AIRFLOW", "NIGHTSHIFT"))):
            if "SECRET" not in key:
                print(f"export {key}={shlex.quote(env[key])}")
        return
    set_admin_password(env, args.password)
    url = env["AIRFLOW__API__BASE_URL"]
    logs = (
        f"Airflow's log servers on ports {env['AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT']} and "
        f"{env['AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT']} (Airflow binds them on every interface)"
        if args.serve_logs
        else "no log servers: the UI reads task logs from the files under AIRFLOW_HOME/logs"
    )
    print(
        f"\nnightshift: starting Airflow with AIRFLOW_HOME={env['AIRFLOW_HOME']}\n"
        f"  UI:     {url}   (ready when the components are up, about a minute)\n"
        f"  login:  {ADMIN_USER} / {args.password}   (simple auth manager; password file "
        f"{env['AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE']})\n"
        f"  DAGs:   {DAGS_FOLDER} (score_<model> per model of {env['NIGHTSHIFT_CONFIG']}; it starts paused)\n"
        f"  logs:   {logs}\n"
        "  stop:   Ctrl-C\n",
        flush=True,
    )
    sys.exit(run_components(component_commands(serve_logs=args.serve_logs), env))


def component_commands(*, serve_logs: bool = False) -> dict[str, list[str]]:
    """The Airflow components `make airflow` runs, by name: what `airflow standalone` runs, except that
    the scheduler and triggerer start no log server unless `serve_logs` (Airflow 3.3 binds it on every
    interface, with no setting to choose one; on one machine the UI reads the log files directly)."""
    airflow = _airflow_executable()
    skip = [] if serve_logs else ["--skip-serve-logs"]
    return {
        "api-server": [airflow, "api-server"],
        "scheduler": [airflow, "scheduler", *skip],
        "dag-processor": [airflow, "dag-processor"],
        "triggerer": [airflow, "triggerer", *skip],
    }


def run_components(commands: dict[str, list[str]], env: dict[str, str], grace_s: float = 20) -> int:
    """Migrate the metadata DB, then run every component with its output prefixed by its name, until one
    exits or Ctrl-C (SIGTERM) arrives; then stop them all, with everything they started."""
    import threading

    migrated = subprocess.run([_airflow_executable(), "db", "migrate"], env=env, check=False)  # noqa: S603
    if migrated.returncode != 0:
        return migrated.returncode

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def relay(name: str, stream: Any) -> None:
        for line in iter(stream.readline, b""):
            sys.stdout.write(f"{name:>13} | {line.decode(errors='replace')}")
            sys.stdout.flush()

    try:
        for name, cmd in commands.items():
            procs[name] = subprocess.Popen(  # noqa: S603 - our own commands, no shell
                cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            threading.Thread(target=relay, args=(name, procs[name].stdout), daemon=True).start()
        while True:
            for name, proc in procs.items():
                code = proc.poll()
                if code is not None:
                    print(f"\nnightshift: the Airflow {name} exited with {code}; stopping the others", flush=True)
                    return code or 1
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nnightshift: stopping Airflow ...", flush=True)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        return 130
    finally:
        for proc in procs.values():
            stop_process_tree(proc, grace_s)


def stop_process_tree(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the process, its group and every descendant (task processes start their own groups); then SIGKILL."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    for p in family:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _gone, alive = psutil.wait_procs(family, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


if __name__ == "__main__":
    main()
