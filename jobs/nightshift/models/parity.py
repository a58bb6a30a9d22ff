"""Parity of an imported model: its ONNX graph against the original library, on real rows and perturbed copies."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from nightshift.contracts import FeatureContract
from nightshift.models.importing import ImportedModel, ModelImportError, require_inputs

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

#: Default tolerances: classification, max |Δ probability| over all classes; regression, max |Δ| / max(1, |original|).
CLASSIFICATION_TOLERANCE = 1e-4
REGRESSION_TOLERANCE = 1e-4

#: Categories written into perturbed rows: never seen in training by construction.
UNSEEN_PREFIX = "__unseen__"

NOT_APPLICABLE = "not applicable (no original)"


@dataclass
class ImportParityReport:
    """How closely ONNX Runtime reproduces the original library on the parity rows."""

    model: str
    flavour: str
    library: str
    task: str
    #: False for an ONNX file: there is no original to compare with (the graph was only run).
    applicable: bool
    passed: bool
    rows: int
    #: Rows of `rows` that were perturbed copies (random nulls, unseen categories, all missing).
    perturbed_rows: int
    tolerance: float
    #: What max_diff and mean_diff measure.
    metric: str
    max_diff: float
    mean_diff: float
    #: Share of rows whose most probable class differs (classification); None for regression.
    label_disagreement: float | None
    worst_row: int | None
    #: The class (classification) or output (regression) of the largest difference.
    worst_class: str | None
    worst_row_description: str = ""
    #: ONNX-only models: what went wrong running the graph (non-finite outputs, a wrong shape).
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if not self.applicable:
            return NOT_APPLICABLE
        return "passed" if self.passed else "failed"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("max_diff", "mean_diff"):
            if not math.isfinite(out[key]):
                out[key] = str(out[key])
        out["status"] = self.status
        return out

    def describe(self) -> str:
        """One line for a person: the model, what was compared, the class/output and the difference."""
        head = f"model {self.model} ({self.flavour}, {self.task})"
        if not self.applicable:
            if self.problems:
                return f"{head}: parity {NOT_APPLICABLE}, and the graph FAILED on {self.rows} rows: " + "; ".join(
                    self.problems
                )
            return f"{head}: parity {NOT_APPLICABLE}; ONNX Runtime ran {self.rows} rows with finite outputs"
        what = "class" if self.task != "regression" else "output"
        where = f"{what} {self.worst_class!r}" if self.worst_class is not None else what
        labels = f", label disagreement {self.label_disagreement:.3%}" if self.label_disagreement is not None else ""
        if self.passed:
            return (
                f"{head}: parity passed: {self.metric} {self.max_diff:.3g} <= tolerance {self.tolerance:.3g} over "
                f"{self.rows} rows ({self.perturbed_rows} perturbed){labels}"
            )
        return (
            f"{head}: ONNX and {self.library} disagree on {where}: {self.metric} {self.max_diff:.3g} exceeds "
            f"tolerance {self.tolerance:.3g} (mean {self.mean_diff:.3g}{labels}); worst: {self.worst_row_description}"
        )


def _plain(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col


def _takes_missing(model: ImportedModel, name: str) -> bool:
    return model.inputs.element_type(name) in ("float32", "float64", "string")


def _perturb(model: ImportedModel, table: pa.Table, contract: FeatureContract, rng: np.random.Generator) -> pa.Table:
    """A copy with ~30% nulls in each nullable column the model can read a missing value from, and ~30%
    unseen categories in each categorical column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    specs = {c.name: c for c in contract.columns}
    columns: dict[str, pa.Array] = {}
    for name in table.column_names:
        spec = specs[name]
        col = _plain(table.column(name))
        if pa.types.is_null(col.type):
            columns[name] = col
            continue
        nullable = spec.nullable and _takes_missing(model, name)
        if spec.type.is_categorical:
            draw = rng.random(n)
            col = pc.if_else(pa.array(draw < 0.3), pa.scalar(f"{UNSEEN_PREFIX}{name}", col.type), col)
            if nullable:
                col = pc.if_else(pa.array((draw >= 0.3) & (draw < 0.45)), pa.scalar(None, col.type), col)
        elif nullable:
            col = pc.if_else(pa.array(rng.random(n) < 0.3), pa.scalar(None, col.type), col)
        columns[name] = col
    return pa.table(columns)


def _all_missing(model: ImportedModel, table: pa.Table, contract: FeatureContract) -> pa.Table:
    """Every feature missing at once where it can be: numerics null, categoricals unseen or null (alternating)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    specs = {c.name: c for c in contract.columns}
    alternate = pa.array(np.arange(n) % 2 == 0)
    columns: dict[str, pa.Array] = {}
    for name in table.column_names:
        spec = specs[name]
        col = _plain(table.column(name))
        nullable = spec.nullable and _takes_missing(model, name)
        if pa.types.is_null(col.type):
            columns[name] = col
        elif spec.type.is_categorical:
            unseen = pa.array([f"{UNSEEN_PREFIX}{name}"] * n, type=col.type)
            columns[name] = pc.if_else(alternate, unseen, pa.nulls(n, col.type)) if nullable else unseen
        else:
            columns[name] = pa.nulls(n, col.type) if nullable else col
    return pa.table(columns)


def _describe_inputs(table: pa.Table, row: int, limit: int = 20) -> str:
    values = table.slice(row, 1).to_pylist()[0]
    parts = []
    for name, v in list(values.items())[:limit]:
        if v is None:
            text = "null"
        elif isinstance(v, str):
            text = repr(v if len(v) <= 40 else v[:37] + "...")
        elif isinstance(v, float):
            text = "NaN" if math.isnan(v) else f"{v:.9g}"
        else:
            text = repr(v)
        parts.append(f"{name}={text}")
    if len(values) > limit:
        parts.append(f"... ({len(values) - limit} more)")
    return ", ".join(parts)


def onnx_outputs(model: ImportedModel, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    (out,) = session.run([model.outputs.output], feeds)
    return np.asarray(out)


def check_import_parity(
    model: ImportedModel,
    table: pa.Table,
    contract: FeatureContract,
    *,
    tolerance: float | None = None,
    rows: int = 5000,
    seed: int = 0,
) -> ImportParityReport:
    """Run the original library and ONNX Runtime (CPU, one thread) on the same rows and compare.

    Up to `rows` rows of `table` are sampled (seeded), then scored as they are, as a perturbed copy
    (~30% nulls in each nullable column the model can take a missing value in, ~30% unseen
    categories in each categorical column) and as an all-missing copy of up to 64 rows. ONNX is fed
    through `features.onnx_feeds` exactly as scoring feeds it; the original gets the data's own values
    (`ImportedModel.original_input`). Classification: max |Δ probability| over all classes (default
    tolerance 1e-4) and predicted-label disagreement; regression: max |Δ| / max(1, |original|)
    (default 1e-4). A NaN on either side counts as an infinite difference. An ONNX file has no
    original: the graph must run and give finite outputs of the declared shape, and parity is
    reported "not applicable (no original)". Raises ModelImportError when the model does not fit
    the contract, ContractError when the rows do not.
    """
    import numpy as np
    import pyarrow as pa

    from nightshift.data.features import onnx_feeds

    require_inputs(model, contract)
    regression = model.task == "regression"
    tol = float(
        tolerance if tolerance is not None else (REGRESSION_TOLERANCE if regression else CLASSIFICATION_TOLERANCE)
    )
    n = table.num_rows
    if n == 0:
        raise ModelImportError(f"{model.name}: {model.flavour}: the parity check needs at least one row")
    rng = np.random.default_rng(seed)
    if n > rows:
        table = table.take(pa.array(np.sort(rng.choice(n, size=rows, replace=False))))
    sample = table.select(list(model.inputs.features))
    parts = [
        ("real row", sample),
        ("perturbed copy (random nulls / unseen categories)", _perturb(model, sample, contract, rng)),
        ("all-missing copy", _all_missing(model, sample.slice(0, min(sample.num_rows, 64)), contract)),
    ]
    source = f"parity check of {model.name}"
    feed_parts = [onnx_feeds(part, contract, model.inputs, source) for _, part in parts]
    feeds = {name: np.concatenate([f[name] for f in feed_parts]) for name in feed_parts[0]}
    total = sum(part.num_rows for _, part in parts)
    perturbed = total - sample.num_rows
    ends = np.cumsum([part.num_rows for _, part in parts])
    metric = "max |Δ| / max(1, |original|)" if regression else "max |Δ probability| over all classes"
    onnx_out = np.asarray(onnx_outputs(model, feeds), dtype=np.float64)

    def locate(row: int) -> tuple[str, pa.Table, int]:
        k = int(np.searchsorted(ends, row, side="right"))
        start = int(ends[k - 1]) if k else 0
        return parts[k][0], parts[k][1], row - start

    if model.original is None:
        return _onnx_only(model, onnx_out, total, perturbed, tol, metric)

    try:
        original = np.concatenate(
            [model.predict_original(model.original_input(part, contract)) for _, part in parts], axis=0
        )
    except ModelImportError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's library raises anything
        raise ModelImportError(
            f"{model.name}: {model.flavour}: the original model fails on the parity rows "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
        ) from None
    if regression:
        onnx_out = onnx_out.reshape(-1)
        if onnx_out.shape != original.shape:
            raise ModelImportError(
                f"{model.name}: {model.flavour}: ONNX returned {onnx_out.shape[0]} values for {original.shape[0]} rows"
            )
        diff = np.abs(original - onnx_out) / np.maximum(1.0, np.abs(original))
        diff = np.where(np.isnan(diff), np.inf, diff)
        worst = int(np.argmax(diff))
        max_diff, worst_class = float(diff[worst]), model.outputs.output
        disagreement = None
        origin, part, i = locate(worst)
        both = f"original {original[worst]:.9g}, onnx {onnx_out[worst]:.9g}"
    else:
        if onnx_out.shape != original.shape:
            raise ModelImportError(
                f"{model.name}: {model.flavour}: ONNX returned probabilities of shape {onnx_out.shape}, "
                f"the original {original.shape}"
            )
        full = np.abs(original - onnx_out)
        full = np.where(np.isnan(full), np.inf, full)
        diff = full.max(axis=1)
        worst = int(np.argmax(diff))
        k = int(np.argmax(full[worst]))
        max_diff = float(full[worst, k])
        worst_class = model.outputs.classes[k]
        disagreement = float(np.mean(np.argmax(original, axis=1) != np.argmax(onnx_out, axis=1)))
        origin, part, i = locate(worst)
        both = (
            f"original P({worst_class!r})={original[worst, k]:.9g}, onnx {onnx_out[worst, k]:.9g} "
            f"(all classes: original {np.array2string(original[worst], precision=6)}, "
            f"onnx {np.array2string(onnx_out[worst], precision=6)})"
        )
    description = f"row {worst} of {total} ({origin}): {both}; inputs: {_describe_inputs(part, i)}"
    return ImportParityReport(
        model=model.name,
        flavour=model.flavour,
        library=model.library,
        task=model.task,
        applicable=True,
        passed=bool(max_diff <= tol),
        rows=total,
        perturbed_rows=perturbed,
        tolerance=tol,
        metric=metric,
        max_diff=max_diff,
        mean_diff=float(np.mean(diff)),
        label_disagreement=disagreement,
        worst_row=worst,
        worst_class=worst_class,
        worst_row_description=description,
    )


def _onnx_only(
    model: ImportedModel, out: np.ndarray, total: int, perturbed: int, tol: float, metric: str
) -> ImportParityReport:
    import numpy as np

    problems: list[str] = []
    if model.task == "regression":
        if not (out.shape == (total,) or out.shape == (total, 1)):
            problems.append(
                f"output {model.outputs.output!r} has shape {list(out.shape)}, expected [{total}] or [{total}, 1]"
            )
    elif out.shape != (total, len(model.outputs.classes)):
        problems.append(
            f"output {model.outputs.output!r} has shape {list(out.shape)}, "
            f"expected [{total}, {len(model.outputs.classes)}]"
        )
    bad = int((~np.isfinite(out)).sum())
    if bad:
        problems.append(f"{bad} non-finite value(s) in output {model.outputs.output!r}")
    return ImportParityReport(
        model=model.name,
        flavour=model.flavour,
        library=model.library,
        task=model.task,
        applicable=False,
        passed=not problems,
        rows=total,
        perturbed_rows=perturbed,
        tolerance=tol,
        metric=metric,
        max_diff=float("nan"),
        mean_diff=float("nan"),
        label_disagreement=None,
        worst_row=None,
        worst_class=None,
        worst_row_description="",
        problems=problems,
    )
