"""The reference of a model version: a hash sample of its training partitions with the model's scores,
plus exact statistics of every training row; computed once, stored beside the model's artifact."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nightshift.config import Settings
from nightshift.contracts import FeatureContract
from nightshift.db.engine import utcnow
from nightshift.errors import NightshiftError, PartitionNotReady
from nightshift.jsonsafe import json_safe
from nightshift.models.registry import ModelVersion, read_artifact
from nightshift.monitoring.profile import PartitionProfile, profile_files

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime as ort

log = logging.getLogger(__name__)

#: Bumped when the stored layout changes; an older reference is rebuilt.
#: 2: records `model_sha256`, the SHA-256 of the model artifact the reference was scored with.
REFERENCE_FORMAT = 2
#: The score column of the reference sample (a feature may not take this name).
SCORE = "__score__"
#: The predicted class (index) of each reference row: multiclass models only.
LABEL = "__label__"
SCORE_BATCH_ROWS = 65_536


class ReferenceUnavailable(NightshiftError):
    """A model version has no reference and none can be built (no training partitions recorded)."""


@dataclass
class Reference:
    """A version's reference sample (features + score, sorted by entity hash) and its statistics."""

    model: str
    version: int
    sample: pa.Table
    stats: dict[str, Any]
    uri: str

    def column(self, name: str) -> dict[str, Any]:
        return dict(self.stats["columns"].get(name, {}))

    def categories(self, name: str) -> dict[str, int]:
        """Every category of the column in the training rows (not only the sample), with counts."""
        return {str(k): int(v) for k, v in self.column(name).get("categories", {}).items()}

    def missing_share(self, name: str) -> float:
        col = self.column(name)
        rows = int(col.get("rows", 0))
        return int(col.get("missing", 0)) / rows if rows else 0.0

    @property
    def partitions(self) -> list[dict[str, Any]]:
        return list(self.stats.get("partitions", []))


def reference_folder(mv: ModelVersion) -> str:
    """`<the version's artifact folder>/monitoring`.

    Artifact folders are named by content (models/registry.py), so a folder holds one model; older
    versions' folders were named by version only and could hold another store's model. Either way a
    reference is used only for the model whose SHA-256 it records (`load_reference`).
    """
    return f"{mv.artifact_uri.rsplit('/', 1)[0]}/monitoring"


def model_session(onnx_bytes: bytes) -> ort.InferenceSession:
    from nightshift.scoring import make_session

    return make_session(onnx_bytes, 1)


def score_sample(
    session: ort.InferenceSession,
    table: pa.Table,
    contract: FeatureContract,
    task: str = "binary",
    signature: dict[str, Any] | None = None,
) -> np.ndarray:
    """The score of every row of a sample from the model's ONNX session, as scoring stores it (P(1); the
    predicted class's probability; the value), in 64k-row batches, float32 like the store."""
    return _predict_sample(session, table, contract, task, signature)[0]


def _predict_sample(
    session: ort.InferenceSession,
    table: pa.Table,
    contract: FeatureContract,
    task: str = "binary",
    signature: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(scores as float64 of float32, predicted class indices or None) of a sample, as scoring computes them."""
    import pyarrow as pa

    from nightshift.data.features import model_inputs, onnx_feeds
    from nightshift.scoring.outputs import OutputReader

    reader = OutputReader.of(task, signature, 0.5)
    inputs = (signature or {}).get("inputs")
    names = [i.name for i in session.get_inputs()]
    scores: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for start in range(0, table.num_rows, SCORE_BATCH_ROWS):
        part = table.slice(start, SCORE_BATCH_ROWS)
        if inputs is None:
            feeds = model_inputs(part, contract, "reference sample")
        else:
            feeds = onnx_feeds(part, contract, inputs, "reference sample")
        raw = session.run([reader.output], {n: feeds[n] for n in names})[0]
        rows = reader.rows(pa.array([""] * part.num_rows), raw, "reference sample")
        scores.append(np.asarray(rows.scores, dtype=np.float32))
        if rows.labels is not None:
            labels.append(np.asarray(rows.labels, dtype=np.int64))
    score = np.concatenate(scores).astype(np.float64) if scores else np.zeros(0)
    label = np.concatenate(labels) if labels and task == "multiclass" else None
    return score, label


def _column_stats(profile: PartitionProfile, contract: FeatureContract) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for spec in contract.columns:
        prof = profile.columns[spec.name]
        entry: dict[str, Any] = {"type": "categorical" if prof.categorical else "numeric", **prof.as_dict()}
        if not prof.categorical:
            values = np.asarray(profile.sample.column(spec.name).to_numpy(zero_copy_only=False), dtype=np.float64)
            values = values[np.isfinite(values)]
            if values.size:
                entry.update(
                    mean=float(values.mean()),
                    std=float(values.std()),
                    min=float(values.min()),
                    max=float(values.max()),
                    distinct=int(np.unique(values).size),
                )
        stats[spec.name] = entry
    return stats


def _training_days(mv: ModelVersion) -> list[date]:
    """The days a version's reference describes: its training partitions, or, for a model brought from
    outside (no training days known), the partition its parity was proven on."""
    data = mv.training_data if isinstance(mv.training_data, dict) else {}
    days = []
    for part in data.get("partitions") or []:
        if isinstance(part, dict) and part.get("ds"):
            days.append(date.fromisoformat(str(part["ds"])))
    if not days and data.get("parity_partition"):
        days.append(date.fromisoformat(str(data["parity_partition"])))
    return sorted(set(days))


def reference_from_files(
    uris: list[str],
    contract: FeatureContract,
    onnx_bytes: bytes,
    *,
    model: str,
    version: int,
    uri: str,
    cap: int,
    seed: int,
    task: str = "binary",
    signature: dict[str, Any] | None = None,
) -> Reference:
    """Profile some feature files, keep their hash sample and score it with the model: a Reference (not saved)."""
    profile = profile_files(uris, contract, cap=cap, seed=seed)
    if profile.rows == 0:
        raise ReferenceUnavailable(f"model {model!r} v{version}: the reference files hold no rows")
    scores, labels = _predict_sample(model_session(onnx_bytes), profile.sample, contract, task, signature)
    sample = profile.sample.append_column(SCORE, pa.array(scores, pa.float64()))
    if labels is not None:
        sample = sample.append_column(LABEL, pa.array(labels, pa.int64()))
    stats: dict[str, Any] = {
        "format": REFERENCE_FORMAT,
        "model": model,
        "version": version,
        "model_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "created_at": utcnow().isoformat(),
        "rows": profile.rows,
        "sample": profile.sample_info(),
        "partitions": [],
        "files": len(uris),
        "columns": _column_stats(profile, contract),
        "score": {
            "mean": float(scores.mean()) if scores.size else None,
            "std": float(scores.std()) if scores.size else None,
            "quantiles": {str(q): float(np.quantile(scores, q)) for q in (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)}
            if scores.size
            else {},
        },
    }
    return Reference(model, version, sample, stats, uri)


def build_reference(
    settings: Settings, mv: ModelVersion, days: list[date] | None = None, *, save: bool = True
) -> Reference:
    """Profile the version's training partitions (or `days`), sample, score the sample, store it."""
    from nightshift.data import inspect_partition

    cfg = settings.model(mv.model)
    mon = cfg.monitoring
    days = sorted(set(days)) if days else _training_days(mv)
    if not days:
        raise ReferenceUnavailable(
            f"model {mv.model!r} v{mv.version} records no training partitions, so its reference cannot be built; "
            f"build it from chosen days: `nightshift monitor-reference -m {mv.model} --version {mv.version} "
            "--ds YYYY-MM-DD [--ds ...]`"
        )
    uris: list[str] = []
    parts: list[dict[str, Any]] = []
    for d in days:
        try:
            part = inspect_partition(cfg.dataset_uri(settings), cfg.partition_key, d, cfg.contract, cfg.success_marker)
        except PartitionNotReady as exc:
            raise ReferenceUnavailable(
                f"model {mv.model!r} v{mv.version}'s monitoring reference is built from its training days, and "
                f"ds={d} is gone: {exc}; build it from days that exist: `nightshift monitor-reference -m {mv.model} "
                f"--version {mv.version} --ds YYYY-MM-DD [--ds ...]`"
            ) from None
        uris += [f.uri for f in part.files]
        parts.append({"ds": d.isoformat(), "rows": part.rows, "files": len(part.files), "uri": part.uri})
    ref = reference_from_files(
        uris,
        cfg.contract,
        read_artifact(mv.artifact_uri, mv.sha256),
        model=mv.model,
        version=mv.version,
        uri=reference_folder(mv),
        cap=mon.reference_rows,
        seed=mon.sample_seed,
        task=mv.task,
        signature=mv.signature,
    )
    ref.stats["partitions"] = parts
    if save:
        save_reference(ref)
    return ref


def write_atomic(uri: str, data: bytes) -> None:
    """Replace the file at `uri` with `data` in one move: a reader sees the old bytes or the new ones.

    The temporary name is unique to this write, not only to the process: nights run in threads of one
    process (`nightshift backfill --parallel`) build the same version's reference at the same time, and a
    shared name let one thread move away the file the other was about to move (FileNotFoundError).
    A write that fails (a full disk, say) leaves the old file as it was and no temporary file behind.
    """
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def save_reference(ref: Reference) -> None:
    """Write reference.parquet, then reference.json (which names the Parquet's SHA-256): the JSON marks it complete."""
    buf = io.BytesIO()
    pq.write_table(ref.sample, buf, compression="zstd")
    data = buf.getvalue()
    ref.stats["sample_file"] = "reference.parquet"
    ref.stats["sample_sha256"] = hashlib.sha256(data).hexdigest()
    write_atomic(f"{ref.uri}/reference.parquet", data)
    text = json.dumps(json_safe(ref.stats), indent=1, sort_keys=True, allow_nan=False)
    write_atomic(f"{ref.uri}/reference.json", text.encode())


def load_reference(mv: ModelVersion) -> Reference | None:
    """The stored reference of a version; None when absent, stale (older format), not matching its hash,
    or scored with another model than this version's (its recorded model SHA-256 differs): rebuilt then."""
    folder = reference_folder(mv)
    try:
        with fsspec.open(f"{folder}/reference.json", "rb") as f:
            stats = json.loads(f.read())
        with fsspec.open(f"{folder}/reference.parquet", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    if stats.get("format") != REFERENCE_FORMAT or hashlib.sha256(data).hexdigest() != stats.get("sample_sha256"):
        return None
    if stats.get("model_sha256") != mv.sha256:
        log.warning(
            "model %r v%d: the reference in %s was built for another model (SHA-256 %s…, this version's is %s…); "
            "rebuilding it",
            mv.model,
            mv.version,
            folder,
            str(stats.get("model_sha256"))[:16],
            mv.sha256[:16],
        )
        return None
    sample = pq.ParquetFile(io.BytesIO(data)).read()
    return Reference(mv.model, mv.version, sample, stats, folder)


def ensure_reference(settings: Settings, mv: ModelVersion) -> Reference:
    """The stored reference of a version, built (once) when it has none."""
    return load_reference(mv) or build_reference(settings, mv)
