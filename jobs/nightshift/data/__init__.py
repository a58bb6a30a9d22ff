"""Input data: Hive-style partitions on local paths or fsspec URIs, their footers, and Arrow reading.

Model inputs built from Arrow batches live in `nightshift.data.features` (it imports numpy and
pyarrow; this package's top level imports only fsspec, so sensors and DAG files stay light).
"""

from __future__ import annotations

from nightshift.data.partitions import (
    Partition,
    PartitionFile,
    TaskSlice,
    bundle_slices,
    describe_duplicates,
    inspect_partition,
    iter_batches,
    list_partition_files,
    locate_entity_ids,
    open_parquet,
    partition_ready,
    partition_uri,
)

__all__ = [
    "Partition",
    "PartitionFile",
    "TaskSlice",
    "bundle_slices",
    "describe_duplicates",
    "inspect_partition",
    "iter_batches",
    "list_partition_files",
    "locate_entity_ids",
    "open_parquet",
    "partition_ready",
    "partition_uri",
]
