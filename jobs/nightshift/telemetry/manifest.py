"""Input manifests: every file a scoring run read, with its size, rows and fingerprint, and the model it ran.

The fingerprint of a file is, by default (`[lineage] fingerprint = "footer"`), the SHA-256 of its Parquet
footer: the last 8 + N bytes of the file (the Thrift FileMetaData of N bytes, its 4-byte length, `PAR1`), what
`tail -c $((N + 8)) FILE | sha256sum` prints. The footer holds the schema, the row count of every row group
and, for every column chunk, its offsets, compressed and uncompressed sizes and statistics (min, max, nulls),
so a file rewritten with other rows or values changes it. It is taken from the footer the contract check reads
(`inspect_partition`: the file's last 64 KiB, whatever its size; no second pass), so the manifest describes the
files as the check found them; hashing whole files would read every byte of the night again. What it cannot
see: an edit inside a data page that keeps every size and every statistic (two values swapped within a page).
`fingerprint = "content"` hashes every byte instead, for those who need that.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import fsspec

from nightshift.data.partitions import footer_sha256

if TYPE_CHECKING:  # pragma: no cover
    from nightshift.data.partitions import Partition, PartitionFile

#: The version of the manifest's layout, stored in it.
MANIFEST_FORMAT = 1
#: How each file was fingerprinted, by `[lineage] fingerprint`.
METHODS = {"footer": "sha256-parquet-footer", "content": "sha256-content"}
_BLOCK = 8 * 2**20


def content_sha256(uri: str) -> tuple[str, int]:
    """(SHA-256 of every byte, file size in bytes) of one file, read in 8 MiB blocks."""
    h = hashlib.sha256()
    size = 0
    with fsspec.open(uri, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def fingerprint(uri: str, method: str = "footer") -> tuple[str, int]:
    """(fingerprint, size in bytes) of a file by `method` ("footer" or "content")."""
    if method == "footer":
        return footer_sha256(uri)
    if method == "content":
        return content_sha256(uri)
    raise ValueError(f"unknown fingerprint method {method!r} (footer or content)")


def _digest(files: list[dict[str, Any]]) -> str:
    """One SHA-256 over every file's line `uri size rows fingerprint`: the partition's version as read."""
    lines = sorted(f"{f['uri']} {f['size_bytes']} {f['rows']} {f['sha256']}" for f in files)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def input_manifest(partition: Partition, method: str = "footer") -> dict[str, Any]:
    """Every file of `partition` (as the contract check found it) with its bytes, rows and fingerprint.

    With `footer` (the default) the fingerprints are those the contract check took, so nothing is read again;
    with `content`, or for a file the check did not fingerprint, each file is read here and this raises what
    reading it raises (a file gone since the check, a broken footer): the caller decides whether that fails
    anything.
    """
    from concurrent.futures import ThreadPoolExecutor

    def known(f: PartitionFile) -> tuple[str, int] | None:
        """What the contract check read of this file (inspect_partition), or None: read it here."""
        if method == "footer" and f.footer_sha256 is not None and f.size_bytes is not None:
            return f.footer_sha256, f.size_bytes
        return None

    found: list[tuple[str, int] | None] = [known(f) for f in partition.files]
    missing = [i for i, v in enumerate(found) if v is None]
    if missing:
        # A few reads in flight at once: on object storage each footer is a round trip or two.
        with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
            read = pool.map(lambda i: fingerprint(partition.files[i].uri, method), missing)
            for i, value in zip(missing, read, strict=True):
                found[i] = value
    files = [
        {"uri": f.uri, "size_bytes": size, "rows": int(f.rows), "sha256": sha}
        for f, (sha, size) in zip(partition.files, (v for v in found if v is not None), strict=True)
    ]
    return {
        "format": MANIFEST_FORMAT,
        "fingerprint": METHODS[method],
        "partition": partition.uri,
        "ds": partition.ds.isoformat(),
        "rows": int(partition.rows),
        "size_bytes": sum(f["size_bytes"] for f in files),
        "files": files,
        "digest": _digest(files),
    }


def run_manifest(
    inputs: dict[str, Any],
    *,
    model: str,
    version: int,
    artifact_uri: str,
    artifact_sha256: str,
    openlineage_run_id: str,
) -> dict[str, Any]:
    """The manifest stored with one run: its inputs, the model version's artifact, its OpenLineage run id."""
    return {
        **inputs,
        "model": {"model": model, "version": version, "artifact_uri": artifact_uri, "sha256": artifact_sha256},
        "openlineage_run_id": openlineage_run_id,
    }


def verify_manifest(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Each recorded file as it is now: unchanged, changed (size or fingerprint), missing, or unreadable."""
    method = next((m for m, name in METHODS.items() if name == manifest.get("fingerprint")), None)
    out = []
    for f in manifest.get("files") or []:
        entry: dict[str, Any] = {"uri": f["uri"]}
        if method is None:
            entry.update(status="unknown", why=f"unknown fingerprint method {manifest.get('fingerprint')!r}")
            out.append(entry)
            continue
        try:
            sha, size = fingerprint(f["uri"], method)
        except FileNotFoundError:
            entry.update(status="missing", why="the file is gone")
        except Exception as exc:  # noqa: BLE001 - whatever it is, the answer names it
            entry.update(status="unreadable", why=f"{type(exc).__name__}: {exc}")
        else:
            same = sha == f["sha256"] and size == f["size_bytes"]
            entry.update(status="unchanged" if same else "changed", sha256=sha, size_bytes=size)
        out.append(entry)
    return out
