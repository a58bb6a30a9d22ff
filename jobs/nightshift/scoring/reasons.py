"""Reasons for each score, on the scoring worker: every feature's exact contribution for a batch, then its top k.

Vectorised numpy over the whole batch (`batch_rows` rows), from the parameters a version records at registration
(nightshift.models.explainers): the linear pipeline in closed form, LightGBM / XGBoost by their own TreeSHAP on
the rows the booster reads. No scikit-learn, no pickle: a booster is loaded from its own text / JSON file after
its SHA-256 check, once per worker process (LRU, like the ONNX sessions).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nightshift.errors import ContractError, ModelSchemaError
from nightshift.models.explainers import LINEAR, TREE_SHAP, booster_file, explain_problem

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from nightshift.contracts import FeatureContract

#: Boosters a worker process keeps (least recently used first); a night explains one or two versions.
_BOOSTER_CACHE = 4
_boosters: OrderedDict[tuple[str, str, int], Any] = OrderedDict()
_lock = threading.Lock()


@dataclass(frozen=True)
class ExplainSpec:
    """What a scoring task needs to explain a version's scores: its explainer and k. Pickled to the workers."""

    explainer: dict[str, Any]
    top_k: int
    #: Threads a booster's TreeSHAP may use (the worker's ONNX Runtime threads).
    threads: int = 1

    @property
    def k(self) -> int:
        """Contributions kept per row: top_k, at most the number of features."""
        return min(self.top_k, len(self.explainer.get("features") or ()))


def category_codes(col: pa.Array | pa.ChunkedArray, categories: list[str]) -> np.ndarray:
    """Each value's position in `categories` (intp); len(categories) for a value outside them. A null is the
    "__missing__" category, as the model's inputs have it (nightshift.data.features.model_inputs)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from nightshift.data.features import MISSING_CATEGORY, dictionary_codes, null_mask, numpy_values

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    unseen = len(categories)
    missing = categories.index(MISSING_CATEGORY) if MISSING_CATEGORY in categories else unseen
    n = len(col)
    if pa.types.is_null(col.type):
        return np.full(n, missing, dtype=np.intp)
    value_set = pa.array(categories, pa.string())

    def lookup(values: pa.Array) -> np.ndarray:
        if pa.types.is_large_string(values.type):
            values = values.cast(pa.string())
        found = pc.index_in(values, value_set)
        codes = numpy_values(found, "<i4").astype(np.intp)
        absent = null_mask(found)
        if absent is not None:
            codes[absent] = unseen
        nulls = null_mask(values)
        if nulls is not None:
            codes[nulls] = missing
        return codes

    if pa.types.is_dictionary(col.type):
        per_entry = np.append(lookup(col.dictionary), missing)
        out: np.ndarray = per_entry[dictionary_codes(col)]
        return out
    return lookup(col)


def _filled(feed: np.ndarray, fill: float) -> np.ndarray:
    """A numeric input as the imputer leaves it: NaN → the fill, in the input's own float32, then float64."""
    values = np.asarray(feed).reshape(-1)
    return np.where(np.isnan(values), values.dtype.type(fill), values).astype(np.float64)


class LinearExplainer:
    """Closed-form contributions of nightshift's linear pipeline (see nightshift.models.explainers).

    A numeric feature's contribution coef × ((x − center) / scale − mean) is folded into slope × x + offset,
    and a missing x (imputed with `fill`) contributes slope × fill + offset: two passes over a feature-major
    block. A categorical's contribution is one lookup per row in a table of its categories (and "unseen").
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.features = [str(f) for f in spec["features"]]
        self.baseline = np.asarray(spec["baseline"], dtype=np.float64)
        numeric = spec.get("numeric") or []
        self.numeric_features = [int(c["feature"]) for c in numeric]
        self.numeric_names = [self.features[j] for j in self.numeric_features]
        n = len(numeric)
        fill = np.asarray([c["fill"] for c in numeric], dtype=np.float64).reshape(n, 1)
        center = np.asarray([c["center"] for c in numeric], dtype=np.float64).reshape(n, 1)
        scale = np.asarray([c["scale"] for c in numeric], dtype=np.float64).reshape(n, 1)
        mean = np.asarray([c["mean"] for c in numeric], dtype=np.float64).reshape(n, 1)
        coef = np.asarray([c["coef"] for c in numeric], dtype=np.float64).reshape(n, -1)  # [n, K]
        self.slope = coef / scale
        self.offset = -coef * (center / scale + mean)
        # The imputer fills in the input's float32: the fill's contribution as sklearn computes it.
        self.filled = self.slope * fill.astype(np.float32).astype(np.float64) + self.offset
        self.categorical: list[tuple[int, list[str], np.ndarray]] = []
        for c in spec.get("categorical") or []:
            table = np.asarray(c["coef"], dtype=np.float64).reshape(len(c["categories"]), -1)  # [categories, K]
            offset = np.asarray(c["offset"], dtype=np.float64)
            # One row per category and a last one for an unseen value (no indicator set), each minus the offset:
            # a lookup is the contribution.
            table = np.vstack([table, np.zeros((1, table.shape[1]))]) - offset
            self.categorical.append((int(c["feature"]), [str(v) for v in c["categories"]], table))

    def feature_major(
        self, batch: pa.RecordBatch, feeds: Mapping[str, np.ndarray], labels: np.ndarray | None
    ) -> np.ndarray:
        """[F, N] float64: each feature's contribution to each row's explained output (its predicted class's,
        by `labels`, for a multiclass model)."""
        n = batch.num_rows
        out = np.empty((len(self.features), n), dtype=np.float64)
        pick = labels.astype(np.intp) if self.baseline.shape[0] > 1 and labels is not None else None
        if self.numeric_features:
            x = np.empty((len(self.numeric_features), n), dtype=np.float64)
            for i, name in enumerate(self.numeric_names):
                x[i] = feeds[name].reshape(-1)
            missing = np.isnan(x)
            if pick is None:
                x *= self.slope[:, :1]
                x += self.offset[:, :1]
                np.copyto(x, self.filled[:, :1], where=missing)
            else:
                x *= self.slope[:, pick]
                x += self.offset[:, pick]
                np.copyto(x, self.filled[:, pick], where=missing)
            out[self.numeric_features] = x
        for j, categories, table in self.categorical:
            codes = category_codes(batch.column(self.features[j]), categories)
            out[j] = table[codes, 0] if pick is None else table[codes, pick]
        return out

    def contributions(
        self, batch: pa.RecordBatch, feeds: Mapping[str, np.ndarray], labels: np.ndarray | None
    ) -> np.ndarray:
        """[N, F] float64: `feature_major`, row by row."""
        out: np.ndarray = self.feature_major(batch, feeds, labels).T
        return out


class TreeExplainer:
    """TreeSHAP by the booster's own library, summed per contract feature (see nightshift.models.explainers)."""

    def __init__(self, spec: Mapping[str, Any], threads: int) -> None:
        self.library = str(spec["library"])
        self.features = [str(f) for f in spec["features"]]
        self.task = str(spec.get("task") or "binary")
        self.design = str(spec.get("design") or "pipeline")
        self.threads = threads
        self.names = list(spec.get("booster_feature_names") or []) or None
        booster = booster_file(spec)
        if booster is None:  # pragma: no cover - explain_problem refuses it first
            raise ModelSchemaError("a TreeSHAP explainer without a booster file")
        self.booster = _booster(self.library, booster["uri"], booster["sha256"], threads)
        if self.design == "matrix":
            owners = [int(j) for j in spec["columns"]]
            self.numeric: list[tuple[int, float]] = []
            self.categorical: list[tuple[int, list[str]]] = []
        else:
            self.numeric = [(int(c["feature"]), float(c["fill"])) for c in spec.get("numeric") or []]
            self.categorical = [(int(c["feature"]), [str(v) for v in c["categories"]]) for c in spec["categorical"]]
            owners = [j for j, _ in self.numeric]
            for j, categories in self.categorical:
                owners += [j] * len(categories)
        # Design column → contract feature: a [m, F] 0/1 matrix, so summing per feature is one product.
        self.owners = np.zeros((len(owners), len(self.features)), dtype=np.float64)
        self.owners[np.arange(len(owners)), owners] = 1.0

    def design_matrix(self, batch: pa.RecordBatch, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """The rows as the booster reads them (float64): the pipeline's imputed numerics and one-hot columns, or
        the brought model's own [N, F] matrix input."""
        if self.design == "matrix":
            ((_, matrix),) = feeds.items()
            return np.asarray(matrix, dtype=np.float64)
        n = batch.num_rows
        parts = [_filled(feeds[self.features[j]], fill).reshape(n, 1) for j, fill in self.numeric]
        for j, categories in self.categorical:
            codes = category_codes(batch.column(self.features[j]), categories)
            onehot = np.zeros((n, len(categories) + 1), dtype=np.float64)
            onehot[np.arange(n), codes] = 1.0
            parts.append(onehot[:, : len(categories)])
        return np.hstack(parts) if parts else np.zeros((n, 0))

    def raw_contributions(self, x: np.ndarray) -> np.ndarray:
        """The library's TreeSHAP: [N, K, m + 1] (K = 1 but for multiclass), the last column the expected value."""
        n, m = x.shape
        if self.library == "lightgbm":
            raw = np.asarray(self.booster.predict(x, pred_contrib=True, num_threads=self.threads))
        else:
            import xgboost as xgb

            raw = np.asarray(
                self.booster.predict(xgb.DMatrix(x, missing=np.nan, feature_names=self.names), pred_contribs=True)
            )
        return raw.reshape(n, -1, m + 1)

    def feature_major(
        self, batch: pa.RecordBatch, feeds: Mapping[str, np.ndarray], labels: np.ndarray | None
    ) -> np.ndarray:
        """[F, N] float64: `contributions`, feature by feature."""
        return np.ascontiguousarray(self.contributions(batch, feeds, labels).T)

    def contributions(
        self, batch: pa.RecordBatch, feeds: Mapping[str, np.ndarray], labels: np.ndarray | None
    ) -> np.ndarray:
        """[N, F] float64: the library's TreeSHAP of each row's explained output, summed per contract feature."""
        raw = self.raw_contributions(self.design_matrix(batch, feeds))
        if raw.shape[1] > 1:
            if labels is None:
                raise ContractError("a multiclass booster's reasons need the predicted classes")
            raw = raw[np.arange(raw.shape[0]), labels.astype(np.intp)]
        else:
            raw = raw[:, 0]
        out: np.ndarray = raw[:, :-1] @ self.owners
        return out


Explainer = LinearExplainer | TreeExplainer


def make_explainer(spec: ExplainSpec) -> Explainer:
    """The explainer a worker runs for a version (boosters cached per process)."""
    problem = explain_problem(spec.explainer)
    if problem is not None:
        raise ModelSchemaError(f"cannot explain this version's scores: {problem}")
    if spec.explainer["method"] == LINEAR:
        return LinearExplainer(spec.explainer)
    assert spec.explainer["method"] == TREE_SHAP
    return TreeExplainer(spec.explainer, spec.threads)


def _booster(library: str, uri: str, sha256: str, threads: int) -> Any:
    """This process's booster of a version (hash-checked on first use), kept among the few most recently used."""
    key = (uri, sha256, threads)
    with _lock:
        found = _boosters.get(key)
        if found is not None:
            _boosters.move_to_end(key)
            return found
    from nightshift.models.registry import read_artifact

    data = read_artifact(uri, sha256)
    if library == "lightgbm":
        import lightgbm as lgb

        booster: Any = lgb.Booster(model_str=data.decode())
    elif library == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(bytearray(data))
        booster.set_param({"nthread": threads})
    else:
        raise ModelSchemaError(f"no TreeSHAP for a {library!r} booster")
    with _lock:
        booster = _boosters.setdefault(key, booster)
        _boosters.move_to_end(key)
        while len(_boosters) > _BOOSTER_CACHE:
            _boosters.popitem(last=False)
    return booster


#: Features a top-k ranking can tell apart (its keys keep the feature in 16 bits); int16 indices go to 32767.
MAX_FEATURES = 32_767


def top_k_features(contributions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k largest |contribution|s, largest first, from feature-major [F, N] contributions: their
    feature indices (int16 [N, k]) and contributions (float32 [N, k]). Ranked as stored (float32); a tie goes
    to the lower feature index.

    Vectorised over the rows without sorting them: each |contribution| becomes an int64 key (its float32 bits,
    which order as the values do, above the feature index inverted), and each of the k rounds is one max over
    the features and one write knocking the winner out.
    """
    f, n = contributions.shape
    if f > MAX_FEATURES:
        raise ValueError(f"{f} features: reasons index at most {MAX_FEATURES}")
    k = min(k, f)
    keys = np.abs(contributions).astype(np.float32).view(np.int32).astype(np.int64)
    keys <<= 16
    keys |= (0xFFFF - np.arange(f, dtype=np.int64)).reshape(f, 1)
    rows = np.arange(n)
    index = np.empty((k, n), dtype=np.intp)
    for j in range(k):
        best = keys.max(axis=0)
        index[j] = 0xFFFF - (best & 0xFFFF)
        keys[index[j], rows] = -1
    values = contributions[index, rows].astype(np.float32)
    return np.ascontiguousarray(index.T.astype(np.int16)), np.ascontiguousarray(values.T)


def top_k(contributions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`top_k_features` of row-major [N, F] contributions."""
    return top_k_features(np.ascontiguousarray(contributions.T), k)


def explain_batch(
    explainer: Explainer,
    k: int,
    batch: pa.RecordBatch,
    feeds: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    source: str,
) -> tuple[np.ndarray, np.ndarray]:
    """The batch's reasons: (feature indices int16 [N, k], contributions float32 [N, k]); a non-finite
    contribution is refused like a non-finite score."""
    contributions = explainer.feature_major(batch, feeds, labels)
    if contributions.size and not np.isfinite(contributions).all():
        bad = int((~np.isfinite(contributions).all(axis=0)).sum())
        raise ContractError(f"{source}: {bad} row(s) got a non-finite feature contribution; nothing was written")
    return top_k_features(contributions, k)


def check_features(spec: ExplainSpec, contract: FeatureContract, where: str) -> None:
    """Raise ModelSchemaError unless the explainer's features are the contract's columns (the codes' names)."""
    recorded = [str(f) for f in spec.explainer.get("features") or ()]
    if recorded != contract.feature_names:
        raise ModelSchemaError(
            f"{where}: its explainer was recorded for features {recorded}, the contract now has "
            f"{contract.feature_names}: register a version for this contract"
        )
