"""Shared fixtures: a small demo dataset, a trained model, real SQLite/PostgreSQL stores, a real Dask cluster."""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get("NIGHTSHIFT_TEST_PG_URL", "postgresql://root@127.0.0.1:5432/postgres")

DEMO_START = date(2026, 11, 16)
DEMO_DAYS = 3
DEMO_ROWS = 3_000
DEMO_FILES = 3
SCORE_DS = date(2026, 11, 18)


# -- PostgreSQL -------------------------------------------------------------------------------


def _pg_reachable() -> str | None:
    """None when the test server answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    why = _pg_reachable()
    if why is not None:
        msg = f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({why})"
        if IN_CI:
            pytest.fail(f"{msg}: under CI=true the PostgreSQL tests must run, not skip")
        pytest.skip(f"{msg}; set NIGHTSHIFT_TEST_PG_URL to run these tests")
    return PG_ADMIN_URL


def _with_db(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> Iterator[str]:
    """A migrated database that each test's database is copied from."""
    import psycopg

    from nightshift.db.store import Store

    name = f"ns_tmpl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    store = Store(_with_db(pg_admin_url, name))
    store.upgrade()
    store.dispose()
    yield name
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_admin_url: str, pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test, dropped afterwards."""
    import psycopg

    name = f"ns_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield _with_db(pg_admin_url, name)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    from nightshift.db.store import Store

    url = f"sqlite:///{tmp_path / 'state' / 'store.db'}"
    store = Store(url)
    store.upgrade()
    store.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


# -- data -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo dataset, written once: features and labels for DEMO_DAYS days."""
    from nightshift.demo import generate

    root = tmp_path_factory.mktemp("demo")
    generate(
        root / "features",
        root / "labels",
        start=DEMO_START,
        days=DEMO_DAYS,
        rows_per_day=DEMO_ROWS,
        files_per_day=DEMO_FILES,
        seed=7,
    )
    return root


@pytest.fixture
def data_root(demo_root: Path, tmp_path: Path) -> Path:
    """A private copy of the demo dataset that a test may break."""
    dst = tmp_path / "data"
    shutil.copytree(demo_root, dst)
    return dst


def model_block(name: str, data_root: Path, extra_model: str = "", label_column: str = "churned") -> str:
    """One `[[models]]` table on the demo contract, reading `data_root`/features and `data_root`/labels."""
    from nightshift.demo import demo_contract

    contract = demo_contract()
    cols = ",\n".join(
        "  {"
        + ", ".join(f"{k} = {json.dumps(v)}" for k, v in c.model_dump(mode="json", exclude_none=True).items())
        + "}"
        for c in contract.columns
    )
    return f"""
[[models]]
name = "{name}"
dataset = {json.dumps(str(data_root / "features"))}
labels = {json.dumps(str(data_root / "labels"))}
label_column = "{label_column}"
{extra_model}

[models.estimator]
kind = "logistic_regression"
params = {{ C = 1.0, max_iter = 300 }}

[models.training]
window_days = 2
max_rows = 20000

[models.contract]
entity_id = "{contract.entity_id}"
entity_id_type = "{contract.entity_id_type}"
columns = [
{cols}
]
"""


def write_project(
    folder: Path,
    store_url: str,
    data_root: Path,
    *,
    extra_model: str = "",
    dask: str = "",
    more_models: dict[str, tuple[Path, str] | tuple[Path, str, str]] | None = None,
) -> Path:
    """A project file for the demo contract: model churn on `data_root`, and `more_models` (name → (data root,
    extra TOML[, label column])) beside it, all on `store_url`."""
    text = f"""
state_dir = {json.dumps(str(folder / "state"))}
store_url = {json.dumps(store_url)}

[dask]
n_workers = 2
threads_per_worker = 1
{dask}
"""
    text += model_block("churn", data_root, extra_model)
    for name, spec in (more_models or {}).items():
        text += model_block(name, *spec)
    path = folder / "nightshift.toml"
    path.write_text(text)
    return path


@pytest.fixture
def make_settings(tmp_path: Path, data_root: Path) -> Callable[..., Any]:
    """Build Settings for a store URL (and optional extra TOML), writing the project file."""
    from nightshift.config import load_settings

    def _make(store_url: str, **kwargs: Any) -> Any:
        return load_settings(write_project(tmp_path, store_url, data_root, **kwargs))

    return _make


@pytest.fixture(scope="session")
def trained_model(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The demo model trained once per session on the first two demo days."""
    from nightshift.config import load_settings
    from nightshift.training import train
    from nightshift.training.dataset import build_training_set

    folder = tmp_path_factory.mktemp("train")
    settings = load_settings(write_project(folder, f"sqlite:///{folder / 'unused.db'}", demo_root))
    cfg = settings.model("churn")
    tset = build_training_set(settings, cfg, date(2026, 11, 17))
    return train(tset.table, tset.labels, cfg.contract, cfg.estimator, cfg.training, cfg.decision_threshold)


@pytest.fixture
def registered(trained_model: Any) -> Callable[[Any], Any]:
    """Register the session's trained model in a store as champion (optionally with other training
    metadata); returns its ModelVersion."""
    from nightshift.models import open_registry

    def _register(settings: Any, training_data: dict[str, Any] | None = None) -> Any:
        registry = open_registry(settings)
        mv = registry.register_trained(
            "churn",
            trained_model,
            settings.model("churn").contract,
            training_data=training_data or {"rows": trained_model.train_rows},
            decision_threshold=0.5,
        )
        registry.set_alias("churn", "champion", mv.version, reason="test")
        return mv

    return _register


# -- Dask -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """A real local Dask cluster with two worker processes, shared by the session.

    Its workers come from a forkserver, never forked from pytest itself: by now this process may run threads
    (Airflow's in-process API, HTTP servers), and a child forked while another thread holds a lock can block
    forever on it."""
    import dask
    from distributed import Client, LocalCluster

    with (
        dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}),
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0", memory_limit="2GiB"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


# -- no process outlives the suite -------------------------------------------------------------

#: Helpers multiprocessing starts once per process and ends by itself when its parent exits.
_SELF_ENDING = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "multiprocessing.semaphore_tracker")


def _survivors() -> list[Any]:
    import psutil

    me = psutil.Process()
    # pytest-xdist's workers (execnet children of the controller) check their own children; the controller
    # leaves them, and what they started, to them.
    workers = [c for c in me.children() if _is_xdist_worker(c)]
    theirs = {p.pid for w in workers for p in [w, *_descendants(w)]}
    alive = []
    for child in me.children(recursive=True):
        if child.pid in theirs:
            continue
        try:
            cmdline = " ".join(child.cmdline())
            if child.status() == psutil.STATUS_ZOMBIE or any(h in cmdline for h in _SELF_ENDING):
                continue
        except psutil.Error:
            continue
        alive.append(child)
    return alive


def _is_xdist_worker(proc: Any) -> bool:
    import psutil

    try:
        return "sys.stdin.readline()" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _descendants(proc: Any) -> list[Any]:
    import psutil

    try:
        return list(proc.children(recursive=True))
    except psutil.Error:
        return []


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a process a test started is still alive at the end (an orphan would keep CI waiting):
    name it, kill it and its children, and turn a green run red."""
    import psutil

    survivors = _survivors()
    if not survivors:
        return
    _gone, still = psutil.wait_procs(survivors, timeout=5)  # a process that is just ending gets a moment
    if not still:
        return
    lines = []
    for proc in still:
        try:
            lines.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:300]}")
            for p in [*proc.children(recursive=True), proc]:
                p.kill()
        except psutil.Error:
            continue
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = "processes started by the tests outlived the suite (killed now):\n  " + "\n  ".join(lines)
    if reporter is not None:
        reporter.write_line(message, red=True)
    else:  # pragma: no cover
        print(message)
    if exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -- longest first -----------------------------------------------------------------------------

#: Files whose tests take the longest (real Airflow schedulers and browsers, images' environments, the soak):
#: collected first, so that under pytest-xdist (`make test`: a file per worker at a time) they overlap the
#: many short files instead of leaving one worker running them alone at the end.
#: The files sharing one Airflow come one after the other (one unit under xdist too): the server stops after the
#: last of them (tests/airflow/conftest.py, pytest_runtest_teardown).
_LONGEST_FIRST = (
    "tests/airflow/test_server_nights.py",
    "tests/airflow/test_server_ui.py",
    "tests/airflow/test_server_backfill.py",
    "tests/airflow/test_server_approval.py",
    "tests/deploy/test_s3.py",
    "tests/cli/test_bring_cli.py",
    "tests/api/test_soak.py",
    "tests/deploy/test_postgres.py",
)


#: One store's variant of tests whose subject sits above the store goes to `make extra` (marker `extra`): the
#: default run keeps the other. The store layer itself runs on both stores (tests/db, integration/test_store.py,
#: test_scoring.py, reliability/), as do the API's readers (tests/api) and every test not listed here.
#: file -> (the store variant left out, the tests it applies to: None for all, the tests kept on both); a test is
#: named by its function or by its full id (`name[params]`). A name that matches no test fails the run.
#: Why: CI runs on 2 busy cores within 15 minutes, and these doubled ~200 s of test time. Where PostgreSQL does
#: not run (no server, not CI), nothing is left out: the SQLite variants are then the only ones.
ONE_STORE: dict[str, tuple[str, frozenset[str] | None, frozenset[str]]] = {
    # Gates, promotion, rollback, canary, shadow: decision logic over the Store API. The atomic switch for
    # concurrent readers is the store's own and stays on both.
    "tests/integration/test_rollout.py": (
        "sqlite",
        None,
        frozenset({"test_the_blue_green_switch_is_atomic_for_concurrent_readers"}),
    ),
    "tests/integration/test_rollout_regression.py": ("sqlite", None, frozenset()),
    "tests/outcomes/test_decisions.py": ("sqlite", None, frozenset()),
    # Nightly decisions; scoring several models in one read stays on both (the driver stages SQLite's rows).
    "tests/integration/test_nightly.py": (
        "sqlite",
        None,
        frozenset({"test_models_sharing_a_dataset_are_scored_in_one_read_and_each_fails_alone"}),
    ),
    # The brought-model group DAG: every flavour on PostgreSQL here; on SQLite the CLI's bring tests, the brought
    # DAG test (tests/airflow/test_dag_run_brought.py) and test_reasons' brought boosters score them.
    "tests/airflow/test_dag_run_group.py": ("sqlite", None, frozenset()),
    # TreeSHAP against the library: arithmetic; stored reasons round-trip on both stores in tests/db.
    "tests/integration/test_reasons.py": (
        "sqlite",
        frozenset({"test_tree_reasons_are_the_librarys_treeshap_and_sum_to_the_raw_margin"}),
        frozenset(),
    ),
    # The OpenAPI contract under generated requests; both stores' readers are tested in tests/api.
    "tests/api/test_schemathesis.py": ("sqlite", None, frozenset()),
    # Brought models through the CLI: each flavour once on SQLite; on PostgreSQL the ONNX one (the group DAG
    # test scores every flavour there). Refusals and contract inference happen before any store write.
    "tests/cli/test_bring_cli.py": (
        "postgresql",
        frozenset(
            {
                "test_a_brought_model_is_registered_scored_and_read_back_through_the_cli[postgresql-skops]",
                "test_a_brought_model_is_registered_scored_and_read_back_through_the_cli[postgresql-catboost]",
                "test_refusals_name_the_file_and_the_cause_and_register_nothing",
                "test_contract_infer_prints_a_block_tomllib_parses_naming_the_models_inputs",
            }
        ),
        frozenset(),
    ),
}


@functools.cache
def _postgres_runs() -> bool:
    """Whether the PostgreSQL tests run (CI, or a reachable server), probed once per process."""
    return IN_CI or _pg_reachable() is None


def _test_path(item: pytest.Item) -> str | None:
    """The item's file relative to the repository (tests/...), or None for one outside it."""
    try:
        return item.path.relative_to(item.config.rootpath).as_posix()
    except ValueError:
        return None


def pytest_itemcollected(item: pytest.Item) -> None:
    """Marks `extra` the store variants ONE_STORE leaves to `make extra` (before `-m` selects)."""
    path = _test_path(item)
    rule = ONE_STORE.get(path) if path else None
    params = getattr(getattr(item, "callspec", None), "params", {})
    if rule is None or params.get("store_url", params.get("store")) != rule[0]:
        return
    if rule[0] == "sqlite" and not _postgres_runs():
        return  # the PostgreSQL variant would skip: the SQLite one is the only one
    _store, only, kept = rule
    names = {item.name, getattr(item, "originalname", item.name)}
    if names & kept or (only is not None and not names & only):
        return
    item.add_marker(pytest.mark.extra)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(_LONGEST_FIRST)}
    _check_one_store(items)

    def key(item: pytest.Item) -> int:
        path = _test_path(item)
        return rank.get(path, len(rank)) if path else len(rank)

    items.sort(key=key)  # stable: every file keeps its own order, the rest keep theirs


def _check_one_store(items: list[pytest.Item]) -> None:
    """Every test function ONE_STORE names exists in its module (of the files collected, whatever the selection):
    a renamed test must not silently change what the default run keeps."""
    modules = {path: getattr(item, "module", None) for item in items if (path := _test_path(item)) in ONE_STORE}
    for path, module in modules.items():
        _store, only, kept = ONE_STORE[path]
        for name in sorted((only or frozenset()) | kept):
            if module is not None and not callable(getattr(module, name.split("[", 1)[0], None)):
                raise pytest.UsageError(f"tests/conftest.py ONE_STORE: {name} matches no test in {path}")


#: Test files that share one real Airflow (the `airflow_server` fixture, a whole `airflow standalone`):
#: under pytest-xdist they are one unit of work, so one worker boots one Airflow for all of them and the
#: other worker never starts one (an idle Airflow's scheduler and processor still take a share of 2 cores).
AIRFLOW_SERVER_FILES = "tests/airflow/test_server_"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesSharingAirflowTogether(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return AIRFLOW_SERVER_FILES + "*" if path.startswith(AIRFLOW_SERVER_FILES) else path

    return FilesSharingAirflowTogether(config, log)
