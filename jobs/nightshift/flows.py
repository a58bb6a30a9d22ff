"""The jobs, as plain functions of settings: what the CLI commands and the Airflow tasks call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from nightshift.config import Settings
from nightshift.registry import CHAMPION, ModelVersion, Registry
from nightshift.store import Store


def open_store(settings: Settings, *, check: bool = True) -> Store:
    """The configured store; `check` makes sure its schema is current."""
    store = Store(settings.resolved_store_url, connect_retries=settings.connect_retries)
    if check:
        store.ensure_current()
    return store


def open_registry(settings: Settings, store: Store | None = None) -> Registry:
    return Registry(store or open_store(settings), settings.artifacts_uri)


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
    """Build the training set up to `until`, train, export and parity-check, then register.

    `promote`: "if-first" makes the version champion only when the model has none;
    "always" promotes it; "never" only registers it. A failed parity check raises
    ParityError before anything is registered.
    """
    from nightshift.training import train
    from nightshift.training_set import build_training_set

    if promote not in ("if-first", "always", "never"):
        raise ValueError(f"promote must be 'if-first', 'always' or 'never', got {promote!r}")
    cfg = settings.model(model)
    tset = build_training_set(settings, cfg, until)
    trained = train(tset.table, tset.labels, cfg.contract, cfg.estimator, cfg.training, cfg.decision_threshold)
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


def monitor_night(
    settings: Settings, model: str, ds: date, *, version: int | None = None, report: bool | None = None
) -> dict[str, Any]:
    """Monitor a committed (model, ds), then decide on retraining: JSON-safe, for one Airflow task or the CLI.

    Returns {"monitor": MonitorResult.as_dict(), "decision": RetrainDecision.as_dict()}. The
    decision is recorded exactly once per ds (see nightshift.monitoring.retrain_decision).
    """
    from nightshift.monitoring import monitor_partition, retrain_decision

    result = monitor_partition(settings, model, ds, version=version, report=report)
    decision = retrain_decision(settings, model, ds, version=result.version)
    return {"monitor": result.as_dict(), "decision": decision.as_dict()}
