"""Arrow data → model inputs, identical for training (scikit-learn) and scoring (ONNX Runtime)."""

from __future__ import annotations

from typing import TYPE_CHECKING

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


def null_mask(arr: pa.Array) -> np.ndarray | None:
    """True where `arr` is null, or None when it has no nulls."""
    bits = arr.buffers()[0]
    if not arr.null_count or bits is None:
        return None
    valid = np.unpackbits(np.frombuffer(bits, np.uint8), count=arr.offset + len(arr), bitorder="little")
    return valid[arr.offset :] == 0


def _numeric(col: pa.ChunkedArray | pa.Array, spec: Column, source: str) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan, dtype=np.float32)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
        raise ContractError(f"{source}: column {spec.name!r} has type {col.type}, expected {spec.type.value}")
    if col.null_count and not spec.nullable:
        raise ContractError(
            f"{source}: column {spec.name!r} has {col.null_count} null value(s) but the contract says not nullable"
        )
    # Arrow casts to float32 in C++; nulls become NaN, which the model's imputer handles.
    arr = pc.cast(col, pa.float32(), safe=False)
    out = numpy_values(arr, "<f4")
    nulls = null_mask(arr)
    if nulls is not None:
        out = out.copy()
        out[nulls] = np.nan
    if not spec.nullable:
        nan = int(np.isnan(out).sum()) - col.null_count
        if nan > 0:
            raise ContractError(
                f"{source}: column {spec.name!r} has {nan} NaN value(s) but the contract says not nullable"
            )
    infinite = np.isinf(out)
    if infinite.any():
        original = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)[infinite]
        overflow = int(np.isfinite(original).sum())
        if overflow:
            raise ContractError(
                f"{source}: column {spec.name!r} has {overflow} value(s) beyond the float32 range the model "
                f"reads (e.g. {original[np.isfinite(original)][0]!r}); refusing them rather than scoring infinity"
            )
    return out


def _categorical(col: pa.ChunkedArray | pa.Array, spec: Column, source: str) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_null(col.type):
        return np.full(len(col), MISSING_CATEGORY, dtype=object)
    if col.null_count and not spec.nullable:
        raise ContractError(
            f"{source}: column {spec.name!r} has {col.null_count} null value(s) but the contract says not nullable"
        )
    if pa.types.is_dictionary(col.type):
        # Index the (small) dictionary by the codes: no per-row Python objects are built.
        dictionary = np.asarray([*col.dictionary.to_pylist(), MISSING_CATEGORY], dtype=object)
        indices = col.indices
        kind = "i" if pa.types.is_signed_integer(indices.type) else "u"
        codes = numpy_values(indices, f"<{kind}{indices.type.bit_width // 8}").astype(np.intp)
        nulls = null_mask(indices)
        if nulls is not None:
            codes[nulls] = len(col.dictionary)
        return dictionary[codes]
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise ContractError(f"{source}: column {spec.name!r} has type {col.type}, expected string")
    encoded = pc.dictionary_encode(col)
    return _categorical(encoded, spec, source)


def model_inputs(
    data: pa.Table | pa.RecordBatch, contract: FeatureContract, source: str = "input"
) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds: one [N, 1] tensor per feature, float32 or string, named after the column."""
    feeds: dict[str, np.ndarray] = {}
    for spec in contract.columns:
        try:
            col = data.column(spec.name)
        except KeyError:
            raise ContractError(f"{source}: missing column {spec.name!r}") from None
        if spec.type.is_categorical:
            feeds[spec.name] = _categorical(col, spec, source).reshape(-1, 1)
        else:
            feeds[spec.name] = _numeric(col, spec, source).reshape(-1, 1)
    return feeds


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
