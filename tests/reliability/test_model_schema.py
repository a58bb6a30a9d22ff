"""A model whose ONNX inputs do not fit the feature contract: refused when it is loaded, before any data is read."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from nightshift.db import open_store
from nightshift.errors import ModelSchemaError
from nightshift.models import open_registry
from nightshift.scoring import score_partition
from tests.conftest import SCORE_DS
from tests.reliability.conftest import MODEL, catalog_run, committed, partition_dir, runs


@pytest.fixture(scope="session")
def other_contract_onnx(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real model, trained on a neighbouring contract: monthly_charges renamed monthly_fee, plan dropped."""
    from nightshift.config import TrainingSettings, load_settings
    from nightshift.contracts import FeatureContract
    from nightshift.training import train
    from nightshift.training.dataset import build_training_set
    from tests.conftest import write_project

    folder = tmp_path_factory.mktemp("other_contract")
    settings = load_settings(write_project(folder, f"sqlite:///{folder / 'unused.db'}", demo_root))
    cfg = settings.model(MODEL)
    tset = build_training_set(settings, cfg, date(2026, 11, 17))
    table = tset.table.drop_columns(["plan"])
    table = table.rename_columns(["monthly_fee" if n == "monthly_charges" else n for n in table.column_names])
    columns = []
    for c in cfg.contract.columns:
        if c.name == "plan":
            continue
        columns.append(c.model_copy(update={"name": "monthly_fee"}) if c.name == "monthly_charges" else c)
    contract = FeatureContract(
        entity_id=cfg.contract.entity_id, entity_id_type=cfg.contract.entity_id_type, columns=tuple(columns)
    )
    trained = train(
        table,
        tset.labels,
        contract,
        cfg.estimator,
        TrainingSettings(max_rows=2000, parity_rows=200, window_days=2),
        cfg.decision_threshold,
    )
    return bytes(trained.onnx_bytes)


def _edited(onnx_bytes: bytes, kind: str) -> bytes:
    """The demo model with its `age` input changed: a string tensor, or a [N, 2] tensor."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    (node_input,) = [i for i in graph.input if i.name == "age"]
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == "age":
                node.input[k] = "age_inner"
    if kind == "string_input":
        node_input.type.tensor_type.elem_type = TensorProto.STRING
        graph.node.insert(0, helper.make_node("Cast", ["age"], ["age_inner"], to=TensorProto.FLOAT))
    else:
        node_input.type.tensor_type.shape.dim[1].dim_value = 2
        graph.initializer.extend(
            [
                helper.make_tensor("age_start", TensorProto.INT64, [1], [0]),
                helper.make_tensor("age_end", TensorProto.INT64, [1], [1]),
                helper.make_tensor("age_axis", TensorProto.INT64, [1], [1]),
            ]
        )
        graph.node.insert(0, helper.make_node("Slice", ["age", "age_start", "age_end", "age_axis"], ["age_inner"]))
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _register_champion(settings: Any, onnx_bytes: bytes, trained_model: Any) -> Any:
    registry = open_registry(settings)
    mv = registry.register_trained(
        MODEL,
        dataclasses.replace(trained_model, onnx_bytes=onnx_bytes),
        settings.model(MODEL).contract,
        training_data={"rows": trained_model.train_rows},
        decision_threshold=0.5,
    )
    registry.set_alias(MODEL, "champion", mv.version, reason="a model for another contract")
    return mv


EXPECTED_PROBLEMS = {
    "other_contract": [
        "no input named 'monthly_charges'",
        "no input named 'plan'",
        "inputs not in the contract: monthly_fee",
    ],
    "string_input": ["input 'age' is tensor(string), the contract needs tensor(float)"],
    "wide_input": ["input 'age' has shape [", ", 2], expected [N, 1]"],
}


@pytest.mark.parametrize("kind", sorted(EXPECTED_PROBLEMS))
def test_a_model_that_does_not_fit_the_contract_is_refused_at_load_before_reading_data(
    store_url: str,
    make_settings: Any,
    registered: Any,
    dask_client: Any,
    data_root: Path,
    trained_model: Any,
    other_contract_onnx: bytes,
    kind: str,
) -> None:
    settings = make_settings(store_url)
    registered(settings)
    first = score_partition(settings, MODEL, SCORE_DS, client=dask_client)
    store = open_store(settings)
    before = committed(store)
    onnx_bytes = other_contract_onnx if kind == "other_contract" else _edited(trained_model.onnx_bytes, kind)
    bad = _register_champion(settings, onnx_bytes, trained_model)
    # Make the data unreadable too: had the data been read first, that error would come first.
    part = partition_dir(data_root)
    (part / "_SUCCESS").unlink()
    for f in part.glob("*.parquet"):
        f.write_bytes(b"not parquet")
    with pytest.raises(ModelSchemaError) as err:
        score_partition(settings, MODEL, SCORE_DS, client=dask_client)
    msg = str(err.value)
    assert f"model {MODEL} v{bad.version} ({bad.artifact_uri}): the model does not match the feature contract" in msg
    for problem in EXPECTED_PROBLEMS[kind]:
        assert problem in msg, msg
    # Nothing started, nothing written: version 1's predictions still serve.
    assert [r["run_id"] for r in runs(store)] == [first.run_id]
    assert catalog_run(store) == first.run_id
    assert committed(store) == before
    assert store.partition(MODEL, bad.version, SCORE_DS) is None
