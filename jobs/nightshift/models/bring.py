"""Register a model its user brings: load, convert to ONNX, fit it to the contract, prove parity, then register.

`nightshift models register -m M --from PATH_OR_URI --ds D` calls `register_brought`. Nothing is
registered unless every step passed: the model loads (a pickle only with `trust_pickle`), converts
to ONNX, its inputs fit the model's configured `[models.contract]` (every mismatch named), and the
ONNX graph reproduces the original library on real rows of partition D (with NaNs, perturbed nulls
and unseen categories) within the task's tolerance. The version then records its task, how its
graph is fed and read (signature), where it came from (flavour, library and version, converter,
the original artifact's URI and SHA-256 — the original itself is kept beside the ONNX file), the
parity report, and — when D's labels have landed — its metrics on them. A LightGBM or XGBoost model also
records its exact explainer (its booster in the library's own format, for TreeSHAP reasons); with
`[models.explain] enabled = true`, a model without one is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from nightshift.config import ModelSettings, Settings
from nightshift.errors import ContractError, ModelSchemaError, ParityError, PartitionNotReady
from nightshift.metrics import class_name
from nightshift.models.registry import CHAMPION, ModelVersion, Registry

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from nightshift.models.importing import ImportedModel
    from nightshift.models.parity import ImportParityReport

log = logging.getLogger(__name__)

#: Rows of the partition the parity check reads (it samples `parity_rows` of them).
PARITY_READ_ROWS = 50_000


@dataclass
class BroughtModel:
    version: ModelVersion
    parity: ImportParityReport
    promoted: bool
    previous_champion: int | None

    def as_dict(self) -> dict[str, Any]:
        mv = self.version
        return {
            "model": mv.model,
            "version": mv.version,
            "task": mv.task,
            "promoted": self.promoted,
            "previous_champion": self.previous_champion,
            "source": mv.source,
            "parity": self.parity.as_dict(),
            "metrics": mv.metrics,
            "artifact": mv.artifact_uri,
            "sha256": mv.sha256,
        }


def partition_rows(settings: Settings, cfg: ModelSettings, ds: date, limit: int = PARITY_READ_ROWS) -> pa.Table:
    """Up to `limit` rows (entity id + contract columns) of the model's partition `ds`, file by file."""
    import pyarrow as pa

    from nightshift.data import inspect_partition, open_parquet

    part = inspect_partition(cfg.dataset_uri(settings), cfg.partition_key, ds, cfg.contract, cfg.success_marker)
    tables: list[pa.Table] = []
    rows = 0
    for f in part.files:
        table = open_parquet(f.uri).read(columns=cfg.contract.read_columns)
        tables.append(table)
        rows += table.num_rows
        if rows >= limit:
            break
    if not tables or rows == 0:
        raise ContractError(f"partition {part.uri} has no rows: parity needs real rows")
    return pa.concat_tables(tables, promote_options="permissive").slice(0, limit).combine_chunks()


def _labelled_metrics(
    settings: Settings, cfg: ModelSettings, model: ImportedModel, table: pa.Table, ds: date
) -> tuple[dict[str, float], int]:
    """The model's metrics on the labelled rows of `ds` (ONNX Runtime outputs), or ({}, 0) without labels."""
    import numpy as np
    import pyarrow as pa

    from nightshift.data import list_partition_files, open_parquet
    from nightshift.data.features import onnx_feeds
    from nightshift.metrics import task_metrics
    from nightshift.models.parity import onnx_outputs

    labels_root = cfg.labels_uri(settings)
    if labels_root is None:
        return {}, 0
    try:
        files = list_partition_files(labels_root, cfg.partition_key, ds, cfg.success_marker)
    except PartitionNotReady:
        return {}, 0
    key = cfg.contract.entity_id
    labels = pa.concat_tables([open_parquet(f).read(columns=[key, cfg.label_column]) for f in files])
    joined = table.join(labels, keys=key, join_type="inner")
    joined = joined.filter(pa.compute.is_valid(joined.column(cfg.label_column)))
    if joined.num_rows < 2:
        return {}, 0
    outputs = onnx_outputs(model, onnx_feeds(joined, cfg.contract, model.inputs, "labelled rows"))
    y_raw = joined.column(cfg.label_column).to_numpy(zero_copy_only=False)
    if model.task == "regression":
        return task_metrics("regression", y_raw, outputs), joined.num_rows
    if model.task == "binary":
        return task_metrics("binary", np.asarray(y_raw, dtype=np.int64), outputs[:, 1], cfg.decision_threshold), len(
            y_raw
        )
    index = {c: i for i, c in enumerate(model.outputs.classes)}
    y = np.array([index.get(class_name(v), -1) for v in y_raw])
    known = y >= 0
    if known.sum() < 2:
        seen = sorted({class_name(v) for v in y_raw})
        raise ModelSchemaError(
            f"the labels of ds={ds} ({cfg.label_column!r}) hold classes {seen[:6]} that the model does not name "
            f"(its classes: {list(model.outputs.classes)}); give its class names in output order "
            "(CLI: --class NAME, once per class)"
        )
    if not known.all():
        log.warning("%d labelled row(s) of ds=%s hold a class the model does not know", int((~known).sum()), ds)
    return task_metrics("multiclass", y[known], outputs[known]), int(known.sum())


def register_brought(
    settings: Settings,
    model: str,
    uri: str,
    *,
    ds: date,
    trust_pickle: bool = False,
    trusted_types: tuple[str, ...] = (),
    feature_names: list[str] | None = None,
    class_names: list[str] | None = None,
    promote: str = "if-first",
    created_by: str | None = None,
    registry: Registry | None = None,
) -> BroughtModel:
    """Import the model at `uri` as a new version of `model` (see the module docstring). Raises, registering
    nothing, when it cannot be loaded or converted, does not fit the contract, or fails parity."""
    from nightshift.models import open_registry
    from nightshift.models.importing import ModelImportError, load_model, require_inputs
    from nightshift.models.parity import check_import_parity

    if promote not in ("if-first", "always", "never"):
        raise ValueError(f"promote must be 'if-first', 'always' or 'never', got {promote!r}")
    cfg = settings.model(model)
    imported = load_model(uri, trust_pickle=trust_pickle, feature_names=feature_names, trusted_types=trusted_types)
    imported = _with_class_names(imported, class_names or _recorded_class_names(imported))
    try:
        require_inputs(imported, cfg.contract)
    except ModelImportError as exc:
        raise ModelSchemaError(f"model {model!r}: {exc}") from None
    table = partition_rows(settings, cfg, ds)
    report = check_import_parity(imported, table, cfg.contract, rows=cfg.training.parity_rows, seed=cfg.training.seed)
    if (report.applicable and not report.passed) or (not report.applicable and report.problems):
        raise ParityError(f"model {model!r} from {uri}: nothing registered: {report.describe()}")
    metrics, labelled = _labelled_metrics(settings, cfg, imported, table, ds)
    from nightshift.models.explainers import brought_explainer

    explainer, explainer_files, unexplained = brought_explainer(imported, cfg.contract)
    if cfg.explain.enabled and explainer is None:
        raise ModelSchemaError(
            f"model {model!r} from {uri}: nothing registered: explain.enabled is set but {unexplained}; set "
            f"[models.explain] enabled = false for {model!r} to register it without reasons"
        )
    registry = registry or open_registry(settings)
    suffix = PurePosixPath(imported.source_uri.rsplit("/", 1)[-1]).suffix  # model.txt -> original.txt
    original = None if imported.flavour == "onnx" else _original_bytes(uri)
    mv = registry.register(
        model,
        imported.onnx_bytes,
        algorithm=imported.algorithm,
        hyperparameters=imported.hyperparameters,
        libraries=_libraries(imported),
        features=[c.model_dump(mode="json") for c in cfg.contract.columns],
        input_schema=[{"name": n, "type": t} for n, t in imported.inputs.element_types.items()],
        output_schema=[imported.outputs.as_dict()],
        training_data={
            "brought": True,
            "source": imported.source(),
            "parity_partition": ds.isoformat(),
            "labelled_rows": labelled,
            "rows": 0,
        },
        metrics=metrics,
        parity=report.as_dict(),
        feature_importance={},
        decision_threshold=cfg.decision_threshold,
        description=cfg.description,
        created_by=created_by,
        extra_files={f"original{suffix}": original} if original is not None else None,
        task=imported.task,
        signature=imported.signature(),
        source=imported.source(),
        explainer=explainer,
        explainer_files=explainer_files or None,
    )
    previous = registry.aliases(model).get(CHAMPION)
    promoted = promote == "always" or (promote == "if-first" and previous is None)
    if promoted:
        reason = f"brought from {uri}" + (" (first registered version)" if previous is None else "")
        registry.set_alias(model, CHAMPION, mv.version, reason=reason, by=created_by)
    log.info(
        "registered %s v%s (%s %s, %s) from %s: parity %s (max %s %.2e)",
        model,
        mv.version,
        imported.library,
        imported.library_version,
        imported.task,
        uri,
        report.status,
        report.metric,
        report.max_diff,
    )
    return BroughtModel(mv, report, promoted, previous)


def _recorded_class_names(model: ImportedModel) -> list[str] | None:
    """Class names the original file carries (an XGBoost booster attribute `classes`, a JSON list), if any."""
    import json

    get_attr = getattr(getattr(model.original, "get_booster", lambda: model.original)(), "attr", None)
    if model.flavour != "xgboost" or not callable(get_attr):
        return None
    raw = get_attr("classes")
    try:
        names = json.loads(raw) if raw else None
    except ValueError:
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def _with_class_names(model: ImportedModel, names: list[str] | None) -> ImportedModel:
    """The model with its classes named (`--classes`, or names its file records) instead of 0..K-1."""
    import dataclasses

    if not names or model.task == "regression":
        return model
    if len(names) != len(model.outputs.classes):
        raise ModelSchemaError(
            f"{model.name}: {len(names)} class name(s) given ({', '.join(names)}) for a model with "
            f"{len(model.outputs.classes)} classes ({', '.join(model.outputs.classes)})"
        )
    return dataclasses.replace(model, outputs=dataclasses.replace(model.outputs, classes=tuple(names)))


def _original_bytes(uri: str) -> bytes | None:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
        if fs.isdir(path):
            return None  # an MLflow model directory: its SHA-256 and URI are recorded, not its files
        with fsspec.open(uri, "rb") as f:
            data: bytes = f.read()
            return data
    except (OSError, ValueError):
        return None


def _libraries(model: ImportedModel) -> dict[str, str]:
    import onnxruntime

    out = {model.library: model.library_version, "onnxruntime": onnxruntime.__version__}
    if model.converter:
        out[model.converter] = model.converter_version
    return out
