"""Deployment fixtures: the compose file and its environment, the images' environments built from the lock, processes.

No Docker engine runs here, so what the images would run is run on this machine instead:
each image's virtual environment is installed with the very `uv sync` commands of
docker/Dockerfile (read from it), and the compose services' commands go through the real
entrypoint script with the environment compose would give them (docker/.env.example
interpolated), with host names and ports moved to free loopback ports.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
ENTRYPOINT = DOCKER / "bin" / "nightshift-entrypoint"
HEALTHCHECK = DOCKER / "bin" / "nightshift-healthcheck"
SQL_RUNNER = DOCKER / "bin" / "nightshift-sql"
API_GRANTS = DOCKER / "postgres" / "api-readonly.sql"
PG_INIT_SCRIPT = DOCKER / "postgres" / "initdb" / "10-nightshift.sh"

#: The runtime targets of docker/Dockerfile and the build stage whose environment each copies.
TARGETS = {"api": "build-api", "dask-worker": "build-worker", "airflow": "build-airflow"}


# -- the Dockerfile --------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARGs, stages) of a Dockerfile: instructions with continuation lines joined."""
    lines: list[str] = []
    buf = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append(buf + stripped)
        buf = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            assert m, line
            stages.append(Stage(name=m.group(2) or str(len(stages)), base=m.group(1)))
        elif not stages:
            if keyword == "ARG":
                name, _, value = args.partition("=")
                global_args[name.strip()] = value.strip()
        else:
            stages[-1].instructions.append((keyword, args.strip()))
    return global_args, stages


@pytest.fixture(scope="session")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    global_args, stages = parse_dockerfile(DOCKERFILE.read_text())
    return global_args, {s.name: s for s in stages}


def uv_sync_commands(stage: Stage) -> list[list[str]]:
    """The `uv sync ...` commands a build stage runs, in order, as argument lists."""
    out = []
    for run in stage.all("RUN"):
        text = re.sub(r"--mount=\S+", "", run)
        for part in text.split("&&"):
            words = shlex.split(part)
            if words[:2] == ["uv", "sync"]:
                out.append(words)
    return out


# -- compose and its environment --------------------------------------------------------------------


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose .env file (no quotes, no interpolation: what ours uses)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {line!r}"
        env[key.strip()] = value.strip()
    return env


@pytest.fixture(scope="session")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


_INTERP = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        present = name in env
        val = env.get(name, "")
        if op in (":-", ":?") and not val:
            present = False
        if not present:
            if op in (":-", "-"):
                return arg
            if op in (":?", "?"):
                raise KeyError(f"{name}: {arg}")
            return ""
        return val

    return _INTERP.sub(sub, value)


def variables_used(value: str) -> list[tuple[str, str | None]]:
    """(name, operator) of each interpolation in a string."""
    return [(m.group(1) or m.group(4), m.group(2)) for m in _INTERP.finditer(value) if m.group(0) != "$$"]


def walk_strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def service_environment(compose: dict[str, Any], service: str, env: Mapping[str, str]) -> dict[str, str]:
    """The environment compose gives a service's container, interpolated with `env`."""
    raw = compose["services"][service].get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: interpolate(str(v), env) for k, v in raw.items()}


def real_secrets(env_example: Mapping[str, str]) -> dict[str, str]:
    """The example's variables with every change-me placeholder replaced by a random value."""
    return {k: (uuid.uuid4().hex if "change-me" in v else v) for k, v in env_example.items()}


# -- processes --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(bin_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """A clean environment: PATH with the image's venv first, then the entrypoint scripts, then the system."""
    path = [str(DOCKER / "bin"), "/usr/local/bin", "/usr/bin", "/bin"]
    if bin_dir is not None:
        path.insert(0, str(bin_dir))
    env = {"PATH": os.pathsep.join(path), "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    for key in ("TMPDIR", "UV_CACHE_DIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra)
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            if timeout <= 0:
                raise subprocess.TimeoutExpired(self.popen.args, timeout)
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


class Processes:
    """Processes a test starts, each in its own process group (session), all stopped at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path | None = None) -> Proc:
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv,
                env=dict(env),
                cwd=str(cwd or REPO),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every process group at once, wait up to `timeout` for all, then SIGKILL the rest."""
        running = [p for p in self.procs if p.alive()]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
        for proc in running:
            if proc.alive():
                proc.stop(timeout=0)
            # Children that outlived their group leader (a nanny's worker, a uvicorn worker).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)


def wait_healthy(proc: Proc, check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until it is true; fail with the process's log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if not proc.alive():
            pytest.fail(f"{proc.name} exited ({proc.popen.returncode}) before {what}:\n{proc.tail()}")
        if time.monotonic() >= deadline:
            pytest.fail(f"{proc.name}: no {what} after {timeout:.0f}s:\n{proc.tail()}")
        time.sleep(0.5)


def healthcheck_passes(argv: list[str], env: Mapping[str, str], timeout: float = 30.0) -> bool:
    """Run a compose healthcheck's CMD (as the container would) and report whether it passed."""
    try:
        res = subprocess.run(argv, env=dict(env), capture_output=True, timeout=timeout, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return False
    return res.returncode == 0


def healthcheck_argv(compose: dict[str, Any], service: str, replacements: Mapping[str, str] | None = None) -> list[str]:
    """A service's healthcheck CMD as an argument list, with container addresses replaced for this machine."""
    test = compose["services"][service]["healthcheck"]["test"]
    assert isinstance(test, list), f"{service}: healthcheck must use the exec form [CMD, ...]"
    assert test[0] == "CMD", f"{service}: healthcheck must use the exec form [CMD, ...]"
    argv = [str(a) for a in test[1:]]
    for old, new in (replacements or {}).items():
        argv = [a.replace(old, new) for a in argv]
    return argv


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


# -- the images' environments -------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageEnv:
    target: str
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def has(self, module: str) -> bool:
        res = subprocess.run(
            [
                str(self.bin / "python"),
                "-c",
                f"import importlib.util,sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)",
            ],
            capture_output=True,
        )
        return res.returncode == 0


def _uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(found).exists():
        pytest.fail("uv is not installed: the image environments are built with it (make install)")
    return found


@pytest.fixture(scope="session")
def image_envs(tmp_path_factory: pytest.TempPathFactory, dockerfile: Any) -> dict[str, ImageEnv]:
    """Each runtime target's virtual environment, installed by the `uv sync` commands of its build stage.

    Hard links from uv's cache (not the image's copy mode) and no bytecode compilation: same
    packages, seconds instead of minutes.
    """
    _, stages = dockerfile
    root = tmp_path_factory.mktemp("images")
    envs: dict[str, ImageEnv] = {}
    uv = _uv()
    for target, build_stage in TARGETS.items():
        venv = root / target
        commands = uv_sync_commands(stages[build_stage])
        assert commands, f"{build_stage}: no `uv sync` command"
        env = {
            **os.environ,
            "UV_PROJECT_ENVIRONMENT": str(venv),
            "UV_LINK_MODE": "hardlink",
            "UV_COMPILE_BYTECODE": "0",
            "UV_PYTHON_DOWNLOADS": "never",
        }
        env.pop("VIRTUAL_ENV", None)
        for words in commands:
            res = subprocess.run([uv, *words[1:]], cwd=REPO, env=env, capture_output=True, text=True)
            assert res.returncode == 0, f"{target}: {' '.join(words)} failed:\n{res.stderr[-3000:]}"
        envs[target] = ImageEnv(target, venv)
    return envs


# -- PostgreSQL: a throwaway set of the compose stack's roles and databases ---------------------------


@dataclass
class PgStack:
    """Roles and databases as docker/postgres/initdb/10-nightshift.sh creates them, with unique names."""

    admin_url: str
    host: str
    port: int
    names: dict[str, str]
    passwords: dict[str, str]

    def url(self, role: str, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{self.names[role]}:{self.passwords[role]}@{self.host}:{self.port}/{self.names[database]}"

    @property
    def store_owner_url(self) -> str:
        return self.url("store_user", "store_db")

    @property
    def api_url(self) -> str:
        return self.url("api_user", "store_db")

    def initdb_env(self) -> dict[str, str]:
        return {
            "AIRFLOW_DB_NAME": self.names["airflow_db"],
            "AIRFLOW_DB_USER": self.names["airflow_user"],
            "AIRFLOW_DB_PASSWORD": self.passwords["airflow_user"],
            "NIGHTSHIFT_DB_NAME": self.names["store_db"],
            "NIGHTSHIFT_DB_USER": self.names["store_user"],
            "NIGHTSHIFT_DB_PASSWORD": self.passwords["store_user"],
            "NIGHTSHIFT_API_DB_USER": self.names["api_user"],
            "NIGHTSHIFT_API_DB_PASSWORD": self.passwords["api_user"],
        }


@pytest.fixture(scope="module")
def pg_stack(pg_admin_url: str) -> Iterator[PgStack]:
    """Run the PostgreSQL init script of the compose stack against the test server, with unique names."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(pg_admin_url)
    suffix = uuid.uuid4().hex[:8]
    names = {
        "airflow_db": f"ns_af_{suffix}",
        "airflow_user": f"ns_af_{suffix}",
        "store_db": f"ns_store_{suffix}",
        "store_user": f"ns_owner_{suffix}",
        "api_user": f"ns_api_{suffix}",
    }
    passwords = {k: uuid.uuid4().hex for k in ("airflow_user", "store_user", "api_user")}
    stack = PgStack(pg_admin_url, admin.host or "127.0.0.1", admin.port or 5432, names, passwords)
    env = base_env(
        POSTGRES_USER=admin.username or "postgres",
        POSTGRES_DB=admin.database or "postgres",
        PGHOST=stack.host,
        PGPORT=str(stack.port),
        **({"PGPASSWORD": admin.password} if admin.password else {}),
        **stack.initdb_env(),
    )
    try:
        res = subprocess.run(["bash", str(PG_INIT_SCRIPT)], env=env, capture_output=True, text=True)
        assert res.returncode == 0, f"{PG_INIT_SCRIPT.name} failed:\n{res.stdout}\n{res.stderr}"
        yield stack
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            for db in (names["airflow_db"], names["store_db"]):
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            for role in (names["airflow_user"], names["store_user"], names["api_user"]):
                conn.execute(f'DROP ROLE IF EXISTS "{role}"')
