"""A partition's footers on a remote store are read by threads: the same files, in order, and every problem named."""

from __future__ import annotations

import hashlib
from datetime import date
from typing import IO

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nightshift.contracts import Column, ColumnType, FeatureContract
from nightshift.data import inspect_partition
from nightshift.errors import ContractError

DS = date(2026, 11, 20)
CONTRACT = FeatureContract(
    entity_id="id", entity_id_type="string", columns=[Column(name="x", type=ColumnType.float64, nullable=False)]
)


def _write(root: str, files: int, broken: tuple[int, ...] = ()) -> None:
    fs = fsspec.filesystem("memory")
    folder = f"{root}/ds={DS.isoformat()}"
    for i in range(files):
        table = pa.table({"id": pa.array([f"{i}-{j}" for j in range(i + 1)]), "x": pa.array([1.0] * (i + 1))})
        with fs.open(f"{folder}/part-{i:05d}.parquet", "wb") as out:
            if i in broken:
                out.write(b"not a parquet file")
            else:
                pq.write_table(table, out)
    fs.touch(f"{folder}/_SUCCESS")


def test_remote_footers_are_read_by_threads_in_file_order(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from nightshift.data import partitions

    readers: set[str] = set()
    real = partitions.parquet_footer

    def recording(f: IO[bytes]) -> tuple[bytes, int]:
        readers.add(threading.current_thread().name)
        return real(f)

    monkeypatch.setattr(partitions, "parquet_footer", recording)
    _write("memory://footers-ok", 12)
    partition = inspect_partition("memory://footers-ok", "ds", DS, CONTRACT)
    assert readers
    assert all(name.startswith("footers") for name in readers), readers
    assert [f.uri.rsplit("/", 1)[-1] for f in partition.files] == [f"part-{i:05d}.parquet" for i in range(12)]
    assert [f.rows for f in partition.files] == list(range(1, 13))
    # Each file's fingerprint and size come from the footer the check read: the file's last 8 + N bytes.
    fs = fsspec.filesystem("memory")
    for f in partition.files:
        data = fs.cat_file(f.uri.removeprefix("memory://"))
        n = int.from_bytes(data[-8:-4], "little")
        assert (f.footer_sha256, f.size_bytes) == (hashlib.sha256(data[-(n + 8) :]).hexdigest(), len(data))


def test_every_unreadable_remote_footer_is_named() -> None:
    _write("memory://footers-broken", 10, broken=(3, 7))
    with pytest.raises(ContractError) as err:
        inspect_partition("memory://footers-broken", "ds", DS, CONTRACT)
    message = str(err.value)
    assert "part-00003.parquet: unreadable Parquet file" in message
    assert "part-00007.parquet: unreadable Parquet file" in message
    assert message.count("unreadable") == 2
    # Named once, with the cause: "<file>: unreadable Parquet file (ValueError: no PAR1 magic …)".
    assert message.count("part-00003.parquet") == 1
    assert "no PAR1 magic at its end: truncated, or not a Parquet file" in message


def test_a_second_schema_is_checked_too_on_the_threaded_path() -> None:
    """Files of one schema are checked once; a later file of another schema that breaks the contract is named."""
    fs = fsspec.filesystem("memory")
    folder = f"memory://footers-two-schemas/ds={DS.isoformat()}"
    for i in range(8):
        x = pa.array([1.0]) if i != 6 else pa.array(["one"])  # part 6: x is text, the contract says float64
        with fs.open(f"{folder}/part-{i:05d}.parquet", "wb") as out:
            pq.write_table(pa.table({"id": pa.array([f"{i}"]), "x": x}), out)
    fs.touch(f"{folder}/_SUCCESS")
    with pytest.raises(ContractError) as err:
        inspect_partition("memory://footers-two-schemas", "ds", DS, CONTRACT)
    message = str(err.value)
    assert "part-00006.parquet: column 'x'" in message, message
    assert all(f"part-{i:05d}.parquet" not in message for i in range(8) if i != 6), message
