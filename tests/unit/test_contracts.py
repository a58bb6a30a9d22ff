"""Feature contracts against Arrow schemas, and the Arrow → model-input conversion."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from nightshift.contracts import Column, ColumnType, FeatureContract, schema_problems
from nightshift.data.features import MISSING_CATEGORY, entity_ids, model_frame, model_inputs, onnx_feeds
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


# -- column types: exact casts or refusals (features.onnx_feeds) ---------------------------------------


def _feed(values: pa.Array, declared: ColumnType, reads: str, nullable: bool = True) -> np.ndarray:
    """Column 'v' of `values`, declared `declared`, as a model reading `reads` ([N, 1] columns layout) gets it."""
    contract = FeatureContract(entity_id="id", columns=(Column(name="v", type=declared, nullable=nullable),))
    spec = {"layout": "columns", "features": ["v"], "element_types": {"v": reads}}
    feeds = onnx_feeds(pa.table({"v": values}), contract, spec, "f.parquet")
    assert feeds["v"].shape == (len(values), 1)
    return feeds["v"].ravel()


def test_integers_reach_a_float_input_only_when_exact() -> None:
    fits = pa.array([1, 2**24, 2**24 + 2, -(2**24)], pa.int64())
    np.testing.assert_array_equal(_feed(fits, ColumnType.int64, "float32"), [1, 2**24, 2**24 + 2, -(2**24)])
    inexact = pa.array([1, None, 2**24 + 1, 2**24 + 3], pa.int64())
    with pytest.raises(
        ContractError,
        match=r"^f\.parquet: column 'v' value 16777217 \(row 2\) cannot be represented exactly as float32, the type "
        r"the model reads; 2 such value\(s\) refused rather than rounded$",
    ):
        _feed(inexact, ColumnType.int64, "float32")
    # The same values are exact for a model that reads float64 (or int64).
    out = _feed(inexact, ColumnType.int64, "float64")
    assert out.dtype == np.float64
    assert out[2] == 2**24 + 1
    assert np.isnan(out[1])
    with pytest.raises(
        ContractError, match=r"value 9007199254740993 \(row 0\) cannot be represented exactly as float64"
    ):
        _feed(pa.array([2**53 + 1], pa.int64()), ColumnType.int64, "float64")
    big = pa.array([2**63 - 1, -(2**63)], pa.int64())
    np.testing.assert_array_equal(_feed(big, ColumnType.int64, "int64"), [2**63 - 1, -(2**63)])
    with pytest.raises(ContractError, match=r"value 9223372036854775807 \(row 0\) cannot be represented exactly"):
        _feed(big, ColumnType.int64, "float64")
    with pytest.raises(ContractError, match=r"value 18446744073709551615 \(row 0\)"):
        _feed(pa.array([2**64 - 1], pa.uint64()), ColumnType.int64, "float64")
    # nightshift's own layout (float32 for every numeric) follows the same rule.
    contract = FeatureContract(entity_id="id", columns=(Column(name="v", type=ColumnType.int64),))
    with pytest.raises(ContractError, match=r"column 'v' value 16777217 \(row 2\) cannot be represented exactly"):
        model_inputs(pa.table({"v": inexact}), contract, "f.parquet")


@pytest.mark.parametrize(
    ("declared", "arrow"),
    [
        (ColumnType.int8, pa.int8()),
        (ColumnType.int16, pa.int16()),
        (ColumnType.int32, pa.int32()),
        (ColumnType.int64, pa.int64()),
    ],
)
def test_integer_columns_of_every_width(declared: ColumnType, arrow: pa.DataType) -> None:
    low, high = declared.integer_range or (0, 0)
    values = pa.array([-5, None, 7], arrow)
    as_float = _feed(values, declared, "float32")
    assert as_float[0] == -5
    assert np.isnan(as_float[1])
    assert as_float[2] == 7
    # An integer input has no missing value: a null is refused even in a nullable column.
    with pytest.raises(
        ContractError, match=rf"column 'v' has 1 null value\(s\) but the model reads it as {declared.value}, "
    ):
        _feed(values, declared, declared.value)
    with pytest.raises(
        ContractError, match=r"^f\.parquet: column 'v' has 1 null value\(s\) but the contract says not nullable$"
    ):
        _feed(values, declared, "float32", nullable=False)
    exact = _feed(pa.array([low, high], arrow), declared, declared.value, nullable=False)
    assert exact.dtype == np.dtype(declared.value)
    assert exact.tolist() == [low, high]
    assert (
        schema_problems(
            FeatureContract(entity_id="id", columns=(Column(name="v", type=declared),)),
            pa.schema([("id", pa.int64()), ("v", arrow)]),
        )
        == []
    )


def test_wider_integer_data_must_fit_the_declared_type_and_the_model_input() -> None:
    with pytest.raises(
        ContractError, match=r"column 'v' value 300 \(row 1\) is outside the range of its declared type int8"
    ):
        _feed(pa.array([1, 300], pa.int64()), ColumnType.int8, "float32")
    with pytest.raises(
        ContractError, match=r"column 'v' value 40000 \(row 0\) does not fit int16, the type the model reads"
    ):
        _feed(pa.array([40000], pa.int64()), ColumnType.int64, "int16", nullable=False)


def test_floats_reach_an_integer_input_only_when_whole_and_present() -> None:
    np.testing.assert_array_equal(_feed(pa.array([1.0, -2.0]), ColumnType.float64, "int64", nullable=False), [1, -2])
    with pytest.raises(
        ContractError, match=r"column 'v' value 2\.5 \(row 1\) is not a whole number and the model reads int64"
    ):
        _feed(pa.array([1.0, 2.5]), ColumnType.float64, "int64", nullable=False)
    with pytest.raises(ContractError, match=r"column 'v' has 1 NaN value\(s\) but the model reads it as int32"):
        _feed(pa.array([1.0, float("nan")]), ColumnType.float64, "int32", nullable=False)
    with pytest.raises(ContractError, match=r"value 1000\.0 \(row 0\) does not fit int8"):
        _feed(pa.array([1000.0]), ColumnType.float64, "int8", nullable=False)


def test_float_columns() -> None:
    f32 = pa.array([0.1, None, 3.5], pa.float32())
    out = _feed(f32, ColumnType.float32, "float32")
    assert out.dtype == np.float32
    assert out[0] == np.float32(0.1)
    assert np.isnan(out[1])
    widened = _feed(f32, ColumnType.float32, "float64")
    assert widened.dtype == np.float64
    assert widened[0] == float(np.float32(0.1))
    exact = _feed(pa.array([0.1, 1e300]), ColumnType.float64, "float64")
    assert exact.tolist() == [0.1, 1e300]
    with pytest.raises(ContractError, match=r"beyond the float32 range the model reads \(e\.g\. 1e\+300\)"):
        _feed(pa.array([0.1, 1e300]), ColumnType.float64, "float32")
    with pytest.raises(ContractError, match=r"column 'v' has 1 NaN value\(s\) but the contract says not nullable"):
        _feed(pa.array([0.1, float("nan")]), ColumnType.float64, "float32", nullable=False)


def test_bool_columns_feed_zero_and_one() -> None:
    values = pa.array([True, False, None, True])
    out = _feed(values, ColumnType.boolean, "float32")
    assert out[[0, 1, 3]].tolist() == [1.0, 0.0, 1.0]
    assert np.isnan(out[2])
    sliced = values.slice(1)  # an offset into the bitmap
    assert _feed(sliced, ColumnType.boolean, "float64")[[0, 2]].tolist() == [0.0, 1.0]
    assert _feed(pa.array([True, False]), ColumnType.boolean, "bool", nullable=False).tolist() == [True, False]
    assert _feed(pa.array([True, False]), ColumnType.boolean, "int8", nullable=False).tolist() == [1, 0]
    with pytest.raises(ContractError, match=r"column 'v' has 1 null value\(s\) but the model reads it as bool"):
        _feed(values, ColumnType.boolean, "bool")
    assert _feed(pa.array([0, 1], pa.int64()), ColumnType.int64, "bool", nullable=False).tolist() == [False, True]
    with pytest.raises(ContractError, match=r"column 'v' value 2 \(row 1\) is not 0 or 1 and the model reads bool"):
        _feed(pa.array([0, 2], pa.int64()), ColumnType.int64, "bool", nullable=False)


def test_string_and_category_columns() -> None:
    plain = pa.array(["a", None, "b"])
    for declared in (ColumnType.string, ColumnType.category):
        assert declared.is_categorical
        for data in (plain, plain.dictionary_encode()):
            assert _feed(data, declared, "string").tolist() == ["a", MISSING_CATEGORY, "b"]
        with pytest.raises(ContractError, match=r"column 'v' has 1 null value\(s\) but the contract says not nullable"):
            _feed(plain.dictionary_encode(), declared, "string", nullable=False)
    contract = FeatureContract(entity_id="id", columns=(Column(name="v", type=ColumnType.category),))
    ok = pa.schema([("id", pa.int64()), ("v", pa.dictionary(pa.int32(), pa.string()))])
    assert schema_problems(contract, ok) == []
    assert schema_problems(contract, pa.schema([("id", pa.int64()), ("v", pa.string())])) == []
    assert "column 'v' has type int64, expected category" in schema_problems(
        contract, pa.schema([("id", pa.int64()), ("v", pa.int64())])
    )


def test_categories_become_codes_with_nan_for_null_and_unseen() -> None:
    contract = FeatureContract(entity_id="id", columns=(Column(name="plan", type=ColumnType.category),))
    spec = {
        "layout": "matrix",
        "features": ["plan"],
        "element_types": {"input": "float32"},
        "categories": {"plan": ["basic", "premium"]},
    }
    data = pa.array(["premium", "gold", None, "basic"])
    for arr in (data, data.dictionary_encode()):
        out = onnx_feeds(pa.table({"plan": arr}), contract, spec, "f")["input"].ravel()
        assert out[[0, 3]].tolist() == [1.0, 0.0]
        assert np.isnan(out[1])
        assert np.isnan(out[2])
    with pytest.raises(ContractError, match="only float codes"):
        onnx_feeds(pa.table({"plan": data}), contract, {**spec, "element_types": {"input": "int64"}}, "f")


def test_matrix_layout_follows_the_feature_order() -> None:
    table = _table(x=pa.array([0.5, None, 2.0]))
    spec = {"layout": "matrix", "features": ["n", "x"], "element_types": {"X": "float64"}}
    feeds = onnx_feeds(table, CONTRACT, spec, "f.parquet")
    assert list(feeds) == ["X"]
    assert feeds["X"].dtype == np.float64
    assert feeds["X"].flags.c_contiguous
    np.testing.assert_array_equal(feeds["X"], [[1, 0.5], [2, np.nan], [3, 2.0]])
    with pytest.raises(ContractError, match=r"^f\.parquet: missing column 'x'$"):
        onnx_feeds(table.drop_columns(["x"]), CONTRACT, spec, "f.parquet")
    with pytest.raises(ContractError, match=r"the model reads column 'z', which the feature contract does not declare"):
        onnx_feeds(table, CONTRACT, {**spec, "features": ["n", "z"]}, "f.parquet")
    with pytest.raises(
        ContractError, match=r"column 'c' is string but the model reads it as float64 and records no categories"
    ):
        onnx_feeds(table, CONTRACT, {**spec, "features": ["c"]}, "f.parquet")
    with pytest.raises(ContractError, match=r"column 'x' is float64 but the model reads it as string"):
        onnx_feeds(table, CONTRACT, {"layout": "columns", "features": ["x"], "element_types": {"x": "string"}}, "f")


def test_onnx_feeds_in_nightshift_layout_equal_model_inputs() -> None:
    spec = {
        "layout": "columns",
        "features": CONTRACT.feature_names,
        "element_types": {"x": "float32", "n": "float32", "c": "string"},
    }
    feeds = onnx_feeds(_table(), CONTRACT, spec, "f")
    expected = model_inputs(_table(), CONTRACT, "f")
    assert feeds.keys() == expected.keys()
    for name in feeds:
        np.testing.assert_array_equal(feeds[name], expected[name])
