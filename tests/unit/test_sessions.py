"""The ONNX session cache of a worker process is a bounded LRU: long-lived workers keep only the newest models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

import onnx
from onnx import TensorProto, helper

from nightshift.models.registry import sha256_bytes
from nightshift.scoring import sessions
from nightshift.scoring.sessions import ModelHandle, cached_artifacts, get_session


def _tiny_model(tag: int) -> bytes:
    """A valid one-node ONNX graph; `tag` makes its bytes (and SHA-256) distinct."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], f"g{tag}", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], doc_string=f"model {tag}")
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(data))
    return data


@pytest.fixture
def handles(tmp_path: Path) -> Iterator[list[ModelHandle]]:
    out = []
    for i in range(6):
        data = _tiny_model(i)
        path = tmp_path / f"m{i}.onnx"
        path.write_bytes(data)
        out.append(ModelHandle(str(path), sha256_bytes(data), 1, 0.5))
    sessions._sessions.clear()
    yield out
    sessions._sessions.clear()


def test_scoring_more_models_than_the_bound_keeps_only_the_newest(
    handles: list[ModelHandle], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTSHIFT_SESSION_CACHE", "3")
    for h in handles:
        get_session(h)
    assert cached_artifacts() == [h.artifact_uri for h in handles[3:]]


def test_a_session_used_again_is_kept_and_the_least_recently_used_goes(
    handles: list[ModelHandle], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTSHIFT_SESSION_CACHE", "2")
    first = get_session(handles[0])
    get_session(handles[1])
    assert get_session(handles[0]) is first  # a hit: no rebuild, and handles[0] is now the newest
    get_session(handles[2])  # evicts handles[1], the least recently used
    assert cached_artifacts() == [handles[0].artifact_uri, handles[2].artifact_uri]


def test_the_default_bound_is_small_and_a_bad_setting_is_named(
    handles: list[ModelHandle], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NIGHTSHIFT_SESSION_CACHE", raising=False)
    assert sessions.session_cache_size() == sessions.DEFAULT_SESSION_CACHE == 8
    monkeypatch.setenv("NIGHTSHIFT_SESSION_CACHE", "zero")
    with pytest.raises(ValueError, match="NIGHTSHIFT_SESSION_CACHE"):
        get_session(handles[0])
