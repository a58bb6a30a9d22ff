"""One streaming pass over a partition: exact data-quality counts on every row, plus the hash sample."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nightshift.contracts import Column, FeatureContract
from nightshift.monitoring.sampling import HashSampler, SamplePolicy

#: Rows per Arrow batch read: memory per batch stays a few tens of MiB whatever the partition size.
BATCH_ROWS = 65_536


@dataclass
class ColumnProfile:
    """Counts over every row of one column: missing (null or NaN), out of the contract's range, categories."""

    name: str
    categorical: bool
    rows: int = 0
    missing: int = 0
    below_min: int = 0
    above_max: int = 0
    categories: dict[str, int] = field(default_factory=dict)

    @property
    def present(self) -> int:
        return self.rows - self.missing

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows, "missing": self.missing}
        if self.categorical:
            out["categories"] = dict(sorted(self.categories.items(), key=lambda kv: (-kv[1], kv[0])))
        else:
            out["below_min"], out["above_max"] = self.below_min, self.above_max
        return out


@dataclass
class PartitionProfile:
    """What one pass learned: exact per-column counts and the deterministic sample (sorted by hash)."""

    rows: int
    columns: dict[str, ColumnProfile]
    sample: pa.Table
    policy: SamplePolicy

    @property
    def sampled_rows(self) -> int:
        return int(self.sample.num_rows)

    def sample_info(self) -> dict[str, Any]:
        return self.policy.describe(self.rows, self.sampled_rows)


def sample_schema(contract: FeatureContract) -> pa.Schema:
    """The sample's columns: the entity id as read, numeric features as float64, categorical as string."""
    id_type = pa.int64() if contract.entity_id_type == "int64" else pa.string()
    fields = [pa.field(contract.entity_id, id_type)]
    fields += [pa.field(c.name, pa.string() if c.type.is_categorical else pa.float64()) for c in contract.columns]
    return pa.schema(fields)


def _plain(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col


def _as_float(col: pa.Array) -> pa.Array:
    if pa.types.is_null(col.type):
        return pa.nulls(len(col), pa.float64())
    if pa.types.is_float64(col.type):
        return col
    return pc.cast(col, pa.float64(), safe=False)


def _as_string(col: pa.Array) -> pa.Array:
    if pa.types.is_null(col.type):
        return pa.nulls(len(col), pa.string())
    if pa.types.is_string(col.type):
        return col
    return pc.cast(col, pa.string())


def _count_numeric(prof: ColumnProfile, col: pa.Array, spec: Column) -> None:
    prof.rows += len(col)
    nulls = col.null_count
    nans = int(pc.sum(pc.is_nan(col)).as_py() or 0) if nulls < len(col) else 0
    prof.missing += nulls + nans
    if nulls + nans == len(col) or (spec.min is None and spec.max is None):
        return
    lo_hi = pc.min_max(col)
    lo, hi = lo_hi["min"].as_py(), lo_hi["max"].as_py()
    if spec.min is not None and lo is not None and lo < spec.min:
        prof.below_min += int(pc.sum(pc.less(col, spec.min)).as_py() or 0)
    if spec.max is not None and hi is not None and hi > spec.max:
        prof.above_max += int(pc.sum(pc.greater(col, spec.max)).as_py() or 0)


def _count_categorical(prof: ColumnProfile, col: pa.Array) -> None:
    prof.rows += len(col)
    prof.missing += col.null_count
    if col.null_count == len(col):
        return
    for item in pc.value_counts(col).to_pylist():
        value = item["values"]
        if value is not None:
            prof.categories[value] = prof.categories.get(value, 0) + int(item["counts"])


def normalise(batch: pa.RecordBatch | pa.Table, contract: FeatureContract) -> pa.Table:
    """The contract's columns of a batch, in the sample schema (missing columns become nulls)."""
    schema = sample_schema(contract)
    arrays: list[pa.Array] = []
    names = set(batch.schema.names)
    n = batch.num_rows
    for fld in schema:
        if fld.name not in names:
            arrays.append(pa.nulls(n, fld.type))
            continue
        col = _plain(batch.column(fld.name))
        if fld.name == contract.entity_id:
            arrays.append(pc.cast(col, fld.type) if col.type != fld.type else col)
        elif pa.types.is_string(fld.type):
            arrays.append(_as_string(col))
        else:
            arrays.append(_as_float(col))
    return pa.Table.from_arrays(arrays, schema=schema)


def profile_batches(
    batches: Iterable[pa.RecordBatch | pa.Table],
    contract: FeatureContract,
    *,
    expected_rows: int,
    cap: int,
    seed: int,
) -> PartitionProfile:
    """Count every row and keep the hash sample: the one code path for nightly runs, references and the bench."""
    specs = {c.name: c for c in contract.columns}
    columns = {c.name: ColumnProfile(c.name, c.type.is_categorical) for c in contract.columns}
    sampler = HashSampler(cap, expected_rows, seed)
    rows = 0
    for raw in batches:
        batch = normalise(raw, contract)
        rows += batch.num_rows
        for name, prof in columns.items():
            col = _plain(batch.column(name))
            if prof.categorical:
                _count_categorical(prof, col)
            else:
                _count_numeric(prof, col, specs[name])
        sampler.offer(batch, batch.column(contract.entity_id))
    sample, _hashes = sampler.finish(sample_schema(contract))
    return PartitionProfile(
        rows=rows, columns=columns, sample=sample, policy=SamplePolicy(cap=cap, seed=seed, key=contract.entity_id)
    )


def iter_file_batches(uris: Sequence[str], contract: FeatureContract, batch_rows: int = BATCH_ROWS) -> Iterable[Any]:
    """Record batches of the contract's columns from Parquet files, one file at a time."""
    from nightshift.data import open_parquet

    wanted = contract.read_columns
    categorical = [c.name for c in contract.categorical]
    for uri in uris:
        pf = open_parquet(uri, read_dictionary=categorical)
        present = [c for c in wanted if c in pf.schema_arrow.names]
        yield from pf.iter_batches(batch_size=batch_rows, columns=present, use_threads=True)


def file_rows(uris: Sequence[str]) -> int:
    """Rows in some Parquet files, from their footers."""
    from nightshift.data import open_parquet

    return sum(int(open_parquet(u).metadata.num_rows) for u in uris)


def profile_files(uris: Sequence[str], contract: FeatureContract, *, cap: int, seed: int) -> PartitionProfile:
    """profile_batches over Parquet files (a partition, or all training partitions of a version)."""
    return profile_batches(
        iter_file_batches(uris, contract), contract, expected_rows=file_rows(uris), cap=cap, seed=seed
    )


def numeric_values(table: pa.Table, column: str) -> np.ndarray:
    """A sample column as float64 numpy with nulls as NaN."""
    col = table.column(column)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64) if len(col) else np.zeros(0)


def category_counts(table: pa.Table, column: str) -> dict[str, int]:
    """Non-null value counts of a sample's string column."""
    col = _plain(table.column(column)) if table.num_rows else pa.array([], pa.string())
    return {
        item["values"]: int(item["counts"]) for item in pc.value_counts(col).to_pylist() if item["values"] is not None
    }
