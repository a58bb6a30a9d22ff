"""A monitoring reference belongs to one model artifact: it records the model's SHA-256 and is never reused
for another model, even when an older layout put two models' files in one folder."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

from nightshift.errors import ArtifactIntegrityError
from nightshift.models.registry import sha256_bytes
from nightshift.monitoring.reference import (
    ensure_reference,
    load_reference,
    reference_folder,
    reference_from_files,
    save_reference,
)
from tests.monitoring.conftest import TRAIN_DAYS, day_files


def _other_model(onnx_bytes: bytes) -> bytes:
    """The same graph with another doc string: other bytes, another SHA-256."""
    model = onnx.load_from_string(onnx_bytes)
    model.doc_string = "another model"
    data: bytes = model.SerializeToString()
    return data


def test_a_reference_records_its_model_and_is_refused_for_another(
    mon_root: Path, mon_cfg: Any, trained_model: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "models" / "churn" / "v1"  # the layout before content addressing: keyed by version only
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(trained_model.onnx_bytes)
    ref = reference_from_files(
        [u for d in TRAIN_DAYS for u in day_files(mon_root, d)],
        mon_cfg.contract,
        trained_model.onnx_bytes,
        model="churn",
        version=1,
        uri=str(folder / "monitoring"),
        cap=mon_cfg.monitoring.reference_rows,
        seed=mon_cfg.monitoring.sample_seed,
    )
    save_reference(ref)
    sha = sha256_bytes(trained_model.onnx_bytes)
    assert ref.stats["model_sha256"] == sha

    class _Version:
        model = "churn"
        version = 1
        artifact_uri = str(folder / "model.onnx")
        sha256 = sha

    mine: Any = _Version()
    assert reference_folder(mine) == str(folder / "monitoring")
    found = load_reference(mine)
    assert found is not None
    assert found.stats["model_sha256"] == sha

    # Another store's v1 (another model) at the same old path: the reference is not its reference.
    other: Any = _Version()
    other.sha256 = sha256_bytes(_other_model(trained_model.onnx_bytes))
    assert load_reference(other) is None


def test_a_reference_without_a_recorded_model_is_not_reused(
    mon_root: Path, mon_cfg: Any, trained_model: Any, tmp_path: Path
) -> None:
    import json

    folder = tmp_path / "monitoring"
    ref = reference_from_files(
        day_files(mon_root, TRAIN_DAYS[0]),
        mon_cfg.contract,
        trained_model.onnx_bytes,
        model="churn",
        version=1,
        uri=str(folder),
        cap=500,
        seed=1,
    )
    save_reference(ref)
    stats = json.loads((folder / "reference.json").read_text())
    del stats["model_sha256"]  # what a reference written before this rule looks like
    (folder / "reference.json").write_text(json.dumps(stats))

    class _Version:
        model = "churn"
        version = 1
        artifact_uri = str(tmp_path / "model.onnx")
        sha256 = sha256_bytes(trained_model.onnx_bytes)

    assert load_reference(_Version()) is None  # type: ignore[arg-type]


def test_ensure_reference_rebuilds_a_reference_of_another_model(
    sqlite_url: str,
    mon_settings: Callable[..., Any],
    mon_registered: Callable[[Any], Any],
    trained_model: Any,
) -> None:
    settings = mon_settings(sqlite_url)
    mv = mon_registered(settings)
    first = ensure_reference(settings, mv)
    assert first.stats["model_sha256"] == mv.sha256

    # Simulate the clash the old layout allowed: another model's bytes written over this version's path,
    # registered (elsewhere) with their own SHA-256, while the old reference stays in the folder.
    other_bytes = _other_model(trained_model.onnx_bytes)
    moved = Path(mv.artifact_uri).parent.parent / "clash"
    shutil.copytree(Path(mv.artifact_uri).parent, moved)
    (moved / "model.onnx").write_bytes(other_bytes)
    other = dataclasses.replace(mv, artifact_uri=str(moved / "model.onnx"), sha256=sha256_bytes(other_bytes))
    assert load_reference(other) is None
    rebuilt = ensure_reference(settings, other)
    assert rebuilt.stats["model_sha256"] == other.sha256
    assert load_reference(other) is not None
    assert load_reference(mv) is not None  # the original version's own reference is untouched

    # A version whose artifact no longer matches its SHA-256 gets no reference at all: refused.
    (moved / "model.onnx").write_bytes(trained_model.onnx_bytes)
    broken = dataclasses.replace(other, sha256="0" * 64)
    with pytest.raises(ArtifactIntegrityError):
        ensure_reference(settings, broken)


def test_threads_of_one_process_replace_the_same_file_without_losing_a_write(tmp_path: Path) -> None:
    """Nights run in threads (`backfill --parallel`) build one version's reference at once: every write lands
    whole, none fails on a temporary file another thread moved (they shared `<file>.tmp-<pid>` before)."""
    import threading

    from nightshift.monitoring.reference import write_atomic

    uri = str(tmp_path / "ref" / "reference.parquet")
    payloads = [bytes([i]) * 200_000 for i in range(4)]
    start = threading.Barrier(len(payloads))
    errors: list[BaseException] = []

    def writer(data: bytes) -> None:
        start.wait()
        try:
            for _ in range(25):
                write_atomic(uri, data)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Path(uri).read_bytes() in payloads  # one writer's whole bytes, never a mix
    assert [p.name for p in (tmp_path / "ref").iterdir()] == ["reference.parquet"]  # no temporary file left


def test_a_failed_replacement_keeps_the_old_file_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import fsspec

    from nightshift.monitoring import reference

    uri = str(tmp_path / "ref" / "reference.json")
    reference.write_atomic(uri, b"old")

    class FullDisk:  # the temporary file opens, its bytes do not fit
        def __init__(self, real: Any) -> None:
            self.real = real

        def __enter__(self) -> FullDisk:
            self.real.__enter__()
            return self

        def __exit__(self, *exc: Any) -> None:
            self.real.__exit__(*exc)

        def write(self, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    fs = fsspec.filesystem("file")
    real_open = fs.open
    monkeypatch.setattr(type(fs), "open", lambda self, path, mode="rb", **kw: FullDisk(real_open(path, mode, **kw)))
    with pytest.raises(OSError, match="No space left"):
        reference.write_atomic(uri, b"new")
    monkeypatch.undo()
    assert Path(uri).read_bytes() == b"old"
    assert [p.name for p in (tmp_path / "ref").iterdir()] == ["reference.json"]
