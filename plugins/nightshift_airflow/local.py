"""A local Airflow for nightshift: the environment (SQLite metadata, this repo's dags/ and plugins/), `make airflow`."""

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
from collections.abc import Mapping
from pathlib import Path

from nightshift_airflow.runtime import REPO_ROOT

DAGS_FOLDER = REPO_ROOT / "dags"
PLUGINS_FOLDER = REPO_ROOT / "plugins"
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
    """The environment of every Airflow component: LocalExecutor, simple auth manager, this repo's dags/ and plugins/.

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
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),
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
    args = parser.parse_args(argv)
    env = airflow_env(args.home, port=args.port, metadata_url=args.metadata_url)
    if args.command == "env":
        for key in sorted(k for k in env if k.startswith(("AIRFLOW", "NIGHTSHIFT"))):
            if "SECRET" not in key:
                print(f"export {key}={shlex.quote(env[key])}")
        return
    set_admin_password(env, args.password)
    url = env["AIRFLOW__API__BASE_URL"]
    print(
        f"\nnightshift: starting Airflow (standalone) with AIRFLOW_HOME={env['AIRFLOW_HOME']}\n"
        f"  UI:     {url}   (ready when the log says the components are up, about a minute)\n"
        f"  login:  {ADMIN_USER} / {args.password}   (simple auth manager; password file "
        f"{env['AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE']})\n"
        f"  DAGs:   {DAGS_FOLDER} (score_<model> per model of {env['NIGHTSHIFT_CONFIG']}); they start paused\n"
        "  stop:   Ctrl-C\n",
        flush=True,
    )
    sys.exit(run_until_interrupted([_airflow_executable(), "standalone"], env))


def run_until_interrupted(cmd: list[str], env: dict[str, str], grace_s: float = 20) -> int:
    """Run `cmd` in its own process group; on Ctrl-C (or SIGTERM) stop it and everything it started, for sure."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Explicit handlers: a process started in the background inherits SIGINT ignored.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)  # noqa: S603 - our own command, no shell
    try:
        return proc.wait()
    except KeyboardInterrupt:
        print("\nnightshift: stopping Airflow ...", flush=True)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        stop_process_tree(proc, grace_s)
        return 130


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
