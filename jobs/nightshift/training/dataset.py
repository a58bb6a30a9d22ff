"""Training sets: labelled partitions joined to their features, sampled deterministically, recorded."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from nightshift.config import ModelSettings, Settings
from nightshift.data import inspect_partition, list_partition_files, open_parquet, partition_ready
from nightshift.errors import ContractError, PartitionNotReady


@dataclass
class TrainingSet:
    table: pa.Table  # entity id + contract feature columns
    labels: np.ndarray  # 0/1 int
    partitions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return int(self.table.num_rows)

    def content_sha256(self) -> str:
        """A hash of exactly the rows and labels trained on (Arrow IPC bytes)."""
        h = hashlib.sha256()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.table.schema) as writer:
            writer.write_table(self.table)
        h.update(sink.getvalue().to_pybytes())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int8).tobytes())
        return h.hexdigest()

    def record(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "positive_rate": float(self.labels.mean()) if self.rows else 0.0,
            "partitions": self.partitions,
            "content_sha256": self.content_sha256(),
        }


def labelled_days(settings: Settings, cfg: ModelSettings, until: date, window_days: int) -> list[date]:
    """The days in (until - window_days, until] whose features and labels are both ready."""
    labels_root = cfg.labels_uri(settings)
    if labels_root is None:
        raise ContractError(f"model {cfg.name!r} declares no labels location: it cannot be trained")
    days = []
    for back in range(window_days - 1, -1, -1):
        d = until - timedelta(days=back)
        if partition_ready(labels_root, cfg.partition_key, d, cfg.success_marker) and partition_ready(
            cfg.dataset_uri(settings), cfg.partition_key, d, cfg.success_marker
        ):
            days.append(d)
    return days


def build_training_set(
    settings: Settings, cfg: ModelSettings, until: date, *, window_days: int | None = None, since: date | None = None
) -> TrainingSet:
    """Join features and labels of the labelled days up to `until`, capped at training.max_rows; with `since`
    (the detected onset of a shift), only the days of the window on or after it."""
    window = window_days or cfg.training.window_days
    days = [d for d in labelled_days(settings, cfg, until, window) if since is None or d >= since]
    if not days:
        raise PartitionNotReady(
            f"model {cfg.name!r}: no day in the {window} day(s) up to {until} has both features and labels ready"
        )
    per_day_cap = max(1, cfg.training.max_rows // len(days))
    labels_root = cfg.labels_uri(settings)
    assert labels_root is not None
    contract = cfg.contract
    tables: list[pa.Table] = []
    label_parts: list[np.ndarray] = []
    records: list[dict[str, Any]] = []
    for d in days:
        part = inspect_partition(cfg.dataset_uri(settings), cfg.partition_key, d, contract, cfg.success_marker)
        features = (
            pa.concat_tables([open_parquet(f.uri).read(columns=contract.read_columns) for f in part.files])
            if part.files
            else None
        )
        label_files = list_partition_files(labels_root, cfg.partition_key, d, cfg.success_marker)
        labels = (
            pa.concat_tables(
                [open_parquet(u).read(columns=[contract.entity_id, cfg.label_column]) for u in label_files]
            )
            if label_files
            else None
        )
        if features is None or labels is None or features.num_rows == 0:
            continue
        joined = features.join(labels, keys=contract.entity_id, join_type="inner")
        # Deterministic sample: a permutation seeded by (seed, day) over rows sorted by id.
        joined = joined.sort_by(contract.entity_id)
        labelled_rows = joined.num_rows
        if joined.num_rows > per_day_cap:
            rng = np.random.default_rng([cfg.training.seed, d.toordinal()])
            keep = np.sort(rng.choice(joined.num_rows, size=per_day_cap, replace=False))
            joined = joined.take(pa.array(keep))
        y = joined.column(cfg.label_column).to_numpy(zero_copy_only=False)
        tables.append(joined.drop_columns([cfg.label_column]))
        label_parts.append(np.asarray(y))
        records.append(
            {
                "ds": d.isoformat(),
                "features": part.uri,
                "labels": f"{labels_root.rstrip('/')}/{cfg.partition_key}={d.isoformat()}",
                "feature_rows": features.num_rows,
                "labelled_rows": labelled_rows,
                "sampled_rows": joined.num_rows,
                "files": [f.uri for f in part.files],
            }
        )
    if not tables:
        raise PartitionNotReady(f"model {cfg.name!r}: the labelled days {days} hold no rows")
    table = pa.concat_tables(tables).combine_chunks()
    labels_all = np.concatenate(label_parts)
    return TrainingSet(table=table, labels=labels_all, partitions=records)
