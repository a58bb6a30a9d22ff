"""Exact explainers of a version's scores: what a version records about them (`model_versions.explainer`), and
how a model brought by its user gets one.

Reasons (`[models.explain]`) are the contributions of each contract feature to one score, in the units of the
explained output, such that the baseline plus every feature's contribution is that output exactly:

- method "linear" (nightshift's own impute + scale + one-hot + logistic regression / Ridge pipeline):
  contribution of a numeric feature = coef × (its transformed value − the mean of the transformed column on
  the training rows); of a categorical one = the sum over its one-hot columns of coef × (indicator − the
  category's share of the training rows). Baseline = intercept + Σ coef × training mean of each transformed
  column: the output for the average training row. Output: the log-odds of the positive class (binary), the
  predicted class's decision function (multiclass), the value (regression).
- method "tree_shap" (LightGBM and XGBoost, built-in or brought): the library's own TreeSHAP
  (`pred_contrib=True` / `pred_contribs=True`) on the rows the booster reads, summed over the design columns
  each feature owns (a one-hot categorical: its indicator columns). Baseline = the booster's expected raw
  output (the bias column of its contributions). Output: the raw margin (log-odds for a binary logistic
  objective; the predicted class's margin for a multiclass one; the value for a regression).

The spec is JSON: `method`, `output`, `task`, `features` (the contract's columns at registration, in order:
what the feature indices packed in `predictions.reasons` point at) and the method's parameters; a booster lives
in a file written with the version (`files`, each with its URI and SHA-256, checked before it is loaded).
Computing reasons is the scoring workers' business (nightshift.scoring.reasons); nothing here needs
scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

from nightshift.errors import ModelSchemaError

if TYPE_CHECKING:  # pragma: no cover
    from nightshift.contracts import FeatureContract
    from nightshift.models.importing import ImportedModel

LINEAR = "linear"
TREE_SHAP = "tree_shap"
METHODS = (LINEAR, TREE_SHAP)
#: The booster file a TreeSHAP explainer loads, per library (the library's own text / JSON format).
BOOSTER_FILES = {"lightgbm": "booster.txt", "xgboost": "booster.json"}
#: What each output is, in words (API docs, CLI).
OUTPUTS = {
    "log_odds": "log-odds of the positive class",
    "class_score": "the predicted class's decision function (its log-odds up to a per-row constant)",
    "value": "the predicted value",
    "margin": "the booster's raw margin (log-odds for a logistic objective; the predicted class's margin for a "
    "multiclass one; the value for a regression)",
}
#: What can be explained, for messages.
SUPPORTED = (
    "nightshift's own logistic_regression pipeline (closed form), and LightGBM and XGBoost boosters, trained here or "
    "brought (TreeSHAP)"
)


def explain_problem(explainer: Mapping[str, Any] | None) -> str | None:
    """Why a version's recorded explainer cannot produce reasons, or None when it can."""
    if explainer is None:
        return "it records no exact explainer (a kind without one, or registered before reasons were supported)"
    method = explainer.get("method")
    if method not in METHODS:
        return f"its explainer method {method!r} is unknown to this nightshift"
    if method == TREE_SHAP and booster_file(explainer) is None:
        return "its TreeSHAP explainer records no booster file"
    return None


def booster_file(explainer: Mapping[str, Any]) -> dict[str, str] | None:
    """A TreeSHAP explainer's booster file: {"uri", "sha256"} (None when it records none)."""
    name = BOOSTER_FILES.get(str(explainer.get("library")))
    found = (explainer.get("files") or {}).get(name) if name else None
    return {"uri": str(found["uri"]), "sha256": str(found["sha256"])} if found else None


def require_explainer(model: str, version: int | str, explainer: Mapping[str, Any] | None) -> None:
    """Raise ModelSchemaError (one line naming the model and why) unless the version can be explained."""
    problem = explain_problem(explainer)
    if problem is not None:
        raise ModelSchemaError(
            f"model {model!r} v{version}: explain.enabled is set but {problem}; reasons need {SUPPORTED}: "
            f"register a version of one of those (`nightshift train` / `nightshift models register`), or set "
            f"[models.explain] enabled = false for {model!r}"
        )


def feature_names(features: Sequence[Any] | None) -> tuple[str, ...]:
    """The names the feature indices packed in `predictions.reasons` point at: a version's
    `model_versions.features` (each a mapping with its `name`, or a name)."""
    return tuple(str(f.get("name")) if isinstance(f, Mapping) else str(f) for f in features or ())


def reason_name(names: Sequence[str], code: int) -> str:
    """The feature a stored reason's code names (the code itself when the version has no such index)."""
    return names[code] if 0 <= code < len(names) else str(code)


def no_reasons_message(model: str, version: int, ds: date, run_id: int) -> str:
    """Why a day has no reasons to show, and how to get them (the API's 409 and `nightshift predictions --explain`)."""
    return (
        f"{model} v{version} ds={ds} (run {run_id}) was scored without reasons: set [models.explain] enabled = true "
        f"for model {model!r} and score the day again (`nightshift score -m {model} --version {version} --ds {ds}`)"
    )


def brought_explainer(
    imported: ImportedModel, contract: FeatureContract
) -> tuple[dict[str, Any] | None, dict[str, bytes], str | None]:
    """The TreeSHAP explainer of a brought LightGBM or XGBoost model: (spec, files, None), or (None, {}, why not).

    The booster is exported in its library's own format (never a pickle) from the loaded original, so scoring
    workers load it without trusting any pickle; it reads the same [N, F] matrix the ONNX graph is fed.
    """
    flavour = imported.flavour
    if flavour not in BOOSTER_FILES:
        return None, {}, f"a brought {flavour} model has no exact explainer here ({SUPPORTED})"
    if imported.original is None or imported.inputs.layout != "matrix":
        return None, {}, f"a brought {flavour} model is explained on its [N, F] matrix input, which this one lacks"
    index = {c.name: i for i, c in enumerate(contract.columns)}
    missing = [f for f in imported.inputs.features if f not in index]
    if missing:
        return None, {}, f"it reads column(s) the contract does not declare: {', '.join(missing)}"
    booster = _booster_of(imported.original, flavour)
    if flavour == "lightgbm":
        data = str(booster.model_to_string()).encode()
    else:
        if imported.inputs.categories:
            return None, {}, "a brought XGBoost model reading category codes has no exact explainer here"
        data = bytes(booster.save_raw("json"))
    spec = {
        "method": TREE_SHAP,
        "library": flavour,
        "task": imported.task,
        "output": "margin",
        "features": [c.name for c in contract.columns],
        "design": "matrix",
        #: Each matrix column's contract feature index (the codes of its contributions).
        "columns": [index[f] for f in imported.inputs.features],
        "booster_feature_names": list(getattr(booster, "feature_names", None) or []) if flavour == "xgboost" else [],
    }
    return spec, {BOOSTER_FILES[flavour]: data}, None


def _booster_of(original: Any, flavour: str) -> Any:
    """The native booster behind a brought model (the scikit-learn wrapper's, or the Booster itself)."""
    if flavour == "lightgbm":
        return getattr(original, "booster_", original)
    get = getattr(original, "get_booster", None)
    return get() if callable(get) else original
