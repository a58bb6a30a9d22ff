"""The benchmark's data and models, generated once into bench/results/data and reused while their parameters match."""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

DATA_ROOT = Path(__file__).resolve().parent / "results" / "data"
#: The day every benchmark scores; training uses the day before it.
SCORE_DS = date(2026, 11, 20)
TRAIN_DS = date(2026, 11, 19)
SEED = 42
MODEL_NAME = "churn"

#: Bump when the layout or the meaning of a cached entry changes.
_CACHE_VERSION = 1


@dataclass(frozen=True)
class Dataset:
    """One generated day of demo churn features: `rows` customers in `files` Parquet files."""

    name: str
    root: Path
    rows: int
    files: int
    ds: date = SCORE_DS

    @property
    def features_root(self) -> Path:
        return self.root / "features"

    @property
    def partition_dir(self) -> Path:
        return self.features_root / f"ds={self.ds.isoformat()}"

    @property
    def paths(self) -> list[str]:
        return sorted(str(p) for p in self.partition_dir.glob("part-*.parquet"))


@dataclass(frozen=True)
class ModelArtifacts:
    """A trained model: its ONNX bytes (what nightshift scores) and its scikit-learn pipeline (what peers use)."""

    kind: str
    label: str
    onnx_path: Path
    pipeline_path: Path
    train_rows: int
    #: binary, multiclass or regression (what nightshift records for the version).
    task: str = "binary"

    @property
    def onnx_bytes(self) -> bytes:
        return self.onnx_path.read_bytes()

    def pipeline(self) -> Any:
        with self.pipeline_path.open("rb") as f:
            return pickle.load(f)  # our own cache file

    def trained(self) -> Any:
        """The cached TrainedModel (for registering it)."""
        with (self.onnx_path.parent / "trained.pkl").open("rb") as f:
            return pickle.load(f)  # our own cache file


#: The models the suite scores with: the demo's linear pipeline and a 100-tree forest (binary, on `churned`),
#: and the same linear pipeline as a 4-class model of `next_plan` (multiclass: 4 packed float32 probabilities
#: per row, a bytea).
MODEL_SPECS: dict[str, dict[str, Any]] = {
    "linear": {"kind": "logistic_regression", "params": {"C": 1.0, "max_iter": 1000}},
    "forest": {"kind": "random_forest", "params": {"n_estimators": 100, "max_depth": 10, "n_jobs": -1}},
    "multiclass": {
        "kind": "logistic_regression",
        "task": "multiclass",
        "label": "next_plan",
        "params": {"C": 1.0, "max_iter": 1000},
    },
}


def _cached(folder: Path, params: dict[str, Any]) -> bool:
    marker = folder / "params.json"
    return marker.is_file() and json.loads(marker.read_text()) == params


def _mark(folder: Path, params: dict[str, Any]) -> None:
    (folder / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True))


def dataset(rows: int, files: int, *, ds: date = SCORE_DS, root: Path = DATA_ROOT, log: Any = print) -> Dataset:
    """`rows` demo customers on day `ds` in `files` files, written by nightshift.demo.generate unless cached."""
    from nightshift.demo import generate

    name = f"churn_{rows}r_{files}f_{ds.isoformat()}"
    folder = root / name
    params = {"cache": _CACHE_VERSION, "rows": rows, "files": files, "ds": ds.isoformat(), "seed": SEED}
    data = Dataset(name=name, root=folder, rows=rows, files=files, ds=ds)
    if _cached(folder, params) and len(data.paths) == files:
        return data
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    log(f"generating {rows:,} rows in {files} files -> {folder}")
    generate(
        folder / "features", folder / "labels", start=ds, days=1, rows_per_day=rows, files_per_day=files, seed=SEED
    )
    _mark(folder, params)
    return data


def train_model(label: str, train_rows: int, *, root: Path = DATA_ROOT, log: Any = print) -> ModelArtifacts:
    """Train model `label` (see MODEL_SPECS) with nightshift.training.train on `train_rows` labelled rows; cached."""
    spec = MODEL_SPECS[label]
    task = spec.get("task", "binary")
    folder = root / f"model_{label}_{train_rows}"
    params = {"cache": _CACHE_VERSION, "train_rows": train_rows, "seed": SEED, **spec}
    if spec["kind"] in ("logistic_regression", "lightgbm", "xgboost"):
        # Its TrainedModel records an exact explainer (reasons, `explain-linear`): a cache from before has none.
        params["explainer"] = 1
    art = ModelArtifacts(
        kind=spec["kind"],
        label=label,
        onnx_path=folder / "model.onnx",
        pipeline_path=folder / "pipeline.pkl",
        train_rows=train_rows,
        task=task,
    )
    if _cached(folder, params) and art.onnx_path.is_file() and art.pipeline_path.is_file():
        return art
    from nightshift.config import EstimatorSettings, TrainingSettings
    from nightshift.demo import DEMO_LABEL, demo_contract
    from nightshift.training import train

    # train() holds out a fifth of its rows for validation: generate enough for `train_rows` to fit on.
    total = train_rows * 5 // 4
    joined = _labelled_day(total, root, log)
    column = spec.get("label", DEMO_LABEL)
    y = joined.column(column).to_numpy(zero_copy_only=False)
    log(f"training {label} ({spec['kind']}, {task}, {spec['params']}) on {train_rows:,} rows")
    trained = train(
        joined.drop_columns([column]),
        y,
        demo_contract(),
        EstimatorSettings(kind=spec["kind"], task=task, params=spec["params"]),
        TrainingSettings(max_rows=total, validation_fraction=0.2, seed=SEED),
    )
    pipeline = trained.pipeline
    if "classifier__n_jobs" in pipeline.get_params():
        # Fitted on every core; scoring peers run one task per core, so one thread per call.
        pipeline.set_params(classifier__n_jobs=1)
    folder.mkdir(parents=True, exist_ok=True)
    art.onnx_path.write_bytes(trained.onnx_bytes)
    with art.pipeline_path.open("wb") as f:
        pickle.dump(pipeline, f, protocol=pickle.HIGHEST_PROTOCOL)
    with (folder / "trained.pkl").open("wb") as f:
        pickle.dump(trained, f, protocol=pickle.HIGHEST_PROTOCOL)
    _mark(folder, params)
    return art


def _labelled_day(rows: int, root: Path, log: Any) -> Any:
    """The training day's features joined with its labels (every label column), sorted by id: an Arrow table."""
    import pyarrow.parquet as pq

    from nightshift.demo import DEMO_ENTITY_ID

    data = dataset(rows, 1, ds=TRAIN_DS, root=root, log=log)
    features = pq.read_table(data.partition_dir)
    labels = pq.read_table(data.root / "labels" / f"ds={TRAIN_DS.isoformat()}")
    return features.join(labels, keys=DEMO_ENTITY_ID).sort_by(DEMO_ENTITY_ID)


@dataclass(frozen=True)
class BroughtArtifact:
    """A model trained outside nightshift, as its user brings it: the library's own file (LightGBM text).

    nightshift registers it with `nightshift.models.bring.register_brought`, which converts it to ONNX
    (onnxmltools) and checks parity on real rows before anything is registered.
    """

    label: str
    kind: str
    path: Path
    task: str
    train_rows: int
    n_estimators: int
    #: Class names in output order (a LightGBM text file keeps none); None for a binary model.
    class_names: tuple[str, ...] | None = None


#: Brought models: a LightGBM classifier of 100 trees on the demo contract's numeric columns (NaNs left in,
#: as LightGBM handles them), trained by LightGBM's own scikit-learn API as a data scientist would.
BROUGHT_SPECS: dict[str, dict[str, Any]] = {
    "lightgbm": {"kind": "lightgbm", "task": "binary", "params": {"n_estimators": 100, "verbose": -1}},
}


def train_brought(label: str, train_rows: int, *, root: Path = DATA_ROOT, log: Any = print) -> BroughtArtifact:
    """Train brought model `label` (see BROUGHT_SPECS) on `train_rows` labelled rows of the training day and save
    it as its library's own file; cached. The features are the contract's numeric columns, nulls as NaN."""
    spec = BROUGHT_SPECS[label]
    folder = root / f"brought_{label}_{train_rows}"
    params = {"cache": _CACHE_VERSION, "train_rows": train_rows, "seed": SEED, **spec}
    art = BroughtArtifact(
        label=label,
        kind=spec["kind"],
        path=folder / "model.txt",
        task=spec["task"],
        train_rows=train_rows,
        n_estimators=int(spec["params"]["n_estimators"]),
    )
    if _cached(folder, params) and art.path.is_file():
        return art
    import lightgbm as lgb

    from nightshift.demo import DEMO_LABEL, demo_contract

    numeric = [c.name for c in demo_contract().numeric]
    # The same day, rows and seed as the suite's own models (their validation fifth left out).
    joined = _labelled_day(train_rows * 5 // 4, root, log).slice(0, train_rows)
    frame = joined.select(numeric).to_pandas()  # nulls become NaN: LightGBM's missing values
    y = joined.column(DEMO_LABEL).to_numpy(zero_copy_only=False)
    log(f"training brought {label} ({spec['kind']}, {spec['params']}) on {train_rows:,} rows")
    est = lgb.LGBMClassifier(random_state=SEED, n_jobs=-1, **spec["params"]).fit(frame, y)
    folder.mkdir(parents=True, exist_ok=True)
    est.booster_.save_model(str(art.path))
    _mark(folder, params)
    return art


def parse_rows(text: str) -> int:
    """'64M', '250k', '1000000' -> rows."""
    t = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if scale > 1 else t) * scale)


def describe(obj: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a Dataset or ModelArtifacts."""
    return {k: str(v) if isinstance(v, Path | date) else v for k, v in asdict(obj).items()}
