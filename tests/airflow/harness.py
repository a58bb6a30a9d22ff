"""Real Airflow for the tests: in-process configuration, `airflow standalone` on free loopback ports, its REST API."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
ARTIFACTS = REPO / "test-artifacts"

from nightshift_airflow.local import (  # noqa: E402
    ADMIN_USER,
    airflow_env,
    free_port,
    set_admin_password,
    stop_process_tree,
)

T = TypeVar("T")
PASSWORD = "nightshift-test"  # a throwaway local instance


def wait_until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 1.0) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:  # a check may fail while a server is still starting
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


_IN_PROCESS_HOME: Path | None = None


def configure_in_process() -> Path:
    """Point this process's Airflow at a private AIRFLOW_HOME (SQLite) and the repo's dags/ and plugins/.

    Must run before anything imports airflow; conftest.py calls it at import time.
    """
    global _IN_PROCESS_HOME
    if _IN_PROCESS_HOME is not None:
        return _IN_PROCESS_HOME
    if "airflow" in sys.modules:
        raise RuntimeError(
            "airflow was imported before the nightshift Airflow tests could configure it; "
            "run tests/airflow and tests/dags in their own pytest process"
        )
    home = Path(tempfile.mkdtemp(prefix="nightshift-airflow-test-"))
    env = airflow_env(home, port=free_port(), project=None, base={})
    for key in ("AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER"):
        os.environ[key] = env[key]
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = env["AIRFLOW__API_AUTH__JWT_SECRET"]
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    _IN_PROCESS_HOME = home
    import atexit

    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


def load_dag(dag_id: str) -> Any:
    """Parse dags/ the way the dag processor does and return one DAG; fail on any import error."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS), bundle_name="dags-folder")
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


class AirflowServer:
    """`airflow standalone` (api-server, scheduler with LocalExecutor, dag-processor, triggerer) in its own group."""

    def __init__(
        self, home: Path, project: Path, *, metadata_url: str | None = None, extra_env: dict[str, str] | None = None
    ) -> None:
        self.home = home
        self.port = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW", "NIGHTSHIFT_"))}
        # `airflow standalone` starts its components as `airflow ...` from PATH: this interpreter's first.
        base["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")])
        self.env = airflow_env(
            home,
            port=self.port,
            project=project,
            worker_log_port=free_port(),
            trigger_log_port=free_port(),
            parallelism=6,
            metadata_url=metadata_url,
            base=base,
        )
        self.env.update({"PYTHONUNBUFFERED": "1", "NO_COLOR": "1", **(extra_env or {})})
        set_admin_password(self.env, PASSWORD)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "standalone.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._token: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def launch(self) -> None:
        """Start `airflow standalone` without waiting for it (see wait_ready)."""
        airflow = shutil.which("airflow") or str(Path(sys.executable).with_name("airflow"))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [airflow, "standalone"],
                env=self.env,
                cwd=str(self.home),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() reaches every component
            )

    def wait_ready(self, timeout: float = 240) -> None:
        try:
            wait_until(self._healthy, timeout, f"Airflow at {self.url} to be healthy (log: {self.log_path})", 2)
        except BaseException:
            self.stop()
            raise

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"airflow standalone exited with {self.proc.returncode}; see {self.log_path}")
        with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as r:
            health = json.load(r)
        parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        return all((health.get(p) or {}).get("status") == "healthy" for p in parts)

    def stop(self, grace: float = 10) -> None:
        """Terminate every process the server started (its group and any descendant), then kill survivors."""
        if self.proc is not None:
            stop_process_tree(self.proc, grace)
            self.proc = None

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- REST API -----------------------------------------------------------------------------

    def token(self) -> str:
        if self._token is None:
            body = self._request("POST", "/auth/token", {"username": ADMIN_USER, "password": PASSWORD}, auth=False)
            self._token = str(body["access_token"])
        return self._token

    def _request(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise AssertionError(f"{method} {path} -> HTTP {exc.code}: {detail}") from None
        return json.loads(raw) if raw else None

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return self._request(method, f"/api/v2{path}", body)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `airflow <args>` against this instance's metadata DB."""
        airflow = shutil.which("airflow") or str(Path(sys.executable).with_name("airflow"))
        return subprocess.run(
            [airflow, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def set_store_connection(self, connection: dict[str, Any] | None) -> None:
        """Define (or with None, delete) the `nightshift_store` Connection through the REST API."""
        with contextlib.suppress(AssertionError):
            self.api("DELETE", "/connections/nightshift_store")
        if connection is not None:
            self.api("POST", "/connections", {"connection_id": "nightshift_store", **connection})

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/dags/{dag_id}/dagRuns?limit=100")["dag_runs"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        return list(self.api("GET", path)["task_instances"])

    def wait_for_runs(self, dag_id: str, run_ids: set[str], timeout: float) -> dict[str, str]:
        """Wait until every run in `run_ids` has finished; return their states."""

        def finished() -> dict[str, str] | None:
            states = {r["dag_run_id"]: r["state"] for r in self.dag_runs(dag_id) if r["dag_run_id"] in run_ids}
            done = len(states) == len(run_ids) and all(s in ("success", "failed") for s in states.values())
            return states if done else None

        try:
            return wait_until(finished, timeout, f"runs {sorted(run_ids)} of {dag_id}", 2)
        except TimeoutError as exc:
            tasks = []
            for run_id in sorted(run_ids):
                with contextlib.suppress(Exception):
                    tasks += [
                        f"{run_id} {t['task_id']}: {t['state']} (try {t.get('try_number')})"
                        for t in self.task_instances(dag_id, run_id)
                    ]
            states = "\n".join(tasks)
            raise TimeoutError(
                f"{exc}\n--- task states ---\n{states}\n--- airflow log tail ---\n{self.log_tail()}"
            ) from None


@contextlib.contextmanager
def store_connection(server: AirflowServer, connection: dict[str, Any] | None) -> Iterator[None]:
    """The `nightshift_store` Connection (REST API fields) defined for the duration of a test."""
    server.set_store_connection(connection)
    try:
        yield
    finally:
        server.set_store_connection(None)
