"""What a model's ONNX outputs mean for each task, and the rows they become (nightshift.db.staging.Rows).

binary: P(positive) from the [N, 2] probabilities → score, and label = score >= the decision threshold.
multiclass: [N, K] probabilities → label = the most probable class's index, score = its probability,
probs = all K. regression: the [N] or [N, 1] value → value (float64, exact), score = value as float32.
Every output is checked: a NaN or infinite score is refused, never written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nightshift.contracts import PROBABILITIES
from nightshift.db.staging import Rows
from nightshift.errors import ContractError, ModelSchemaError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnxruntime as ort
    import pyarrow as pa

TASKS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class OutputReader:
    """How to read one model's outputs: its task, which ONNX output to read, its classes, its threshold."""

    task: str = "binary"
    output: str = PROBABILITIES
    classes: tuple[str, ...] = ("0", "1")
    threshold: float = 0.5

    @classmethod
    def of(cls, task: str, signature: dict[str, Any] | None, threshold: float) -> OutputReader:
        """From a registered version's task and signature (None: a model trained by nightshift)."""
        if task not in TASKS:
            raise ModelSchemaError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
        outputs = (signature or {}).get("outputs") or {}
        if task == "regression":
            name = outputs.get("value") or "variable"
            return cls(task, str(name), (), threshold)
        classes = tuple(str(c) for c in outputs.get("classes") or ("0", "1"))
        name = outputs.get("probabilities") or PROBABILITIES
        return cls(task, str(name), classes, threshold)

    def check(self, session: ort.InferenceSession, source: str) -> None:
        """Raise ModelSchemaError unless the session has the output this reader needs, of a usable shape."""
        outputs = {o.name: o for o in session.get_outputs()}
        node = outputs.get(self.output)
        if node is None:
            raise ModelSchemaError(
                f"{source}: no {self.output!r} output for a {self.task} model (got {', '.join(outputs) or 'none'})"
            )
        if "map" in str(node.type) or "seq" in str(node.type):
            raise ModelSchemaError(
                f"{source}: output {self.output!r} is {node.type} (a ZipMap): export the model with zipmap disabled"
            )
        width = node.shape[1] if len(node.shape) == 2 else None
        if self.task != "regression" and isinstance(width, int) and width != len(self.classes):
            raise ModelSchemaError(
                f"{source}: output {self.output!r} has {width} columns, the version records {len(self.classes)} classes"
            )
        if self.task == "regression" and isinstance(width, int) and width != 1:
            raise ModelSchemaError(f"{source}: regression output {self.output!r} has shape {node.shape}, expected [N]")

    def rows(self, ids: pa.Array, raw: np.ndarray, source: str) -> Rows:
        """The rows to stage for one batch, from the session's output `raw`."""
        import numpy as np

        if self.task == "regression":
            values = np.asarray(raw, dtype=np.float64).reshape(len(ids))
            _finite(values, source, "value")
            scores = values.astype(np.float32)
            _finite(scores, source, "value as float32 (beyond its range)")
            return Rows(ids, scores, values=values)
        probs = np.asarray(raw, dtype=np.float32)
        if probs.ndim != 2 or probs.shape[1] != len(self.classes):
            raise ContractError(f"{source}: the model returned probabilities of shape {probs.shape}")
        if self.task == "binary":
            scores = np.ascontiguousarray(probs[:, 1])
            _finite(scores, source, "score")
            return Rows(ids, scores, (scores >= self.threshold).astype(np.int16))
        _finite(probs, source, "class probability")
        labels = probs.argmax(axis=1)
        scores = np.ascontiguousarray(probs[np.arange(len(labels)), labels])
        return Rows(ids, scores, labels.astype(np.int16), probs=np.ascontiguousarray(probs))


def _finite(values: np.ndarray, source: str, what: str) -> None:
    import numpy as np

    if values.size and not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise ContractError(f"{source}: the model produced {bad} non-finite {what}(s); nothing was written")
