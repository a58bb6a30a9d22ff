"""ONNX Runtime sessions per worker process: built from a hash-checked artifact, never pickled, cached."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nightshift.contracts import PROBABILITIES, FeatureContract
from nightshift.errors import ModelSchemaError
from nightshift.models.registry import read_artifact

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime as ort


@dataclass(frozen=True)
class ModelHandle:
    """What a worker needs to build its own session. Sessions are never pickled."""

    artifact_uri: str
    sha256: str
    intra_op_threads: int
    decision_threshold: float


_sessions: dict[tuple[str, str, int], ort.InferenceSession] = {}


def check_model_inputs(session: ort.InferenceSession, contract: FeatureContract, source: str) -> None:
    """Raise ModelSchemaError if the ONNX graph's inputs or outputs do not fit the contract."""
    inputs = {i.name: i for i in session.get_inputs()}
    problems = []
    for col in contract.columns:
        node = inputs.get(col.name)
        expected = "tensor(string)" if col.type.is_categorical else "tensor(float)"
        if node is None:
            problems.append(f"no input named {col.name!r}")
        elif node.type != expected:
            problems.append(f"input {col.name!r} is {node.type}, the contract needs {expected}")
        elif len(node.shape) != 2 or node.shape[1] not in (1, "1"):
            problems.append(f"input {col.name!r} has shape {node.shape}, expected [N, 1]")
    extra = sorted(set(inputs) - set(contract.feature_names))
    if extra:
        problems.append(f"inputs not in the contract: {', '.join(extra)}")
    outputs = {o.name: o for o in session.get_outputs()}
    if PROBABILITIES not in outputs:
        problems.append(f"no {PROBABILITIES!r} output (got {', '.join(outputs) or 'none'})")
    if problems:
        raise ModelSchemaError(f"{source}: the model does not match the feature contract: " + "; ".join(problems))


def make_session(onnx_bytes: bytes, intra_op_threads: int) -> ort.InferenceSession:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def get_session(handle: ModelHandle) -> ort.InferenceSession:
    """This process's session for a model artifact, created (and hash-checked) on first use."""
    key = (handle.artifact_uri, handle.sha256, handle.intra_op_threads)
    session = _sessions.get(key)
    if session is None:
        session = make_session(read_artifact(handle.artifact_uri, handle.sha256), handle.intra_op_threads)
        _sessions[key] = session
    return session


def cached_artifacts() -> list[str]:
    """The artifacts this process holds a session for (oldest first): for operators and tests."""
    return [key[0] for key in _sessions]
