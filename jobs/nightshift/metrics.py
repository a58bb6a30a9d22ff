"""Quality metrics of each task on labelled outcomes: what training, gates, label quality and comparisons share.

binary: ROC AUC, log loss, Brier, and accuracy, precision, recall, F1 at the decision threshold.
multiclass: log loss, accuracy, macro F1 (and the base rates of each class).
regression: RMSE, MAE, R².
Every metric is a float; one that cannot be computed (a single-class day's ROC AUC) is NaN, which
the store keeps as null (nightshift.jsonsafe) and a gate counts as failing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: Metrics where lower is better; every other one is higher-is-better.
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "rmse", "mae"})

#: The metrics each task reports, its default gate metric first.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "log_loss", "brier", "accuracy", "precision", "recall", "f1"),
    "multiclass": ("log_loss", "accuracy", "macro_f1"),
    "regression": ("rmse", "mae", "r2"),
}


def default_metric(task: str) -> str:
    return TASK_METRICS[task][0] if task != "multiclass" else "macro_f1"


def classification_metrics(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC AUC, log loss, Brier, and accuracy, precision, recall, F1 at the decision threshold."""
    import numpy as np
    from sklearn import metrics as m

    pred = (proba >= threshold).astype(np.int64)
    return {
        "roc_auc": float(m.roc_auc_score(y, proba)) if len(np.unique(y)) == 2 else float("nan"),
        "log_loss": float(m.log_loss(y, np.clip(proba, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "accuracy": float(m.accuracy_score(y, pred)),
        "precision": float(m.precision_score(y, pred, zero_division=0)),
        "recall": float(m.recall_score(y, pred, zero_division=0)),
        "f1": float(m.f1_score(y, pred, zero_division=0)),
        "positive_rate": float(pred.mean()),  # share predicted positive at the threshold
        "base_rate": float(y.mean()),  # share actually positive
        "brier": float(m.brier_score_loss(y, proba)),
        "decision_threshold": float(threshold),
    }


def multiclass_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Log loss, accuracy and macro F1 of class probabilities [N, K] against class indices `y` (0..K-1)."""
    import numpy as np
    from sklearn import metrics as m

    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    clipped = np.clip(probs, 1e-15, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    return {
        "log_loss": float(m.log_loss(y, clipped, labels=list(range(k)))),
        "accuracy": float(m.accuracy_score(y, pred)),
        "macro_f1": float(m.f1_score(y, pred, average="macro", labels=list(range(k)), zero_division=0)),
        "classes": float(k),
    }


def regression_metrics(y: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² of predicted values against outcomes."""
    import numpy as np
    from sklearn import metrics as m

    y = np.asarray(y, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    return {
        "rmse": float(np.sqrt(m.mean_squared_error(y, values))),
        "mae": float(m.mean_absolute_error(y, values)),
        "r2": float(m.r2_score(y, values)) if len(y) > 1 and np.var(y) > 0 else float("nan"),
        "mean_outcome": float(y.mean()) if len(y) else float("nan"),
        "mean_prediction": float(values.mean()) if len(values) else float("nan"),
    }


def task_metrics(task: str, y: Any, prediction: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The task's metrics: `prediction` is P(1) [N] (binary), class probabilities [N, K] (multiclass; `y` holds
    class indices) or values [N] (regression)."""
    if task == "binary":
        return classification_metrics(y, prediction, threshold)
    if task == "multiclass":
        return multiclass_metrics(y, prediction)
    if task == "regression":
        return regression_metrics(y, prediction)
    raise ValueError(f"unknown task {task!r}")


def per_entity_loss(task: str, y: Any, prediction: np.ndarray) -> np.ndarray:
    """Each entity's loss (log loss for classifiers, squared error for a regression): what paired tests compare."""
    import numpy as np

    if task == "binary":
        p = np.clip(np.asarray(prediction, dtype=np.float64), 1e-7, 1 - 1e-7)
        yy = np.asarray(y, dtype=np.float64)
        return -(yy * np.log(p) + (1 - yy) * np.log(1 - p))
    if task == "multiclass":
        probs = np.clip(np.asarray(prediction, dtype=np.float64), 1e-7, 1.0)
        return -np.log(probs[np.arange(len(probs)), np.asarray(y, dtype=np.int64)])
    return (np.asarray(prediction, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2


def class_name(value: Any) -> str:
    """A label value as a class name, one rule for models trained here and models brought: 1.0 and True are "1"."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
