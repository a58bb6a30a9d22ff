"""ONNX Runtime sessions per worker process: built from a hash-checked artifact, never pickled, cached (LRU)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
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


#: Sessions a worker process keeps, least recently used first. Bounded: a long-lived external Dask
#: worker scores many versions over its life (every champion, challenger, backfill) and must not
#: keep them all. The bound is NIGHTSHIFT_SESSION_CACHE in the worker's environment (default
#: DEFAULT_SESSION_CACHE); a night needs one session per version it scores (two or three), so a
#: small bound loses nothing, and a session evicted is rebuilt (hash-checked) on its next use.
_sessions: OrderedDict[tuple[str, str, int], ort.InferenceSession] = OrderedDict()
_lock = threading.Lock()
DEFAULT_SESSION_CACHE = 8
SESSION_CACHE_ENV = "NIGHTSHIFT_SESSION_CACHE"


def check_model_inputs(
    session: ort.InferenceSession, contract: FeatureContract, source: str, *, probabilities: bool = True
) -> None:
    """Raise ModelSchemaError if the ONNX graph's inputs (nightshift's layout: one [N, 1] tensor per contract
    column) do not fit the contract, or, with `probabilities`, it has no probabilities output."""
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
    if probabilities and PROBABILITIES not in outputs:
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


def session_cache_size() -> int:
    """How many sessions this process keeps: $NIGHTSHIFT_SESSION_CACHE (a positive integer), default 8."""
    raw = os.environ.get(SESSION_CACHE_ENV, "").strip()
    if not raw:
        return DEFAULT_SESSION_CACHE
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"{SESSION_CACHE_ENV}={raw!r}: expected a positive number of ONNX sessions to keep")
    return size


def get_session(handle: ModelHandle) -> ort.InferenceSession:
    """This process's session for a model artifact, created (and hash-checked) on first use, kept while
    it is among the `session_cache_size()` most recently used."""
    size = session_cache_size()
    key = (handle.artifact_uri, handle.sha256, handle.intra_op_threads)
    with _lock:
        session = _sessions.get(key)
        if session is not None:
            _sessions.move_to_end(key)
            return session
    # Built outside the lock: another thread may score a cached model meanwhile.
    built = make_session(read_artifact(handle.artifact_uri, handle.sha256), handle.intra_op_threads)
    with _lock:
        session = _sessions.setdefault(key, built)  # a concurrent build of the same key: keep the first
        _sessions.move_to_end(key)
        while len(_sessions) > size:
            _sessions.popitem(last=False)
    return session


def cached_artifacts() -> list[str]:
    """The artifacts this process holds a session for (least recently used first): for operators and tests."""
    with _lock:
        return [key[0] for key in _sessions]
