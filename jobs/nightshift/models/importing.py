"""Models brought by their users: load them (ONNX, scikit-learn, XGBoost, LightGBM, CatBoost, MLflow), convert
them to ONNX, and describe how the graph is fed (InputSpec) and read (OutputSpec).

Nothing here registers anything: the caller proves the ONNX graph equal to the original on real rows
(`nightshift.models.parity.check_import_parity`) first. Heavy libraries are imported inside the
functions that need them, and a library the model does not need is never imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import math
import re
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from nightshift.contracts import Column, ColumnType, FeatureContract
from nightshift.errors import NightshiftError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnx
    import pyarrow as pa

Layout = Literal["columns", "matrix"]
Task = Literal["binary", "multiclass", "regression"]
LAYOUTS: tuple[str, ...] = ("columns", "matrix")
TASKS: tuple[str, ...] = ("binary", "multiclass", "regression")

#: Opsets of the graphs converted here: what skl2onnx targets (as training does), and the highest
#: onnxmltools' XGBoost/LightGBM converters support. Both load in every onnxruntime >= 1.18.
SKLEARN_OPSET: dict[str, int] = {"": 21, "ai.onnx.ml": 3}
ONNXMLTOOLS_OPSET = 15

#: The name of the one [N, F] input of the graphs converted with onnxmltools and of CatBoost's export.
MATRIX_INPUT = "input"

#: Types skops does not trust by default that hold no code: a dtype is rebuilt from its name.
SKOPS_ALWAYS_TRUSTED: frozenset[str] = frozenset({"numpy.dtype"})

_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")

#: ONNX TensorProto element types by number, named as InputSpec names them.
_ONNX_ELEMENT_TYPES: dict[int, str] = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "string",
    9: "bool",
    11: "float64",
    12: "uint32",
    13: "uint64",
}


class ModelImportError(NightshiftError):
    """A model cannot be loaded or converted; the message names the file, the flavour and the cause."""


# -- specs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """How a model's ONNX graph is fed from contract columns.

    layout "columns": one [N, 1] input per feature, named after the contract column (what nightshift
    trains and skl2onnx makes of a pipeline fitted on a DataFrame). "matrix": ONE [N, F] input whose
    columns are `features` in this order (what onnxmltools makes of XGBoost and LightGBM).
    `element_types` maps each ONNX input name to its element type ("float32", "float64", "int8"…
    "int64", "uint8"…"uint64", "bool", "string"). `categories` maps a categorical column the model
    reads as category codes (LightGBM on pandas categoricals) to its categories in code order.
    """

    layout: Layout
    features: tuple[str, ...]
    element_types: dict[str, str]
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown input layout {self.layout!r} (expected one of {', '.join(LAYOUTS)})")
        if not self.features:
            raise ValueError("a model needs at least one feature")
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"features repeat a name: {list(self.features)}")
        if self.layout == "matrix" and len(self.element_types) != 1:
            raise ValueError(f"the matrix layout has exactly one input, got {sorted(self.element_types)}")
        if self.layout == "columns" and set(self.element_types) != set(self.features):
            raise ValueError("the columns layout needs one element type per feature, keyed by the feature")
        unknown = sorted(set(self.element_types.values()) - set(_ONNX_ELEMENT_TYPES.values()))
        if unknown:
            raise ValueError(f"unknown element type(s) {', '.join(unknown)}")
        stray = sorted(set(self.categories) - set(self.features))
        if stray:
            raise ValueError(f"categories given for column(s) the model does not read: {', '.join(stray)}")

    @property
    def matrix_input(self) -> str | None:
        """The name of the one [N, F] input of the matrix layout; None for the columns layout."""
        return next(iter(self.element_types)) if self.layout == "matrix" else None

    def element_type(self, feature: str) -> str:
        """The element type the model reads `feature` as."""
        if self.layout == "matrix":
            return next(iter(self.element_types.values()))
        return self.element_types[feature]

    def as_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "features": list(self.features),
            "element_types": dict(self.element_types),
            "categories": {k: list(v) for k, v in self.categories.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        return cls(
            layout=data["layout"],
            features=tuple(str(f) for f in data["features"]),
            element_types={str(k): str(v) for k, v in data["element_types"].items()},
            categories={str(k): tuple(str(c) for c in v) for k, v in (data.get("categories") or {}).items()},
        )


@dataclass(frozen=True)
class OutputSpec:
    """How a model's ONNX outputs are read.

    Classification (binary, multiclass): `probabilities` names an [N, K] float output whose columns
    are `classes` (labels as strings) in order; binary has K = 2 and the positive class second.
    Regression: `value` names the [N] or [N, 1] float output; `classes` is empty. `label` names the
    predicted-label output when the graph has one.
    """

    task: Task
    classes: tuple[str, ...] = ()
    probabilities: str | None = None
    value: str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r} (expected one of {', '.join(TASKS)})")
        if self.task == "regression":
            if self.value is None or self.classes or self.probabilities is not None:
                raise ValueError("a regression model has a value output and no classes or probabilities")
        else:
            if self.probabilities is None:
                raise ValueError(f"a {self.task} model needs a probabilities output")
            if self.task == "binary" and len(self.classes) != 2:
                raise ValueError(f"a binary model has 2 classes, got {list(self.classes)}")
            if self.task == "multiclass" and len(self.classes) < 3:
                raise ValueError(f"a multiclass model has at least 3 classes, got {list(self.classes)}")
            if len(set(self.classes)) != len(self.classes):
                raise ValueError(f"classes repeat a label: {list(self.classes)}")

    @property
    def output(self) -> str:
        """The output scoring reads: the probabilities, or the value of a regression."""
        name = self.value if self.task == "regression" else self.probabilities
        assert name is not None  # __post_init__
        return name

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "classes": list(self.classes),
            "probabilities": self.probabilities,
            "value": self.value,
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutputSpec:
        return cls(
            task=data["task"],
            classes=tuple(str(c) for c in data.get("classes") or ()),
            probabilities=data.get("probabilities"),
            value=data.get("value"),
            label=data.get("label"),
        )


# -- the imported model --------------------------------------------------------------------------


@dataclass
class ImportedModel:
    """A user's model converted to ONNX, with what the registry records about it and its original."""

    onnx_bytes: bytes
    #: onnx, sklearn, xgboost, lightgbm or catboost (the library the original belongs to).
    flavour: str
    #: The library the original was made with (for an ONNX file: its producer) and its version.
    library: str
    library_version: str
    #: What made the ONNX graph: skl2onnx, onnxmltools, catboost (its own export) or none (an ONNX file).
    converter: str
    converter_version: str
    source_uri: str
    #: SHA-256 of the original artifact's bytes, as read (an MLflow model: of its model file).
    source_sha256: str
    #: The dotted class name of the algorithm (a pipeline's final estimator).
    algorithm: str
    hyperparameters: dict[str, Any]
    inputs: InputSpec
    outputs: OutputSpec
    #: The loaded original (an estimator, a Booster, a CatBoost model); None for an ONNX file.
    original: Any = None
    #: How the original was stored: onnx, skops, pickle, native (the library's own file), object, mlflow.
    serialization: str = "onnx"
    #: The column names the original takes as a DataFrame; None: it takes a plain numpy matrix.
    original_columns: tuple[str, ...] | None = None

    @property
    def task(self) -> str:
        return self.outputs.task

    @property
    def name(self) -> str:
        """The model file's name, for messages."""
        return _display_name(self.source_uri)

    def signature(self) -> dict[str, Any]:
        """{"inputs": InputSpec.as_dict(), "outputs": OutputSpec.as_dict()}: how scoring feeds and reads the graph."""
        return {"inputs": self.inputs.as_dict(), "outputs": self.outputs.as_dict()}

    def source(self) -> dict[str, Any]:
        """Where the model came from, JSON-safe (no bytes, no objects)."""
        return {
            "flavour": self.flavour,
            "library": self.library,
            "library_version": self.library_version,
            "converter": self.converter,
            "converter_version": self.converter_version,
            "uri": self.source_uri,
            "sha256": self.source_sha256,
            "serialization": self.serialization,
            "algorithm": self.algorithm,
        }

    def original_input(self, data: pa.Table | pa.RecordBatch, contract: FeatureContract) -> Any:
        """The rows of `data` as the original library takes them: a DataFrame with the model's own column
        names, or a float64 numpy matrix in feature order.

        Numbers are the data's own values as float64 (nulls NaN), never rounded to what ONNX reads,
        so parity measures the whole path. A null category becomes "__missing__" (nightshift's
        convention, the same on the ONNX side); for a model that takes category codes it is a pandas
        categorical over the model's categories, where a null or unseen value is missing.
        """
        import numpy as np
        import pandas as pd

        if self.original is None:
            raise ModelImportError(f"{self.name}: {self.flavour}: no original model to run (an ONNX file)")
        columns = {c.name: c for c in contract.columns}
        values: dict[str, Any] = {}
        for name in self.inputs.features:
            spec = columns.get(name)
            if spec is None:
                raise ModelImportError(
                    f"{self.name}: {self.flavour}: the model reads column {name!r}, which the contract does not declare"
                )
            values[name] = _original_column(data, spec, self.inputs.categories.get(name))
        if self.original_columns is None:
            return np.column_stack([np.asarray(v, dtype=np.float64) for v in values.values()])
        return pd.DataFrame(
            {new: values[old] for old, new in zip(self.inputs.features, self.original_columns, strict=True)}
        )

    def predict_original(self, x: Any) -> np.ndarray:
        """The original library's prediction: [N, K] class probabilities (float64, `outputs.classes` order)
        for classification, [N] values for regression."""
        import numpy as np

        if self.original is None:
            raise ModelImportError(f"{self.name}: {self.flavour}: no original model to run (an ONNX file)")
        predict = _PREDICTORS[self.flavour]
        out = np.asarray(predict(self, x), dtype=np.float64)
        if self.task == "regression":
            return out.reshape(-1)
        if out.ndim == 1:  # P(positive) alone
            out = np.column_stack([1.0 - out, out])
        return out


def _original_column(data: pa.Table | pa.RecordBatch, spec: Column, categories: Sequence[str] | None) -> Any:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from nightshift.data.features import MISSING_CATEGORY, null_mask

    col = data.column(spec.name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if categories is not None:
        return pd.Categorical(col.to_pylist(), categories=list(categories))
    if spec.type.is_categorical:
        if pa.types.is_null(col.type):
            return np.full(len(col), MISSING_CATEGORY, dtype=object)
        out = np.asarray(col.to_pylist(), dtype=object)
        out[np.asarray([v is None for v in out], dtype=bool)] = MISSING_CATEGORY
        return out
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan)
    if pa.types.is_boolean(col.type):
        col = col.cast(pa.int8())
    values = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64).copy()
    nulls = null_mask(col)
    if nulls is not None:
        values[nulls] = np.nan
    return values


# -- predictions with the original library ---------------------------------------------------------


def _predict_sklearn(model: ImportedModel, x: Any) -> Any:
    est = model.original
    return est.predict_proba(x) if model.task != "regression" else est.predict(x)


def _predict_xgboost(model: ImportedModel, x: Any) -> Any:
    import numpy as np
    import xgboost as xgb

    est = model.original
    if isinstance(est, xgb.XGBModel):
        return est.predict_proba(x) if model.task != "regression" else est.predict(x)
    objective = _xgboost_objective(est)
    dmatrix = xgb.DMatrix(x, missing=np.nan)
    if objective == "multi:softmax":  # predict() gives labels: the probabilities are the margins' softmax
        margin = np.asarray(est.predict(dmatrix, output_margin=True), dtype=np.float64)
        margin = np.exp(margin - margin.max(axis=1, keepdims=True))
        return margin / margin.sum(axis=1, keepdims=True)
    return est.predict(dmatrix)


def _predict_lightgbm(model: ImportedModel, x: Any) -> Any:
    import lightgbm as lgb

    est = model.original
    if isinstance(est, lgb.LGBMModel):
        return est.predict_proba(x) if model.task != "regression" else est.predict(x)
    return est.predict(x)


def _predict_catboost(model: ImportedModel, x: Any) -> Any:
    est = model.original
    if model.task == "regression":
        return est.predict(x)
    return est.predict(x, prediction_type="Probability")


_PREDICTORS: dict[str, Any] = {
    "sklearn": _predict_sklearn,
    "xgboost": _predict_xgboost,
    "lightgbm": _predict_lightgbm,
    "catboost": _predict_catboost,
}


# -- helpers -------------------------------------------------------------------------------------


def _display_name(uri: str) -> str:
    stripped = uri.rstrip("/")
    return stripped.rsplit("/", 1)[-1] or uri


def _fail(uri: str, flavour: str, cause: str) -> ModelImportError:
    return ModelImportError(f"{_display_name(uri)}: {flavour}: {cause}")


#: ONNX Runtime's C++ source location and function signature in front of its message
#: ("/onnxruntime_src/…/model.cc:256 onnxruntime::Model::Model(…) Unsupported model IR version: 14, …"):
#: they would fill the one line and cut the cause off.
_ORT_LOCATION = re.compile(r"\S*onnxruntime_src/\S+:\d+ (?:\w+(?:::[\w~<>]+)+\(.*?\)(?: const)? )?")


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = _ORT_LOCATION.sub("", " ".join(str(exc).split()))
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _version(module: str) -> str:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "unknown"))
    except ImportError:
        return "not installed"


def _require(module: str, uri: str, flavour: str, package: str | None = None) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise _fail(
            uri, flavour, f"needs the {package or module!r} package, which is not installed in this environment"
        ) from None


def _public_name(cls: type) -> str:
    """`sklearn.linear_model.LogisticRegression` rather than `sklearn.linear_model._logistic.LogisticRegression`."""
    module = cls.__module__
    parts = module.split(".")
    for end in range(1, len(parts) + 1):
        candidate = ".".join(p for p in parts[:end])
        if any(p.startswith("_") for p in parts[:end]):
            break
        with contextlib.suppress(ImportError):
            if getattr(importlib.import_module(candidate), cls.__name__, None) is cls:
                return f"{candidate}.{cls.__name__}"
    return f"{module}.{cls.__qualname__}"


def _json_safe(value: Any) -> Any:
    """`value` made JSON-safe by the project's one rule (nightshift.jsonsafe: NaN/inf → null), with classes named."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():  # a numpy scalar
        return _json_safe(item())
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return _json_safe(tolist())
    if isinstance(value, type):
        return _public_name(value)
    return repr(value)


def _read(uri: str) -> bytes:
    import fsspec

    try:
        with fsspec.open(uri, "rb") as f:
            data: bytes = f.read()
    except FileNotFoundError:
        raise ModelImportError(f"{_display_name(uri)}: model file {uri} does not exist") from None
    except IsADirectoryError:
        raise ModelImportError(
            f"{_display_name(uri)}: {uri} is a directory and not an MLflow model (no MLmodel file)"
        ) from None
    except (OSError, ImportError, ValueError) as exc:  # ImportError: no fsspec backend for the protocol
        raise ModelImportError(f"{_display_name(uri)}: cannot read {uri}: {_one_line(exc)}") from None
    return data


def _sniff(uri: str, data: bytes) -> str:
    """The artifact's format: onnx, skops, pickle, xgboost, lightgbm or catboost."""
    suffix = Path(uri.split("?", 1)[0]).suffix.lower()
    head = data[:64]
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".skops" or (suffix == "" and head.startswith(b"PK")):
        return "skops"
    if suffix in _PICKLE_SUFFIXES:
        return "pickle"
    if suffix == ".ubj" or (suffix == ".json" and b'"learner"' in data[:4096]):
        return "xgboost"
    if head.startswith(b"tree\n") or head.startswith(b"tree\r\n"):
        return "lightgbm"
    if suffix == ".cbm" or head.startswith(b"CBM1"):
        return "catboost"
    if head[:1] == b"\x80":
        return "pickle"
    if suffix == ".json" and b'"learner"' in data:
        return "xgboost"
    raise ModelImportError(
        f"{_display_name(uri)}: unknown model format (expected .onnx, .skops, .pkl/.joblib with trust_pickle, "
        "XGBoost .json/.ubj, LightGBM .txt, CatBoost .cbm, or an MLflow model)"
    )


def _generated(names: Sequence[str]) -> bool:
    """Names a library made up for unnamed columns (LightGBM's Column_0, XGBoost's f0, CatBoost's 0)."""
    return all(n in (f"Column_{i}", f"f{i}", str(i)) for i, n in enumerate(names))


def _resolve_features(
    uri: str, flavour: str, own: Sequence[str] | None, given: Sequence[str] | None, n_features: int
) -> tuple[list[str], bool]:
    """(feature names in the model's column order, whether they are the model's own names).

    The model's own names win; `given` names are used when the model has none (or only generated
    ones), and must match its number of features.
    """
    if own is not None and len(own) == n_features and not _generated(own):
        if given is not None and list(given) != list(own):
            raise _fail(
                uri,
                flavour,
                f"feature_names were given but the model has its own names ({', '.join(list(own)[:5])}, ...); "
                "leave feature_names out (the model's names are used) or rename the model's features",
            )
        return [str(n) for n in own], True
    if given is None:
        raise _fail(
            uri,
            flavour,
            f"the model has no feature names ({n_features} unnamed features); pass feature_names "
            "(CLI: --feature NAME, once per column) with the contract column of each, in the model's column order",
        )
    if len(given) != n_features:
        raise _fail(uri, flavour, f"{len(given)} feature_names were given but the model has {n_features} features")
    return [str(n) for n in given], False


# -- ONNX graphs ---------------------------------------------------------------------------------


def _load_onnx(uri: str, flavour: str, data: bytes) -> onnx.ModelProto:
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError
        raise _fail(uri, flavour, f"not a readable ONNX model ({_one_line(exc)})") from None
    if not model.graph.node:
        raise _fail(uri, flavour, "not a readable ONNX model (its graph has no nodes)")
    return model


def _tensor_info(value: Any) -> tuple[str, list[int | None]] | None:
    """(element type name, shape with None for free dims) of a tensor value info; None if not a tensor."""
    if not value.type.HasField("tensor_type"):
        return None
    t = value.type.tensor_type
    name = _ONNX_ELEMENT_TYPES.get(t.elem_type, f"elem_type {t.elem_type}")
    shape: list[int | None] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return name, shape


def _graph_inputs(model: onnx.ModelProto) -> list[Any]:
    initializers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _infer_inputs(uri: str, flavour: str, model: onnx.ModelProto, feature_names: Sequence[str] | None) -> InputSpec:
    inputs = _graph_inputs(model)
    infos: list[tuple[str, str, list[int | None]]] = []
    for node in inputs:
        info = _tensor_info(node)
        if info is None:
            raise _fail(uri, flavour, f"input {node.name!r} is not a tensor ({node.type})")
        if info[0] not in _ONNX_ELEMENT_TYPES.values():
            raise _fail(uri, flavour, f"input {node.name!r} has {info[0]}, which nightshift cannot feed")
        if len(info[1]) != 2:
            raise _fail(uri, flavour, f"input {node.name!r} has shape {info[1]}; nightshift feeds [N, 1] or [N, F]")
        infos.append((node.name, info[0], info[1]))
    if not infos:
        raise _fail(uri, flavour, "the graph has no inputs")
    names = [n for n, _, _ in infos]
    single_columns = all(shape[1] == 1 for _, _, shape in infos)
    wants_matrix = len(infos) == 1 and (
        infos[0][2][1] != 1 or (feature_names is not None and list(feature_names) != names)
    )
    if single_columns and not wants_matrix:
        if feature_names is not None and sorted(feature_names) != sorted(names):
            raise _fail(uri, flavour, f"feature_names {list(feature_names)} do not match the graph's inputs {names}")
        return InputSpec("columns", tuple(names), {n: t for n, t, _ in infos})
    if len(infos) != 1:
        described = ", ".join(f"{n} {s}" for n, _, s in infos)
        raise _fail(
            uri,
            flavour,
            f"inputs {described}: nightshift feeds either one [N, 1] input per column or one [N, F] matrix",
        )
    name, element_type, shape = infos[0]
    if feature_names is None:
        raise _fail(
            uri,
            flavour,
            f"the graph reads one matrix input {name!r} of shape {shape}; pass feature_names "
            "(CLI: --feature NAME, once per column) naming the contract column of each of its columns, in order",
        )
    width = shape[1]
    if width is not None and width != len(feature_names):
        raise _fail(uri, flavour, f"input {name!r} has {width} columns but {len(feature_names)} feature_names")
    return InputSpec("matrix", tuple(str(f) for f in feature_names), {name: element_type})


def _class_labels(model: onnx.ModelProto) -> list[str] | None:
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name == "classlabels_strings" and attr.strings:
                return [s.decode() for s in attr.strings]
            if attr.name in ("classlabels_int64s", "classlabels_ints") and attr.ints:
                return [str(i) for i in attr.ints]
    return None


def _dummy_feeds(spec: InputSpec) -> dict[str, Any]:
    import numpy as np

    from nightshift.data.features import FLOAT_ELEMENT_TYPES, INTEGER_ELEMENT_TYPES

    def one(element_type: str, width: int) -> Any:
        if element_type == "string":
            return np.full((1, width), "", dtype=object)
        if element_type == "bool":
            return np.zeros((1, width), dtype=np.bool_)
        return np.zeros((1, width), dtype={**FLOAT_ELEMENT_TYPES, **INTEGER_ELEMENT_TYPES}[element_type])

    if spec.layout == "matrix":
        ((name, element_type),) = spec.element_types.items()
        return {name: one(element_type, len(spec.features))}
    return {name: one(element_type, 1) for name, element_type in spec.element_types.items()}


def _session(onnx_bytes: bytes) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


_PROBABILITY_HINTS = ("prob",)
_LABEL_HINTS = ("label",)


def _infer_outputs(
    uri: str,
    flavour: str,
    model: onnx.ModelProto,
    inputs: InputSpec,
    classes: Sequence[str] | None = None,
    task: Task | None = None,
) -> OutputSpec:
    """The OutputSpec of a graph: an [N, K] float output named like probabilities → classification; a single
    [N] or [N, 1] float output → regression; a ZipMap (sequence of maps) → refused."""
    tensors: list[tuple[str, str, list[int | None]]] = []
    for out in model.graph.output:
        if out.type.HasField("sequence_type") or out.type.HasField("map_type"):
            raise _fail(
                uri,
                flavour,
                f"output {out.name!r} is a ZipMap (a sequence of maps), which nightshift cannot read; export the "
                "model with zipmap disabled (skl2onnx: options={id(classifier): {'zipmap': False}}; "
                "onnxmltools: zipmap=False)",
            )
        info = _tensor_info(out)
        if info is not None:
            tensors.append((out.name, info[0], info[1]))
    floats = [t for t in tensors if t[1] in ("float32", "float64")]
    probabilities = [
        t for t in floats if len(t[2]) == 2 and t[2][1] != 1 and any(h in t[0].lower() for h in _PROBABILITY_HINTS)
    ]
    labels = [t for t in tensors if any(h in t[0].lower() for h in _LABEL_HINTS) and len(t[2]) in (1, 2)]
    label = labels[0][0] if labels else None
    described = ", ".join(f"{n} ({e} {s})" for n, e, s in tensors) or "none"
    if task != "regression" and len(probabilities) == 1:
        name, _, shape = probabilities[0]
        width = shape[1]
        if width is None:  # a free dimension: one row through the graph tells
            try:
                (result,) = _session(model.SerializeToString()).run([name], _dummy_feeds(inputs))
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
                raise _fail(uri, flavour, f"cannot run the graph on one row ({_one_line(exc)})") from None
            width = int(result.shape[1])
        if classes is not None and len(classes) != width:
            raise _fail(uri, flavour, f"output {name!r} has {width} columns but the model has {len(classes)} classes")
        labels_found = list(classes) if classes is not None else _class_labels(model)
        if labels_found is None or len(labels_found) != width:
            labels_found = [str(i) for i in range(width)]
        if width < 2:
            raise _fail(uri, flavour, f"output {name!r} has {width} column(s); a classifier needs one per class")
        kind: Task = "binary" if width == 2 else "multiclass"
        if task is not None and task != kind:
            raise _fail(uri, flavour, f"output {name!r} has {width} columns but the model is {task}")
        return OutputSpec(kind, tuple(labels_found), probabilities=name, label=label)
    if task not in (None, "regression"):
        raise _fail(uri, flavour, f"no [N, K] probabilities output for a {task} model (outputs: {described})")
    values = [t for t in floats if t[0] != label and (len(t[2]) == 1 or (len(t[2]) == 2 and t[2][1] == 1))]
    if len(values) == 1 and not probabilities:
        return OutputSpec("regression", (), value=values[0][0])
    raise _fail(
        uri,
        flavour,
        f"cannot tell the task from the outputs {described}: expected an [N, K] float output named like "
        "'probabilities' (classification) or a single [N] / [N, 1] float output (regression)",
    )


def _check_graph(uri: str, flavour: str, onnx_bytes: bytes, inputs: InputSpec) -> None:
    """The graph loads in ONNX Runtime and its inputs are what the spec says."""
    try:
        session = _session(onnx_bytes)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise _fail(uri, flavour, f"ONNX Runtime cannot load the graph ({_one_line(exc)})") from None
    actual = {i.name for i in session.get_inputs()}
    expected = set(inputs.element_types)
    if actual != expected:
        raise _fail(uri, flavour, f"graph inputs {sorted(actual)} differ from the expected {sorted(expected)}")


def _strip_zipmap(model: onnx.ModelProto, output: str) -> None:
    """Replace a ZipMap output by the [N, K] tensor it wraps, named `output` (CatBoost exports one)."""
    import onnx

    for node in list(model.graph.node):
        if node.op_type != "ZipMap":
            continue
        source, target = node.input[0], node.output[0]
        model.graph.node.remove(node)
        for other in model.graph.node:
            for i, name in enumerate(other.output):
                if name == source:
                    other.output[i] = output
            for i, name in enumerate(other.input):
                if name == source:
                    other.input[i] = output
        for i, out in enumerate(list(model.graph.output)):
            if out.name == target:
                model.graph.output.remove(out)
                width = len(_class_labels(model) or []) or None
                info = onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [None, width])
                model.graph.output.insert(i, info)


# -- flavours ------------------------------------------------------------------------------------


def _from_onnx(uri: str, data: bytes, sha: str, feature_names: Sequence[str] | None) -> ImportedModel:
    model = _load_onnx(uri, "onnx", data)
    inputs = _infer_inputs(uri, "onnx", model, feature_names)
    outputs = _infer_outputs(uri, "onnx", model, inputs)
    _check_graph(uri, "onnx", data, inputs)
    ml_ops = sorted({n.op_type for n in model.graph.node if n.domain and n.domain != "ai.onnx"})
    return ImportedModel(
        onnx_bytes=data,
        flavour="onnx",
        library=model.producer_name or "onnx",
        library_version=model.producer_version or "unknown",
        converter="none",
        converter_version="",
        source_uri=uri,
        source_sha256=sha,
        algorithm="onnx:" + ("+".join(ml_ops) if ml_ops else "graph"),
        hyperparameters={},
        inputs=inputs,
        outputs=outputs,
        original=None,
        serialization="onnx",
    )


def _load_skops(uri: str, data: bytes, trusted_types: Sequence[str]) -> Any:
    sio = _require("skops.io", uri, "skops", "skops")
    try:
        untrusted = [str(t) for t in sio.get_untrusted_types(data=data)]
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
        raise _fail(uri, "skops", f"not a readable skops file ({_one_line(exc)})") from None
    needed = sorted(set(untrusted) - SKOPS_ALWAYS_TRUSTED - set(trusted_types))
    if needed:
        raise _fail(
            uri,
            "skops",
            f"the file holds type(s) skops does not trust by default: {', '.join(needed)}; check them and pass "
            "trusted_types=[...] (CLI: --trust-type NAME) to load it",
        )
    try:
        return sio.loads(data, trusted=untrusted)
    except Exception as exc:  # noqa: BLE001 - skops re-raises the library's own errors
        raise _fail(uri, "skops", f"cannot load the model ({_one_line(exc)})") from None


def _load_pickle(uri: str, data: bytes, trust_pickle: bool) -> Any:
    if not trust_pickle:
        raise _fail(
            uri,
            "pickle",
            "refusing to load a pickle: loading one runs any code it contains. Save the model with skops "
            "(skops.io.dump, a .skops file) or, only for a file you trust, pass trust_pickle=True "
            "(CLI: --trust-pickle)",
        )
    import joblib

    try:
        return joblib.load(io.BytesIO(data))  # reads plain pickles too
    except ModuleNotFoundError as exc:
        raise _fail(uri, "pickle", f"needs the {exc.name!r} package, which is not installed") from None
    except Exception as exc:  # noqa: BLE001 - unpickling raises anything
        raise _fail(uri, "pickle", f"cannot unpickle the model ({_one_line(exc)})") from None


def _load_native(uri: str, kind: str, data: bytes) -> Any:
    if kind == "xgboost":
        xgb = _require("xgboost", uri, "xgboost")
        booster = xgb.Booster()
        try:
            booster.load_model(bytearray(data))
        except Exception as exc:  # noqa: BLE001 - XGBoostError
            raise _fail(uri, "xgboost", f"not a readable XGBoost model ({_one_line(exc)})") from None
        return booster
    if kind == "lightgbm":
        lgb = _require("lightgbm", uri, "lightgbm")
        try:
            return lgb.Booster(model_str=data.decode("utf-8"))
        except Exception as exc:  # noqa: BLE001 - LightGBMError
            raise _fail(uri, "lightgbm", f"not a readable LightGBM model ({_one_line(exc)})") from None
    cb = _require("catboost", uri, "catboost")
    model = cb.CatBoost()
    try:
        model.load_model(blob=data)
    except Exception as exc:  # noqa: BLE001 - CatBoostError
        raise _fail(uri, "catboost", f"not a readable CatBoost model ({_one_line(exc)})") from None
    return model


def _flavour_of(obj: Any) -> str:
    module = type(obj).__module__.split(".", 1)[0]
    if module in ("xgboost", "lightgbm", "catboost"):
        return module
    if module == "sklearn" or hasattr(obj, "get_params"):
        return "sklearn"
    return module


def _from_object(
    uri: str, obj: Any, sha: str, serialization: str, feature_names: Sequence[str] | None
) -> ImportedModel:
    flavour = _flavour_of(obj)
    if flavour == "xgboost":
        return _from_xgboost(uri, obj, sha, serialization, feature_names)
    if flavour == "lightgbm":
        return _from_lightgbm(uri, obj, sha, serialization, feature_names)
    if flavour == "catboost":
        return _from_catboost(uri, obj, sha, serialization, feature_names)
    if flavour == "sklearn":
        return _from_sklearn(uri, obj, sha, serialization, feature_names)
    raise _fail(
        uri,
        serialization,
        f"holds a {type(obj).__module__}.{type(obj).__qualname__}, not a model nightshift can convert "
        "(scikit-learn, XGBoost, LightGBM, CatBoost)",
    )


# scikit-learn


def _walk_sklearn(est: Any) -> Iterator[Any]:
    """`est` and every estimator nested in it (pipeline steps, column transformers, unions, meta-estimators)."""
    yield est
    children: list[Any] = []
    if hasattr(est, "steps"):
        children += [step for _, step in est.steps]
    for attr in ("transformers_", "transformer_list"):
        children += [t[1] for t in getattr(est, attr, None) or []]
    for attr in ("estimator", "base_estimator", "final_estimator_"):
        child = getattr(est, attr, None)
        if child is not None and hasattr(child, "get_params"):
            children.append(child)
    for attr in ("estimators_",):
        value = getattr(est, attr, None)
        if isinstance(value, list) and len(value) <= 64:
            children += [c for c in value if hasattr(c, "get_params")]
    for child in children:
        if child is not None and not isinstance(child, str) and hasattr(child, "get_params"):
            yield from _walk_sklearn(child)


def _final_step(est: Any) -> Any:
    while hasattr(est, "steps"):
        est = est.steps[-1][1]
    return est


def _takes_strings(transformer: Any) -> bool:
    import numpy as np

    first = transformer
    while hasattr(first, "steps"):
        first = first.steps[0][1]
    categories = getattr(first, "categories_", None)
    if categories is not None:
        return any(np.asarray(c).dtype.kind in "OUS" for c in categories)
    statistics = getattr(first, "statistics_", None)
    if statistics is not None:
        return bool(np.asarray(statistics).dtype.kind in "OUS")
    return False


def _string_columns(est: Any) -> set[str]:
    """Columns a pipeline's ColumnTransformer routes to a transformer fitted on strings (encoders, imputers)."""
    head = est.steps[0][1] if hasattr(est, "steps") else est
    out: set[str] = set()
    for _, transformer, columns in getattr(head, "transformers_", None) or []:
        if isinstance(transformer, str):
            continue
        names = [c for c in (columns if isinstance(columns, list | tuple) else list(columns)) if isinstance(c, str)]
        if names and _takes_strings(transformer):
            out.update(names)
    return out


_HGB_LOCK = threading.Lock()


@contextlib.contextmanager
def _hist_gradient_boosting_fix() -> Iterator[None]:
    """skl2onnx 1.20 passes HistGradientBoosting's `missing_go_to_left` flags (numpy uint8 and Python bools) to
    onnx.helper.make_attribute, which refuses bools in an int list ("Unable to create node
    'TreeEnsembleClassifier'"). Its own add_node documents the flag as 0/1: pass ints, for the conversion only.
    Parity on real rows with NaNs proves the result (tests/models)."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return original(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    with _HGB_LOCK:
        tree_ensemble.add_node = add_node
        try:
            yield
        finally:
            tree_ensemble.add_node = original


def _check_hist_gradient_boosting(uri: str, flavour: str, est: Any) -> bool:
    """True when `est` holds a HistGradientBoosting model (converted with the fix); refused when it uses
    native categorical splits, which skl2onnx cannot express."""
    import numpy as np

    found = False
    for part in _walk_sklearn(est):
        name = type(part).__name__
        if not name.startswith("HistGradientBoosting"):
            continue
        found = True
        if getattr(part, "is_categorical_", None) is not None and bool(np.any(part.is_categorical_)):
            raise _fail(
                uri,
                flavour,
                f"{name} with categorical_features cannot be converted to ONNX (skl2onnx has no categorical "
                "splits); one-hot or ordinal-encode the categories in the pipeline instead",
            )
    return found


def _sklearn_conversion_error(est: Any, exc: Exception) -> str:
    """The cause of a failed skl2onnx conversion, naming the operator that has no converter when known."""
    whole = type(est).__name__
    missing = re.search(r"<class '([\w.]+)'>", str(exc))
    if type(exc).__name__ == "MissingShapeCalculator" and missing:
        cls = missing.group(1).rsplit(".", 1)[-1]
        return f"skl2onnx has no converter for {cls} (in the {whole}); remove it or replace it with a supported step"
    names = [type(p).__name__ for p in _walk_sklearn(est)]
    named = next((n for n in names if n in str(exc)), None)
    if named is None and any(n.startswith("HistGradientBoosting") for n in names):
        named = next(n for n in names if n.startswith("HistGradientBoosting"))
    where = f"{named} (in the {whole})" if named and named != whole else whole
    return f"skl2onnx cannot convert {where}: {_one_line(exc)}"


def _from_sklearn(
    uri: str, est: Any, sha: str, serialization: str, feature_names: Sequence[str] | None
) -> ImportedModel:
    skl2onnx = _require("skl2onnx", uri, "sklearn")
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.base import is_classifier, is_regressor

    flavour = "sklearn"
    final = _final_step(est)
    for part in _walk_sklearn(est):
        library = type(part).__module__.split(".", 1)[0]
        if library in ("xgboost", "lightgbm", "catboost"):
            raise _fail(
                uri,
                flavour,
                f"a scikit-learn pipeline holding a {library} model ({type(part).__name__}) is not supported; "
                f"save the {library} model alone (its native file or a skops/pickle of the estimator)",
            )
    if not hasattr(final, "predict"):
        raise _fail(uri, flavour, f"{type(final).__name__} is not a predictor (no predict method)")
    if is_classifier(est):
        classes = [str(c) for c in est.classes_]
        task: Task = "binary" if len(classes) == 2 else "multiclass"
    elif is_regressor(est):
        classes = []
        task = "regression"
    else:
        raise _fail(uri, flavour, f"{type(final).__name__} is neither a classifier nor a regressor")
    own = getattr(est, "feature_names_in_", None)
    own_names = [str(n) for n in own] if own is not None else None
    n_features = int(getattr(est, "n_features_in_", len(own_names) if own_names else 0))
    head = est.steps[0][1] if hasattr(est, "steps") else est
    by_name = own_names is not None and hasattr(head, "transformers_")
    features, named = _resolve_features(uri, flavour, own_names, feature_names, n_features)
    hgb = _check_hist_gradient_boosting(uri, flavour, est)
    if by_name:
        strings = _string_columns(est)
        initial = [(f, StringTensorType([None, 1]) if f in strings else FloatTensorType([None, 1])) for f in features]
        inputs = InputSpec("columns", tuple(features), {f: "string" if f in strings else "float32" for f in features})
    else:
        initial = [(MATRIX_INPUT, FloatTensorType([None, len(features)]))]
        inputs = InputSpec("matrix", tuple(features), {MATRIX_INPUT: "float32"})
    options = {id(final): {"zipmap": False}} if task != "regression" else None
    try:
        with _hist_gradient_boosting_fix() if hgb else contextlib.nullcontext():
            proto = skl2onnx.convert_sklearn(est, initial_types=initial, target_opset=SKLEARN_OPSET, options=options)
    except Exception as exc:  # noqa: BLE001 - converters raise anything
        raise _fail(uri, flavour, _sklearn_conversion_error(est, exc)) from None
    onnx_bytes = proto.SerializeToString()
    outputs = _infer_outputs(uri, flavour, proto, inputs, classes if task != "regression" else None, task)
    _check_graph(uri, flavour, onnx_bytes, inputs)
    params = final.get_params(deep=False) if hasattr(final, "get_params") else {}
    return ImportedModel(
        onnx_bytes=onnx_bytes,
        flavour=flavour,
        library="scikit-learn",
        library_version=_version("sklearn"),
        converter="skl2onnx",
        converter_version=_version("skl2onnx"),
        source_uri=uri,
        source_sha256=sha,
        algorithm=_public_name(type(final)),
        hyperparameters=cast(dict[str, Any], _json_safe(params)),
        inputs=inputs,
        outputs=outputs,
        original=est,
        serialization=serialization,
        original_columns=tuple(features) if named else None,
    )


# XGBoost


def _xgboost_config(booster: Any) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(booster.save_config())
    return config


def _xgboost_objective(booster: Any) -> str:
    return str(_xgboost_config(booster)["learner"]["objective"]["name"])


def _from_xgboost(
    uri: str, obj: Any, sha: str, serialization: str, feature_names: Sequence[str] | None
) -> ImportedModel:
    import xgboost as xgb

    onnxmltools = _require("onnxmltools", uri, "xgboost")
    from onnxmltools.convert.common.data_types import FloatTensorType

    flavour = "xgboost"
    booster = obj.get_booster() if isinstance(obj, xgb.XGBModel) else obj
    if not isinstance(booster, xgb.Booster):
        raise _fail(uri, flavour, f"{type(obj).__name__} is not an XGBoost model nightshift can convert")
    config = _xgboost_config(booster)
    learner = config["learner"]
    objective = str(learner["objective"]["name"])
    if any(t == "c" for t in booster.feature_types or []):
        cats = [n for n, t in zip(booster.feature_names or [], booster.feature_types or [], strict=False) if t == "c"]
        raise _fail(
            uri,
            flavour,
            f"categorical features ({', '.join(cats) or 'enable_categorical'}) cannot be converted to ONNX by "
            "onnxmltools; encode them as numbers before training",
        )
    if objective.startswith("binary:logistic"):
        task: Task = "binary"
    elif objective in ("multi:softprob", "multi:softmax"):
        task = "multiclass"
    elif objective.startswith(("reg:", "count:")) and objective != "reg:logistic":
        task = "regression"
    else:
        raise _fail(uri, flavour, f"objective {objective!r} is not supported (binary:logistic, multi:*, reg:*)")
    n_features = booster.num_features()
    features, named = _resolve_features(uri, flavour, booster.feature_names, feature_names, n_features)
    if task == "regression":
        classes: list[str] = []
    elif isinstance(obj, xgb.XGBModel) and getattr(obj, "classes_", None) is not None:
        classes = [str(c) for c in obj.classes_]
    else:
        k = int(learner["learner_model_param"].get("num_class", "0") or 0)
        classes = [str(i) for i in range(max(k, 2))]
    # The converter reads split features as 'f<index>': give it a copy without names.
    plain = xgb.Booster(model_file=bytearray(booster.save_raw("json")))
    plain.feature_names = None
    plain.feature_types = None
    try:
        proto = onnxmltools.convert_xgboost(
            plain, initial_types=[(MATRIX_INPUT, FloatTensorType([None, n_features]))], target_opset=ONNXMLTOOLS_OPSET
        )
    except Exception as exc:  # noqa: BLE001 - converters raise anything
        raise _fail(uri, flavour, f"onnxmltools cannot convert the {objective} booster ({_one_line(exc)})") from None
    inputs = InputSpec("matrix", tuple(features), {MATRIX_INPUT: "float32"})
    outputs = _infer_outputs(uri, flavour, proto, inputs, classes if task != "regression" else None, task)
    onnx_bytes = proto.SerializeToString()
    _check_graph(uri, flavour, onnx_bytes, inputs)
    if isinstance(obj, xgb.XGBModel):
        params: dict[str, Any] = obj.get_params()
    else:
        params = {"objective": objective, "num_boosted_rounds": booster.num_boosted_rounds()}
        for section in ("gradient_booster",):
            tree = learner.get(section, {})
            params.update(tree.get("tree_train_param", {}) or tree.get("gbtree_train_param", {}))
    return ImportedModel(
        onnx_bytes=onnx_bytes,
        flavour=flavour,
        library="xgboost",
        library_version=_version("xgboost"),
        converter="onnxmltools",
        converter_version=_version("onnxmltools"),
        source_uri=uri,
        source_sha256=sha,
        algorithm=_public_name(type(obj)),
        hyperparameters=cast(dict[str, Any], _json_safe(params)),
        inputs=inputs,
        outputs=outputs,
        original=obj,
        serialization=serialization,
        original_columns=tuple(features) if named else None,
    )


# LightGBM


def _from_lightgbm(
    uri: str, obj: Any, sha: str, serialization: str, feature_names: Sequence[str] | None
) -> ImportedModel:
    import lightgbm as lgb

    onnxmltools = _require("onnxmltools", uri, "lightgbm")
    from onnxmltools.convert.common.data_types import FloatTensorType

    flavour = "lightgbm"
    booster = obj.booster_ if isinstance(obj, lgb.LGBMModel) else obj
    if not isinstance(booster, lgb.Booster):
        raise _fail(uri, flavour, f"{type(obj).__name__} is not a LightGBM model nightshift can convert")
    dump = booster.dump_model(num_iteration=-1)
    objective = str(dump.get("objective", "")).split(" ", 1)[0]
    num_class = int(dump.get("num_class", 1))
    if objective in ("binary", "cross_entropy"):
        task: Task = "binary"
    elif objective in ("multiclass", "multiclassova", "softmax", "multiclass_ova"):
        task = "multiclass"
    elif objective in (
        "regression",
        "regression_l1",
        "regression_l2",
        "l1",
        "l2",
        "huber",
        "fair",
        "poisson",
        "quantile",
        "mape",
        "gamma",
        "tweedie",
    ):
        task = "regression"
    else:
        raise _fail(uri, flavour, f"objective {objective!r} is not supported (binary, multiclass, regression)")
    own = booster.feature_name()
    features, named = _resolve_features(uri, flavour, own, feature_names, booster.num_feature())
    # Categorical features (a pandas categorical when trained): the model reads their category codes.
    infos = dump.get("feature_infos", {})
    categorical = [i for i, name in enumerate(own) if (infos.get(name) or {}).get("values")]
    categories: dict[str, tuple[str, ...]] = {}
    pandas_categorical = booster.pandas_categorical or []
    if categorical:
        if len(pandas_categorical) != len(categorical):
            names = ", ".join(features[i] for i in categorical)
            raise _fail(
                uri,
                flavour,
                f"categorical feature(s) {names} were not trained from a pandas categorical, so their category "
                "names are unknown; train on pandas 'category' columns or encode them as numbers",
            )
        for i, cats in zip(categorical, pandas_categorical, strict=True):
            categories[features[i]] = tuple(str(c) for c in cats)
    if task == "regression":
        classes: list[str] = []
    elif isinstance(obj, lgb.LGBMModel) and getattr(obj, "classes_", None) is not None:
        classes = [str(c) for c in obj.classes_]
    else:
        classes = [str(i) for i in range(max(num_class, 2))]
    try:
        proto = onnxmltools.convert_lightgbm(
            booster,
            initial_types=[(MATRIX_INPUT, FloatTensorType([None, len(features)]))],
            zipmap=False,
            target_opset=ONNXMLTOOLS_OPSET,
        )
    except Exception as exc:  # noqa: BLE001 - converters raise anything
        raise _fail(uri, flavour, f"onnxmltools cannot convert the {objective} booster ({_one_line(exc)})") from None
    inputs = InputSpec("matrix", tuple(features), {MATRIX_INPUT: "float32"}, categories)
    outputs = _infer_outputs(uri, flavour, proto, inputs, classes if task != "regression" else None, task)
    onnx_bytes = proto.SerializeToString()
    _check_graph(uri, flavour, onnx_bytes, inputs)
    if isinstance(obj, lgb.LGBMModel):
        params: dict[str, Any] = obj.get_params()
    else:
        params = {k: v for k, v in (booster.params or {}).items() if not k.startswith("categorical")}
        params["num_trees"] = booster.num_trees()
    return ImportedModel(
        onnx_bytes=onnx_bytes,
        flavour=flavour,
        library="lightgbm",
        library_version=_version("lightgbm"),
        converter="onnxmltools",
        converter_version=_version("onnxmltools"),
        source_uri=uri,
        source_sha256=sha,
        algorithm=_public_name(type(obj)),
        hyperparameters=cast(dict[str, Any], _json_safe(params)),
        inputs=inputs,
        outputs=outputs,
        original=obj,
        serialization=serialization,
        original_columns=tuple(features) if named or categories else None,
    )


# CatBoost

_CATBOOST_BINARY = ("Logloss", "CrossEntropy")
_CATBOOST_MULTI = ("MultiClass", "MultiClassOneVsAll")


def _from_catboost(
    uri: str, obj: Any, sha: str, serialization: str, feature_names: Sequence[str] | None
) -> ImportedModel:
    import catboost
    import onnx

    flavour = "catboost"
    if not isinstance(obj, catboost.CatBoost):
        raise _fail(uri, flavour, f"{type(obj).__name__} is not a CatBoost model nightshift can convert")
    params = obj.get_all_params()
    loss = str(params.get("loss_function", "")).split(":", 1)[0]
    own = list(obj.feature_names_ or [])
    cat_indices = list(obj.get_cat_feature_indices())
    if cat_indices:
        names = ", ".join(own[i] if i < len(own) else str(i) for i in cat_indices)
        raise _fail(
            uri,
            flavour,
            f"categorical feature(s) {names}: CatBoost's ONNX export does not support categorical features; "
            "encode them as numbers before training",
        )
    if loss in _CATBOOST_BINARY:
        task: Task = "binary"
    elif loss in _CATBOOST_MULTI:
        task = "multiclass"
    elif loss in ("RMSE", "MAE", "Quantile", "MAPE", "Poisson", "Tweedie", "Huber", "Expectile", "LogLinQuantile"):
        task = "regression"
    else:
        raise _fail(uri, flavour, f"loss function {loss!r} is not supported (binary, multiclass, regression)")
    features, named = _resolve_features(uri, flavour, own, feature_names, len(own))
    classes: list[str] = []
    if task != "regression":
        labels = getattr(obj, "classes_", None)
        classes = [str(c) for c in labels] if labels is not None and len(labels) else ["0", "1"]
    with tempfile.TemporaryDirectory(prefix="nightshift-catboost-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            obj.save_model(str(path), format="onnx")
        except Exception as exc:  # noqa: BLE001 - CatBoostError
            raise _fail(uri, flavour, f"CatBoost cannot export the model to ONNX ({_one_line(exc)})") from None
        proto = onnx.load_from_string(path.read_bytes())
    if task != "regression":
        _strip_zipmap(proto, "probabilities")
    graph_inputs = _graph_inputs(proto)
    if len(graph_inputs) != 1:
        raise _fail(uri, flavour, f"CatBoost's export has inputs {[i.name for i in graph_inputs]}, expected one")
    inputs = InputSpec("matrix", tuple(features), {graph_inputs[0].name: "float32"})
    outputs = _infer_outputs(uri, flavour, proto, inputs, classes if task != "regression" else None, task)
    onnx_bytes = proto.SerializeToString()
    _check_graph(uri, flavour, onnx_bytes, inputs)
    return ImportedModel(
        onnx_bytes=onnx_bytes,
        flavour=flavour,
        library="catboost",
        library_version=_version("catboost"),
        converter="catboost",
        converter_version=_version("catboost"),
        source_uri=uri,
        source_sha256=sha,
        algorithm=_public_name(type(obj)),
        hyperparameters=cast(dict[str, Any], _json_safe(params)),
        inputs=inputs,
        outputs=outputs,
        original=obj,
        serialization=serialization,
        original_columns=tuple(features) if named else None,
    )


# MLflow

#: MLflow flavours in the order they are preferred, with the key of the model file in MLmodel.
_MLFLOW_FLAVOURS: tuple[tuple[str, str], ...] = (
    ("onnx", "data"),
    ("xgboost", "data"),
    ("lightgbm", "data"),
    ("catboost", "data"),
    ("sklearn", "pickled_model"),
)


def _is_mlflow(uri: str) -> bool:
    if uri.startswith(("runs:/", "models:/")):
        return True
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
        return bool(fs.isdir(path) and fs.exists(path.rstrip("/") + "/MLmodel"))
    except (OSError, ValueError, ImportError):
        return False


def _from_mlflow(
    uri: str, trust_pickle: bool, feature_names: Sequence[str] | None, trusted_types: Sequence[str]
) -> ImportedModel:
    import fsspec
    import yaml

    root = uri
    if uri.startswith(("runs:/", "models:/")):
        mlflow = _require("mlflow", uri, "mlflow")
        try:
            root = mlflow.artifacts.download_artifacts(artifact_uri=uri)
        except Exception as exc:  # noqa: BLE001 - MlflowException and network errors
            raise _fail(uri, "mlflow", f"cannot download the model ({_one_line(exc)})") from None
    root = root.rstrip("/")
    with fsspec.open(f"{root}/MLmodel", "r") as f:
        spec = yaml.safe_load(f) or {}
    flavours: dict[str, Any] = spec.get("flavors") or {}
    for flavour, key in _MLFLOW_FLAVOURS:
        conf = flavours.get(flavour)
        if not conf:
            continue
        if flavour == "sklearn":
            fmt = str(conf.get("serialization_format", "cloudpickle"))
            name = conf.get(key) or "model.pkl"
            file_uri = f"{root}/{name}"
            data = _read(file_uri)
            if fmt == "skops":
                obj = _load_skops(file_uri, data, trusted_types)
            else:
                obj = _load_pickle(file_uri, data, trust_pickle)
            model = _from_object(uri, obj, hashlib.sha256(data).hexdigest(), "mlflow", feature_names)
            return model
        name = str(conf.get(key) or conf.get("model_file") or "")
        if not name:
            continue
        file_uri = f"{root}/{name}"
        data = _read(file_uri)
        sha = hashlib.sha256(data).hexdigest()
        if flavour == "onnx":
            model = _from_onnx(file_uri, data, sha, feature_names)
        else:
            native = "catboost" if flavour == "catboost" else flavour
            obj = _load_native(file_uri, native, data)
            model = _from_object(file_uri, obj, sha, "mlflow", feature_names)
        model.source_uri = uri
        model.serialization = "mlflow"
        return model
    raise _fail(
        uri,
        "mlflow",
        f"no flavour nightshift can convert (found {', '.join(flavours) or 'none'}; "
        f"supported: {', '.join(f for f, _ in _MLFLOW_FLAVOURS)})",
    )


# -- entry points --------------------------------------------------------------------------------


def load_model(
    uri: str,
    *,
    trust_pickle: bool = False,
    feature_names: list[str] | None = None,
    trusted_types: Sequence[str] = (),
) -> ImportedModel:
    """Load a model from a local path or fsspec URI (or an MLflow model) and convert it to ONNX.

    Formats: an ONNX file (any producer); scikit-learn estimators and pipelines saved with skops
    (.skops; types skops does not trust by default must be listed in `trusted_types`) or, only with
    `trust_pickle=True`, pickle/joblib (.pkl, .pickle, .joblib); XGBoost (.json, .ubj) and LightGBM
    (.txt) native files; CatBoost (.cbm); XGBoost/LightGBM/CatBoost scikit-learn API objects in a
    skops or pickle file; MLflow `runs:/…`, `models:/…` (needs mlflow) or a local MLflow model
    directory. `feature_names` names the model's columns (contract columns, in the model's order)
    when the model has no names of its own. Raises ModelImportError naming the file, the flavour
    and the cause.
    """
    names = list(feature_names) if feature_names is not None else None
    if _is_mlflow(uri):
        return _from_mlflow(uri, trust_pickle, names, trusted_types)
    data = _read(uri)
    sha = hashlib.sha256(data).hexdigest()
    kind = _sniff(uri, data)
    if kind == "onnx":
        return _from_onnx(uri, data, sha, names)
    if kind == "skops":
        obj = _load_skops(uri, data, trusted_types)
        return _from_object(uri, obj, sha, "skops", names)
    if kind == "pickle":
        obj = _load_pickle(uri, data, trust_pickle)
        return _from_object(uri, obj, sha, "pickle", names)
    obj = _load_native(uri, kind, data)
    return _from_object(uri, obj, sha, "native", names)


# -- the contract ----------------------------------------------------------------------------------


def _fit_problem(col: Column, element_type: str, coded: bool) -> str | None:
    """Why the model cannot read `col` as `element_type`, or None when it can."""
    name, declared = col.name, col.type.value
    if col.type.is_categorical:
        if element_type == "string":
            return None
        if coded and element_type in ("float32", "float64"):
            return None
        return f"column {name!r} is {declared} (categorical) but the model reads it as {element_type}" + (
            "" if coded else " and records no categories to encode it with"
        )
    if element_type == "string":
        return f"column {name!r} is {declared} but the model reads it as string (categorical)"
    if element_type in ("float32", "float64"):
        return None
    missing = (
        f"column {name!r} is nullable but the model reads it as {element_type}, which has no missing value: "
        "declare it nullable = false if it never holds nulls"
    )
    if element_type == "bool":
        if col.type is not ColumnType.boolean and not col.type.is_integer:
            return f"column {name!r} is {declared} but the model reads it as bool"
        return missing if col.nullable else None
    if col.type.is_float:
        return (
            f"column {name!r} is {declared} but the model reads it as {element_type}: fractions cannot be fed exactly"
        )
    return missing if col.nullable else None


def check_inputs(model: ImportedModel, contract: FeatureContract) -> list[str]:
    """Every way the model's inputs do not fit `contract`, each naming the column; [] when they fit.

    A column the model reads that the contract lacks; a type the model cannot take from the column's
    type (a numeric column into a string input, a categorical column into a numeric input without
    categories, a float column into an integer input, a nullable column into an input that has no
    missing value). Columns the contract declares and the model does not read are allowed.
    """
    return check_input_spec(model.inputs, contract)


def check_input_spec(inputs: InputSpec, contract: FeatureContract) -> list[str]:
    """`check_inputs` for a recorded InputSpec (a registered version's signature), without the model object."""
    columns = {c.name: c for c in contract.columns}
    problems: list[str] = []
    for name in inputs.features:
        col = columns.get(name)
        if col is None:
            problems.append(f"the model reads column {name!r}, which the contract does not declare")
            continue
        problem = _fit_problem(col, inputs.element_type(name), name in inputs.categories)
        if problem:
            problems.append(problem)
    if contract.entity_id in inputs.features:
        problems.append(f"the model reads the entity id column {contract.entity_id!r} as a feature")
    return problems


def require_inputs(model: ImportedModel, contract: FeatureContract) -> None:
    """Raise ModelImportError naming the model and every problem `check_inputs` finds."""
    problems = check_inputs(model, contract)
    if problems:
        raise ModelImportError(
            f"{model.name}: {model.flavour}: the model does not fit the feature contract: " + "; ".join(problems)
        )


def _column_type(t: pa.DataType) -> ColumnType | None:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        value = t.value_type
        return ColumnType.category if pa.types.is_string(value) or pa.types.is_large_string(value) else None
    if pa.types.is_float64(t):
        return ColumnType.float64
    if pa.types.is_float32(t) or pa.types.is_float16(t):
        return ColumnType.float32
    if pa.types.is_boolean(t):
        return ColumnType.boolean
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return ColumnType.string
    if pa.types.is_integer(t):
        bits = t.bit_width + (1 if pa.types.is_unsigned_integer(t) else 0)
        for candidate, width in ((ColumnType.int8, 8), (ColumnType.int16, 16), (ColumnType.int32, 32)):
            if bits <= width:
                return candidate
        return ColumnType.int64
    return None


def propose_contract(model: ImportedModel, files: list[str], *, entity_id: str | None = None) -> FeatureContract:
    """A feature contract for `model` from Parquet partition files: the model's columns in its order, their
    types from the files' schema, nullable where any file holds a null (or a NaN); for
    `nightshift contract infer`. `entity_id` defaults to the one column named `*id` that the model
    does not read."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from nightshift.data import open_parquet

    if not files:
        raise ModelImportError(f"{model.name}: no Parquet files to infer a contract from")
    features = list(model.inputs.features)
    types: dict[str, pa.DataType] = {}
    nulls = dict.fromkeys(features, False)
    schema: pa.Schema | None = None
    for uri in files:
        pf = open_parquet(uri)
        file_schema = pf.schema_arrow
        schema = schema or file_schema
        missing = [f for f in features if f not in file_schema.names]
        if missing:
            raise ModelImportError(
                f"{_display_name(uri)}: the model reads column(s) {', '.join(map(repr, missing))}, "
                "which this file lacks"
            )
        for name in features:
            t = file_schema.field(name).type
            if name in types and types[name] != t and not pa.types.is_null(t):
                if pa.types.is_null(types[name]):
                    types[name] = t
                else:
                    raise ModelImportError(
                        f"{_display_name(uri)}: column {name!r} is {t} here "
                        f"but {types[name]} in {_display_name(files[0])}"
                    )
            types.setdefault(name, t)
        for batch in pf.iter_batches(columns=features, batch_size=65_536):
            for name in features:
                if nulls[name]:
                    continue
                col = batch.column(name)
                nan = pa.types.is_floating(col.type) and bool(pc.any(pc.is_nan(col)).as_py())
                if col.null_count or pa.types.is_null(col.type) or nan:
                    nulls[name] = True
    assert schema is not None
    columns: list[Column] = []
    for name in features:
        t = types[name]
        if pa.types.is_null(t):
            reads = model.inputs.element_type(name)
            column_type = ColumnType.string if reads == "string" else ColumnType.float64
        else:
            found = _column_type(t)
            if found is None:
                raise ModelImportError(
                    f"{_display_name(files[0])}: column {name!r} has type {t}, which no contract type takes"
                )
            column_type = found
        columns.append(Column(name=name, type=column_type, nullable=bool(nulls[name])))
    if entity_id is None:
        candidates = [
            n for n in schema.names if n not in features and (n == "id" or n.endswith("_id") or n == "entity_id")
        ]
        if len(candidates) != 1:
            raise ModelImportError(
                f"{model.name}: cannot tell the entity id column (candidates: {', '.join(candidates) or 'none'}); "
                "pass entity_id (CLI: --entity-id)"
            )
        entity_id = candidates[0]
    if entity_id not in schema.names:
        raise ModelImportError(f"{_display_name(files[0])}: no entity id column {entity_id!r}")
    id_type = schema.field(entity_id).type
    if pa.types.is_integer(id_type):
        entity_id_type: Literal["int64", "string"] = "int64"
    elif pa.types.is_string(id_type) or pa.types.is_large_string(id_type):
        entity_id_type = "string"
    else:
        raise ModelImportError(f"{_display_name(files[0])}: entity id column {entity_id!r} has type {id_type}")
    return FeatureContract(entity_id=entity_id, entity_id_type=entity_id_type, columns=tuple(columns))


def contract_toml(contract: FeatureContract) -> str:
    """`contract` as the `[models.contract]` block of nightshift.toml."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return json.dumps(str(v))

    lines = [
        "[models.contract]",
        f"entity_id = {value(contract.entity_id)}",
        f"entity_id_type = {value(contract.entity_id_type)}",
        f"extra_columns = {value(contract.extra_columns)}",
        "columns = [",
    ]
    for col in contract.columns:
        parts = [f"name = {value(col.name)}", f"type = {value(col.type.value)}"]
        if not col.nullable:
            parts.append("nullable = false")
        if col.min is not None:
            parts.append(f"min = {value(col.min)}")
        if col.max is not None:
            parts.append(f"max = {value(col.max)}")
        lines.append("  { " + ", ".join(parts) + " },")
    lines.append("]")
    return "\n".join(lines) + "\n"
