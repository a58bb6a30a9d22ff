"""docker/compose.yaml: valid against the Compose Specification, and the stack's own rules.

The schema is vendored in tests/deploy/compose-spec.json, byte for byte from
compose-spec/compose-spec, schema/compose-spec.json at commit
00655e2222608fa6eaecdf12ac5195889ca2244a (https://github.com/compose-spec/compose-spec).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.deploy.conftest import (
    COMPOSE_FILE,
    DOCKER,
    ENV_EXAMPLE,
    REPO,
    interpolate,
    real_secrets,
    service_environment,
    variables_used,
    walk_strings,
)

SCHEMA = Path(__file__).with_name("compose-spec.json")

#: One-shot services: they run to completion (init) or on demand (cli), so there is no
#: running container whose health could be checked. Every other service has a healthcheck.
ONE_SHOT = {"init", "cli"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|(^|_)KEY($|_)", re.IGNORECASE)
#: Services and the volumes (name -> mount path) each must have, and which of them may write.
CONTAINER_PATHS = {
    "data": "/srv/nightshift/data",
    "models": "/srv/nightshift/models",
    "reports": "/srv/nightshift/reports",
}


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """volume name -> (container path, read_only) of a service's named-volume mounts."""
    out = {}
    for item in service.get("volumes", []):
        assert isinstance(item, str), "use the short volume syntax (source:target[:ro])"
        parts = item.split(":")
        out[parts[0]] = (parts[1], len(parts) > 2 and "ro" in parts[2].split(","))
    return out


def test_the_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    # The schema is strict: an unknown key is an error (it catches typos such as `healtcheck`).
    broken = {**compose, "services": {"x": {"image": "x", "healtcheck": {}}}}
    assert list(validator.iter_errors(broken))


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", f"{name}: a one-shot service must not restart"
            continue
        hc = svc.get("healthcheck")
        assert hc, f"{name}: no healthcheck"
        assert not hc.get("disable"), f"{name}: healthcheck disabled"
        assert isinstance(hc["test"], list), f"{name}: use the exec form [CMD, ...]"
        assert hc["test"][0] == "CMD", f"{name}: use the exec form [CMD, ...]"
        for key in ("interval", "timeout", "retries", "start_period"):
            assert key in hc, f"{name}: healthcheck without {key}"
    assert set(services) - ONE_SHOT >= {
        "postgres",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "dask-scheduler",
        "dask-worker",
        "api",
    }


def test_dependencies_exist_and_wait_for_health_or_completion(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = cond["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, it has no healthcheck"
            elif condition == "service_completed_successfully":
                assert dep in ONE_SHOT, f"{name} waits for {dep} to complete, but {dep} is long-running"
            else:
                pytest.fail(f"{name} -> {dep}: wait for health or completion, not {condition}")
    # Everything touching a database waits for init (migrations) or, for init itself, for PostgreSQL.
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "api"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert services["init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["dask-worker"]["depends_on"]["dask-scheduler"]["condition"] == "service_healthy"


def test_images_come_from_the_dockerfiles_targets_one_image_per_target(
    compose: dict[str, Any], dockerfile: Any
) -> None:
    _, stages = dockerfile
    image_of_target: dict[str, str] = {}
    for name, svc in compose["services"].items():
        if name == "postgres":
            assert re.fullmatch(r"postgres:\d+\.\d+-\w+", svc["image"]), "pin PostgreSQL to a minor release and distro"
            continue
        build = svc["build"]
        assert (COMPOSE_FILE.parent / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()
        target = build["target"]
        assert target in stages, f"{name}: target {target!r} is not a stage of docker/Dockerfile"
        assert image_of_target.setdefault(target, svc["image"]) == svc["image"], f"{name}: two images for {target}"
    assert set(image_of_target) == {"airflow", "dask-worker", "api"}
    services = compose["services"]
    assert services["api"]["build"]["target"] == "api"
    assert services["dask-worker"]["build"]["target"] == "dask-worker"
    assert services["dask-scheduler"]["build"]["target"] == "dask-worker"
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "init"):
        assert services[name]["build"]["target"] == "airflow"


def test_volumes_are_declared_and_mounted_where_the_work_happens(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    services = compose["services"]
    for name, svc in services.items():
        for volume in _mounts(svc):
            if not volume.startswith((".", "/")):
                assert volume in declared, f"{name}: volume {volume} is not declared"
    mounts = {name: _mounts(svc) for name, svc in services.items()}
    # Scoring: the scheduler (driver) and the Dask workers name files by path, so both see the
    # data and the models at the same paths. Workers only read.
    for volume in ("data", "models"):
        for name in ("airflow-scheduler", "dask-worker"):
            assert mounts[name][volume][0] == CONTAINER_PATHS[volume], f"{name}: {volume} mounted elsewhere"
        assert mounts["dask-worker"][volume][1], f"dask-worker must mount {volume} read-only"
    # Training writes models, monitoring writes reports (scheduler); the API server shows reports.
    assert not mounts["airflow-scheduler"]["models"][1]
    assert not mounts["airflow-scheduler"]["reports"][1]
    assert mounts["airflow-apiserver"]["reports"] == (CONTAINER_PATHS["reports"], True)
    # The partition sensor's trigger looks for _SUCCESS markers in the data.
    assert mounts["airflow-triggerer"]["data"] == (CONTAINER_PATHS["data"], True)
    assert mounts["postgres"]["pgdata"][0] == "/var/lib/postgresql/data"
    assert "airflow-logs" in mounts["airflow-scheduler"]
    assert "airflow-logs" in mounts["airflow-apiserver"]
    # The lookup API reads the database only, with a read-only root file system.
    assert not mounts["api"]
    assert services["api"]["read_only"] is True
    # Every declared volume is used.
    used = {v for m in mounts.values() for v in m}
    assert declared <= used, f"declared but unused: {declared - used}"


def test_no_literal_secrets_only_references_to_the_env_file(compose: dict[str, Any]) -> None:
    required_ref = r"\$\{[A-Z0-9_]+:\?[^}]*\}"
    for path, value in walk_strings(compose):
        key = path.rsplit(".", 1)[-1]
        if SECRET_NAME.search(key) and "AUTH_MANAGER" not in key and not key.endswith("_FILE"):
            # A secret is exactly one required reference: compose refuses to start without it.
            assert re.fullmatch(required_ref, value), f"{path}: {value!r} is not a required ${{VAR:?...}} reference"
        # A password inside a URL is a reference too.
        for m in re.finditer(r"://([^:/@\s]+):([^@\s]+)@", value):
            assert re.fullmatch(required_ref, m.group(2)), f"{path}: literal password in a URL"


def test_every_variable_is_defined_in_the_env_example(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    for path, value in walk_strings(compose):
        for name, op in variables_used(value):
            if op in (None, ":?", "?"):
                assert name in env_example, f"{path}: ${name} is required but not in docker/.env.example"
    # And the example holds no real secret: every secret there is a change-me placeholder.
    for key, value in env_example.items():
        if SECRET_NAME.search(key):
            assert "change-me" in value, f"{ENV_EXAMPLE.name}: {key} must be a change-me placeholder"


def test_the_stack_interpolates_with_the_example_and_refuses_without_secrets(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    env = real_secrets(env_example)
    for name in compose["services"]:
        service_environment(compose, name, env)
    store_url = service_environment(compose, "airflow-scheduler", env)["NIGHTSHIFT_STORE_URL"]
    assert store_url == (f"postgresql://nightshift:{env['NIGHTSHIFT_DB_PASSWORD']}@postgres:5432/nightshift")
    without = {k: v for k, v in env.items() if k != "AIRFLOW_JWT_SECRET"}
    with pytest.raises(KeyError, match="AIRFLOW_JWT_SECRET"):
        service_environment(compose, "airflow-scheduler", without)


def test_each_container_gets_only_the_secrets_it_needs(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    env = real_secrets(env_example)
    secrets = {k: v for k, v in env.items() if SECRET_NAME.search(k)}

    def secrets_in(service: str) -> set[str]:
        values = " ".join(service_environment(compose, service, env).values())
        return {k for k, v in secrets.items() if v in values}

    assert secrets_in("api") == {"NIGHTSHIFT_API_DB_PASSWORD"}
    assert secrets_in("dask-worker") == set()
    assert secrets_in("dask-scheduler") == set()
    airflow = {
        "NIGHTSHIFT_DB_PASSWORD",
        "AIRFLOW_DB_PASSWORD",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_API_SECRET_KEY",
    }
    for name in ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "init", "cli"):
        assert secrets_in(name) == airflow, name
    # The api-server also serves the plugin's lookup API, as the read-only role.
    assert secrets_in("airflow-apiserver") == airflow | {"AIRFLOW_ADMIN_PASSWORD", "NIGHTSHIFT_API_DB_PASSWORD"}
    apiserver = service_environment(compose, "airflow-apiserver", env)
    assert apiserver["NIGHTSHIFT_API__STORE_URL"] == service_environment(compose, "api", env)["NIGHTSHIFT_STORE_URL"]
    assert "POSTGRES_PASSWORD" in secrets_in("postgres")
    assert not any("POSTGRES_PASSWORD" in secrets_in(n) for n in compose["services"] if n != "postgres")
    # The API reads as its own role, for both of its settings.
    api_env = service_environment(compose, "api", env)
    assert api_env["NIGHTSHIFT_STORE_URL"] == api_env["NIGHTSHIFT_API__STORE_URL"]
    assert api_env["NIGHTSHIFT_STORE_URL"].startswith(f"postgresql://{env['NIGHTSHIFT_API_DB_USER']}:")
    assert api_env["NIGHTSHIFT_API__DOCS_ENABLED"] == "false"


def test_ports_are_published_on_loopback_by_default(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    published = {}
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            published[name] = interpolate(port, {})
    assert published == {"airflow-apiserver": "127.0.0.1:8080:8080", "api": "127.0.0.1:8000:8000"}
    assert env_example["AIRFLOW_PUBLISH"].startswith("127.0.0.1:")
    assert env_example["API_PUBLISH"].startswith("127.0.0.1:")


def test_airflow_is_configured_for_airflow_3_with_the_local_executor(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    env = real_secrets(env_example)
    services = compose["services"]
    commands = {name: services[name]["command"] for name in services if name.startswith("airflow-")}
    assert commands == {
        "airflow-apiserver": ["airflow", "api-server"],
        "airflow-scheduler": ["airflow", "scheduler"],
        "airflow-dag-processor": ["airflow", "dag-processor"],
        "airflow-triggerer": ["airflow", "triggerer"],
    }
    envs = [service_environment(compose, name, env) for name in [*commands, "init"]]
    for key in (
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    ):
        assert len({e[key] for e in envs}) == 1, f"{key} must be the same in every Airflow component"
    e = envs[0]
    assert e["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert e["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert e["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://")
    assert e["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"].startswith("postgresql+psycopg_async://")
    assert e["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "True"
    assert services["airflow-apiserver"]["healthcheck"]["test"][2] == "http://127.0.0.1:8080/api/v2/monitor/health"
    assert services["airflow-scheduler"]["healthcheck"]["test"][2] == "http://127.0.0.1:8974/health"
    assert services["airflow-dag-processor"]["healthcheck"]["test"][1:5] == ["airflow", "jobs", "check", "--job-type"]


def test_the_project_file_resolves_inside_the_mounted_volumes(
    compose: dict[str, Any], env_example: dict[str, str], tmp_path: Path
) -> None:
    """Load the project file as the containers do and check where each location lands."""
    from nightshift.config import load_settings

    configs = compose["configs"]
    project = (COMPOSE_FILE.parent / interpolate(configs["nightshift-project"]["file"], env_example)).resolve()
    assert project.is_file(), project
    env = real_secrets(env_example)
    for name in ("airflow-scheduler", "init", "api"):
        svc = compose["services"][name]
        target = next(c["target"] for c in svc["configs"] if c["source"] == "nightshift-project")
        service_env = service_environment(compose, name, env)
        assert service_env["NIGHTSHIFT_CONFIG"] == target
        # The file as it lies in the container: /srv/nightshift/nightshift.toml (relative paths resolve there).
        container_dir = PurePosixPath(target).parent
        with pytest.MonkeyPatch.context() as mp:
            for key in [k for k in os.environ if k.startswith("NIGHTSHIFT_")]:
                mp.delenv(key)
            for key, value in service_env.items():
                if key.startswith("NIGHTSHIFT_") and key != "NIGHTSHIFT_CONFIG":
                    mp.setenv(key, value)
            settings = load_settings(project)
        settings.project_dir = str(container_dir)
        assert settings.resolved_store_url.startswith("postgresql://")
        if name == "api":
            assert settings.api.store_url == settings.resolved_store_url
            assert settings.api.docs_enabled is False
            continue
        assert settings.dask.scheduler_address == "tcp://dask-scheduler:8786"
        assert settings.artifacts_uri == CONTAINER_PATHS["models"]
        assert settings.reports_uri == CONTAINER_PATHS["reports"]
        mounts = _mounts(svc)
        for model in settings.models:
            for location in filter(None, [model.dataset, model.labels]):
                resolved = location if "://" in location else str(PurePosixPath(container_dir, location))
                if name == "airflow-scheduler":
                    assert resolved.startswith(CONTAINER_PATHS["data"] + "/"), (
                        f"{model.name}: {resolved} is not under the data volume"
                    )
                    assert "data" in mounts


def test_worker_scaling_and_memory_are_configuration(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    worker = compose["services"]["dask-worker"]
    assert interpolate(str(worker["deploy"]["replicas"]), env_example) == env_example["DASK_WORKERS"]
    limit = interpolate(worker["deploy"]["resources"]["limits"]["memory"], env_example)
    dask_limit = interpolate(worker["environment"]["DASK_WORKER_MEMORY_LIMIT"], env_example)

    def gib(v: str) -> float:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(GiB|g|G|MiB|m|M)", v)
        assert m, v
        return float(m.group(1)) / (1024 if m.group(2) in ("MiB", "m", "M") else 1)

    # Dask spills and pauses below its own limit; the container's hard limit sits above it.
    assert gib(dask_limit) < gib(limit)
    assert "container_name" not in worker, "a fixed container name prevents scaling"
