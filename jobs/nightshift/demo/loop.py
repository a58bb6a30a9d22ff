"""One full loop on demo data: drift arrives → monitoring fails → retraining → gates → rollout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from nightshift.config import Settings


@dataclass
class LoopNight:
    ds: date
    scored: dict[str, int]
    monitor: str
    failed_checks: list[str]
    decision: str
    rollout: str = ""


@dataclass
class LoopReport:
    model: str
    nights: list[LoopNight] = field(default_factory=list)
    retrain: dict[str, Any] | None = None
    champion_before: int | None = None
    champion_after: int | None = None


def run_loop(
    settings: Settings,
    model: str,
    *,
    start: date,
    clean_days: int = 3,
    drift_days: int = 3,
    rows_per_day: int = 50_000,
    drift: str = "mean_shift:monthly_charges:1.5",
    seed: int = 42,
    say: Callable[[str], None] = print,
) -> LoopReport:
    """Generate `clean_days` then `drift_days` drifted days, train v1 on the clean ones, then run each
    drifted night as the scoring DAG does: score every version to score, monitor, move rollouts
    along, decide on retraining, and retrain (gates, rollout) when the decision says so."""
    from nightshift.db import open_store
    from nightshift.demo import DriftSpec, generate, parse_drift
    from nightshift.nightly import run_night
    from nightshift.rollout import Rollouts
    from nightshift.training import train_and_register

    cfg = settings.model(model)
    labels = cfg.labels_uri(settings)
    assert labels is not None
    first_drift = start + timedelta(days=clean_days)
    spec = parse_drift(f"{drift}@{first_drift.isoformat()}")
    generate(
        cfg.dataset_uri(settings),
        labels,
        start=start,
        days=clean_days + drift_days,
        rows_per_day=rows_per_day,
        files_per_day=2,
        seed=seed,
        drift=[DriftSpec(spec.kind, spec.column, spec.magnitude, spec.start)],
    )
    store = open_store(settings, check=False)
    store.upgrade()
    report = LoopReport(model)
    rollouts = Rollouts(settings, store)
    if "champion" not in rollouts.registry.aliases(model):
        trained = train_and_register(settings, model, first_drift - timedelta(days=1), created_by="demo-loop")
        say(f"trained {model} v{trained.version.version} on {clean_days} clean day(s): champion")
    report.champion_before = rollouts.registry.aliases(model).get("champion")
    say(f"drift from {first_drift}: {drift}")
    for i in range(drift_days):
        ds = first_drift + timedelta(days=i)
        # The same night the score_<model> DAG runs (nightshift.nightly); retraining runs in-process
        # here, where Airflow would trigger retrain_<model>.
        night = run_night(settings, model, ds, run_key="demo-loop", by="demo-loop", retrain=True, store=store)
        scored = {role: int(s["version"]) for role, s in night.scored.items()}
        champion = night.monitored.get("champion") or {}
        failed = sorted({f"{c['kind']}:{c.get('column') or '*'}" for c in champion.get("failed", [])})[:6]
        retrain = night.decision.retrain or {}
        line = LoopNight(
            ds,
            scored,
            str(champion.get("status", "not monitored")),
            failed,
            str(retrain.get("reason", "")),
            night.decision.rollout,
        )
        say(
            f"{ds}: scored {scored}; monitoring {line.monitor}"
            + (f" ({', '.join(failed)})" if failed else "")
            + f"; rollout {line.rollout}; retrain decision: "
            + f"{'TRIGGER' if night.decision.trigger_retrain else 'no'} — {line.decision}"
        )
        report.nights.append(line)
        if night.retrain is not None and report.retrain is None:
            report.retrain = night.retrain
            say(
                f"  retrained candidate {night.retrain['candidate_id']} → v{night.retrain['version']}: "
                f"{night.retrain['status']}"
            )
            for g in night.retrain.get("gates") or []:
                say(f"    gate {g['name']}: {'pass' if g['passed'] else 'FAIL'} — {g['detail']}")
    report.champion_after = rollouts.registry.aliases(model).get("champion")
    say(f"champion: v{report.champion_before} → v{report.champion_after}")
    return report
