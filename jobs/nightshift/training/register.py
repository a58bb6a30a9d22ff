"""Train a version from the project file's estimator and register it: `nightshift train`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from nightshift.config import Settings
from nightshift.models import CHAMPION, ModelVersion, open_registry


@dataclass
class TrainResult:
    version: ModelVersion
    promoted: bool
    previous_champion: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.version.model,
            "version": self.version.version,
            "promoted": self.promoted,
            "previous_champion": self.previous_champion,
            "metrics": self.version.metrics,
            "parity": self.version.parity,
            "training_rows": self.version.training_data.get("rows"),
            "artifact": self.version.artifact_uri,
            "sha256": self.version.sha256,
        }


def train_and_register(
    settings: Settings, model: str, until: date, *, promote: str = "if-first", created_by: str | None = None
) -> TrainResult:
    """`_train_and_register`, with the run's OpenLineage events (training partitions in, the registered artifact
    out) and job metrics (nightshift.telemetry), which never fail it."""
    from nightshift.telemetry import TrainingTelemetry

    telemetry = TrainingTelemetry(settings, model, until, kind="train")
    try:
        result = _train_and_register(settings, model, until, promote=promote, created_by=created_by)
    except BaseException as exc:
        telemetry.failed(exc)
        raise
    telemetry.finished(result.version, None, status="promoted" if result.promoted else "registered")
    return result


def _train_and_register(
    settings: Settings, model: str, until: date, *, promote: str = "if-first", created_by: str | None = None
) -> TrainResult:
    """Build the training set up to `until`, train, export and parity-check, then register.

    `promote`: "if-first" makes the version champion only when the model has none;
    "always" promotes it; "never" only registers it. A failed parity check raises
    ParityError before anything is registered.
    """
    from nightshift.training.dataset import build_training_set
    from nightshift.training.pipeline import train

    if promote not in ("if-first", "always", "never"):
        raise ValueError(f"promote must be 'if-first', 'always' or 'never', got {promote!r}")
    cfg = settings.model(model)
    tset = build_training_set(settings, cfg, until)
    trained = train(tset.table, tset.labels, cfg.contract, cfg.estimator, cfg.training, cfg.decision_threshold)
    if cfg.explain.enabled and trained.explainer is None:
        from nightshift.errors import ModelSchemaError

        raise ModelSchemaError(
            f"model {model!r}: nothing registered: explain.enabled is set but the trained model has no exact "
            f"explainer ({trained.explainer_problem}); set [models.explain] enabled = false for {model!r}"
        )
    registry = open_registry(settings)
    record = tset.record()
    record.update(
        {
            "until": until.isoformat(),
            "window_days": cfg.training.window_days,
            "max_rows": cfg.training.max_rows,
            "train_rows": trained.train_rows,
            "validation_rows": trained.validation_rows,
            "validation_fraction": cfg.training.validation_fraction,
            "seed": cfg.training.seed,
        }
    )
    mv = registry.register_trained(
        model,
        trained,
        cfg.contract,
        training_data=record,
        decision_threshold=cfg.decision_threshold,
        description=cfg.description,
        created_by=created_by,
    )
    previous = registry.aliases(model).get(CHAMPION)
    promoted = promote == "always" or (promote == "if-first" and previous is None)
    if promoted:
        reason = "first registered version" if previous is None else "promoted at training (--promote always)"
        registry.set_alias(model, CHAMPION, mv.version, reason=reason, by=created_by)
    return TrainResult(version=mv, promoted=promoted, previous_champion=previous)
