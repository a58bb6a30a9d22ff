"""Project-file loading: defaults, environment overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from nightshift.config import load_settings
from nightshift.errors import ConfigError, ModelNotFound

MINIMAL = """
[[models]]
name = "m1"
dataset = "data/features/m1"

[models.contract]
entity_id = "id"
columns = [{ name = "x", type = "float64" }, { name = "c", type = "string", nullable = false }]
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "nightshift.toml"
    p.write_text(text)
    return p


def test_the_repository_project_file_loads() -> None:
    settings = load_settings(Path(__file__).parents[2] / "nightshift.toml")
    assert settings.model("churn").contract.entity_id == "customer_id"


def test_defaults_and_resolved_locations(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, MINIMAL))
    assert s.resolved_store_url == f"sqlite:///{tmp_path / '.nightshift' / 'store.db'}"
    assert s.artifacts_uri == str(tmp_path / ".nightshift" / "models")
    m = s.model("m1")
    assert m.dataset_uri(s) == str(tmp_path / "data/features/m1")
    assert m.partition_key == "ds"
    assert m.estimator.kind == "logistic_regression"
    assert s.dask.scheduler_address is None
    assert [c.name for c in m.contract.numeric] == ["x"]
    assert [c.name for c in m.contract.categorical] == ["c"]


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_STORE_URL", "postgresql://u@db:5432/ns")
    monkeypatch.setenv("NIGHTSHIFT_DASK__SCHEDULER_ADDRESS", "tcp://sched:8786")
    monkeypatch.setenv("NIGHTSHIFT_DASK__N_WORKERS", "7")
    s = load_settings(_write(tmp_path, MINIMAL.replace("[[models]]", "[dask]\nn_workers = 3\n\n[[models]]")))
    assert s.resolved_store_url == "postgresql://u@db:5432/ns"
    assert s.dask.scheduler_address == "tcp://sched:8786"
    assert s.dask.n_workers == 7


def test_config_env_var_points_at_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_CONFIG", str(_write(tmp_path, MINIMAL)))
    assert load_settings().model("m1").name == "m1"


def test_a_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found: pass --config, set NIGHTSHIFT_CONFIG"):
        load_settings(tmp_path / "nope.toml")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nightshift.toml: not valid TOML"):
        load_settings(_write(tmp_path, "models = [\n"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            MINIMAL.replace('type = "float64"', 'type = "float128"'),
            r"models\[0\] \(m1\)\.contract\.columns\[0\] \(x\)\.type: Input should be .float64.",
        ),
        (MINIMAL.replace('name = "m1"', 'name = "Bad Name"'), r"models\[0\] \(Bad Name\)\.name"),
        (MINIMAL.replace('dataset = "data/features/m1"', ""), r"models\[0\] \(m1\)\.dataset: Field required"),
        (MINIMAL + "\n[dask]\nn_workers = 0\n", r"dask\.n_workers: Input should be greater than or equal to 1"),
        (MINIMAL + '\n[dask]\nscheduler_address = "sched:8786"\n', r"dask\.scheduler_address: .*tcp://host:8786"),
        (MINIMAL + "\nbogus_key = 1\n", r"bogus_key: Extra inputs are not permitted"),
        (
            MINIMAL.replace('{ name = "c", type = "string", nullable = false }', '{ name = "x", type = "string" }'),
            r"column 'x' is declared twice",
        ),
        (MINIMAL + MINIMAL.replace("[[models]]", "[[models]]"), r"model name\(s\) declared twice: m1"),
        (
            MINIMAL.replace("[models.contract]", '[models.estimator]\nkind = "catboost"\n\n[models.contract]'),
            r"models\[0\] \(m1\)\.estimator\.kind",
        ),
    ],
)
def test_invalid_settings_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_settings(_write(tmp_path, text))


def test_an_unknown_model_lists_the_declared_ones(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, MINIMAL))
    with pytest.raises(ModelNotFound, match=r"model 'nope' is not declared .*declared: m1"):
        s.model("nope")
