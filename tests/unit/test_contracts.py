"""Feature contracts against Arrow schemas, and the Arrow → model-input conversion."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from nightshift.contracts import Column, ColumnType, FeatureContract, schema_problems
from nightshift.data.features import MISSING_CATEGORY, entity_ids, model_frame, model_inputs
from nightshift.errors import ContractError

CONTRACT = FeatureContract(
    entity_id="id",
    columns=(
        Column(name="x", type=ColumnType.float64),
        Column(name="n", type=ColumnType.int64, nullable=False),
        Column(name="c", type=ColumnType.string),
    ),
)


def _table(**overrides: pa.Array) -> pa.Table:
    cols = {
        "id": pa.array([1, 2, 3], pa.int64()),
        "x": pa.array([0.5, None, 2.0]),
        "n": pa.array([1, 2, 3], pa.int64()),
        "c": pa.array(["a", None, "b"]),
    }
    cols.update(overrides)
    return pa.table(cols)


def test_a_matching_schema_has_no_problems() -> None:
    assert schema_problems(CONTRACT, _table().schema) == []
    # Integers where floats are declared are accepted (cast exactly), and extra columns ignored.
    assert schema_problems(CONTRACT, _table(x=pa.array([1, 2, 3]), extra=pa.array([1, 2, 3])).schema) == []


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (_table().drop_columns(["x"]), "missing column 'x' (expected float64)"),
        (_table().drop_columns(["id"]), "missing entity id column 'id'"),
        (_table(x=pa.array(["1", "2", "3"])), "column 'x' has type string, expected float64"),
        (_table(n=pa.array([1.5, 2.0, 3.0])), "column 'n' has type double, expected int64"),
        (_table(c=pa.array([1, 2, 3])), "column 'c' has type int64, expected string"),
        (_table(id=pa.array(["a", "b", "c"])), "entity id column 'id' has type string, expected int64"),
        (_table(n=pa.nulls(3)), "column 'n' is entirely null but the contract says not nullable"),
    ],
)
def test_schema_problems_name_the_column(table: pa.Table, expected: str) -> None:
    assert expected in schema_problems(CONTRACT, table.schema)


def test_check_schema_names_the_source() -> None:
    with pytest.raises(ContractError, match=r"^f\.parquet: missing column 'x'"):
        CONTRACT.check_schema(_table().drop_columns(["x"]).schema, "f.parquet")


def test_extra_columns_can_be_an_error() -> None:
    strict = CONTRACT.model_copy(update={"extra_columns": "error"})
    assert "unexpected column(s) 'extra'" in " ".join(schema_problems(strict, _table(extra=pa.array([1, 2, 3])).schema))


def test_all_null_column_of_arrow_null_type_is_missing_not_an_error() -> None:
    feeds = model_inputs(_table(x=pa.nulls(3), c=pa.nulls(3)), CONTRACT)
    assert np.isnan(feeds["x"]).all()
    assert list(feeds["c"].ravel()) == [MISSING_CATEGORY] * 3


def test_model_inputs_shapes_types_and_missing_values() -> None:
    feeds = model_inputs(_table(), CONTRACT)
    assert set(feeds) == {"x", "n", "c"}
    assert feeds["x"].dtype == np.float32
    assert feeds["x"].shape == (3, 1)
    assert np.isnan(feeds["x"][1, 0])
    assert feeds["c"].dtype == object
    assert list(feeds["c"].ravel()) == ["a", MISSING_CATEGORY, "b"]
    # Dictionary-encoded strings (as read from Parquet) give the same values.
    dict_feeds = model_inputs(_table(c=pa.array(["a", None, "b"]).dictionary_encode()), CONTRACT)
    assert list(dict_feeds["c"].ravel()) == list(feeds["c"].ravel())
    frame = model_frame(_table(), CONTRACT)
    assert list(frame.columns) == ["x", "n", "c"]


def test_nulls_in_a_not_nullable_column_are_refused() -> None:
    with pytest.raises(ContractError, match=r"f: column 'n' has 1 null value\(s\) but the contract says not nullable"):
        model_inputs(_table(n=pa.array([1, None, 3], pa.int64())), CONTRACT, "f")


def test_uncastable_values_are_not_silently_nan() -> None:
    with pytest.raises(ContractError, match="column 'x' has type string"):
        model_inputs(_table(x=pa.array(["1.0", "oops", "2"])), CONTRACT, "f")


def test_entity_ids_become_text_and_nulls_are_refused() -> None:
    assert entity_ids(_table(), CONTRACT).to_pylist() == ["1", "2", "3"]
    with pytest.raises(ContractError, match=r"entity id column 'id' has 1 null"):
        entity_ids(_table(id=pa.array([1, None, 3], pa.int64())), CONTRACT, "f")


def test_contract_validation() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        FeatureContract(columns=(Column(name="a", type=ColumnType.float64), Column(name="a", type=ColumnType.string)))
    with pytest.raises(ValueError, match="must not also be a feature"):
        FeatureContract(entity_id="a", columns=(Column(name="a", type=ColumnType.float64),))
