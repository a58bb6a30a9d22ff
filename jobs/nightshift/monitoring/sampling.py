"""Deterministic sampling: a seeded 64-bit hash of the entity id; the rows with the smallest hashes are kept.

The same entities are sampled every night (as long as they are in the partition), whatever the
file layout or the order rows are read in; a smaller sample (the report's) is the prefix of a
larger one; memory stays bounded by the sample size plus one batch (per thread reading), however big the
partition.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, vectorised (uint64 arithmetic wraps by design)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MUL1
    z = (z ^ (z >> np.uint64(27))) * _MUL2
    return np.asarray(z ^ (z >> np.uint64(31)), dtype=np.uint64)


def entity_hashes(ids: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A uint64 per id, fixed for a given (id, seed): integer ids by SplitMix64, strings by SipHash (pandas)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    salt = _splitmix64(np.array([seed], dtype=np.uint64))[0]
    if pa.types.is_integer(ids.type):
        values = pc.cast(ids, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).view(np.uint64)
        return _splitmix64(values ^ salt)
    import pandas as pd

    objects = pc.cast(ids, pa.string()).fill_null("").to_numpy(zero_copy_only=False)
    raw = pd.util.hash_array(objects, hash_key=f"nightshift{seed:07d}"[:16], categorize=False)
    return _splitmix64(np.asarray(raw, dtype=np.uint64) ^ salt)


@dataclass(frozen=True)
class SamplePolicy:
    """What a sample is: at most `cap` rows, chosen by the smallest seeded hashes of the entity id."""

    cap: int
    seed: int
    key: str

    def describe(self, rows: int, sampled: int) -> dict[str, Any]:
        return {
            "method": "bottom-k by seeded 64-bit hash of the entity id",
            "key": self.key,
            "seed": self.seed,
            "cap": self.cap,
            "rows": rows,
            "sampled_rows": sampled,
            "fraction": round(sampled / rows, 6) if rows else 0.0,
        }


class HashSampler:
    """Streams batches in, keeps the (at most) `cap` rows whose entity hashes are smallest.

    With `expected_rows` known up front (Parquet footers say it), a batch keeps only rows under
    a cut-off hash set a few standard deviations above the cap's quantile, so at most about
    cap·(1 + 4/√cap) rows are ever held; `finish` trims to the exact bottom `cap`.
    """

    def __init__(self, cap: int, expected_rows: int, seed: int) -> None:
        self.cap = cap
        self.seed = seed
        if expected_rows <= cap:
            self.cutoff = _MAX
        else:
            rate = min(1.0, cap / expected_rows * (1.0 + 4.0 / math.sqrt(cap)) + 1e-9)
            self.cutoff = _MAX if rate >= 1.0 else np.uint64(int(rate * 2.0**64))
        self._batches: list[pa.Table] = []
        self._hashes: list[np.ndarray] = []
        self.seen = 0

    def offer(
        self,
        batch: pa.Table | pa.RecordBatch,
        ids: pa.Array | pa.ChunkedArray,
        prepare: Callable[[pa.Table], pa.Table] | None = None,
    ) -> None:
        """Keep the batch's rows whose hashes are under the cut-off; `prepare` turns the kept rows into what is
        stored (e.g. the sample's schema), so a batch's other rows are never converted."""
        self.seen += batch.num_rows
        if batch.num_rows == 0:
            return
        hashes = entity_hashes(ids, self.seed)
        keep = hashes <= self.cutoff
        if not keep.any():
            return
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        if not keep.all():
            table = table.filter(pa.array(keep))
            hashes = hashes[keep]
        self._batches.append(table if prepare is None else prepare(table))
        self._hashes.append(hashes)

    def merge(self, other: HashSampler) -> None:
        """Take the rows another sampler of the same cut-off and seed kept (a pass over another part of the same
        partition): the bottom `cap` of both is the bottom `cap` of the whole."""
        if (other.cutoff, other.seed) != (self.cutoff, self.seed):
            raise ValueError("samplers of different cut-offs or seeds do not merge")
        self.seen += other.seen
        self._batches += other._batches
        self._hashes += other._hashes

    def finish(self, schema: pa.Schema) -> tuple[pa.Table, np.ndarray]:
        """(rows sorted by hash, their hashes): at most `cap` rows."""
        if not self._batches:
            return schema.empty_table(), np.zeros(0, np.uint64)
        table = pa.concat_tables(self._batches).combine_chunks()
        hashes = np.concatenate(self._hashes)
        order = np.argsort(hashes, kind="stable")[: self.cap]
        self._batches, self._hashes = [], []
        return table.take(pa.array(order)), hashes[order]
