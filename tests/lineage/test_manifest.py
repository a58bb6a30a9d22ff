"""The input manifest a real scoring run records (SQLite and PostgreSQL): files, bytes, rows, fingerprints, model."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from nightshift.db import open_store, schema
from nightshift.scoring import score_partition
from nightshift.telemetry.manifest import content_sha256, footer_sha256, verify_manifest
from tests.conftest import DEMO_FILES, DEMO_ROWS, SCORE_DS


def _part_dir(data_root: Path) -> Path:
    return data_root / "features" / f"ds={SCORE_DS.isoformat()}"


def _manifest(settings: Any, run_id: int) -> dict[str, Any]:
    store = open_store(settings)
    try:
        with store.connect() as conn:
            found = conn.execute(sa.select(schema.runs.c.manifest).where(schema.runs.c.run_id == run_id)).scalar()
        assert isinstance(found, dict), found
        return found
    finally:
        store.dispose()


def _footer_by_hand(path: Path) -> str:
    """The fingerprint computed independently: the file's last 8 + N bytes, N from the 4 bytes before PAR1."""
    data = path.read_bytes()
    assert data[-4:] == b"PAR1"
    n = int.from_bytes(data[-8:-4], "little")
    return hashlib.sha256(data[-(n + 8) :]).hexdigest()


def _rewrite(path: Path, change: Any) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def test_a_scoring_run_records_every_file_with_its_size_rows_and_fingerprint(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    settings = make_settings(store_url)
    mv = registered(settings)
    summary = score_partition(settings, "churn", SCORE_DS, client=dask_client, run_key="t-manifest")
    manifest = _manifest(settings, summary.run_id)

    files = sorted(_part_dir(data_root).glob("*.parquet"))
    assert len(files) == DEMO_FILES
    assert [Path(f["uri"]) for f in manifest["files"]] == files
    for entry, path in zip(manifest["files"], files, strict=True):
        assert entry["size_bytes"] == path.stat().st_size
        assert entry["rows"] == pq.ParquetFile(path).metadata.num_rows
        assert entry["sha256"] == _footer_by_hand(path)
    assert manifest["fingerprint"] == "sha256-parquet-footer"
    assert manifest["rows"] == DEMO_ROWS == sum(f["rows"] for f in manifest["files"])
    assert manifest["size_bytes"] == sum(p.stat().st_size for p in files)
    assert manifest["partition"] == str(_part_dir(data_root))
    assert manifest["ds"] == SCORE_DS.isoformat()
    # The model version as it ran: its artifact and the SHA-256 of the bytes on disk.
    assert manifest["model"] == {
        "model": "churn",
        "version": mv.version,
        "artifact_uri": mv.artifact_uri,
        "sha256": hashlib.sha256(Path(mv.artifact_uri).read_bytes()).hexdigest(),
    }
    assert uuid.UUID(manifest["openlineage_run_id"]).version == 7
    # Nothing changed since: every file verifies.
    assert {c["status"] for c in verify_manifest(manifest)} == {"unchanged"}


def test_a_changed_file_gets_another_fingerprint_and_the_old_run_says_so(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    settings = make_settings(store_url)
    registered(settings)
    first = score_partition(settings, "churn", SCORE_DS, client=dask_client)
    before = _manifest(settings, first.run_id)
    victim = sorted(_part_dir(data_root).glob("*.parquet"))[1]
    column = settings.model("churn").contract.numeric[0].name

    def one_value_more(t: pa.Table) -> pa.Table:  # one value above the column's maximum: same rows, same size class
        values = t.column(column).to_pylist()
        values[0] = max(v for v in values if v is not None) + 1.0
        return t.set_column(t.schema.get_field_index(column), column, pa.array(values, t.schema.field(column).type))

    _rewrite(victim, one_value_more)
    second = score_partition(settings, "churn", SCORE_DS, client=dask_client)
    after = _manifest(settings, second.run_id)

    old = {f["uri"]: f for f in before["files"]}
    new = {f["uri"]: f for f in after["files"]}
    assert old.keys() == new.keys()
    changed = {uri for uri in old if old[uri]["sha256"] != new[uri]["sha256"]}
    assert changed == {str(victim)}
    assert new[str(victim)]["sha256"] == _footer_by_hand(victim)
    assert before["digest"] != after["digest"]
    # The first run's manifest, checked against the files as they are now, names the changed one.
    status = {c["uri"]: c["status"] for c in verify_manifest(before)}
    assert status == {uri: ("changed" if uri == str(victim) else "unchanged") for uri in old}
    victim.unlink()
    assert {c["uri"]: c["status"] for c in verify_manifest(after)}[str(victim)] == "missing"


def test_the_content_fingerprint_sees_what_the_footer_cannot(tmp_path: Path) -> None:
    # The footer's documented blind spot: two values swapped inside a page of a file written without statistics
    # or compression keep every byte of the footer; the hash of every byte (fingerprint = "content") changes.
    path = tmp_path / "f.parquet"
    plain = {"compression": "none", "use_dictionary": False, "write_statistics": False}
    pq.write_table(pa.table({"x": pa.array([1.0, 2.0, 3.0, 4.0])}), path, **plain)
    before = footer_sha256(str(path)), content_sha256(str(path))
    pq.write_table(pa.table({"x": pa.array([2.0, 1.0, 3.0, 4.0])}), path, **plain)
    after = footer_sha256(str(path)), content_sha256(str(path))
    assert before[0] == after[0]
    assert before[1][0] != after[1][0]
    assert after[1] == (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)


def test_the_manifest_takes_the_footers_the_contract_check_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import date

    from nightshift.contracts import Column, ColumnType, FeatureContract
    from nightshift.data import inspect_partition
    from nightshift.telemetry import manifest as manifest_module

    ds = date(2026, 11, 20)
    folder = tmp_path / f"ds={ds.isoformat()}"
    folder.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"id": [f"{i}-a", f"{i}-b"], "x": [1.0, float(i)]}), folder / f"part-{i}.parquet")
    (folder / "_SUCCESS").touch()
    contract = FeatureContract(
        entity_id="id", entity_id_type="string", columns=[Column(name="x", type=ColumnType.float64)]
    )
    partition = inspect_partition(str(tmp_path), "ds", ds, contract)
    seen: list[str] = []
    real = manifest_module.fingerprint

    def counting(uri: str, method: str = "footer") -> tuple[str, int]:
        seen.append(method)
        return real(uri, method)

    monkeypatch.setattr(manifest_module, "fingerprint", counting)
    found = manifest_module.input_manifest(partition)
    assert seen == []  # no second read of any footer
    paths = sorted(folder.glob("*.parquet"))
    assert [(f["sha256"], f["size_bytes"]) for f in found["files"]] == [
        (_footer_by_hand(p), p.stat().st_size) for p in paths
    ]
    # A file the check did not fingerprint (described without reading it) is read here, and only it.
    partition.files[1].footer_sha256 = None
    assert manifest_module.input_manifest(partition)["files"] == found["files"]
    assert seen == ["footer"]
    seen.clear()
    # The content fingerprint still reads every byte of every file.
    content = manifest_module.input_manifest(partition, "content")
    assert seen == ["content"] * 3
    assert [f["sha256"] for f in content["files"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_a_file_that_is_no_parquet_is_named(tmp_path: Path) -> None:
    path = tmp_path / "not.parquet"
    path.write_bytes(b"hello, this is no parquet file at all")
    with pytest.raises(ValueError, match=r"not\.parquet: no PAR1 magic at its end: truncated, or not a Parquet file$"):
        footer_sha256(str(path))


def test_a_run_before_lineage_has_no_manifest_and_the_column_is_migrated(sqlite_url: str) -> None:
    from nightshift.db.store import Store

    store = Store(sqlite_url)
    try:
        run = store.start_run("churn", 1, SCORE_DS, input_rows=3)
        with store.connect() as conn:
            assert conn.execute(sa.select(schema.runs.c.manifest).where(schema.runs.c.run_id == run)).scalar() is None
        store.fail_run(run, "test")
        # 0009 down and up again keeps the store usable.
        store.downgrade("0008")
        with store.connect() as conn:
            assert "manifest" not in {c["name"] for c in sa.inspect(conn).get_columns("runs")}
        store.upgrade()
        with store.connect() as conn:
            assert "manifest" in {c["name"] for c in sa.inspect(conn).get_columns("runs")}
    finally:
        store.dispose()
