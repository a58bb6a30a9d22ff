"""Object storage: the images carry s3fs where they need it, docker/compose.s3.yaml wires the stack to a
bucket, and a whole night runs against a real S3 API from the images' environments.

By construction (no engine needed): the Dockerfile's build stages of the images that read features or
write model artifacts and reports (airflow, dask-worker) install the `s3` extra, the API image's does
not (and nothing the API imports touches storage); the override merged over compose.yaml is valid,
hands the same S3 settings (the variables botocore reads under s3fs) to exactly the services that read
or write storage, each of which runs an image with s3fs, and points them at a bundled server that is
pinned, health-checked, published on loopback and started with the same keys.

For real: moto's S3 server on 127.0.0.1 stands in for the bucket (compose.s3.yaml's `object-storage`,
or AWS). With the environment compose gives each service (docker/.env.example, the endpoint set to
that server as docker/.env does for an external S3 service) and the services' commands through the
entrypoint: `init` creates the bucket, `nightshift-s3 put` uploads the demo partitions (written by
nightshift.demo), a Dask scheduler and worker from the dask-worker image serve the cluster, and from
the Airflow image `nightshift train` writes its artifact to s3://, `nightshift score` commits every
row of an s3:// partition (the worker reads the row groups and the artifact from the bucket), and
`nightshift monitor` writes its report to s3://. Nothing but 127.0.0.1 is reached.
"""

from __future__ import annotations

import ast
import copy
import importlib.machinery
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import DEMO_FILES, DEMO_ROWS, IN_CI, SCORE_DS, write_project
from tests.deploy.conftest import (
    DOCKER,
    ENTRYPOINT,
    REPO,
    ImageEnv,
    Processes,
    base_env,
    free_port,
    healthcheck_argv,
    healthcheck_passes,
    interpolate,
    real_secrets,
    service_environment,
    uv_sync_commands,
    variables_used,
    wait_healthy,
    walk_strings,
)

S3_OVERRIDE = DOCKER / "compose.s3.yaml"
S3_SCRIPT = DOCKER / "bin" / "nightshift-s3"
SERVER = "object-storage"
SCHEMA = Path(__file__).with_name("compose-spec.json")
#: What botocore reads under s3fs: the variables compose.s3.yaml hands the containers.
S3_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
#: The services that read features or write artifacts and reports, and what for.
STORAGE_USERS = {
    "init": "creates the buckets (nightshift-s3 mb)",
    "cli": "nightshift commands on demand: train, score, uploads",
    "airflow-scheduler": "runs the tasks: scoring lists partitions and reads footers, training writes artifacts, "
    "monitoring writes reports",
    "airflow-triggerer": "the partition sensor's trigger polls for _SUCCESS markers",
    "airflow-apiserver": "the plugin's monitoring views read reports",
    "dask-worker": "each task reads its row groups and the model's artifact",
}
#: Runtime targets (docker/Dockerfile) whose images those services run: each must carry s3fs.
S3_TARGETS = {"airflow": "build-airflow", "dask-worker": "build-worker"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|(^|_)KEY($|_)", re.IGNORECASE)
#: What the lookup API's package may not import: what reads features, artifacts or reports (it takes a
#: constant or two from nightshift.models.registry, never its readers and writers).
STORAGE_MODULES = (
    "fsspec",
    "s3fs",
    "nightshift.data",
    "nightshift.monitoring",
    "nightshift.scoring",
    "nightshift.training",
)
STORAGE_NAMES = {"read_artifact", "write_once", "open_registry", "Registry"}


# -- the compose model with the override, as compose merges it ------------------------------------


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    return yaml.safe_load(S3_OVERRIDE.read_text())


def merge_override(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`docker compose -f compose.yaml -f compose.s3.yaml`: compose's merge for the keys the override uses.

    A new service comes whole; for an existing one, `environment` and `depends_on` (mappings) merge key
    by key, the override winning; top-level volumes merge. Any other key fails here, so a change to the
    override that this merge does not model cannot pass unnoticed.
    """
    merged = copy.deepcopy(base)
    for name, svc in extra["services"].items():
        if name not in merged["services"]:
            merged["services"][name] = copy.deepcopy(svc)
            continue
        target = merged["services"][name]
        for key, value in svc.items():
            assert key in ("environment", "depends_on"), f"{S3_OVERRIDE.name}: {name}.{key}: merge not modelled here"
            current = target.get(key) or {}
            assert isinstance(current, dict), f"{name}.{key}: use the mapping form in compose.yaml"
            assert isinstance(value, dict), f"{name}.{key}: use the mapping form in {S3_OVERRIDE.name}"
            target[key] = {**current, **copy.deepcopy(value)}
    for key, value in extra.items():
        if key == "services" or key.startswith("x-"):
            continue
        assert key == "volumes", f"{S3_OVERRIDE.name}: top-level {key}: merge not modelled here"
        merged[key] = {**(merged.get(key) or {}), **(value or {})}
    return merged


@pytest.fixture(scope="module")
def stack(compose: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    return merge_override(compose, override)


def _target(svc: dict[str, Any]) -> str | None:
    build = svc.get("build")
    return build["target"] if isinstance(build, dict) else None


def _load_script() -> ModuleType:
    """docker/bin/nightshift-s3 as a module (it has no .py suffix)."""
    loader = importlib.machinery.SourceFileLoader("nightshift_s3_script", str(S3_SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


# -- by construction -----------------------------------------------------------------------------------


def test_the_images_that_read_or_write_storage_install_the_s3_extra(dockerfile: Any) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    s3_extra = pyproject["project"]["optional-dependencies"]["s3"]
    assert any(re.match(r"s3fs\b", dep) for dep in s3_extra), f"the s3 extra lacks s3fs: {s3_extra}"
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    assert "s3fs" in packages, "uv.lock holds no s3fs: run `uv lock`"
    locked_extra = packages["nightshift"].get("optional-dependencies", {}).get("s3", [])
    assert any(dep["name"] == "s3fs" for dep in locked_extra), "uv.lock's nightshift[s3] is not the pyproject's"

    _, stages = dockerfile
    for target, build_stage in S3_TARGETS.items():
        commands = uv_sync_commands(stages[build_stage])
        assert commands
        for words in commands:
            extras = [words[i + 1] for i, w in enumerate(words) if w == "--extra"]
            assert "s3" in extras, f"{target} ({build_stage}): `{' '.join(words)}` leaves the s3 extra out"
    # The API image reads the database only: no s3fs, and nothing the API imports reaches storage.
    for words in uv_sync_commands(stages["build-api"]):
        assert "s3" not in [words[i + 1] for i, w in enumerate(words) if w == "--extra"]
    for path in sorted((REPO / "jobs" / "nightshift" / "api").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert not name.startswith(STORAGE_MODULES), (
                    f"{path.relative_to(REPO)} imports {name}: the API image would need the s3 extra"
                )
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nightshift.models"):
                used = {alias.name for alias in node.names} & STORAGE_NAMES
                assert not used, (
                    f"{path.relative_to(REPO)} imports {sorted(used)}: the API image would need the s3 extra"
                )


def test_the_override_is_valid_and_adds_no_object_storage_to_the_default_stack(
    compose: dict[str, Any], stack: dict[str, Any], env_example: dict[str, str]
) -> None:
    import jsonschema

    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    for name, model in (
        ("compose.yaml + compose.s3.yaml", stack),
        (S3_OVERRIDE.name, yaml.safe_load(S3_OVERRIDE.read_text())),
    ):
        errors = sorted(validator.iter_errors(model), key=lambda e: list(e.absolute_path))
        assert not errors, (
            name + ":\n" + "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
        )
    env = real_secrets(env_example)
    # Without the override nothing changes: no service gets S3 settings, no server runs.
    assert SERVER not in compose["services"]
    for name in compose["services"]:
        assert not set(service_environment(compose, name, env)) & set(S3_VARIABLES), name


def test_the_override_hands_every_storage_user_the_same_bucket_settings(
    stack: dict[str, Any], env_example: dict[str, str]
) -> None:
    env = real_secrets(env_example)
    services = stack["services"]
    settings: dict[str, dict[str, str]] = {}
    for name in services:
        if name == SERVER:
            continue
        service_env = service_environment(stack, name, env)
        got = {k: service_env[k] for k in S3_VARIABLES if k in service_env}
        if name in STORAGE_USERS:
            assert set(got) == set(S3_VARIABLES), f"{name} ({STORAGE_USERS[name]}) lacks {set(S3_VARIABLES) - set(got)}"
            settings[name] = got
            # ...and runs an image that carries s3fs.
            assert _target(services[name]) in S3_TARGETS, f"{name} runs {_target(services[name])}, without s3fs"
        else:
            # The API, the Dask scheduler, the DAG processor, PostgreSQL: no storage, no storage keys.
            assert not got, f"{name} gets {sorted(got)} but never touches the storage"
    assert set(settings) == set(STORAGE_USERS)
    first = next(iter(settings.values()))
    assert all(s == first for s in settings.values()), "the storage users disagree on the bucket's settings"
    assert first["AWS_ACCESS_KEY_ID"] == env["NIGHTSHIFT_S3_ACCESS_KEY_ID"]
    assert first["AWS_SECRET_ACCESS_KEY"] == env["NIGHTSHIFT_S3_SECRET_ACCESS_KEY"]
    assert first["AWS_ENDPOINT_URL_S3"] == env_example["NIGHTSHIFT_S3_ENDPOINT_URL"]
    # `init` creates the example's bucket; with NIGHTSHIFT_S3_BUCKETS empty (AWS) it creates none.
    assert service_environment(stack, "init", env)["NIGHTSHIFT_S3_BUCKETS"] == env_example["NIGHTSHIFT_S3_BUCKETS"]
    assert service_environment(stack, "init", {**env, "NIGHTSHIFT_S3_BUCKETS": ""})["NIGHTSHIFT_S3_BUCKETS"] == ""
    # The example's locations for artifacts and reports stay the volumes until docker/.env names the bucket.
    scheduler = service_environment(
        stack, "airflow-scheduler", {**env, "NIGHTSHIFT_ARTIFACTS": "s3://nightshift/models"}
    )
    assert scheduler["NIGHTSHIFT_ARTIFACTS"] == "s3://nightshift/models"


def test_the_bundled_server_is_pinned_healthy_on_loopback_and_shares_the_keys(
    stack: dict[str, Any], env_example: dict[str, str]
) -> None:
    env = real_secrets(env_example)
    server = stack["services"][SERVER]
    image = server["image"]
    assert re.fullmatch(r"[\w./-]+:\d+\.\d+(\.\d+)?(@sha256:[0-9a-f]{64})?", image), f"pin {SERVER}'s image: {image}"
    # Optional: `--profile s3-server`; AWS or another S3 service needs no server here.
    assert server["profiles"] == ["s3-server"]
    hc = server["healthcheck"]
    assert hc["test"][0] == "CMD"
    for key in ("interval", "timeout", "retries", "start_period"):
        assert key in hc, f"{SERVER}: healthcheck without {key}"
    # The endpoint the clients get by default is this service, at the port it serves and checks.
    endpoint = urllib.parse.urlsplit(env_example["NIGHTSHIFT_S3_ENDPOINT_URL"])
    assert endpoint.hostname == SERVER
    health = urllib.parse.urlsplit(next(a for a in hc["test"] if a.startswith("http")))
    assert health.hostname == "127.0.0.1"
    assert health.port == endpoint.port
    published = [interpolate(p, {}) for p in server["ports"]]
    assert published == [f"127.0.0.1:{endpoint.port}:{endpoint.port}"], "publish the S3 port on loopback only"
    assert env_example["NIGHTSHIFT_S3_PUBLISH"].startswith("127.0.0.1:")
    # Its data lives on a declared volume.
    mounts = dict(item.split(":", 1) for item in server["volumes"])
    assert mounts == {"object-storage": "/data"}
    assert "object-storage" in stack["volumes"]
    # Server and clients hold the same keys: the server takes them as its admin identity.
    server_env = service_environment(stack, SERVER, env)
    client_env = service_environment(stack, "airflow-scheduler", env)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert server_env[key] == client_env[key]
    assert set(server_env) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    # What creates the bucket, and what uploads to it, waits for the server when it runs.
    for name in ("init", "cli"):
        assert stack["services"][name]["depends_on"][SERVER] == {"condition": "service_healthy", "required": False}


def test_the_override_keeps_secrets_in_the_env_file(override: dict[str, Any], env_example: dict[str, str]) -> None:
    required_ref = r"\$\{[A-Z0-9_]+:\?[^}]*\}"
    for path, value in walk_strings(override):
        key = path.rsplit(".", 1)[-1]
        if SECRET_NAME.search(key):
            assert re.fullmatch(required_ref, value), f"{path}: {value!r} is not a required ${{VAR:?...}} reference"
        for name, op in variables_used(value):
            if op in (None, ":?", "?"):
                assert name in env_example, f"{path}: ${name} is required but not in docker/.env.example"
    for key in ("NIGHTSHIFT_S3_ACCESS_KEY_ID", "NIGHTSHIFT_S3_SECRET_ACCESS_KEY"):
        assert "change-me" in env_example[key], f"{key} must be a change-me placeholder in .env.example"
    stack_env = merge_override({"services": {}}, override)
    without = {k: v for k, v in real_secrets(env_example).items() if k != "NIGHTSHIFT_S3_SECRET_ACCESS_KEY"}
    with pytest.raises(KeyError, match="NIGHTSHIFT_S3_SECRET_ACCESS_KEY"):
        service_environment(stack_env, "dask-worker", without)


def test_init_creates_the_buckets_after_the_migrations(stack: dict[str, Any], env_example: dict[str, str]) -> None:
    env = real_secrets(env_example)
    svc_env = service_environment(stack, "init", {**env, "NIGHTSHIFT_S3_BUCKETS": "nightshift,features-raw"})

    def dry_run(extra: dict[str, str]) -> list[list[str]]:
        res = subprocess.run(
            [str(ENTRYPOINT), *stack["services"]["init"]["command"]],
            env={**base_env(), **svc_env, **extra, "NIGHTSHIFT_ENTRYPOINT_DRY_RUN": "1"},
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        return [shlex.split(line) for line in res.stdout.splitlines() if line and not line.startswith("#")]

    # (`airflow db migrate` runs where airflow is installed: the image, not this bare PATH.)
    commands = dry_run({})
    assert [c[:3] for c in commands][:2] == [
        ["nightshift", "db", "upgrade"],
        ["nightshift-sql", "--url-env", "NIGHTSHIFT_STORE_URL"],
    ]
    assert commands[-1] == ["nightshift-s3", "mb", "nightshift,features-raw"]
    for argv in commands:
        for key in ("NIGHTSHIFT_S3_ACCESS_KEY_ID", "NIGHTSHIFT_S3_SECRET_ACCESS_KEY"):
            assert env[key] not in " ".join(argv), f"{key} on a command line"
    assert all(c[0] != "nightshift-s3" for c in dry_run({"NIGHTSHIFT_S3_BUCKETS": ""}))
    # The script ships in every image (docker/bin is copied whole) and runs from PATH.
    assert S3_SCRIPT.stat().st_mode & 0o111


def test_the_upload_helper_names_buckets_strictly_and_writes_markers_last(tmp_path: Path) -> None:
    script = _load_script()
    assert script.bucket_names(["nightshift, features-raw", "s3://models/", "nightshift"]) == [
        "nightshift",
        "features-raw",
        "models",
    ]
    for bad in ("Upper", "a", "under_score", "x" * 64):
        with pytest.raises(SystemExit):
            script.bucket_names([bad])
    with pytest.raises(SystemExit):
        script._split_uri("/local/path")

    # `put` uploads every data file before any _SUCCESS marker: a sensor that sees a marker finds its files.
    for day in ("ds=2026-11-17", "ds=2026-11-18"):
        (tmp_path / "src" / day).mkdir(parents=True)
        (tmp_path / "src" / day / "_SUCCESS").write_bytes(b"")
        for i in range(2):
            (tmp_path / "src" / day / f"part-{i:05d}.parquet").write_bytes(b"PAR1")
    order: list[str] = []

    class Recorder:
        def put_file(self, local: str, remote: str) -> None:
            order.append(remote)

    script._fs = Recorder  # type: ignore[attr-defined]
    assert script.upload(tmp_path / "src", "s3://bucket/features/churn/", "_SUCCESS") == 0
    assert len(order) == 6
    assert [r.rsplit("/", 1)[-1] for r in order[-2:]] == ["_SUCCESS", "_SUCCESS"]
    assert not any(r.endswith("_SUCCESS") for r in order[:-2])
    assert order[0] == "bucket/features/churn/ds=2026-11-17/part-00000.parquet"


# -- for real: a night on a local S3 server -------------------------------------------------------------


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """http://127.0.0.1:<port> of moto's S3 server: in this process if moto is importable, else `moto_server`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        exe = shutil.which("moto_server")
        if exe is None:
            msg = (
                "no local S3 server for the object-storage test: install moto[server] (ThreadedMotoServer, moto_server)"
            )
            if IN_CI:
                pytest.fail(f"{msg}; under CI=true this test must run, not skip")
            pytest.skip(msg)
        procs = Processes(tmp_path_factory.mktemp("moto"))
        try:
            proc = procs.start("moto_server", [exe, "-H", "127.0.0.1", "-p", str(port)], dict(os.environ))
            wait_healthy(proc, lambda: _answers(url), 60, "an S3 answer")
            yield url
        finally:
            procs.stop_all()
        return
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield url
    finally:
        server.stop()


def _run(image: ImageEnv, argv: list[str], env: dict[str, str], timeout: float = 300) -> str:
    """A service's command through the entrypoint, in an image's environment; its stdout."""
    res = subprocess.run(
        [str(ENTRYPOINT), *argv], env=base_env(image.bin, **env), capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, f"{' '.join(argv)}: exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res.stdout


def _last_json(stdout: str) -> dict[str, Any]:
    start = stdout.index("{")
    return dict(json.loads(stdout[start:]))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_night_on_object_storage_from_the_images_environments(
    s3_endpoint: str,
    image_envs: dict[str, ImageEnv],
    stack: dict[str, Any],
    env_example: dict[str, str],
    demo_root: Path,
    tmp_path: Path,
    processes: Processes,
) -> None:
    import pyarrow.parquet as pq
    import s3fs
    import sqlalchemy as sa

    airflow, worker = image_envs["airflow"], image_envs["dask-worker"]
    bucket = f"nightshift-{uuid.uuid4().hex[:8]}"
    # docker/.env as an operator writes it for an S3 service outside the stack: the endpoint, the bucket
    # to create, artifacts and reports in it. Everything else is the example's.
    values = {
        **real_secrets(env_example),
        "NIGHTSHIFT_S3_ENDPOINT_URL": s3_endpoint,
        "NIGHTSHIFT_S3_BUCKETS": bucket,
        "NIGHTSHIFT_ARTIFACTS": f"s3://{bucket}/models",
        "NIGHTSHIFT_REPORTS": f"s3://{bucket}/reports",
    }
    # The project file names the features and labels by s3:// URIs; SQLite stands in for PostgreSQL.
    state = tmp_path / "state"
    state.mkdir()
    store_url = f"sqlite:///{state / 'store.db'}"
    project = write_project(tmp_path, store_url, demo_root)
    text = project.read_text()
    for kind in ("features", "labels"):
        old = f"{json.dumps(str(demo_root / kind))}"
        assert old in text
        text = text.replace(old, json.dumps(f"s3://{bucket}/{kind}/churn"))
    project.write_text(text)

    def env_of(service: str, **extra: str) -> dict[str, str]:
        """The service's compose environment; only what this machine lacks is moved: paths, database, cluster."""
        env = service_environment(stack, service, values)
        env = {k: v for k, v in env.items() if not k.startswith("AIRFLOW__DATABASE__")}  # no Airflow database here
        if "NIGHTSHIFT_CONFIG" in env:
            env.update(NIGHTSHIFT_CONFIG=str(project), NIGHTSHIFT_STATE_DIR=str(state), NIGHTSHIFT_STORE_URL=store_url)
        env.update(AWS_EC2_METADATA_DISABLED="true", **extra)  # nothing beyond 127.0.0.1, not even the metadata service
        return env

    fs = s3fs.S3FileSystem(
        key=values["NIGHTSHIFT_S3_ACCESS_KEY_ID"],
        secret=values["NIGHTSHIFT_S3_SECRET_ACCESS_KEY"],
        endpoint_url=s3_endpoint,
        client_kwargs={"region_name": "us-east-1"},
        skip_instance_cache=True,
        use_listings_cache=False,
    )

    # init: the store's migrations, then the bucket; a second `up` finds it and changes nothing.
    init = stack["services"]["init"]["command"]
    assert not fs.exists(bucket)
    out = _run(airflow, init, env_of("init"))
    assert f"bucket {bucket} created" in out
    assert fs.exists(bucket)
    assert f"bucket {bucket} exists" in _run(airflow, init, env_of("init"))

    # Upstream's part: the demo partitions (nightshift.demo), uploaded from the cli service, markers last.
    cli_env = env_of("cli")
    for kind in ("features", "labels"):
        _run(airflow, ["nightshift-s3", "put", str(demo_root / kind), f"s3://{bucket}/{kind}/churn"], cli_env)
    listed = _run(airflow, ["nightshift-s3", "ls", f"s3://{bucket}/features/churn"], cli_env)
    assert listed.count(".parquet") == 3 * DEMO_FILES
    assert listed.count("_SUCCESS") == 3

    # The cluster, as the compose services run it: scheduler and worker from the dask-worker image.
    port, dashboard, worker_dashboard = free_port(), free_port(), free_port()
    sched_env = env_of(
        "dask-scheduler",
        DASK_SCHEDULER_HOST="127.0.0.1",
        DASK_SCHEDULER_LISTEN_HOST="127.0.0.1",
        DASK_SCHEDULER_PORT=str(port),
        DASK_DASHBOARD_PORT=str(dashboard),
    )
    scheduler = processes.start(
        "dask-scheduler", [str(ENTRYPOINT), "dask-scheduler"], base_env(worker.bin, **sched_env)
    )
    check = healthcheck_argv(stack, "dask-scheduler", {"127.0.0.1:8787": f"127.0.0.1:{dashboard}"})
    wait_healthy(scheduler, lambda: healthcheck_passes(check, base_env(worker.bin)), 60, "passing healthcheck")
    address = f"tcp://127.0.0.1:{port}"
    wenv = env_of(
        "dask-worker",
        DASK_SCHEDULER_ADDRESS=address,
        DASK_WORKER_HOST="127.0.0.1",
        DASK_WORKER_LISTEN_HOST="127.0.0.1",
        DASK_WORKER_DASHBOARD_PORT=str(worker_dashboard),
        DASK_WORKER_NTHREADS="2",
        DASK_WORKER_MEMORY_LIMIT="1GiB",
        DASK_WORKER_NAME="w0",
        DASK_WORKER_LOCAL_DIRECTORY=str(tmp_path / "w0"),
    )
    assert wenv["AWS_ENDPOINT_URL_S3"] == s3_endpoint  # the worker reads the bucket with its own settings
    dask_worker = processes.start("dask-worker", [str(ENTRYPOINT), "dask-worker"], base_env(worker.bin, **wenv))
    wcheck = healthcheck_argv(stack, "dask-worker", {"127.0.0.1:8788": f"127.0.0.1:{worker_dashboard}"})
    wait_healthy(dask_worker, lambda: healthcheck_passes(wcheck, base_env(worker.bin)), 90, "passing healthcheck")

    # The Airflow scheduler's tasks, from the Airflow image: train (artifact to s3://), score (features from s3://).
    driver = env_of("airflow-scheduler", NIGHTSHIFT_DASK__SCHEDULER_ADDRESS=address)
    trained = _last_json(_run(airflow, ["nightshift", "train", "-m", "churn", "--ds", "2026-11-17", "--json"], driver))
    dumped = json.dumps(trained)
    artifacts = [u for u in re.findall(r"s3://[^\"\s]+", dumped) if u.startswith(f"s3://{bucket}/models/")]
    assert artifacts, f"no artifact under s3://{bucket}/models in {dumped[:2000]}"
    assert fs.find(f"{bucket}/models"), "training wrote nothing to the bucket"
    assert not list((state).rglob("*.onnx")), "an artifact landed on the local disk"

    ds = SCORE_DS.isoformat()
    scored = _last_json(_run(airflow, ["nightshift", "score", "-m", "churn", "--ds", ds, "--json"], driver))
    assert (scored["rows"], scored["files"]) == (DEMO_ROWS, DEMO_FILES)

    # Every row of the partition was committed, once: the ids written are the ids in the store.
    written: set[str] = set()
    for path in sorted((demo_root / "features" / f"ds={ds}").glob("*.parquet")):
        written |= {str(v) for v in pq.read_table(path, columns=["customer_id"]).column(0).to_pylist()}
    assert len(written) == DEMO_ROWS
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT entity_id FROM predictions WHERE run_id = :r"), {"r": scored["run_id"]}
            ).all()
    finally:
        engine.dispose()
    assert len(rows) == DEMO_ROWS
    assert {r[0] for r in rows} == written

    # The tasks ran on the worker: it opened an ONNX Runtime session for the artifact in the bucket.
    from distributed import Client

    with Client(address, timeout="30s") as client:
        cached = client.run(lambda: __import__("nightshift.scoring.sessions", fromlist=["_"]).cached_artifacts())
    assert any(u.startswith(f"s3://{bucket}/models/") for uris in cached.values() for u in uris), cached

    # Monitoring writes its report into the bucket too.
    _run(airflow, ["nightshift", "monitor", "-m", "churn", "--ds", ds, "--report", "--json"], driver, timeout=600)
    reports = fs.find(f"{bucket}/reports")
    assert reports, f"no report under s3://{bucket}/reports"
    assert not list(state.rglob("*.html")), "a report landed on the local disk"
