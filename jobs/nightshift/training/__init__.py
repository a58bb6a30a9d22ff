"""Training: labelled training sets (`dataset`), the scikit-learn pipeline → ONNX → parity (`pipeline`),
the gates a retrained candidate must pass (`gates`), and train-and-register (`register`)."""

from __future__ import annotations

from nightshift.metrics import classification_metrics
from nightshift.training.pipeline import (
    ParityReport,
    TrainedModel,
    algorithm_name,
    build_pipeline,
    check_parity,
    export_onnx,
    onnx_schema,
    onnx_scores,
    train,
)
from nightshift.training.register import TrainResult, train_and_register

__all__ = [
    "ParityReport",
    "TrainResult",
    "TrainedModel",
    "algorithm_name",
    "build_pipeline",
    "check_parity",
    "classification_metrics",
    "export_onnx",
    "onnx_schema",
    "onnx_scores",
    "train",
    "train_and_register",
]
