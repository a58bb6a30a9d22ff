"""One streaming pass over a partition: exact data-quality counts on every row, plus the hash sample."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nightshift.config import usable_cores
from nightshift.contracts import Column, FeatureContract
from nightshift.errors import NightshiftError
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


def _count_column(prof: ColumnProfile, col: pa.Array | pa.ChunkedArray, spec: Column) -> None:
    """Add one batch's column to its counts, on the column as read (the sample alone is normalised)."""
    if isinstance(col, pa.ChunkedArray):  # a table's chunks may carry different dictionaries: count each
        for chunk in col.chunks:
            _count_column(prof, chunk, spec)
        return
    if prof.categorical:
        if (
            pa.types.is_dictionary(col.type)
            and pa.types.is_string(col.type.value_type)
            and col.dictionary.null_count == 0  # a null among the values would not show in the array's nulls
        ):
            _count_categorical(prof, col)  # value_counts of a dictionary counts its indices: no decoding
        else:
            _count_categorical(prof, _as_string(_plain(col)))
    else:
        _count_numeric(prof, _as_float(_plain(col)), spec)


class _Pass:
    """The counts and the kept sample rows of some batches; passes over disjoint parts of a partition merge."""

    def __init__(self, contract: FeatureContract, *, cap: int, expected_rows: int, seed: int) -> None:
        self.contract = contract
        self.specs = {c.name: c for c in contract.columns}
        self.columns = {c.name: ColumnProfile(c.name, c.type.is_categorical) for c in contract.columns}
        self.sampler = HashSampler(cap, expected_rows, seed)
        self.rows = 0

    def add(self, raw: pa.RecordBatch | pa.Table) -> None:
        n = raw.num_rows
        self.rows += n
        names = set(raw.schema.names)
        for name, prof in self.columns.items():
            if name in names:
                _count_column(prof, raw.column(name), self.specs[name])
            else:  # a column the files lack: every row missing
                prof.rows += n
                prof.missing += n
        self.sampler.offer(raw, raw.column(self.contract.entity_id), lambda kept: normalise(kept, self.contract))

    def merge(self, other: _Pass) -> None:
        self.rows += other.rows
        for name, prof in self.columns.items():
            o = other.columns[name]
            prof.rows += o.rows
            prof.missing += o.missing
            prof.below_min += o.below_min
            prof.above_max += o.above_max
            for value, count in o.categories.items():
                prof.categories[value] = prof.categories.get(value, 0) + count
        self.sampler.merge(other.sampler)

    def finish(self) -> PartitionProfile:
        sample, _hashes = self.sampler.finish(sample_schema(self.contract))
        s = self.sampler
        policy = SamplePolicy(cap=s.cap, seed=s.seed, key=self.contract.entity_id)
        return PartitionProfile(rows=self.rows, columns=self.columns, sample=sample, policy=policy)


def profile_batches(
    batches: Iterable[pa.RecordBatch | pa.Table],
    contract: FeatureContract,
    *,
    expected_rows: int,
    cap: int,
    seed: int,
) -> PartitionProfile:
    """Count every row and keep the hash sample, one batch after another (profile_files does the same work on
    several parts of a partition at once)."""
    one = _Pass(contract, cap=cap, expected_rows=expected_rows, seed=seed)
    for raw in batches:
        one.add(raw)
    return one.finish()


def iter_file_batches(
    uris: Sequence[str],
    contract: FeatureContract,
    batch_rows: int = BATCH_ROWS,
    *,
    row_groups: Sequence[int] | None = None,
    use_threads: bool = True,
) -> Iterable[Any]:
    """Record batches of the contract's columns from Parquet files, one file at a time (or some row groups of
    one file)."""
    from nightshift.data import open_parquet

    wanted = contract.read_columns
    categorical = [c.name for c in contract.categorical]
    for uri in uris:
        pf = open_parquet(uri, read_dictionary=categorical)
        present = [c for c in wanted if c in pf.schema_arrow.names]
        yield from pf.iter_batches(
            batch_size=batch_rows, columns=present, row_groups=row_groups, use_threads=use_threads
        )


def file_rows(uris: Sequence[str]) -> int:
    """Rows in some Parquet files, from their footers."""
    from nightshift.data import open_parquet

    return sum(int(open_parquet(u).metadata.num_rows) for u in uris)


def _units(uris: Sequence[str], threads: int) -> tuple[list[tuple[str, list[int] | None]], int]:
    """(the parts a parallel pass reads: whole files, or single row groups where files are fewer than the
    threads' work needs, and the rows in all of them)."""
    from nightshift.data import open_parquet

    units: list[tuple[str, list[int] | None]] = []
    rows = 0
    for uri in uris:
        meta = open_parquet(uri).metadata
        rows += int(meta.num_rows)
        if len(uris) >= 2 * threads or meta.num_row_groups <= 1:
            units.append((uri, None))
        else:
            units += [(uri, [g]) for g in range(meta.num_row_groups)]
    return units, rows


def profile_files(
    uris: Sequence[str], contract: FeatureContract, *, cap: int, seed: int, threads: int | None = None
) -> PartitionProfile:
    """profile_batches over Parquet files (a partition, or all training partitions of a version), the files (or
    their row groups) counted by `threads` threads at once (default: one per core this process may use, at most 8):
    Arrow's reads and kernels release the GIL; each thread holds one batch and its file's buffers. The result
    does not depend on the threads: counts add up, and the sample is the bottom `cap` hashes of every row."""
    threads = max(1, threads if threads is not None else min(8, usable_cores()))
    units, rows = _units(uris, threads)

    def one(unit: tuple[str, list[int] | None]) -> _Pass:
        part = _Pass(contract, cap=cap, expected_rows=rows, seed=seed)
        uri, groups = unit
        try:
            for raw in iter_file_batches([uri], contract, row_groups=groups, use_threads=threads == 1):
                part.add(raw)
        except NightshiftError:
            raise
        except Exception as exc:
            where = f"{uri}" + (f" (row group {groups[0]})" if groups else "")
            raise NightshiftError(f"monitoring could not read {where}: {type(exc).__name__}: {exc}") from exc
        return part

    whole = _Pass(contract, cap=cap, expected_rows=rows, seed=seed)
    if threads == 1 or len(units) <= 1:
        for unit in units:
            whole.merge(one(unit))
        return whole.finish()
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nightshift-profile")
    try:
        futures = [pool.submit(one, unit) for unit in units]
        for future in futures:  # in the units' order: the categories' order is the sequential one
            whole.merge(future.result())
    finally:  # a failed part fails the pass now: the parts not started are dropped, not read
        pool.shutdown(wait=True, cancel_futures=True)
    return whole.finish()


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
