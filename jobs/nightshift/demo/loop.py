"""One full loop on demo data that settles: shift → monitoring fails → retrain on the new regime → monitoring
passes again; then a bad candidate let through by hand → caught by its labelled outcomes → rolled back."""

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
    estimated_auc: float | None = None
    realized_auc: float | None = None
    champion_after: int | None = None


@dataclass
class LoopReport:
    model: str
    nights: list[LoopNight] = field(default_factory=list)
    retrain: dict[str, Any] | None = None
    champion_before: int | None = None
    champion_after: int | None = None
    #: The first night of the shift, the night whose decision retrained, the first night monitoring passed again.
    shift_on: date | None = None
    retrained_on: date | None = None
    settled_on: date | None = None
    #: The bad candidate let through by hand, and the night its outcomes rolled it back.
    bad_version: int | None = None
    bad_promoted_on: date | None = None
    rolled_back_on: date | None = None
    rollback_reason: str | None = None

    @property
    def nights_to_settle(self) -> int | None:
        """Nights from the retrain's decision to the first passing night of the retrained champion."""
        if self.retrained_on is None or self.settled_on is None:
            return None
        return (self.settled_on - self.retrained_on).days


#: The demo loop's own folder under the project's state_dir: its store, models, reports and data.
LOOP_STATE_DIR = "demo-loop"
#: Nights after the shift the loop runs: two failing nights trigger, the retrained champion serves from the
#: third, a bad candidate is let through after the fourth and rolled back on the fifth; the sixth serves again.
SHIFT_NIGHTS = 6


def loop_settings(settings: Settings, model: str) -> Settings:
    """The settings the demo loop runs on: everything under <state_dir>/demo-loop (its own SQLite store,
    model artifacts, reports, and the data it generates for `model`), so it never replaces what `make demo`
    (or anything else on the project's settings) wrote."""
    root = settings.state_path / LOOP_STATE_DIR
    settings.model(model)
    models = [
        m.model_copy(
            update={
                "dataset": str(root / "data" / "features" / m.name),
                "labels": str(root / "data" / "labels" / m.name),
            }
        )
        if m.name == model
        else m
        for m in settings.models
    ]
    return settings.model_copy(
        update={"state_dir": str(root), "store_url": None, "artifacts": None, "reports": None, "models": models}
    )


def _bad_candidate(settings: Settings, model: str, until: date, days: int, seed: int) -> Any:
    """A candidate trained on the newest `days` labelled days up to `until` with its labels shuffled: its
    features look exactly like the data's (its drift checks pass), its predictions are worthless."""
    import numpy as np

    from nightshift.training import train
    from nightshift.training.dataset import build_training_set

    cfg = settings.model(model)
    tset = build_training_set(settings, cfg, until, window_days=days)
    shuffled = np.random.default_rng(seed).permutation(tset.labels)
    trained = train(tset.table, shuffled, cfg.contract, cfg.estimator, cfg.training, cfg.decision_threshold)
    return tset, trained


def run_loop(
    settings: Settings,
    model: str,
    *,
    start: date,
    clean_days: int = 3,
    drift_days: int = SHIFT_NIGHTS,
    rows_per_day: int = 50_000,
    drift: str = "mean_shift:monthly_charges:1.5",
    seed: int = 42,
    bad_candidate: bool = True,
    say: Callable[[str], None] = print,
) -> LoopReport:
    """Generate `clean_days` then `drift_days` shifted days, train v1 on the clean ones, then run each shifted
    night as the scoring DAG does (nightshift.nightly: score, monitor, decide on labelled outcomes, retrain
    when the retraining decision says so). After the retrained champion has passed a night, a candidate
    trained on shuffled labels is promoted by hand (its drift checks pass): its labelled outcomes roll it back.
    """
    from nightshift.db import open_store
    from nightshift.demo import DriftSpec, generate, parse_drift
    from nightshift.models import CHAMPION
    from nightshift.monitoring import monitor_history
    from nightshift.monitoring.cbpe import stored_estimate
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
    report = LoopReport(model, shift_on=first_drift)
    rollouts = Rollouts(settings, store)
    if CHAMPION not in rollouts.registry.aliases(model):
        trained = train_and_register(settings, model, first_drift - timedelta(days=1), created_by="demo-loop")
        say(f"trained {model} v{trained.version.version} on {clean_days} clean day(s): champion")
    report.champion_before = rollouts.registry.aliases(model).get(CHAMPION)
    say(f"SHIFT from {first_drift}: {drift}")

    def quality_of(version: int, ds: date, kind: str) -> dict[str, Any]:
        for h in monitor_history(settings, model, kind=kind, version=version, since=ds, store=store):
            if h["ds"] == ds:
                return dict(h["summary"] or {})
        return {}

    try:
        for i in range(drift_days):
            ds = first_drift + timedelta(days=i)
            # The same night the score_<model> DAG runs (nightshift.nightly); retraining runs in-process
            # here, where Airflow would trigger retrain_<model>.
            night = run_night(settings, model, ds, run_key="demo-loop", by="demo-loop", retrain=True, store=store)
            scored = {role: int(s["version"]) for role, s in night.scored.items()}
            champion = night.monitored.get(CHAMPION) or {}
            failed = sorted({f"{c['kind']}:{c.get('column') or '*'}" for c in champion.get("failed", [])})[:6]
            retrain = night.decision.retrain or {}
            version = scored.get(CHAMPION)
            estimated = (stored_estimate(store, model, version, ds) or {}) if version else {}
            realized = (quality_of(version, ds, "quality").get("metrics") or {}) if version else {}
            line = LoopNight(
                ds,
                scored,
                str(champion.get("status", "not monitored")),
                failed,
                str(retrain.get("reason", "")),
                night.decision.rollout,
                estimated.get("roc_auc"),
                realized.get("roc_auc"),
                rollouts.registry.aliases(model).get(CHAMPION),
            )
            auc = (
                f"; ROC AUC estimated {line.estimated_auc:.3f} (before labels), realized {line.realized_auc:.3f}"
                if line.estimated_auc is not None and line.realized_auc is not None
                else ""
            )
            say(
                f"{ds}: scored {scored}; monitoring v{version} {line.monitor}"
                + (f" ({', '.join(failed)})" if failed else "")
                + auc
                + f"; rollout: {line.rollout}; retrain: "
                + f"{'TRIGGER' if night.decision.trigger_retrain else 'no'} — {line.decision}"
            )
            report.nights.append(line)
            if (
                report.retrained_on is not None
                and report.settled_on is None
                and version != report.champion_before
                and line.monitor == "pass"
            ):
                report.settled_on = ds
                say(
                    f"  SETTLED: the retrained champion v{version} passes monitoring on {ds}, "
                    f"{report.nights_to_settle} night(s) after the retrain"
                )
            if night.retrain is not None and report.retrain is None:
                report.retrain = night.retrain
                report.retrained_on = ds
                say(
                    f"  RETRAINED candidate {night.retrain['candidate_id']} → v{night.retrain['version']}: "
                    f"{night.retrain['status']}"
                )
                cand = rollouts.candidate(int(night.retrain["candidate_id"]))
                regime = (cand.get("training_data") or {}).get("regime") or {}
                if regime:
                    say(f"    training window: {regime.get('reason')}")
                for g in night.retrain.get("gates") or []:
                    say(f"    gate {g['name']}: {'pass' if g['passed'] else 'FAIL'} — {g['detail']}")
            if report.bad_version is not None and report.rolled_back_on is None and line.rollout == "rolled_back":
                report.rolled_back_on = ds
                event = next(e for e in reversed(rollouts.history(model)) if e["event"] == "rolled_back")
                report.rollback_reason = str(event["detail"].get("reason"))
                say(f"  CAUGHT BY OUTCOMES on {ds}: v{report.bad_version} rolled back — {report.rollback_reason}")
            if (
                bad_candidate
                and report.settled_on is not None
                and report.bad_version is None
                and ds > (report.settled_on)
            ):
                tset, trained = _bad_candidate(settings, model, ds, 3, seed)
                mv = rollouts.registry.register_trained(
                    model,
                    trained,
                    cfg.contract,
                    training_data={**tset.record(), "note": "demo-loop: trained on shuffled labels"},
                    decision_threshold=cfg.decision_threshold,
                    description="demo-loop: a bad candidate (shuffled labels)",
                    created_by="demo-loop",
                )
                rollouts.promote(
                    model,
                    mv.version,
                    by="demo-loop",
                    reason="demo: a candidate trained on shuffled labels, let through by hand (its features are "
                    "the data's own, so its drift checks pass)",
                    ds=ds,
                )
                report.bad_version, report.bad_promoted_on = mv.version, ds
                say(
                    f"  BAD CANDIDATE v{mv.version} (trained on shuffled labels of the last 3 days) promoted by hand "
                    f"after the night of {ds}: champion from {ds + timedelta(days=1)}"
                )
    finally:
        report.champion_after = rollouts.registry.aliases(model).get(CHAMPION)
        store.dispose()
    say(f"champion: v{report.champion_before} → v{report.champion_after}")
    if report.settled_on is not None:
        say(
            f"the loop settled: shift on {report.shift_on}, retrain decided on {report.retrained_on}, monitoring "
            f"passes again on {report.settled_on} ({report.nights_to_settle} night(s) later)"
        )
    if report.rolled_back_on is not None:
        say(f"the bad candidate v{report.bad_version} was rolled back by its outcomes on {report.rolled_back_on}")
    return report
