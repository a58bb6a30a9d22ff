"""write_once: an artifact address is written once and never replaced (nightshift.models.registry)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest

from nightshift.errors import ArtifactIntegrityError
from nightshift.models.registry import write_once

ORIGINAL = b"the model registered first"
OTHER = b"other bytes at the same address"


@pytest.fixture(params=["local", "memory"])
def address(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh address on a local disk (hard-link path) or on an fsspec file system without links (move path)."""
    if request.param == "local":
        return str(tmp_path / "sha256" / "abc" / "model.onnx")
    return f"memory://write-once-{uuid.uuid4().hex}/sha256/abc/model.onnx"


def _read(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as f:
        data: bytes = f.read()
    return data


def _folder(uri: str) -> list[str]:
    """The names in the address's folder: the file, and any temporary file left behind."""
    fs, path = fsspec.core.url_to_fs(uri)
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path.rsplit("/", 1)[0], detail=False))


def _identity(fs: Any, path: str) -> Any:
    """What changes when a file is written again: the inode and mtime on disk, the object in memory."""
    if _is_memory(fs):
        return id(fs.store[path]), fs.info(path)["created"]
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns


def _is_memory(fs: Any) -> bool:
    from fsspec.implementations.memory import MemoryFileSystem

    return isinstance(fs, MemoryFileSystem)


def test_identical_bytes_at_an_existing_address_are_a_no_op(address: str) -> None:
    write_once(address, ORIGINAL)
    assert _read(address) == ORIGINAL
    fs, path = fsspec.core.url_to_fs(address)
    before = _identity(fs, path)

    write_once(address, ORIGINAL)

    assert _read(address) == ORIGINAL
    assert _identity(fs, path) == before  # the same file, never written again
    assert _folder(address) == ["model.onnx"]  # no temporary file left behind


def test_other_bytes_at_an_existing_address_are_refused_and_the_original_kept(address: str) -> None:
    write_once(address, ORIGINAL)

    with pytest.raises(ArtifactIntegrityError, match=r"already exists with other bytes.*refusing to replace it"):
        write_once(address, OTHER)

    assert _read(address) == ORIGINAL
    assert _folder(address) == ["model.onnx"]


def _racing_link(data: bytes) -> Callable[[Any, Any], None]:
    """os.link as if another writer put `data` at the name between write_once's check and its link."""
    real_link = os.link

    def link(src: Any, dst: Any) -> None:
        Path(dst).write_bytes(data)
        real_link(src, dst)  # FileExistsError: the name is taken now

    return link


@pytest.mark.parametrize(("theirs", "refused"), [(OTHER, True), (ORIGINAL, False)])
def test_a_concurrent_writer_that_got_there_first_is_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, theirs: bytes, refused: bool
) -> None:
    uri = str(tmp_path / "sha256" / "abc" / "model.onnx")
    monkeypatch.setattr(os, "link", _racing_link(theirs))

    if refused:
        with pytest.raises(ArtifactIntegrityError, match="already exists with other bytes"):
            write_once(uri, ORIGINAL)
    else:
        write_once(uri, ORIGINAL)  # the same bytes: theirs is reused

    assert Path(uri).read_bytes() == theirs
    assert _folder(uri) == ["model.onnx"]
