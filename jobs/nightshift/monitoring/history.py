"""Settings-level helpers for the CLI and Airflow: history, references, plots, requests."""

from __future__ import annotations

from datetime import date
from typing import Any

from nightshift.config import Settings
from nightshift.db.store import Store
from nightshift.monitoring.reference import Reference, build_reference, load_reference
from nightshift.monitoring.report import plot_drift_history
from nightshift.monitoring.results import check_history, checks_of, history
from nightshift.monitoring.retrain import retrain_requests_of


def _store(settings: Settings, store: Store | None) -> Store:
    if store is not None:
        return store
    from nightshift.db import open_store

    return open_store(settings)


def monitor_history(
    settings: Settings,
    model: str,
    *,
    kind: str | None = None,
    version: int | None = None,
    since: date | None = None,
    until: date | None = None,
    limit: int = 100,
    store: Store | None = None,
) -> list[dict[str, Any]]:
    """Monitored partitions of a model (each with its version), newest ds first (see results.history)."""
    settings.model(model)
    return history(_store(settings, store), model, kind=kind, version=version, since=since, until=until, limit=limit)


def monitor_checks(
    settings: Settings,
    model: str,
    ds: date,
    *,
    version: int | None = None,
    kind: str = "data",
    store: Store | None = None,
) -> list[dict[str, Any]]:
    """The stored checks of one monitored partition (the newest version monitored that ds, unless given)."""
    st = _store(settings, store)
    runs = history(st, model, kind=kind, version=version, since=ds, until=ds, limit=1)
    return checks_of(st, int(runs[0]["monitor_id"])) if runs else []


def retrain_requests(
    settings: Settings, model: str | None = None, *, store: Store | None = None
) -> list[dict[str, Any]]:
    """Recorded retraining requests (from the nightly decision and by hand), newest first."""
    return retrain_requests_of(_store(settings, store), model)


def reference_for(
    settings: Settings, model: str, *, version: int | None = None, days: list[date] | None = None, rebuild: bool = False
) -> Reference:
    """The stored reference of a version (default: the champion); built when missing, or when `rebuild`/`days`."""
    from nightshift.models import open_registry

    mv = open_registry(settings).resolve(model, version=version)
    if not rebuild and not days:
        found = load_reference(mv)
        if found is not None:
            return found
    return build_reference(settings, mv, days)


def plot_history(
    settings: Settings,
    model: str,
    *,
    out: str | None = None,
    version: int | None = None,
    since: date | None = None,
    store: Store | None = None,
) -> str:
    """Write the drift-history PNG of a model (default <reports>/<model>/drift_history.png); returns its URI."""
    settings.model(model)
    rows = check_history(_store(settings, store), model, version=version, since=since)
    target = out or f"{settings.reports_uri.rstrip('/')}/{model}/drift_history.png"
    return plot_drift_history(rows, model, target)
