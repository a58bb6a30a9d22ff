"""Train a scikit-learn pipeline on an Arrow table, export it to ONNX and prove both agree."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nightshift.contracts import PROBABILITIES, FeatureContract
from nightshift.data.features import model_frame, model_inputs
from nightshift.errors import ParityError
from nightshift.jsonsafe import json_safe as _json_safe
from nightshift.metrics import class_name, task_metrics

if TYPE_CHECKING:  # pragma: no cover
    from sklearn.pipeline import Pipeline

    from nightshift.config import EstimatorSettings, TrainingSettings

log = logging.getLogger(__name__)

#: ONNX opsets the export targets. skl2onnx picks the lowest version of each operator that
#: suffices, up to these. Opset 21 / ai.onnx.ml 3 load in every onnxruntime >= 1.18 (the
#: lowest the project allows), so artifacts trained here score on older runtimes too.
TARGET_OPSET: dict[str, int] = {"": 21, "ai.onnx.ml": 3}

#: The ONNX output holding class probabilities ([N, 2], columns in `classes_` order).
LABEL_OUTPUT = "label"

#: Categories written into perturbed parity rows: never seen in training by construction.
UNSEEN_PREFIX = "__unseen__"

#: Each estimator kind's class per task (binary and multiclass share the classifier).
_ESTIMATORS: dict[str, dict[str, tuple[str, str]]] = {
    "logistic_regression": {
        "binary": ("sklearn.linear_model", "LogisticRegression"),
        "multiclass": ("sklearn.linear_model", "LogisticRegression"),
        "regression": ("sklearn.linear_model", "Ridge"),
    },
    "random_forest": {
        "binary": ("sklearn.ensemble", "RandomForestClassifier"),
        "multiclass": ("sklearn.ensemble", "RandomForestClassifier"),
        "regression": ("sklearn.ensemble", "RandomForestRegressor"),
    },
    "gradient_boosting": {
        "binary": ("sklearn.ensemble", "GradientBoostingClassifier"),
        "multiclass": ("sklearn.ensemble", "GradientBoostingClassifier"),
        "regression": ("sklearn.ensemble", "GradientBoostingRegressor"),
    },
    "lightgbm": {
        "binary": ("lightgbm", "LGBMClassifier"),
        "multiclass": ("lightgbm", "LGBMClassifier"),
        "regression": ("lightgbm", "LGBMRegressor"),
    },
    "xgboost": {
        "binary": ("xgboost", "XGBClassifier"),
        "multiclass": ("xgboost", "XGBClassifier"),
        "regression": ("xgboost", "XGBRegressor"),
    },
}

# Defaults that differ from the libraries' own; estimator.params override them.
_DEFAULTS: dict[str, dict[str, Any]] = {
    # lbfgs at 100 iterations often stops short on real data and warns; 1000 is cheap.
    "logistic_regression": {"max_iter": 1000},
    "lightgbm": {"n_estimators": 100, "verbose": -1, "n_jobs": 1},
    "xgboost": {"n_estimators": 100, "max_depth": 6, "n_jobs": 1},
}
#: Regression kinds whose scikit-learn class takes different parameters (Ridge has no max_iter default).
_REGRESSION_DEFAULTS: dict[str, dict[str, Any]] = {"logistic_regression": {}}

#: Estimators whose numeric inputs are standardised. Trees are not: they are invariant to
#: scaling, and scaling breaks ONNX parity for them. scikit-learn scales in float64 and ONNX in
#: float32, so a scaled value can differ by one float32 ulp; scikit-learn 1.9 trees often put a
#: split threshold exactly on a training value, and a held-out row with that same value then
#: goes left in one runtime and right in the other (observed: P(1) off by 0.08 on 4k rows).
#: Unscaled, both sides feed the trees the identical float32 (imputed) values.
_SCALED = frozenset({"logistic_regression"})

#: Estimators that fit much faster on a dense design matrix than on the sparse one-hot output
#: (random forest: ~7x on 20k rows); gradient boosting is faster sparse, so it stays sparse.
_DENSE_FRIENDLY = frozenset({"random_forest"})
#: Largest dense design matrix (rows x one-hot width) train() builds for them: 512 MiB of float64.
DENSE_CELL_LIMIT = 1 << 26

_ONNX_TYPES = {1: "float32", 11: "float64", 6: "int32", 7: "int64", 8: "string", 9: "bool"}


# -- results ---------------------------------------------------------------------------


@dataclass
class ParityReport:
    """How closely ONNX Runtime reproduces scikit-learn's P(class 1) on the parity rows."""

    rows: int
    max_abs_diff: float
    mean_abs_diff: float
    label_disagreement: float
    tolerance: float
    passed: bool
    worst_row: int | None
    #: Rows of `rows` that were perturbed copies (nulls, unseen categories).
    perturbed_rows: int = 0
    #: The worst row in words: where it came from, both scores and its model inputs (no entity id).
    worst_row_description: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainedModel:
    """A fitted pipeline, its ONNX export and everything the registry records about it."""

    pipeline: Pipeline
    onnx_bytes: bytes
    metrics: dict[str, float]
    parity: ParityReport
    feature_importance: dict[str, float]
    hyperparameters: dict[str, Any]
    algorithm: str
    libraries: dict[str, str]
    train_rows: int
    validation_rows: int
    input_schema: list[dict[str, Any]] = field(default_factory=list)
    output_schema: list[dict[str, Any]] = field(default_factory=list)
    #: How `feature_importance` was measured; None when it could not be (then it is {}).
    feature_importance_method: str | None = None
    #: binary, multiclass or regression.
    task: str = "binary"
    #: Class names in the probabilities' order (classifiers); [] for a regression.
    classes: list[str] = field(default_factory=list)
    #: How its scores are explained exactly (nightshift.models.explainers), extracted at training; None: no
    #: exact explainer (`explainer_problem` says why).
    explainer: dict[str, Any] | None = None
    #: The files the explainer needs (a booster for TreeSHAP), registered with the version.
    explainer_files: dict[str, bytes] | None = None
    explainer_problem: str | None = None

    def signature(self) -> dict[str, Any] | None:
        """How scoring reads this model's outputs; None for the binary layout every version had before."""
        if self.task == "binary":
            return None
        outputs: dict[str, Any] = {"task": self.task, "classes": self.classes}
        outputs.update({"value": VALUE_OUTPUT} if self.task == "regression" else {"probabilities": PROBABILITIES})
        return {"outputs": outputs}


# -- pipeline ----------------------------------------------------------------------------


def _estimator_class(kind: str, task: str = "binary") -> type:
    import importlib

    try:
        module, name = _ESTIMATORS[kind][task]
    except KeyError:
        known = ", ".join(sorted(_ESTIMATORS))
        raise ValueError(f"unknown estimator kind {kind!r} for task {task!r} (known kinds: {known})") from None
    cls: type = getattr(importlib.import_module(module), name)
    return cls


def algorithm_name(kind: str, task: str = "binary") -> str:
    """The dotted public name of the estimator class for an estimator kind and task."""
    module, name = _ESTIMATORS[kind][task]
    return f"{module}.{name}"


_CONVERTERS_REGISTERED = False


def _register_tree_converters() -> None:
    """Teach skl2onnx the LightGBM and XGBoost estimators (onnxmltools' converters), once per process."""
    global _CONVERTERS_REGISTERED
    if _CONVERTERS_REGISTERED:
        return
    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
    from xgboost import XGBClassifier, XGBRegressor

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    update_registered_converter(
        LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes, convert_lightgbm,
        options=classifier_options,
    )  # fmt: skip
    update_registered_converter(
        LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes, convert_lightgbm
    )
    update_registered_converter(
        XGBClassifier, "XGBoostXGBClassifier", calculate_linear_classifier_output_shapes, convert_xgboost,
        options=classifier_options,
    )  # fmt: skip
    update_registered_converter(
        XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost
    )
    _CONVERTERS_REGISTERED = True


def build_pipeline(contract: FeatureContract, estimator: EstimatorSettings, seed: int) -> Pipeline:
    """Preprocessing by column name (impute [+ scale] numerics, one-hot categoricals) then the classifier.

    Numerics: median imputation, then standard scaling for linear models only (see `_SCALED`).
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    task = estimator.task
    cls = _estimator_class(estimator.kind, task)
    accepted = set(cls().get_params())
    unknown = sorted(set(estimator.params) - accepted)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for estimator {estimator.kind!r} "
            f"({algorithm_name(estimator.kind, task)}); accepted: {', '.join(sorted(accepted))}"
        )
    defaults = _REGRESSION_DEFAULTS if task == "regression" and estimator.kind in _REGRESSION_DEFAULTS else _DEFAULTS
    params: dict[str, Any] = dict(defaults.get(estimator.kind, {}))
    if "random_state" in accepted:
        params["random_state"] = seed
    params.update(estimator.params)  # an explicit random_state in the project file wins
    classifier = cls(**params)

    transformers: list[tuple[str, Any, list[str]]] = []
    numeric = [c.name for c in contract.numeric]
    categorical = [c.name for c in contract.categorical]
    if numeric:
        # keep_empty_features: an all-null training column stays a (constant) column, so
        # every contract feature keeps exactly one output column.
        steps: list[tuple[str, Any]] = [
            ("impute", SimpleImputer(strategy="median", add_indicator=False, keep_empty_features=True))
        ]
        if estimator.kind in _SCALED:
            steps.append(("scale", StandardScaler()))
        transformers.append(("num", Pipeline(steps), numeric))
    if categorical:
        # Nulls already arrive as the "__missing__" category (features.MISSING_CATEGORY).
        transformers.append(("cat", OneHotEncoder(handle_unknown="ignore"), categorical))
    preprocess = ColumnTransformer(transformers, remainder="drop")
    return Pipeline([("preprocess", preprocess), ("classifier", classifier)])


# -- ONNX --------------------------------------------------------------------------------


#: The ONNX output of a regression's values.
VALUE_OUTPUT = "variable"


def _float32_thresholds(pipeline: Pipeline) -> None:
    """Round a fitted LightGBM model's numerical split thresholds down to float32, in place.

    LightGBM splits on float64 thresholds (`x <= t`), the midpoints of float32 training values, which are
    seldom float32 themselves; its ONNX graph holds them as float32, rounded to the nearest, which can land
    ON a value: float32(52.3) and 52.5 have the midpoint 52.39999961853027, which rounds to float32(52.4),
    so a row with 52.4 goes right in LightGBM and left in ONNX Runtime (observed on demo data: a regression
    value off by 8 %, its retrain rejected by the onnx_parity gate). Every value the trees see is float32
    (model_inputs; the imputer's medians of float32 columns are float32), and for a float32 x, `x <= t`
    exactly when `x <= t32`, t32 the largest float32 not above t: rounded down, LightGBM predicts what it
    predicted, and ONNX the same. The sklearn wrapper keeps its booster in `_Booster`.
    """
    estimator = pipeline.steps[-1][1]
    if type(estimator).__module__.split(".")[0] != "lightgbm":
        return
    import lightgbm as lgb

    lines = estimator.booster_.model_to_string().split("\n")
    at: int | None = None  # the current tree's threshold line (written before its decision_type line)
    for i, line in enumerate(lines):
        if line.startswith("Tree="):
            at = None
        elif line.startswith("threshold="):
            at = i
        elif line.startswith("decision_type=") and at is not None:
            kinds = np.array(line.split("=", 1)[1].split(), dtype=np.int64)
            t = np.array(lines[at].split("=", 1)[1].split(), dtype=np.float64)
            t32 = t.astype(np.float32)
            t32 = np.where(t32.astype(np.float64) > t, np.nextafter(t32, np.float32(-np.inf)), t32)
            numerical = (kinds & 1) == 0  # a categorical split's threshold indexes its category sets
            t = np.where(numerical, t32.astype(np.float64), t)
            lines[at] = "threshold=" + " ".join(f"{v:.17g}" for v in t)
            at = None
    # Without tree_sizes (the byte size of each tree, which the new thresholds change), LightGBM reads the trees
    # one after another.
    text = "\n".join(line for line in lines if not line.startswith("tree_sizes="))
    estimator._Booster = lgb.Booster(model_str=text)


def export_onnx(pipeline: Pipeline, contract: FeatureContract, task: str = "binary") -> bytes:
    """The fitted pipeline as ONNX: one [N, 1] input per contract column; outputs `label`, `probabilities`
    (classifiers, probabilities [N, K] in `classes_` order) or `variable` (a regression's [N, 1] values)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    estimator = pipeline.steps[-1][1]
    if type(estimator).__module__.split(".")[0] in ("lightgbm", "xgboost"):
        _register_tree_converters()
    initial_types: list[tuple[str, Any]] = [
        (c.name, StringTensorType([None, 1]) if c.type.is_categorical else FloatTensorType([None, 1]))
        for c in contract.columns
    ]
    options = {} if task == "regression" else {id(estimator): {"zipmap": False}}
    model = convert_sklearn(pipeline, initial_types=initial_types, target_opset=TARGET_OPSET, options=options)
    outputs = [o.name for o in model.graph.output]
    expected = [VALUE_OUTPUT] if task == "regression" else [LABEL_OUTPUT, PROBABILITIES]
    if outputs != expected:  # pragma: no cover - a converter change
        raise RuntimeError(f"unexpected ONNX outputs {outputs}, expected {expected}")
    data: bytes = model.SerializeToString()
    return data


def _session(onnx_bytes: bytes) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_scores(onnx_bytes: bytes, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """P(class 1) from ONNX Runtime (CPU, one thread) as a float64 1-D array."""
    return onnx_predict(onnx_bytes, feeds, "binary")


def onnx_predict(onnx_bytes: bytes, feeds: dict[str, np.ndarray], task: str) -> np.ndarray:
    """What ONNX Runtime (CPU, one thread) predicts, float64: P(1) [N] (binary), probabilities [N, K]
    (multiclass) or values [N] (regression)."""
    session = _session(onnx_bytes)
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise ValueError(f"ONNX model needs input(s) {', '.join(map(repr, missing))} that the feeds lack")
    output = VALUE_OUTPUT if task == "regression" else PROBABILITIES
    (raw,) = session.run([output], {n: feeds[n] for n in names})
    out = np.asarray(raw, dtype=np.float64)
    if task == "regression":
        return out.reshape(len(out))
    return out[:, 1] if task == "binary" else out


def sklearn_predict(pipeline: Pipeline, frame: Any, task: str) -> np.ndarray:
    """The same from the fitted pipeline: P(class 1), the probabilities [N, K], or the values."""
    if task == "regression":
        return np.asarray(pipeline.predict(frame), dtype=np.float64)
    proba = np.asarray(pipeline.predict_proba(frame), dtype=np.float64)
    return proba[:, _positive_column(pipeline)] if task == "binary" else proba


def _value_info_schema(values: Any) -> list[dict[str, Any]]:
    schema: list[dict[str, Any]] = []
    for v in values:
        t = v.type.tensor_type
        shape: list[int | None] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        schema.append({"name": v.name, "type": _ONNX_TYPES.get(t.elem_type, str(t.elem_type)), "shape": shape})
    return schema


def onnx_schema(onnx_bytes: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of an ONNX model as [{"name", "type", "shape"}], shapes with None for free dims."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    return _value_info_schema(model.graph.input), _value_info_schema(model.graph.output)


# -- parity ------------------------------------------------------------------------------


def _plain(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col


def _perturb(table: pa.Table, contract: FeatureContract, rng: np.random.Generator) -> pa.Table:
    """A copy of the contract columns with random nulls, and unseen categories in string columns."""
    n = table.num_rows
    columns: dict[str, pa.Array] = {}
    for spec in contract.columns:
        col = _plain(table.column(spec.name))
        if pa.types.is_null(col.type):
            columns[spec.name] = col
            continue
        if spec.type.is_categorical:
            draw = rng.random(n)
            unseen = pa.array(draw < 0.3)
            col = pc.if_else(unseen, pa.scalar(f"{UNSEEN_PREFIX}{spec.name}", col.type), col)
            if spec.nullable:
                col = pc.if_else(pa.array((draw >= 0.3) & (draw < 0.45)), pa.scalar(None, col.type), col)
        elif spec.nullable:
            col = pc.if_else(pa.array(rng.random(n) < 0.3), pa.scalar(None, col.type), col)
        columns[spec.name] = col
    return pa.table(columns)


def _extreme(table: pa.Table, contract: FeatureContract) -> pa.Table:
    """Every feature missing at once: all numerics null, categoricals unseen (or null, alternating)."""
    n = table.num_rows
    columns: dict[str, pa.Array] = {}
    alternate = pa.array(np.arange(n) % 2 == 0)
    for spec in contract.columns:
        col = _plain(table.column(spec.name))
        if pa.types.is_null(col.type):
            columns[spec.name] = col
        elif spec.type.is_categorical:
            unseen = pa.array(np.full(n, f"{UNSEEN_PREFIX}{spec.name}", dtype=object), type=col.type)
            columns[spec.name] = pc.if_else(alternate, unseen, pa.nulls(n, col.type)) if spec.nullable else unseen
        else:
            columns[spec.name] = pa.nulls(n, col.type) if spec.nullable else col
    return pa.table(columns)


def _show(value: Any) -> str:
    if np.ndim(value):
        return "[" + ", ".join(f"{float(v):.9g}" for v in value) + "]"
    return f"{float(value):.9g}"


def _task_of(pipeline: Pipeline) -> str:
    """binary, multiclass or regression, from the fitted estimator."""
    estimator = pipeline.steps[-1][1]
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        return "regression"
    return "binary" if len(classes) == 2 else "multiclass"


def _positive_column(pipeline: Pipeline) -> int:
    classes = list(pipeline.classes_)
    if 1 not in classes:
        raise ValueError(f"pipeline classes {classes} do not include 1")
    return classes.index(1)


def _describe_row(feeds: dict[str, np.ndarray], i: int, limit: int = 20) -> str:
    parts = []
    for name, arr in list(feeds.items())[:limit]:
        v = arr[i, 0]
        if isinstance(v, str):
            text = repr(v if len(v) <= 40 else v[:37] + "...")
        else:
            text = "NaN" if math.isnan(float(v)) else f"{float(v):.6g}"
        parts.append(f"{name}={text}")
    if len(feeds) > limit:
        parts.append(f"... ({len(feeds) - limit} more)")
    return ", ".join(parts)


def check_parity(
    pipeline: Pipeline,
    onnx_bytes: bytes,
    frame_table: pa.Table,
    contract: FeatureContract,
    tolerance: float,
    rows: int,
    seed: int,
    decision_threshold: float = 0.5,
) -> ParityReport:
    """Compare sklearn and ONNX P(class 1) on held-out rows plus perturbed copies of them.

    Up to `rows` rows of `frame_table` are sampled (seeded), then scored three ways: as they
    are; as a copy with ~30% of each nullable column nulled and ~30% of each string column
    replaced by an unseen category; and as a copy where every feature is missing/unseen at
    once. Both sides read the same Arrow rows through features.model_inputs / model_frame.
    """
    import pandas as pd

    n = frame_table.num_rows
    if n == 0:
        raise ValueError("parity check needs at least one row")
    rng = np.random.default_rng(seed)
    if n > rows:
        take = np.sort(rng.choice(n, size=rows, replace=False))
        frame_table = frame_table.take(pa.array(take))
    sample = frame_table.select(contract.feature_names)
    parts = [
        ("held-out row", sample),
        ("perturbed copy (random nulls / unseen categories)", _perturb(sample, contract, rng)),
        ("all-missing copy", _extreme(sample.slice(0, min(sample.num_rows, 64)), contract)),
    ]
    task = _task_of(pipeline)
    feed_parts = [model_inputs(part, contract, source="parity check") for _, part in parts]
    frames = [model_frame(part, contract, source="parity check") for _, part in parts]
    ends = np.cumsum([part.num_rows for _, part in parts])
    # One call per runtime over all parts: one ONNX session, one predict(_proba).
    feeds = {name: np.concatenate([f[name] for f in feed_parts]) for name in feed_parts[0]}
    frame = pd.concat(frames, ignore_index=True)
    sk = sklearn_predict(pipeline, frame, task)
    ort = onnx_predict(onnx_bytes, feeds, task)
    if sk.shape != ort.shape:
        raise ParityError(f"ONNX returned outputs of shape {ort.shape} for scikit-learn's {sk.shape}")
    if task == "regression":  # relative to the value's size: float32 inside the graph
        diff = np.abs(sk - ort) / np.maximum(1.0, np.abs(sk))
        disagreement = 0.0
        what = "value"
    elif task == "multiclass":
        diff = np.abs(sk - ort).max(axis=1)
        disagreement = float(np.mean(sk.argmax(axis=1) != ort.argmax(axis=1)))
        what = "max |P(class)|"
    else:
        diff = np.abs(sk - ort)
        disagreement = float(np.mean((sk >= decision_threshold) != (ort >= decision_threshold)))
        what = "P(1)"
    # A NaN on either side is a failure, never a silent pass.
    diff = np.where(np.isnan(diff), np.inf, diff)
    worst = int(np.argmax(diff))
    max_diff = float(diff[worst])

    origin = parts[int(np.searchsorted(ends, worst, side="right"))][0]
    description = (
        f"row {worst} of {len(diff)} ({origin}): sklearn {what}={_show(sk[worst])}, "
        f"onnx {what}={_show(ort[worst])}; inputs: {_describe_row(feeds, worst)}"
    )
    return ParityReport(
        rows=len(diff),
        max_abs_diff=max_diff,
        mean_abs_diff=float(np.mean(diff)),
        label_disagreement=disagreement,
        tolerance=float(tolerance),
        passed=bool(max_diff <= tolerance),
        worst_row=worst,
        perturbed_rows=len(diff) - sample.num_rows,
        worst_row_description=description,
    )


# -- training ----------------------------------------------------------------------------


def _check_labels(labels: Any, n_rows: int) -> np.ndarray:
    if isinstance(labels, pa.ChunkedArray | pa.Array):
        if labels.null_count:
            raise ValueError(f"labels have {labels.null_count} null value(s)")
        labels = labels.to_numpy(zero_copy_only=False)
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if len(arr) != n_rows:
        raise ValueError(f"labels have {len(arr)} value(s) but the table has {n_rows} row(s)")
    if arr.dtype == object:
        import pandas as pd

        nulls = int(pd.isna(arr).sum())
        if nulls:
            raise ValueError(f"labels have {nulls} null value(s)")
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError("labels must be numeric or boolean 0/1 values") from None
    if arr.dtype.kind == "f":
        nans = int(np.isnan(arr).sum())
        if nans:
            raise ValueError(f"labels have {nans} null (NaN) value(s)")
    elif arr.dtype.kind not in "biu":
        raise ValueError(f"labels must be numeric or boolean 0/1 values, got dtype {arr.dtype}")
    values = np.unique(arr)
    bad = [v for v in values.tolist() if v not in (0, 1)]
    if bad:
        shown = ", ".join(map(repr, bad[:5])) + (" ..." if len(bad) > 5 else "")
        raise ValueError(f"labels must be binary 0/1; found other value(s): {shown}")
    out = arr.astype(np.int64)
    counts = np.bincount(out, minlength=2)
    if counts.min() < 2:
        missing = 0 if counts[0] < 2 else 1
        raise ValueError(
            f"labels need both classes (at least 2 rows each) to train and validate; "
            f"class {missing} has {int(counts[missing])} row(s) of {n_rows}"
        )
    return out


def _output_feature_map(pipeline: Pipeline) -> list[str]:
    """For each column the preprocessor emits, the contract feature it comes from."""
    preprocess = pipeline.named_steps["preprocess"]
    owners: list[str] = []
    for name, transformer, cols in preprocess.transformers_:
        if name == "num":
            owners.extend(cols)
        elif name == "cat":
            for col, cats in zip(cols, transformer.categories_, strict=True):
                owners.extend([col] * len(cats))
    return owners


def _normalised(raw: dict[str, float]) -> dict[str, float] | None:
    total = float(sum(max(v, 0.0) for v in raw.values()))
    if not math.isfinite(total) or total <= 0:
        return None
    return {k: max(v, 0.0) / total for k, v in raw.items()}


@dataclass(frozen=True)
class FeatureImportance:
    """Global importance per contract feature (summing to 1) and how it was measured; empty when it could
    not be measured (`method` None): never a made-up value."""

    values: dict[str, float]
    method: str | None


def measure_feature_importance(
    pipeline: Pipeline, contract: FeatureContract, frame: Any, y: np.ndarray, seed: int, task: str = "binary"
) -> FeatureImportance:
    """Global importance per contract feature, summing to 1, with the method that measured it.

    Permutation importance: the drop in ROC AUC on (up to 5,000 of) the validation rows when
    one feature's values are shuffled, 3 repeats, negative values clipped to 0. It is in the
    units of the metric, works for every estimator, and does not favour categorical features
    with many one-hot columns (summed |coef| does). If that is all zero (or the rows hold one
    class): the estimator's own |coef| or feature_importances_, summed per feature. If neither
    tells anything: nothing ({}, method None), never a uniform guess presented as measured.
    """
    if task != "binary" and len(y) >= 10:
        from sklearn.inspection import permutation_importance

        rows = min(len(y), 5_000)
        pick = np.sort(np.random.default_rng(seed).choice(len(y), size=rows, replace=False))
        scoring, what = ("r2", "R²") if task == "regression" else ("neg_log_loss", "log loss")
        perm = permutation_importance(
            pipeline, frame.iloc[pick], y[pick], scoring=scoring, n_repeats=3, random_state=seed
        )
        result = _normalised(dict(zip(list(frame.columns), perm.importances_mean.tolist(), strict=True)))
        if result is not None:
            return FeatureImportance(
                result, f"permutation: {what} loss with the feature shuffled, 3 repeats, {rows} validation rows"
            )
    if task == "binary" and len(np.unique(y)) == 2:
        from sklearn.inspection import permutation_importance

        rows = min(len(y), 5_000)
        pick = np.sort(np.random.default_rng(seed).choice(len(y), size=rows, replace=False))
        sample, y_sample = frame.iloc[pick], y[pick]
        if len(np.unique(y_sample)) == 2:
            perm = permutation_importance(pipeline, sample, y_sample, scoring="roc_auc", n_repeats=3, random_state=seed)
            result = _normalised(dict(zip(list(frame.columns), perm.importances_mean.tolist(), strict=True)))
            if result is not None:
                return FeatureImportance(
                    result, f"permutation: ROC AUC drop with the feature shuffled, 3 repeats, {rows} validation rows"
                )
    classifier = pipeline.steps[-1][1]
    owners = _output_feature_map(pipeline)
    per_column: np.ndarray | None = None
    method = None
    if hasattr(classifier, "coef_"):
        per_column = np.abs(np.asarray(classifier.coef_, dtype=np.float64)).sum(axis=0)
        method = "estimator: |coef_| summed per feature"
    elif hasattr(classifier, "feature_importances_"):
        per_column = np.asarray(classifier.feature_importances_, dtype=np.float64)
        method = "estimator: feature_importances_ summed per feature"
    if per_column is not None and len(owners) == len(per_column):
        index = {name: i for i, name in enumerate(contract.feature_names)}
        sums = np.bincount([index[o] for o in owners], weights=per_column, minlength=len(index))
        result = _normalised(dict(zip(contract.feature_names, sums.tolist(), strict=True)))
        if result is not None:
            return FeatureImportance(result, method)
    return FeatureImportance({}, None)


def feature_importance(
    pipeline: Pipeline, contract: FeatureContract, frame: Any, y: np.ndarray, seed: int
) -> dict[str, float]:
    """`measure_feature_importance`'s values: {} when it could not be measured."""
    return measure_feature_importance(pipeline, contract, frame, y, seed).values


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a trained artifact."""
    import onnx
    import onnxruntime
    import pandas
    import skl2onnx
    import sklearn

    return {
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "pyarrow": pa.__version__,
    }


def sample_rows(n_rows: int, max_rows: int, seed: int) -> np.ndarray | None:
    """Row indices kept under the cap: a seeded permutation's first `max_rows`, in table order; None = all."""
    if n_rows <= max_rows:
        return None
    return np.sort(np.random.default_rng(seed).permutation(n_rows)[:max_rows])


def split_rows(
    labels: np.ndarray | None, validation_fraction: float, seed: int, *, n: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, validation) row indices, each in ascending order; stratified by `labels` when
    given (classifiers), plain otherwise (`n` rows: a regression)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels) if labels is not None else int(n or 0))
    try:
        train_idx, val_idx = train_test_split(
            idx, test_size=validation_fraction, random_state=seed, shuffle=True, stratify=labels
        )
    except ValueError as exc:
        raise ValueError(
            f"cannot split {len(idx)} row(s) into train/validation (validation_fraction={validation_fraction}): {exc}"
        ) from None
    return np.sort(train_idx), np.sort(val_idx)


def _design_width(table: pa.Table, contract: FeatureContract) -> int:
    """Columns the preprocessor will emit for `table`: one per numeric, one per category (null counts)."""
    width = len(contract.numeric)
    for spec in contract.categorical:
        width += int(pc.count_distinct(_plain(table.column(spec.name)), mode="all").as_py())
    return width


def task_labels(labels: Any, n_rows: int, task: str) -> tuple[np.ndarray, list[str]]:
    """The labels as the estimator learns them, and the class names: binary 0/1 (classes ["0", "1"]);
    multiclass class indices 0..K-1 of the sorted class names (at least 3 classes, 2 rows each);
    regression finite floats (no classes). Raises ValueError naming what is wrong."""
    if task == "binary":
        return _check_labels(labels, n_rows), ["0", "1"]
    if isinstance(labels, pa.ChunkedArray | pa.Array):
        if labels.null_count:
            raise ValueError(f"labels have {labels.null_count} null value(s)")
        labels = labels.to_pylist()
    values = list(labels) if not isinstance(labels, np.ndarray) else labels.tolist()
    if len(values) != n_rows:
        raise ValueError(f"labels have {len(values)} value(s) but the table has {n_rows} row(s)")
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        raise ValueError(f"labels have {sum(v is None or v != v for v in values)} null value(s)")
    if task == "regression":
        try:
            out = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError("a regression's labels must be numbers") from None
        if not np.isfinite(out).all():
            raise ValueError(f"labels have {int((~np.isfinite(out)).sum())} infinite value(s)")
        if len(out) < 4:
            raise ValueError(f"a regression needs at least 4 labelled rows, got {len(out)}")
        return out, []
    names = [class_name(v) for v in values]
    classes = sorted(set(names))
    if len(classes) < 3:
        raise ValueError(f"a multiclass model needs at least 3 classes in its labels, found {classes}")
    index = {c: i for i, c in enumerate(classes)}
    out = np.asarray([index[n] for n in names], dtype=np.int64)
    counts = np.bincount(out, minlength=len(classes))
    if counts.min() < 2:
        rare = classes[int(counts.argmin())]
        raise ValueError(f"class {rare!r} has {int(counts.min())} labelled row(s): each class needs at least 2")
    return out, classes


def train(
    table: pa.Table,
    labels: np.ndarray,
    contract: FeatureContract,
    estimator: EstimatorSettings,
    training: TrainingSettings,
    decision_threshold: float = 0.5,
) -> TrainedModel:
    """Fit, export to ONNX, check parity and measure on held-out rows; raise ParityError on disagreement.

    The task (`estimator.task`) decides the labels (binary 0/1, multiclass classes, regression values),
    the ONNX outputs, the parity compared (P(1), every class's probability, or the value relative to
    its size) and the metrics. Rows: if the table holds more than `training.max_rows`, the first
    `max_rows` of a permutation seeded with `training.seed` are kept (in table order) — so train +
    validation rows never exceed the cap. Those are split, seeded likewise and stratified by label for
    classifiers, into train and validation (`training.validation_fraction`). Same inputs + seed → same model.
    """
    task = estimator.task
    y_all, classes = task_labels(labels, table.num_rows, task)
    keep = sample_rows(table.num_rows, training.max_rows, training.seed)
    if keep is not None:
        table = table.take(pa.array(keep))
        y_all = y_all[keep]
        log.info("training rows capped at %d of %d (seed %d)", len(keep), len(labels), training.seed)
        if task == "binary":
            y_all = _check_labels(y_all, table.num_rows)  # the sample must still hold both classes
    train_idx, val_idx = split_rows(
        y_all if task != "regression" else None, training.validation_fraction, training.seed, n=len(y_all)
    )
    train_table = table.take(pa.array(train_idx))
    val_table = table.take(pa.array(val_idx))
    y_train, y_val = y_all[train_idx], y_all[val_idx]

    pipeline = build_pipeline(contract, estimator, training.seed)
    if estimator.kind in _DENSE_FRIENDLY:
        width = _design_width(train_table, contract)
        if width * train_table.num_rows <= DENSE_CELL_LIMIT:
            pipeline.set_params(preprocess__sparse_threshold=0.0)  # speed only: same trees either way
    x_train = model_frame(train_table, contract, source="training rows")
    pipeline.fit(x_train, y_train)
    _float32_thresholds(pipeline)
    if task == "multiclass" and len(getattr(pipeline.steps[-1][1], "classes_", ())) != len(classes):
        raise ValueError(f"the training rows hold {len(pipeline.steps[-1][1].classes_)} of the {len(classes)} classes")
    onnx_bytes = export_onnx(pipeline, contract, task)

    parity = check_parity(
        pipeline,
        onnx_bytes,
        val_table,
        contract,
        tolerance=training.parity_tolerance,
        rows=training.parity_rows,
        seed=training.seed,
        decision_threshold=decision_threshold,
    )
    log.info(
        "parity %s: max |diff| %.3g (tolerance %.3g) over %d rows",
        "passed" if parity.passed else "FAILED",
        parity.max_abs_diff,
        parity.tolerance,
        parity.rows,
    )
    if not parity.passed:
        what = {"binary": "P(1)", "multiclass": "class probability", "regression": "relative value"}[task]
        raise ParityError(
            f"ONNX and scikit-learn disagree: max |{what} difference| {parity.max_abs_diff:.3g} "
            f"exceeds tolerance {parity.tolerance:.3g} (mean {parity.mean_abs_diff:.3g}, "
            f"label disagreement {parity.label_disagreement:.3%}); worst: {parity.worst_row_description}"
        )

    x_val = model_frame(val_table, contract, source="validation rows")
    prediction = sklearn_predict(pipeline, x_val, task)
    inputs, outputs = onnx_schema(onnx_bytes)
    estimator_obj = pipeline.steps[-1][1]
    importance = measure_feature_importance(pipeline, contract, x_val, y_val, training.seed, task=task)
    from nightshift.training.explain import pipeline_explainer

    # Extracted whether or not [models.explain] is on (so reasons can be turned on later without retraining);
    # a model without one, or whose extraction failed, trains all the same, with the reason recorded.
    explainer, explainer_files, explainer_problem = pipeline_explainer(pipeline, contract, x_train, task)
    if explainer is None:
        log.info(
            "no exact explainer recorded (reasons for each score cannot be turned on for it): %s", explainer_problem
        )
    return TrainedModel(
        pipeline=pipeline,
        onnx_bytes=onnx_bytes,
        metrics=task_metrics(task, y_val, prediction, decision_threshold),
        parity=parity,
        feature_importance=importance.values,
        feature_importance_method=importance.method,
        hyperparameters=_json_safe(estimator_obj.get_params(deep=False)),
        algorithm=algorithm_name(estimator.kind, task),
        libraries=library_versions(),
        train_rows=len(train_idx),
        validation_rows=len(val_idx),
        input_schema=inputs,
        output_schema=outputs,
        task=task,
        classes=classes if task != "regression" else [],
        explainer=explainer,
        explainer_files=explainer_files or None,
        explainer_problem=explainer_problem,
    )
