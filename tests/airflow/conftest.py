"""Fixtures for real-Airflow tests: a small dataset, project files, a metadata DB, a running Airflow, a webhook."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.airflow.harness import AirflowServer, configure_in_process, wait_until
from tests.conftest import IN_CI, PG_ADMIN_URL, _pg_reachable, write_project
from tests.lineage.olspec import Recorder, serve

configure_in_process()  # before anything imports airflow

#: Seven days of features; the Airflow tests score days inside this range.
AF_START = date(2026, 11, 12)
AF_DAYS = 7
AF_ROWS = 1_000
#: A second model in the server's project, on a private copy of the data (see test_server_nights.py).
NIGHT_MODEL = "churn_night"
#: The OpenLineage namespace of the running Airflow's jobs.
AIRFLOW_OL_NAMESPACE = "nightshift-airflow-test"


_SESSION: dict[str, Any] = {}


def _af_data() -> Path:
    """Features (and labels) for AF_DAYS days of AF_ROWS rows in 2 files each, written once per session."""
    if "data" not in _SESSION:
        from nightshift.demo import generate

        root = Path(tempfile.mkdtemp(prefix="nightshift-af-data-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        generate(
            root / "features",
            root / "labels",
            start=AF_START,
            days=AF_DAYS,
            rows_per_day=AF_ROWS,
            files_per_day=2,
            seed=11,
        )
        _SESSION["data"] = root
    return Path(_SESSION["data"])


@pytest.fixture(scope="session")
def af_data() -> Path:
    return _af_data()


@pytest.fixture
def project(tmp_path: Path, af_data: Path) -> Callable[..., Path]:
    """Write a project file for a store URL (optionally with a webhook); migrate the store. Returns its path."""

    def _make(store_url: str, *, webhook: str | None = None, extra_model: str = "") -> Path:
        from nightshift.config import load_settings
        from nightshift.db import open_store

        path = write_project(tmp_path, store_url, af_data, extra_model=extra_model)
        if webhook:
            path.write_text(path.read_text() + f"\n[notify]\nwebhook_url = {json.dumps(webhook)}\ntimeout_s = 5\n")
        store = open_store(load_settings(path), check=False)
        store.upgrade()
        store.dispose()
        return path

    return _make


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """This process's Airflow metadata DB (SQLite in a private AIRFLOW_HOME), migrated once."""
    from airflow.utils.db import initdb

    initdb()


class Webhook:
    """A real HTTP server on 127.0.0.1 that records the JSON bodies POSTed to it."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = status
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                hook.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with Webhook() as hook:
        yield hook


# -- a running Airflow ------------------------------------------------------------------------


def _metadata_db() -> str:
    """A fresh PostgreSQL database for the running Airflow's metadata (dropped at the end of the session).

    PostgreSQL, not SQLite: the CLI (`airflow backfill create`) writes to the metadata DB while the
    scheduler does, which SQLite in WAL mode refuses now and then ("database is locked").
    """
    import psycopg

    name = f"ns_airflow_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    _SESSION["metadata_db"] = name
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


def _server() -> AirflowServer:
    """The session's Airflow, launched (not yet waited for) on first call."""
    if "server" not in _SESSION:
        from nightshift.config import load_settings
        from nightshift.db import open_store

        folder = Path(tempfile.mkdtemp(prefix="nightshift-af-server-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        (folder / "project").mkdir()
        store = f"sqlite:///{folder / 'project' / 'state' / 'store.db'}"
        # The triggerer looks for a partition every 2 s; a run waits up to 15 min for one.
        schedule = "[models.schedule]\nwait_timeout_s = 900\npoke_interval_s = 2\n"
        # NIGHT_MODEL has data of its own (a copy), which its tests may change (re-deliver a day drifted).
        night_data = folder / "night-data"
        shutil.copytree(_af_data(), night_data)
        project = write_project(
            folder / "project",
            store,
            _af_data(),
            extra_model=schedule,
            # NIGHT_MODEL's candidates wait for a human (tests/airflow/test_server_approval.py).
            more_models={NIGHT_MODEL: (night_data, schedule + "[models.rollout]\nrequire_approval = true\n")},
        )
        open_store(load_settings(project), check=False).upgrade()
        home = folder / "airflow"
        home.mkdir()
        # Airflow's OpenLineage provider sends every DAG run's and task's events to a recording endpoint
        # (tests/airflow/ol_tree.py checks them); emission in a thread, never a fork of the task runner.
        lineage = Recorder()
        lineage_server, _thread = serve(lineage)
        lineage.url = f"http://127.0.0.1:{lineage_server.server_address[1]}"
        _SESSION["lineage"], _SESSION["lineage_server"] = lineage, lineage_server
        server = AirflowServer(
            home,
            project,
            metadata_url=_metadata_db(),
            extra_env={
                "NIGHTSHIFT_DASK__N_WORKERS": "1",  # two cores here: one forked Dask worker per scoring task
                "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                    {"type": "http", "url": lineage.url, "endpoint": "api/v1/lineage"}
                ),
                "AIRFLOW__OPENLINEAGE__NAMESPACE": AIRFLOW_OL_NAMESPACE,
                "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",
                "AIRFLOW__OPENLINEAGE__EXECUTION_TIMEOUT": "60",  # a loaded 2-core machine: never abandon one
            },
        )
        server.launch()
        _SESSION["server"] = server
        _SESSION["server_project"] = project
    running: AirflowServer = _SESSION["server"]
    return running


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Boot Airflow in the background as soon as a selected test needs it (it takes a minute on 2 cores).

    Not in a pytest-xdist worker: every worker collects every test, and only the one that is handed the
    Airflow server files (one unit of work, see tests/conftest.py) should boot it, when it gets them."""
    if hasattr(config, "workerinput"):
        return
    needed = any("airflow_server" in getattr(item, "fixturenames", ()) for item in items)
    if needed and _pg_reachable() is None:
        _server()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the shared Airflow after the last test that uses it, not at the end of the session: an idle
    `airflow standalone` (scheduler, dag-processor, triggerer, api-server) keeps taking CPU from the rest of the
    suite on 2 cores. Its tests are contiguous (tests/conftest.py orders them; one xdist unit)."""
    if "airflow_server" not in getattr(item, "fixturenames", ()):
        return
    later = item.session.items[item.session.items.index(item) + 1 :] if item in item.session.items else []
    if any("airflow_server" in getattr(other, "fixturenames", ()) for other in later):
        return
    server = _SESSION.get("server")
    if server is not None:
        server.stop()  # its log stays (NIGHTSHIFT_KEEP_AIRFLOW_LOG); stopping again at the session's end is a no-op


def pytest_sessionfinish() -> None:
    server = _SESSION.pop("server", None)
    if server is not None:
        server.stop()
    lineage_server = _SESSION.pop("lineage_server", None)
    if lineage_server is not None:
        lineage_server.shutdown()
        lineage_server.server_close()
        keep = os.environ.get("NIGHTSHIFT_KEEP_AIRFLOW_LOG")
        if keep:
            shutil.copy(server.log_path, keep)
    name = _SESSION.pop("metadata_db", None)
    if name is not None:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def airflow_server(pg_admin_url: str) -> AirflowServer:
    """A real Airflow (`airflow standalone`: api-server, scheduler + LocalExecutor, dag-processor, triggerer)
    on free loopback ports, its metadata in PostgreSQL."""
    server = _server()
    server.wait_ready()
    wait_until(lambda: server.api("GET", "/dags/score_churn")["dag_id"], 120, "score_churn to be parsed", 2)
    # Backfill runs only start on an unpaused DAG (and unpausing schedules the latest night too).
    server.api("PATCH", "/dags/score_churn", {"is_paused": False})
    return server


@pytest.fixture(scope="session")
def airflow_lineage(airflow_server: AirflowServer) -> Recorder:
    """What the running Airflow's OpenLineage provider sent (DAG runs, tasks, and nightshift's own runs)."""
    recorder: Recorder = _SESSION["lineage"]
    return recorder


@pytest.fixture(scope="session")
def server_project(airflow_server: AirflowServer) -> Path:
    """The running Airflow's project file; its default store is a SQLite file beside it."""
    return Path(_SESSION["server_project"])


@pytest.fixture(scope="session")
def chromium() -> str:
    """The system Chromium for Playwright; required under CI=true."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        if IN_CI:
            pytest.fail("chromium is not installed: under CI=true the browser tests must run, not skip")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return path
