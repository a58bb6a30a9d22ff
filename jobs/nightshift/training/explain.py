"""The exact explainer of a pipeline trained here, extracted once at training time (nightshift.models.explainers).

Linear pipelines (impute + scale + one-hot + logistic regression / Ridge) give their parameters and the means of
their transformed columns on the training rows (the baseline); LightGBM and XGBoost give their booster in the
library's own format, for TreeSHAP on the scoring workers. Scoring never needs the scikit-learn pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from nightshift.models.explainers import BOOSTER_FILES, LINEAR, SUPPORTED, TREE_SHAP

if TYPE_CHECKING:  # pragma: no cover
    from sklearn.pipeline import Pipeline

    from nightshift.contracts import FeatureContract

#: The outputs a linear explainer explains, per task.
_LINEAR_OUTPUTS = {"binary": "log_odds", "multiclass": "class_score", "regression": "value"}


def pipeline_explainer(
    pipeline: Pipeline, contract: FeatureContract, x_train: Any, task: str
) -> tuple[dict[str, Any] | None, dict[str, bytes], str | None]:
    """(spec, files, None) for a fitted pipeline of nightshift's own layout, or (None, {}, why it has none).

    `x_train`: the rows it was fitted on (model_frame), whose transformed means are a linear model's baseline.
    Never raises: an extraction that fails is (None, {}, what failed), like a kind without an explainer, so it
    never fails a training (whose model may never turn reasons on).
    """
    try:
        return _pipeline_explainer(pipeline, contract, x_train, task)
    except Exception as exc:  # noqa: BLE001 - recorded as the reason there is no explainer
        return None, {}, f"its explainer could not be extracted: {type(exc).__name__}: {exc}"


def _pipeline_explainer(
    pipeline: Pipeline, contract: FeatureContract, x_train: Any, task: str
) -> tuple[dict[str, Any] | None, dict[str, bytes], str | None]:
    estimator = pipeline.steps[-1][1]
    library = type(estimator).__module__.split(".")[0]
    parts = _parts(pipeline, contract)
    if parts is None:
        return None, {}, "its preprocessing is not nightshift's own (impute [+ scale] numerics, one-hot categoricals)"
    numeric, categorical, scaled = parts
    features = [c.name for c in contract.columns]
    index = {name: i for i, name in enumerate(features)}
    if library == "sklearn" and hasattr(estimator, "coef_") and scaled:
        return _linear(pipeline, x_train, task, features, index, numeric, categorical), {}, None
    if library in BOOSTER_FILES:
        import scipy.sparse as sp

        head = pipeline[:-1].transform(x_train.iloc[:8])
        if library == "xgboost" and sp.issparse(head):
            # XGBoost reads a sparse matrix's absent entries as missing, not 0: its TreeSHAP on the dense rows
            # would explain another model.
            return None, {}, "its design matrix is sparse, which XGBoost reads differently from the dense rows"
        if library == "lightgbm":
            data = str(estimator.booster_.model_to_string()).encode()
        else:
            data = bytes(estimator.get_booster().save_raw("json"))
        spec = {
            "method": TREE_SHAP,
            "library": library,
            "task": task,
            "output": "margin",
            "features": features,
            "design": "pipeline",
            "numeric": [{"feature": index[name], "fill": fill} for name, fill, _, _ in numeric],
            "categorical": [{"feature": index[name], "categories": cats} for name, cats in categorical],
            "booster_feature_names": [],
        }
        return spec, {BOOSTER_FILES[library]: data}, None
    return None, {}, f"{type(estimator).__name__} has no exact explainer here ({SUPPORTED})"


def _parts(
    pipeline: Pipeline, contract: FeatureContract
) -> tuple[list[tuple[str, float, float, float]], list[tuple[str, list[str]]], bool] | None:
    """The numeric columns (name, fill, center, scale), the categorical ones (name, categories) in the
    preprocessor's output order, and whether numerics are scaled; None for another preprocessing."""
    preprocess = pipeline.steps[0][1]
    numeric: list[tuple[str, float, float, float]] = []
    categorical: list[tuple[str, list[str]]] = []
    scaled = False
    for name, transformer, cols in getattr(preprocess, "transformers_", ()):
        if name == "remainder":
            continue
        if name == "num":
            steps = dict(transformer.named_steps)
            fills = np.asarray(steps["impute"].statistics_, dtype=np.float64)
            scaler: Any = steps.get("scale")
            scaled = scaler is not None
            centers = np.asarray(scaler.mean_, dtype=np.float64) if scaled else np.zeros(len(cols))
            scales = np.asarray(scaler.scale_, dtype=np.float64) if scaled else np.ones(len(cols))
            numeric += [
                (str(c), float(f), float(m), float(s)) for c, f, m, s in zip(cols, fills, centers, scales, strict=True)
            ]
        elif name == "cat":
            categorical += [
                (str(c), [str(v) for v in cats]) for c, cats in zip(cols, transformer.categories_, strict=True)
            ]
        else:
            return None
    if len(numeric) + len(categorical) != len(contract.columns):
        return None
    return numeric, categorical, scaled


def _linear(
    pipeline: Pipeline,
    x_train: Any,
    task: str,
    features: list[str],
    index: dict[str, int],
    numeric: list[tuple[str, float, float, float]],
    categorical: list[tuple[str, list[str]]],
) -> dict[str, Any]:
    import scipy.sparse as sp

    estimator = pipeline.steps[-1][1]
    coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))  # [K, m]: K = 1 but for multiclass
    intercept = np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64))
    if task == "binary" and list(getattr(estimator, "classes_", [0, 1])) != [0, 1]:
        raise ValueError(f"a binary model's classes are {list(estimator.classes_)}, expected [0, 1]")
    design = pipeline[:-1].transform(x_train)
    means = np.asarray(design.mean(axis=0)).ravel() if sp.issparse(design) else np.asarray(design).mean(axis=0)
    means = np.asarray(means, dtype=np.float64)
    if means.shape[0] != coef.shape[1]:
        raise ValueError(f"the pipeline emits {means.shape[0]} columns for {coef.shape[1]} coefficients")
    baseline = intercept + coef @ means
    at = 0
    numeric_out = []
    for name, fill, center, scale in numeric:
        numeric_out.append(
            {
                "feature": index[name],
                "fill": fill,
                "center": center,
                "scale": scale,
                "mean": float(means[at]),
                "coef": coef[:, at].tolist(),
            }
        )
        at += 1
    categorical_out = []
    for name, cats in categorical:
        width = len(cats)
        block = coef[:, at : at + width]  # [K, categories]
        shares = means[at : at + width]
        categorical_out.append(
            {
                "feature": index[name],
                "categories": cats,
                "coef": block.T.tolist(),  # per category, its K coefficients
                "offset": (block @ shares).tolist(),  # Σ coef × share: what the average training row holds
            }
        )
        at += width
    return {
        "method": LINEAR,
        "task": task,
        "output": _LINEAR_OUTPUTS[task],
        "features": features,
        "baseline": baseline.tolist(),
        "numeric": numeric_out,
        "categorical": categorical_out,
    }
