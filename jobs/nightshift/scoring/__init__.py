"""Scoring: ONNX Runtime sessions per worker (`sessions`), one chunk on a worker (`chunk`), one partition
mapped over Dask and committed atomically (`partition`)."""

from __future__ import annotations

from nightshift.scoring.chunk import ChunkResult, ChunkTask, ModelRun, score_chunk
from nightshift.scoring.outputs import OutputReader
from nightshift.scoring.partition import (
    MAX_ROWS_PER_TASK,
    ModelRunFailed,
    RunSummary,
    WorkerLost,
    dask_client,
    score_partition,
    score_partitions,
)
from nightshift.scoring.sessions import ModelHandle, check_model_inputs, get_session, make_session

__all__ = [
    "MAX_ROWS_PER_TASK",
    "ChunkResult",
    "ChunkTask",
    "ModelHandle",
    "ModelRun",
    "ModelRunFailed",
    "OutputReader",
    "RunSummary",
    "WorkerLost",
    "check_model_inputs",
    "dask_client",
    "get_session",
    "make_session",
    "score_chunk",
    "score_partition",
    "score_partitions",
]
