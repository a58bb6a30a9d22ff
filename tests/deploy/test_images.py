"""The images' environments, installed from uv.lock by the Dockerfile's own `uv sync` commands: what each one holds.

The API image must stay slim (the API extra only) and `nightshift.api` must not pull the
scoring stack in at import; the worker image must run ONNX Runtime under Dask; the Airflow
image must hold everything the DAGs call. The worker and Airflow images read features and
write artifacts and reports, so both carry s3fs for s3:// locations (tests/deploy/test_s3.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.deploy.conftest import ENTRYPOINT, ImageEnv, base_env

pytestmark = pytest.mark.slow

HEAVY = ["numpy", "pandas", "pyarrow", "onnxruntime", "dask", "distributed", "sklearn", "airflow", "evidently"]


def _run(env: ImageEnv, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), *argv], env=base_env(env.bin), capture_output=True, text=True, timeout=timeout
    )


def _modules_after_import(python: str, module: str) -> set[str]:
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    res = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"import {module} failed:\n{res.stderr[-3000:]}"
    return {m.split(".")[0] for m in json.loads(res.stdout.strip().splitlines()[-1])}


def test_the_api_image_holds_the_api_and_none_of_the_scoring_stack(image_envs: dict[str, ImageEnv]) -> None:
    api = image_envs["api"]
    for module in ("nightshift", "fastapi", "uvicorn", "psycopg", "aiosqlite", "prometheus_client"):
        assert api.has(module), f"the API image lacks {module}"
    present = [m for m in [*HEAVY, "s3fs"] if api.has(m)]
    assert not present, f"the API image carries {present}"
    # The app and the CLI import in it, so nothing on their import path needs those packages.
    _modules_after_import(str(api.bin / "python"), "nightshift.api.app")
    res = _run(api, "nightshift", "--help")
    assert res.returncode == 0, res.stderr
    for command in ("api", "keys", "db"):
        assert command in res.stdout, f"`nightshift {command}` missing from the API image's CLI"


def test_importing_the_api_loads_no_scoring_library_even_where_installed() -> None:
    """In the full environment (Airflow's image, the API plugin) the API must not import the scoring stack."""
    loaded = _modules_after_import(sys.executable, "nightshift.api.app")
    assert not loaded & set(HEAVY), f"import nightshift.api.app loads {sorted(loaded & set(HEAVY))}"


def test_the_worker_image_runs_onnx_runtime_under_dask(image_envs: dict[str, ImageEnv]) -> None:
    worker = image_envs["dask-worker"]
    for module in ("nightshift", "onnxruntime", "dask", "distributed", "pyarrow", "numpy", "psycopg", "s3fs"):
        assert worker.has(module), f"the worker image lacks {module}"
    for module in ("fastapi", "airflow", "sklearn", "evidently"):
        assert not worker.has(module), f"the worker image carries {module}"
    # What a worker unpickles and runs: the scoring module and ONNX Runtime, without the API or Airflow.
    _modules_after_import(str(worker.bin / "python"), "nightshift.scoring")
    _modules_after_import(str(worker.bin / "python"), "onnxruntime")
    for argv in (["dask", "scheduler", "--help"], ["dask", "worker", "--help"]):
        res = _run(worker, *argv)
        assert res.returncode == 0, res.stderr
        assert "--memory-limit" in res.stdout or "--port" in res.stdout


def test_the_airflow_image_holds_airflow_and_every_nightshift_extra(image_envs: dict[str, ImageEnv]) -> None:
    airflow = image_envs["airflow"]
    for module in (
        "airflow",
        "nightshift",
        "onnxruntime",
        "dask",
        "sklearn",
        "skl2onnx",
        "evidently",
        "fastapi",
        "s3fs",
    ):
        assert airflow.has(module), f"the Airflow image lacks {module}"
    res = _run(airflow, "airflow", "version", timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1].startswith("3.3."), res.stdout
    res = _run(airflow, "nightshift", "--help")
    assert res.returncode == 0, res.stderr


def test_every_image_runs_the_same_nightshift(image_envs: dict[str, ImageEnv]) -> None:
    """Driver (Airflow image) and workers unpickle each other's tasks: one version of nightshift and Dask."""
    versions: dict[str, Any] = {}
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({p: (m.version(p) if __import__('importlib.util').util.find_spec(p.replace('-', '_')) "
        "else None) for p in ['nightshift', 'dask', 'distributed', 'cloudpickle', 'msgpack', 'fsspec', 's3fs']}))"
    )
    for target in ("airflow", "dask-worker"):
        env = image_envs[target]
        res = subprocess.run([str(env.bin / "python"), "-c", code], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        versions[target] = json.loads(res.stdout)
    assert versions["airflow"] == versions["dask-worker"]
