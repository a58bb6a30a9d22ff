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
    from nightshift.demo import DriftSpec, generate, parse_drift
    from nightshift.flows import open_store, train_and_register
    from nightshift.monitoring import monitor_partition, retrain_decision
    from nightshift.rollout import Rollouts
    from nightshift.scoring import score_partition

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
        scored = rollouts.versions_to_score(model, ds)
        for version in dict.fromkeys(scored.values()):
            score_partition(settings, model, ds, version=version, run_key="demo-loop", store=store)
        champion = scored.get("champion")
        result = monitor_partition(settings, model, ds, version=champion, report=False)
        others = {
            alias: monitor_partition(settings, model, ds, version=scored[alias], report=False).ok
            for alias in ("challenger", "previous")
            if alias in scored and scored[alias] != champion
        }
        decision = retrain_decision(settings, model, ds, version=champion)
        moved = rollouts.advance(
            model,
            ds,
            champion_ok=result.ok,
            challenger_ok=others.get("challenger"),
            previous_ok=others.get("previous"),
            by="demo-loop",
        )
        failed = sorted({f"{c.kind}:{c.column or '*'}" for c in result.failed})[:6]
        night = LoopNight(ds, scored, result.status, failed, decision.reason, moved)
        say(
            f"{ds}: scored {scored}; monitoring {result.status}"
            + (f" ({', '.join(failed)})" if failed else "")
            + f"; rollout {moved}; retrain decision: {'TRIGGER' if decision.trigger else 'no'} — {decision.reason}"
        )
        report.nights.append(night)
        if decision.trigger and report.retrain is None:
            outcome = rollouts.retrain(model, ds, trigger=decision.as_dict(), by="demo-loop")
            report.retrain = outcome.as_dict()
            say(f"  retrained candidate {outcome.candidate_id} → v{outcome.version}: {outcome.status}")
            for g in outcome.gates:
                say(f"    gate {g['name']}: {'pass' if g['passed'] else 'FAIL'} — {g['detail']}")
    report.champion_after = rollouts.registry.aliases(model).get("champion")
    say(f"champion: v{report.champion_before} → v{report.champion_after}")
    return report
