"""Arrow data → model inputs, identical for training (scikit-learn) and scoring (ONNX Runtime).

`model_inputs` feeds the models nightshift trains (one [N, 1] float32 or string tensor per column);
`onnx_feeds` feeds any model by its input spec (per-column or one [N, F] matrix, any element type).
Every cast is exact or refused with the file, column and value named: never a silent NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nightshift.contracts import Column, FeatureContract
from nightshift.errors import ContractError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: What a null categorical value becomes before it reaches the model. The model's
#: one-hot encoder learns it as a category of its own when training data has nulls,
#: and ignores it (all zeros) otherwise, exactly like an unseen category.
MISSING_CATEGORY = "__missing__"


def numpy_values(arr: pa.Array, dtype: str) -> np.ndarray:
    """A primitive Arrow array's values as a read-only numpy view (`dtype` like '<f4'; nulls hold junk).

    pyarrow's own `to_numpy` goes through its pandas conversion layer and imports pandas on the
    first call: 0.2-0.7 s in every fresh Dask worker for a module scoring never needs.
    """
    dt = np.dtype(dtype)
    buf = arr.buffers()[1]
    if buf is None or len(arr) == 0:
        return np.zeros(0, dt)
    return np.frombuffer(buf, dtype=dt, count=len(arr), offset=arr.offset * dt.itemsize)


def dictionary_codes(col: pa.DictionaryArray) -> np.ndarray:
    """A dictionary array's codes as intp, a null coded as len(dictionary): index an array of the dictionary's
    values with one more entry at the end (the missing category) to decode it without per-row objects."""
    indices = col.indices
    kind = "i" if pa.types.is_signed_integer(indices.type) else "u"
    codes = numpy_values(indices, f"<{kind}{indices.type.bit_width // 8}").astype(np.intp)
    nulls = null_mask(indices)
    if nulls is not None:
        codes[nulls] = len(col.dictionary)
    return codes


def null_mask(arr: pa.Array) -> np.ndarray | None:
    """True where `arr` is null, or None when it has no nulls."""
    bits = arr.buffers()[0]
    if not arr.null_count or bits is None:
        return None
    valid = np.unpackbits(np.frombuffer(bits, np.uint8), count=arr.offset + len(arr), bitorder="little")
    return valid[arr.offset :] == 0


#: ONNX element types a model input can have, by the names InputSpec uses, and their numpy dtypes.
FLOAT_ELEMENT_TYPES: dict[str, str] = {"float32": "<f4", "float64": "<f8"}
INTEGER_ELEMENT_TYPES: dict[str, str] = {
    "int8": "<i1",
    "int16": "<i2",
    "int32": "<i4",
    "int64": "<i8",
    "uint8": "<u1",
    "uint16": "<u2",
    "uint32": "<u4",
    "uint64": "<u8",
}
ELEMENT_TYPES: tuple[str, ...] = (*FLOAT_ELEMENT_TYPES, *INTEGER_ELEMENT_TYPES, "bool", "string")

#: Mantissa bits (with the implicit one) of each float type: integers up to 2**bits are exact.
_MANTISSA_BITS = {"float32": 24, "float64": 53}


class FeedSpec(Protocol):
    """How a model's ONNX inputs are fed (nightshift.models.importing.InputSpec satisfies it).

    layout "columns": one [N, 1] input per feature, named after the contract column;
    "matrix": one [N, F] input whose columns are `features` in order. `element_types` maps each
    ONNX input name to its element type (one of ELEMENT_TYPES); `categories` maps a categorical
    column fed as numbers to its categories in code order (code = position; unseen or null: NaN).
    """

    @property
    def layout(self) -> str: ...

    @property
    def features(self) -> Sequence[str]: ...

    @property
    def element_types(self) -> Mapping[str, str]: ...

    @property
    def categories(self) -> Mapping[str, Sequence[str]]: ...


def _plain(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _values(arr: pa.Array) -> np.ndarray:
    """A numeric or boolean Arrow array's values as numpy (nulls hold junk)."""
    t = arr.type
    if pa.types.is_boolean(t):
        buf = arr.buffers()[1]
        if buf is None or len(arr) == 0:
            return np.zeros(0, np.bool_)
        bits = np.unpackbits(np.frombuffer(buf, np.uint8), count=arr.offset + len(arr), bitorder="little")
        return bits[arr.offset :].view(np.bool_)
    if pa.types.is_integer(t):
        kind = "i" if pa.types.is_signed_integer(t) else "u"
        return numpy_values(arr, f"<{kind}{t.bit_width // 8}")
    return numpy_values(arr, f"<f{t.bit_width // 8}")


def _where(source: str, name: str) -> str:
    return f"{source}: column {name!r}"


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _refuse_nulls(col: pa.Array, spec: Column, source: str) -> None:
    if col.null_count and not spec.nullable:
        raise ContractError(
            f"{source}: column {spec.name!r} has {col.null_count} null value(s) but the contract says not nullable"
        )


def _check_declared_range(values: np.ndarray, nulls: np.ndarray | None, spec: Column, source: str) -> None:
    """Integer data wider than the declared integer type: every value must fit the declared type."""
    bounds = spec.type.integer_range
    if bounds is None or values.dtype.kind not in "iu" or not len(values):
        return
    lo, hi = bounds
    info = np.iinfo(values.dtype)
    if info.min >= lo and info.max <= hi:  # the data's type cannot hold a value outside the declared one
        return
    outside = (values > hi) if values.dtype.kind == "u" else ((values < lo) | (values > hi))
    if nulls is not None:
        outside &= ~nulls
    if outside.any():
        row = _first(outside)
        raise ContractError(
            f"{_where(source, spec.name)} value {int(values[row])} (row {row}) is outside the range of its "
            f"declared type {spec.type.value}; {int(outside.sum())} such value(s)"
        )


def _inexact_integers(values: np.ndarray, nulls: np.ndarray | None, float_type: str) -> np.ndarray | None:
    """Rows whose integer value the float type cannot hold exactly, or None when all fit."""
    bits = _MANTISSA_BITS[float_type]
    width = values.dtype.itemsize * 8 - (1 if values.dtype.kind == "i" else 0)
    if width <= bits:
        return None
    limit = 1 << bits
    big = (values > limit) if values.dtype.kind == "u" else ((values > limit) | (values < -limit))
    if nulls is not None:
        big &= ~nulls
    if not big.any():
        return None
    rows = np.flatnonzero(big)
    wide = values[rows]
    rounded = wide.astype(FLOAT_ELEMENT_TYPES[float_type]).astype(np.float64)  # widening is exact
    top = 2.0**64 if values.dtype.kind == "u" else 2.0**63
    fits = (rounded < top) & (rounded >= (0.0 if values.dtype.kind == "u" else -top))
    back = np.zeros_like(wide)
    back[fits] = rounded[fits].astype(wide.dtype)
    bad = rows[~(fits & (back == wide))]
    return bad if len(bad) else None


def _as_float(col: pa.Array, spec: Column, float_type: str, source: str) -> np.ndarray:
    """A numeric/boolean column as float32/float64 values, nulls as NaN: exact, or refused."""
    dtype = np.dtype(FLOAT_ELEMENT_TYPES[float_type])
    t = col.type
    if pa.types.is_null(t):
        _refuse_nulls(col, spec, source)
        return np.full(len(col), np.nan, dtype=dtype)
    _refuse_nulls(col, spec, source)
    nulls = null_mask(col)
    if pa.types.is_floating(t):
        if t.bit_width // 8 == dtype.itemsize:
            out = numpy_values(col, dtype.str)
        elif dtype == np.float32 and pa.types.is_float64(t):
            # Arrow rounds to the nearest float32 in C++: the precision the model reads.
            out = numpy_values(pc.cast(col, pa.float32(), safe=False), "<f4")
        else:
            out = _values(col).astype(dtype)
        if nulls is not None:
            out = out.copy()
            out[nulls] = np.nan
        if not spec.nullable:
            nan = int(np.isnan(out).sum())
            if nan > 0:
                raise ContractError(
                    f"{source}: column {spec.name!r} has {nan} NaN value(s) but the contract says not nullable"
                )
        if dtype == np.float32 and not pa.types.is_float32(t):
            infinite = np.isinf(out)
            if infinite.any():
                original = _values(col).astype(np.float64)[infinite]
                finite = original[np.isfinite(original)]
                if len(finite):
                    raise ContractError(
                        f"{source}: column {spec.name!r} has {len(finite)} value(s) beyond the float32 range the model "
                        f"reads (e.g. {float(finite[0])!r}); refusing them rather than scoring infinity"
                    )
        return out
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        values = _values(col)
        if pa.types.is_integer(t):
            _check_declared_range(values, nulls, spec, source)
            bad = _inexact_integers(values, nulls, float_type)
            if bad is not None:
                row = int(bad[0])
                raise ContractError(
                    f"{_where(source, spec.name)} value {int(values[row])} (row {row}) cannot be represented exactly "
                    f"as {float_type}, the type the model reads; {len(bad)} such value(s) refused rather than rounded"
                )
        out = values.astype(dtype)
        if nulls is not None:
            out[nulls] = np.nan
        return out
    raise ContractError(f"{_where(source, spec.name)} has type {t}, expected {spec.type.value}")


def _no_missing(col: pa.Array, spec: Column, element_type: str, source: str) -> None:
    missing = len(col) if pa.types.is_null(col.type) else col.null_count
    if missing:
        raise ContractError(
            f"{_where(source, spec.name)} has {missing} null value(s) but the model reads it as {element_type}, "
            "which has no missing value"
        )


def _as_integer(col: pa.Array, spec: Column, element_type: str, source: str) -> np.ndarray:
    """A numeric/boolean column as an integer type: whole values in range, no nulls — or refused."""
    dtype = np.dtype(INTEGER_ELEMENT_TYPES[element_type])
    _refuse_nulls(col, spec, source)
    _no_missing(col, spec, element_type, source)
    t = col.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise ContractError(f"{_where(source, spec.name)} has type {t}, expected {spec.type.value}")
    values = _values(col)
    if not len(values):
        return values.astype(dtype)
    if values.dtype.kind == "f":
        nan = np.isnan(values)
        if nan.any():
            raise ContractError(
                f"{_where(source, spec.name)} has {int(nan.sum())} NaN value(s) but the model reads it as "
                f"{element_type}, which has no missing value"
            )
        fraction = values != np.trunc(values)
        if fraction.any():
            row = _first(fraction)
            raise ContractError(
                f"{_where(source, spec.name)} value {float(values[row])!r} (row {row}) is not a whole number and "
                f"the model reads {element_type}; {int(fraction.sum())} such value(s) refused rather than truncated"
            )
    if values.dtype.kind in "iu":
        _check_declared_range(values, None, spec, source)
    info = np.iinfo(dtype)
    if values.dtype.kind != "b":
        low, high = values.min(), values.max()
        if low < info.min or high > info.max:
            outside = (values < info.min) | (values > info.max)
            row = _first(outside)
            shown = float(values[row]) if values.dtype.kind == "f" else int(values[row])
            raise ContractError(
                f"{_where(source, spec.name)} value {shown!r} (row {row}) does not fit {element_type}, the type the "
                f"model reads; {int(outside.sum())} such value(s)"
            )
    return values.astype(dtype)


def _as_bool(col: pa.Array, spec: Column, source: str) -> np.ndarray:
    """A column as bool: booleans, or numbers that are exactly 0 or 1 — else refused."""
    _refuse_nulls(col, spec, source)
    _no_missing(col, spec, "bool", source)
    t = col.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise ContractError(f"{_where(source, spec.name)} has type {t}, expected {spec.type.value}")
    values = _values(col)
    if values.dtype.kind == "b":
        return values.copy()
    other = (values != 0) & (values != 1)
    if other.any():
        row = _first(other)
        raise ContractError(
            f"{_where(source, spec.name)} value {values[row].item()!r} (row {row}) is not 0 or 1 and the model "
            "reads bool"
        )
    return values != 0


def _numeric(col: pa.ChunkedArray | pa.Array, spec: Column, source: str, element_type: str = "float32") -> np.ndarray:
    """A numeric contract column as the model's element type (exact or refused)."""
    col = _plain(col)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    t = col.type
    if not (pa.types.is_null(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise ContractError(f"{source}: column {spec.name!r} has type {col.type}, expected {spec.type.value}")
    if element_type in FLOAT_ELEMENT_TYPES:
        return _as_float(col, spec, element_type, source)
    if element_type in INTEGER_ELEMENT_TYPES:
        return _as_integer(col, spec, element_type, source)
    if element_type == "bool":
        return _as_bool(col, spec, source)
    raise ContractError(
        f"{_where(source, spec.name)} is {spec.type.value} but the model reads it as {element_type}: "
        "no exact conversion"
    )


def _categorical(col: pa.ChunkedArray | pa.Array, spec: Column, source: str) -> np.ndarray:
    col = _plain(col)
    if pa.types.is_null(col.type):
        _refuse_nulls(col, spec, source)
        return np.full(len(col), MISSING_CATEGORY, dtype=object)
    _refuse_nulls(col, spec, source)
    if pa.types.is_dictionary(col.type):
        # Index the (small) dictionary by the codes: no per-row Python objects are built.
        dictionary = np.asarray([*col.dictionary.to_pylist(), MISSING_CATEGORY], dtype=object)
        return dictionary[dictionary_codes(col)]
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise ContractError(f"{source}: column {spec.name!r} has type {col.type}, expected string")
    encoded = pc.dictionary_encode(col)
    return _categorical(encoded, spec, source)


def _codes(
    col: pa.ChunkedArray | pa.Array, spec: Column, categories: Sequence[str], element_type: str, source: str
) -> np.ndarray:
    """A categorical column as float category codes: the value's position in `categories`, NaN when null or unseen.

    This is what LightGBM does with a pandas categorical column: the training categories give the
    codes, and any other value (or a null) is missing.
    """
    if element_type not in FLOAT_ELEMENT_TYPES:
        raise ContractError(
            f"{_where(source, spec.name)} is categorical and the model reads its category codes as {element_type}: "
            "only float codes (NaN for a null or unseen category) are supported"
        )
    dtype = np.dtype(FLOAT_ELEMENT_TYPES[element_type])
    col = _plain(col)
    _refuse_nulls(col, spec, source)
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan, dtype=dtype)
    value_set = pa.array(list(categories), pa.string())

    def lookup(values: pa.Array) -> np.ndarray:
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            raise ContractError(f"{_where(source, spec.name)} has type {col.type}, expected {spec.type.value}")
        found = pc.index_in(values.cast(pa.string()) if pa.types.is_large_string(values.type) else values, value_set)
        out = numpy_values(found, "<i4").astype(dtype)
        unseen = null_mask(found)
        if unseen is not None:
            out[unseen] = np.nan
        return out

    if pa.types.is_dictionary(col.type):
        per_entry = np.append(lookup(col.dictionary), np.array(np.nan, dtype))
        return per_entry[dictionary_codes(col)]
    return lookup(col)


def _column(data: pa.Table | pa.RecordBatch, name: str, source: str) -> pa.ChunkedArray | pa.Array:
    try:
        return data.column(name)
    except KeyError:
        raise ContractError(f"{source}: missing column {name!r}") from None


def model_inputs(
    data: pa.Table | pa.RecordBatch, contract: FeatureContract, source: str = "input"
) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds: one [N, 1] tensor per feature, float32 or string, named after the column.

    The layout of the models nightshift trains. Numbers are cast to float32 exactly or refused
    (an integer float32 cannot hold is refused; a float64 is rounded to the nearest float32, the
    model's precision); nulls become NaN, null categories "__missing__".
    """
    feeds: dict[str, np.ndarray] = {}
    for spec in contract.columns:
        col = _column(data, spec.name, source)
        if spec.type.is_categorical:
            feeds[spec.name] = _categorical(col, spec, source).reshape(-1, 1)
        else:
            feeds[spec.name] = _numeric(col, spec, source).reshape(-1, 1)
    return feeds


def _feed_spec(
    inputs: Mapping[str, Any] | FeedSpec,
) -> tuple[str, Sequence[str], Mapping[str, str], Mapping[str, Sequence[str]]]:
    if isinstance(inputs, Mapping):
        try:
            layout, features, types = inputs["layout"], inputs["features"], inputs["element_types"]
        except KeyError as exc:
            raise ContractError(f"model input spec lacks {exc.args[0]!r}") from None
        categories = inputs.get("categories") or {}
    else:
        layout, features, types, categories = inputs.layout, inputs.features, inputs.element_types, inputs.categories
    if layout not in ("columns", "matrix"):
        raise ContractError(f"unknown model input layout {layout!r} (expected 'columns' or 'matrix')")
    if layout == "matrix" and len(types) != 1:
        raise ContractError(f"a 'matrix' model input spec needs exactly one input, got {', '.join(types) or 'none'}")
    return layout, features, types, categories


def _feature(
    data: pa.Table | pa.RecordBatch,
    columns: Mapping[str, Column],
    name: str,
    element_type: str,
    categories: Mapping[str, Sequence[str]],
    source: str,
) -> np.ndarray:
    spec = columns.get(name)
    if spec is None:
        raise ContractError(f"{source}: the model reads column {name!r}, which the feature contract does not declare")
    col = _column(data, name, source)
    if spec.type.is_categorical:
        if name in categories:
            return _codes(col, spec, categories[name], element_type, source)
        if element_type != "string":
            raise ContractError(
                f"{_where(source, name)} is {spec.type.value} but the model reads it as {element_type} and records no "
                "categories to encode it with"
            )
        return _categorical(col, spec, source)
    if element_type == "string":
        raise ContractError(f"{_where(source, name)} is {spec.type.value} but the model reads it as string")
    return _numeric(col, spec, source, element_type)


def onnx_feeds(
    data: pa.Table | pa.RecordBatch,
    contract: FeatureContract,
    inputs: Mapping[str, Any] | FeedSpec,
    source: str,
) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds for a model's own input layout (see FeedSpec), every value cast exactly or refused.

    "columns": one [N, 1] tensor per feature, of that input's element type. "matrix": one [N, F]
    tensor, its columns the features in order. Casts: integers to float only where the float holds
    them exactly; float64 to float32 rounds to the nearest float32 (the model's precision), beyond
    its range is refused; floats to integers only whole and in range; bool as 0/1; numbers to bool
    only 0/1. Nulls: NaN for float inputs, "__missing__" for string inputs, refused for integer and
    bool inputs (they have no missing value) and for columns the contract says are not nullable.
    Categorical columns with `categories` become float codes (NaN when null or unseen).
    """
    layout, features, types, categories = _feed_spec(inputs)
    columns = {c.name: c for c in contract.columns}
    if layout == "columns":
        feeds: dict[str, np.ndarray] = {}
        for name in features:
            element_type = types.get(name)
            if element_type is None:
                raise ContractError(f"model input spec gives no element type for input {name!r}")
            feeds[name] = _feature(data, columns, name, element_type, categories, source).reshape(-1, 1)
        return feeds
    ((tensor, element_type),) = types.items()
    if element_type == "string":
        out = np.empty((data.num_rows, len(features)), dtype=object)
    elif element_type in FLOAT_ELEMENT_TYPES or element_type in INTEGER_ELEMENT_TYPES:
        out = np.empty(
            (data.num_rows, len(features)), dtype={**FLOAT_ELEMENT_TYPES, **INTEGER_ELEMENT_TYPES}[element_type]
        )
    elif element_type == "bool":
        out = np.empty((data.num_rows, len(features)), dtype=np.bool_)
    else:
        raise ContractError(f"model input {tensor!r} has element type {element_type!r}, which nightshift cannot feed")
    for j, name in enumerate(features):
        out[:, j] = _feature(data, columns, name, element_type, categories, source)
    return {tensor: out}


def model_frame(data: pa.Table | pa.RecordBatch, contract: FeatureContract, source: str = "input") -> pd.DataFrame:
    """The same inputs as a pandas DataFrame for scikit-learn (training, parity checks)."""
    import pandas as pd

    feeds = model_inputs(data, contract, source)
    return pd.DataFrame({name: arr.ravel() for name, arr in feeds.items()})


def entity_ids(data: pa.Table | pa.RecordBatch, contract: FeatureContract, source: str = "input") -> pa.Array:
    """The entity id column as Arrow strings (the store keeps ids as text); nulls are an error."""
    try:
        col = data.column(contract.entity_id)
    except KeyError:
        raise ContractError(f"{source}: missing entity id column {contract.entity_id!r}") from None
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        raise ContractError(f"{source}: entity id column {contract.entity_id!r} has {col.null_count} null value(s)")
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = pc.cast(col, pa.string())
    return col
