"""The night's policy for one (model, ds): what to score, score it, monitor it, record what served, decide.

One home for the night, called alike by the `score_<model>` DAG's tasks, `nightshift night`,
`nightshift backfill` and `nightshift demo-loop`. Every decision is keyed by ds, never by the
wall clock:

* **plan** — a night is *nightly* unless it is a backfill: asked for as one (an Airflow backfill
  run, `nightshift backfill`), or older than the newest decided night of the model. A nightly
  night scores what the rollout needs (champion; a shadow/canary challenger; `previous` under
  blue/green or inside the rollback window, counted in nights). A backfill scores the versions
  that served that ds (recorded in `served`), or the champion for a day nothing served.
* **score** — each version's partition is committed atomically (`scoring.score_partition`),
  champion first, on one Dask client; a nightly night then records which version served which
  share of entities (`served`).
* **monitor** — data quality and drift of each scored version; the verdict is data, a failing
  night does not fail the run.
* **decide** — nightly nights only, exactly once per (model, ds): roll back, abort or promote
  (`rollout.Rollouts.advance`), then the retraining decision. A backfill never moves an alias or
  a rollout and never asks for retraining: it cannot change what production serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from nightshift.config import Settings
from nightshift.db import Store, open_store, schema, utcnow
from nightshift.db.engine import as_date, dialect_insert
from nightshift.errors import NightshiftError
from nightshift.models import CHAMPION, current_user, json_safe
from nightshift.rollout import CHALLENGER, PREVIOUS, Rollouts

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

    from nightshift.monitoring import MonitorResult
    from nightshift.scoring import RunSummary

log = logging.getLogger(__name__)

#: The order the versions of a night are scored, monitored and reported in: the served champion first.
ROLE_ORDER = (CHAMPION, CHALLENGER, PREVIOUS)
NIGHTLY, BACKFILL = "nightly", "backfill"


def _ordered(versions: dict[str, int]) -> dict[str, int]:
    rank = {role: i for i, role in enumerate(ROLE_ORDER)}
    return dict(sorted(versions.items(), key=lambda kv: rank.get(kv[0], len(rank))))


@dataclass
class NightPlan:
    """What one night of one model does: its mode, and role → version with each role's served share."""

    model: str
    ds: date
    mode: str
    why: str
    versions: dict[str, int]
    shares: dict[str, float] = field(default_factory=dict)

    @property
    def backfill(self) -> bool:
        return self.mode == BACKFILL

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ds"] = self.ds.isoformat()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NightPlan:
        return cls(
            model=str(data["model"]),
            ds=as_date(data["ds"]),
            mode=str(data["mode"]),
            why=str(data["why"]),
            versions={str(k): int(v) for k, v in data["versions"].items()},
            shares={str(k): float(v) for k, v in (data.get("shares") or {}).items()},
        )

    def describe(self) -> str:
        versions = ", ".join(f"{role} v{v}" for role, v in self.versions.items())
        return f"{self.model} ds={self.ds} ({self.mode}: {self.why}): {versions}"


@dataclass
class NightDecision:
    """What the night decided: the rollout's word and the retraining decision (None for a backfill)."""

    model: str
    ds: date
    mode: str
    rollout: str
    retrain: dict[str, Any] | None = None
    replayed: bool = False

    @property
    def trigger_retrain(self) -> bool:
        return bool(self.retrain and self.retrain.get("trigger"))

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ds"] = self.ds.isoformat()
        out["trigger_retrain"] = self.trigger_retrain
        return dict(json_safe(out))


@dataclass
class NightReport:
    """One whole night, for the CLI and the demo."""

    plan: NightPlan
    scored: dict[str, dict[str, Any]]
    monitored: dict[str, dict[str, Any] | None]
    decision: NightDecision
    retrain: dict[str, Any] | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(
            json_safe(
                {
                    "plan": self.plan.as_dict(),
                    "scored": self.scored,
                    "monitored": self.monitored,
                    "decision": self.decision.as_dict(),
                    "retrain": self.retrain,
                    "seconds": round(self.seconds, 3),
                }
            )
        )


@contextmanager
def _store(settings: Settings, store: Store | None) -> Iterator[Store]:
    if store is not None:
        yield store
        return
    own = open_store(settings)
    try:
        yield own
    finally:
        own.dispose()


# -- what served ----------------------------------------------------------------------------------


def served_on(store: Store, model: str, ds: date) -> dict[str, tuple[int, float]]:
    """role → (version, share) of what served `model` on `ds`; empty when the night was never served."""
    t = schema.served
    with store.connect() as conn:
        rows = conn.execute(sa.select(t.c.role, t.c.version, t.c.share).where(t.c.model == model, t.c.ds == ds))
        return {r.role: (int(r.version), float(r.share)) for r in rows}


def record_served(store: Store, plan: NightPlan, run_ids: dict[str, int]) -> None:
    """Record which version served which share of entities on the plan's night (a re-run replaces it).

    A role whose version a re-run keeps keeps its row and the moment it was first recorded (its share and
    run are updated); a row whose role changed version, or is gone, moves to `served_history` with
    `replaced_at` = this moment, the new rows' `recorded_at`. So the version that held a role on the night
    is known at every moment since (the lookup API's `?ds=&as_of=`, nightshift.api.queries._SERVED_AT).
    """
    t, h = schema.served, schema.served_history
    now = utcnow()
    with store.begin() as conn:
        rows = conn.execute(sa.select(t).where(t.c.model == plan.model, t.c.ds == plan.ds)).mappings().all()
        kept = {(r["role"], int(r["version"])) for r in rows if plan.versions.get(r["role"]) == int(r["version"])}
        for old in rows:
            if (old["role"], int(old["version"])) in kept:
                continue
            conn.execute(h.insert().values(**{c.name: old[c.name] for c in t.columns}, replaced_at=now))
            conn.execute(t.delete().where(t.c.model == plan.model, t.c.ds == plan.ds, t.c.version == old["version"]))
        for role, version in plan.versions.items():
            values = {"share": plan.shares.get(role, 0.0), "run_id": run_ids.get(role)}
            if (role, version) in kept:
                conn.execute(
                    t.update()
                    .where(t.c.model == plan.model, t.c.ds == plan.ds, t.c.version == version)
                    .values(**values)
                )
            else:
                conn.execute(
                    t.insert().values(
                        model=plan.model, ds=plan.ds, version=version, role=role, recorded_at=now, **values
                    )
                )
        if CHALLENGER in plan.versions:
            # A bandit's candidate share of this night is the one the lookup API routes by (like a canary's).
            r = schema.model_rollouts
            conn.execute(
                r.update()
                .where(
                    r.c.model == plan.model,
                    r.c.strategy == "bandit",
                    r.c.challenger_version == plan.versions[CHALLENGER],
                )
                .values(canary_share=plan.shares.get(CHALLENGER, 0.0), updated_at=now)
            )


def decided_night(store: Store, model: str, ds: date) -> dict[str, Any] | None:
    """The recorded decision of a (model, ds) night, if it was decided."""
    n = schema.nights
    with store.connect() as conn:
        row = conn.execute(sa.select(n).where(n.c.model == model, n.c.ds == ds)).mappings().first()
    return dict(row) if row else None


# -- plan -----------------------------------------------------------------------------------------


def plan_night(
    settings: Settings, model: str, ds: date, *, backfill: bool | None = None, store: Store | None = None
) -> NightPlan:
    """Decide the night's mode and the versions it scores (see the module's docstring).

    `backfill`: True for a run asked for as a backfill; None lets the ds decide (older than the
    newest decided night: backfill). Raises ModelNotFound when the model has no champion.
    """
    cfg = settings.model(model)
    with _store(settings, store) as st:
        rollouts = Rollouts(settings, st)
        newest = rollouts.newest_decided_night(model)
        if backfill:
            mode, why = BACKFILL, "asked for as a backfill"
        elif newest is not None and ds < newest:
            mode, why = BACKFILL, f"older than the newest decided night ({newest})"
        else:
            mode, why = NIGHTLY, "the newest night" if newest is None or ds > newest else "re-run of the newest night"
        if mode == BACKFILL:
            served = served_on(st, model, ds)
            if served:
                versions = {role: v for role, (v, _share) in served.items()}
                shares = {role: share for role, (_v, share) in served.items()}
                why += "; scores the versions that served it"
            else:
                champion = rollouts.registry.resolve(model)  # raises ModelNotFound without one
                versions, shares = {CHAMPION: champion.version}, {CHAMPION: 1.0}
                why += "; nothing served it: scores today's champion"
        else:
            versions = rollouts.versions_to_score(model, ds)
            if CHAMPION not in versions:
                rollouts.registry.resolve(model)  # raises ModelNotFound, naming what exists
            active = rollouts.active(model)
            canary = float(active["canary_share"] or 0.0) if active and CHALLENGER in versions else 0.0
            if active and CHALLENGER in versions and active["strategy"] == "bandit":
                canary = rollouts.bandit_share(model, ds)  # this night's allocation (Thompson sampling)
            shares = dict.fromkeys(versions, 0.0)
            shares[CHAMPION] = 1.0 - canary
            if CHALLENGER in versions:
                shares[CHALLENGER] = canary
    plan = NightPlan(model, ds, mode, why, _ordered(versions), shares)
    log.info("night %s; data %s", plan.describe(), cfg.dataset_uri(settings))
    return plan


# -- score ----------------------------------------------------------------------------------------


def score_night(
    settings: Settings,
    plan: NightPlan,
    *,
    run_key: str | None = None,
    client: Client | None = None,
    store: Store | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Score and commit the partition once per planned version (champion first), in one read.

    Returns role → {version, rows, store_run_id, replaced_run_id, seconds, rows_per_s}. A nightly
    night then records what served it. A failure raises: the versions committed beside it stay
    committed (each partition is atomic on its own), the previous predictions of the failed one
    still serve.
    """
    outcome = score_nights(settings, [plan], run_key=run_key, client=client, store=store, progress=progress)
    scored = outcome[plan.model]
    if isinstance(scored, BaseException):
        raise scored
    return scored


def score_nights(
    settings: Settings,
    plans: Sequence[NightPlan],
    *,
    run_key: str | None = None,
    client: Client | None = None,
    store: Store | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, dict[str, dict[str, Any]] | BaseException]:
    """Score the nights of several models of one ds together: models that read the same partition share
    ONE read of it (`scoring.score_partitions`), and every version of every model commits on its own.

    Returns model → its `score_night` result, or the exception that failed it (its champion's failure
    first): one model's failure never stops the others, and names it.
    """
    from nightshift.scoring import score_partitions

    if len({p.ds for p in plans}) > 1:
        raise NightshiftError(f"nights scored together must share their ds, got {sorted({p.ds for p in plans})}")
    if not plans:
        return {}
    out: dict[str, dict[str, dict[str, Any]] | BaseException] = {}
    with _store(settings, store) as st:
        report: Callable[[int, int], None] | None = None
        if progress is not None:
            report = lambda done, total: progress("all", done, total)  # noqa: E731
        targets = [(p.model, version, None) for p in plans for version in dict.fromkeys(p.versions.values())]
        results = score_partitions(
            settings, targets, plans[0].ds, run_key=run_key, client=client, store=st, progress=report
        )
        for plan in plans:
            out[plan.model] = _scored(st, plan, results)
    return out


def _scored(
    store: Store, plan: NightPlan, results: dict[tuple[str, int], RunSummary | BaseException]
) -> dict[str, dict[str, Any]] | BaseException:
    """One model's share of a scoring pass: role → what committed, or the failure that decides its night."""
    scored: dict[str, dict[str, Any]] = {}
    run_ids: dict[str, int] = {}
    failed: dict[int, BaseException] = {}
    for role, version in plan.versions.items():
        outcome = results[(plan.model, version)]
        if isinstance(outcome, BaseException):
            failed[version] = outcome
            continue
        run_ids[role] = outcome.run_id
        scored[role] = {
            "version": outcome.version,
            "rows": outcome.rows,
            "files": outcome.files,
            "store_run_id": outcome.run_id,
            "replaced_run_id": outcome.replaced_run_id,
            "seconds": outcome.seconds,
            "rows_per_s": outcome.rows_per_s,
        }
        log.info(
            "committed %s %s v%s ds=%s: %s rows from %s file(s) in %.2fs (%s rows/s), store run %s%s; "
            "lock wait %.2fs, commit %.2fs",
            plan.model,
            role,
            outcome.version,
            plan.ds,
            f"{outcome.rows:,}",
            outcome.files,
            outcome.seconds,
            f"{outcome.rows_per_s:,.0f}",
            outcome.run_id,
            f", replaced run {outcome.replaced_run_id}" if outcome.replaced_run_id else "",
            outcome.timings.get("lock_wait_s", 0.0),
            outcome.timings.get("commit_s", 0.0),
        )
    if failed:
        # The champion's failure first: it is what the night is about; the others committed or not on their own.
        champion = plan.versions.get(CHAMPION)
        first = failed.get(champion) if champion is not None else None
        return first if first is not None else next(iter(failed.values()))
    if not plan.backfill:
        record_served(store, plan, run_ids)
    return scored


# -- monitor --------------------------------------------------------------------------------------


def monitor_night(
    settings: Settings, plan: NightPlan, *, store: Store | None = None, report: bool = False
) -> dict[str, dict[str, Any] | None]:
    """Monitor every scored version of the night; role → MonitorResult.as_dict() (None: cannot be judged).

    A version without a reference (no recorded training days) alerts and is not judged: the night's
    predictions are committed and serving, so that is not a failure of the night.
    """
    from nightshift.monitoring import ReferenceUnavailable, monitor_partition
    from nightshift.notify import notify
    from nightshift.telemetry import JobClock, monitoring_metrics

    if not settings.model(plan.model).monitoring.enabled:
        log.info("monitoring of %s is disabled (monitoring.enabled = false)", plan.model)
        return {}
    out: dict[str, dict[str, Any] | None] = {}
    with _store(settings, store) as st:
        for role, version in plan.versions.items():
            clock = JobClock()  # the run's seconds and peak memory, for the job metrics
            try:
                result: MonitorResult = monitor_partition(
                    settings, plan.model, plan.ds, version=version, store=st, report=report
                )
            except ReferenceUnavailable as exc:
                notify(
                    settings,
                    "monitoring_unavailable",
                    f"{plan.model} v{version} ds={plan.ds}: {exc}",
                    model=plan.model,
                )
                out[role] = None
                continue
            except Exception:
                monitoring_metrics(settings, plan.model, version, plan.ds, clock, ok=False, rows=0)
                raise
            monitoring_metrics(settings, plan.model, version, plan.ds, clock, ok=True, rows=result.rows)
            entry = result.as_dict()
            if role == CHAMPION:
                estimate = _estimate(settings, plan, version, st)
                if estimate is not None:
                    entry["estimate"] = estimate
            out[role] = entry
            log.info(
                "monitored %s %s v%s ds=%s: %s (%s of %s rows sampled)%s",
                plan.model,
                role,
                version,
                plan.ds,
                result.status,
                f"{result.sampled_rows:,}",
                f"{result.rows:,}",
                f"; failed: {', '.join(c.describe() for c in result.failed[:5])}" if result.failed else "",
            )
    return out


def _estimate(settings: Settings, plan: NightPlan, version: int, store: Store) -> dict[str, Any] | None:
    """The label-free estimate of the champion's quality tonight (CBPE), stored; None when switched off."""
    from nightshift.monitoring import estimate_performance

    if not settings.model(plan.model).monitoring.estimate_performance:
        return None
    try:
        result = estimate_performance(settings, plan.model, plan.ds, version=version, store=store)
    except Exception as exc:  # noqa: BLE001 - an estimate is an illustration: the night goes on without it
        log.error("performance estimate of %s v%s ds=%s failed: %s", plan.model, version, plan.ds, exc)
        return None
    estimated = {k: v for k, v in result.estimated.items() if k != "n"}
    log.info("estimated %s v%s ds=%s (CBPE, before labels): %s", plan.model, version, plan.ds, estimated)
    return {"status": result.status, "estimated": estimated}


def verdicts(monitored: dict[str, dict[str, Any] | None]) -> dict[str, bool | None]:
    """role → passed (True), failed (False) or not judged (None), from monitor_night's result."""
    out: dict[str, bool | None] = {}
    for role, result in monitored.items():
        status = (result or {}).get("status")
        out[role] = None if status in (None, "insufficient_data") else status != "fail"
    return out


def report_night(
    settings: Settings,
    plan: NightPlan,
    monitored: dict[str, dict[str, Any] | None],
    *,
    store: Store | None = None,
) -> dict[str, str]:
    """The Evidently HTML report of the champion's and challenger's night, for each one monitoring could
    judge (a version without a reference, or a night without rows, has nothing to show); role → URI."""
    from nightshift.monitoring import report_partition

    uris: dict[str, str] = {}
    with _store(settings, store) as st:
        for role in (CHAMPION, CHALLENGER):
            result = monitored.get(role)
            if role in plan.versions and result is not None and result.get("sampled_rows", 0) > 0:
                uris[role] = report_partition(settings, plan.model, plan.ds, version=plan.versions[role], store=st)
    return uris


def reportable(monitored: dict[str, dict[str, Any] | None]) -> bool:
    """Whether report_night has anything to show."""
    return any(
        monitored.get(role) is not None and (monitored[role] or {}).get("sampled_rows", 0) > 0
        for role in (CHAMPION, CHALLENGER)
    )


# -- decide ---------------------------------------------------------------------------------------


def measure_labels(settings: Settings, plan: NightPlan, *, store: Store | None = None) -> dict[str, Any] | None:
    """When the labels of the night's ds have landed: the label quality of every version that served it
    (`monitoring.quality_of_day`, stored, alerting), unless already measured. None otherwise."""
    from nightshift.monitoring import quality_of_day
    from nightshift.rollout.outcomes import labels_ready

    cfg = settings.model(plan.model)
    if not cfg.monitoring.enabled or not cfg.labels or not labels_ready(settings, cfg, plan.ds):
        return None
    with _store(settings, store) as st:
        r = schema.monitor_runs
        with st.connect() as conn:
            done = set(
                conn.execute(
                    sa.select(r.c.version).where(r.c.model == plan.model, r.c.ds == plan.ds, r.c.kind == "quality")
                ).scalars()
            )
        if set(plan.versions.values()) <= {int(v) for v in done}:
            return None
        try:
            day = quality_of_day(settings, plan.model, plan.ds, store=st)
        except NightshiftError as exc:
            log.error("label quality of %s ds=%s failed: %s", plan.model, plan.ds, exc)
            return None
    log.info(
        "label quality of %s ds=%s: %s",
        plan.model,
        plan.ds,
        ", ".join(f"{role} v{res.version} {res.status}" for role, res in day.results.items()),
    )
    return day.as_dict()


def decide_night(
    settings: Settings,
    plan: NightPlan,
    monitored: dict[str, dict[str, Any] | None],
    *,
    run_key: str | None = None,
    by: str | None = None,
    store: Store | None = None,
) -> NightDecision:
    """Act on the night's verdicts, exactly once per (model, ds), for nightly nights only.

    A backfill decides nothing. A night already decided returns its recorded decision (a retried
    task, a re-run). When the champion alias moved since the night was planned (a promotion or a
    rollback by hand meanwhile), the rollout does not act on the old champion's verdict.

    The rollout decides on labelled outcomes (`rollout.outcomes.judge_night`, over the labelled days
    up to ds: promotion, abort, rollback, the bandit's allocation), never on the drift verdicts in
    `monitored`; those alert and feed the retraining decision. When ds's labels have already landed,
    their quality is measured first for every version that served ds (`measure_labels`).
    """
    from nightshift.monitoring import retrain_decision
    from nightshift.rollout.outcomes import judge_night

    if plan.backfill:
        log.info("%s ds=%s is a backfill (%s): no alias or rollout moves, no retraining", plan.model, plan.ds, plan.why)
        return NightDecision(plan.model, plan.ds, plan.mode, "backfill: nothing decided")
    ok = verdicts(monitored)
    who = by or current_user()
    with _store(settings, store) as st:
        done = decided_night(st, plan.model, plan.ds)
        if done is not None:
            return NightDecision(plan.model, plan.ds, plan.mode, str(done["rollout"]), done["retrain"], replayed=True)
        rollouts = Rollouts(settings, st)
        aliases = rollouts.registry.aliases(plan.model)
        champion_now = aliases.get(CHAMPION)
        measure_labels(settings, plan, store=st)
        if champion_now != plan.versions.get(CHAMPION):
            action = "unchanged: the champion moved since the night was planned"
        else:
            # Labelled outcomes decide, never drift: the night's monitoring verdicts (`ok`) alert and feed the
            # retraining decision below.
            outcomes = judge_night(
                settings, st, plan.model, plan.ds, aliases=aliases, active=rollouts.active(plan.model)
            )
            action = rollouts.advance(
                plan.model,
                plan.ds,
                champion_ok=outcomes.champion_ok,
                challenger_ok=outcomes.challenger_ok,
                previous_ok=outcomes.previous_ok,
                by=who,
                outcomes=outcomes,
            )
        retrain: dict[str, Any] | None = None
        champion = plan.versions.get(CHAMPION)
        if champion is not None and monitored.get(CHAMPION) is not None:
            retrain = retrain_decision(settings, plan.model, plan.ds, version=champion, store=st).as_dict()
        values = {
            "decided_at": utcnow(),
            "decided_by": who,
            "run_key": run_key,
            "versions": json_safe(plan.versions),
            "verdicts": json_safe(ok),
            "rollout": action,
            "retrain": json_safe(retrain) if retrain is not None else None,
        }
        with st.begin() as conn:
            stmt = dialect_insert(st.dialect, schema.nights).values(model=plan.model, ds=plan.ds, **values)
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["model", "ds"]))
    decision = NightDecision(plan.model, plan.ds, plan.mode, action, retrain)
    log.info(
        "decided %s ds=%s: rollout %s; retraining %s",
        plan.model,
        plan.ds,
        action,
        "TRIGGER" if decision.trigger_retrain else f"no ({(retrain or {}).get('reason', 'not monitored')})",
    )
    return decision


# -- whole nights -----------------------------------------------------------------------------------


def run_night(
    settings: Settings,
    model: str,
    ds: date,
    *,
    backfill: bool | None = None,
    run_key: str | None = None,
    by: str | None = None,
    retrain: bool = False,
    report: bool = False,
    client: Client | None = None,
    store: Store | None = None,
) -> NightReport:
    """Plan, score, monitor and decide one night; with `retrain`, act on a retraining trigger too
    (train, gate, roll out: what `retrain_<model>` does in Airflow)."""
    with _store(settings, store) as st:
        plan = plan_night(settings, model, ds, backfill=backfill, store=st)
        outcome = _finish_nights(
            settings, [plan], run_key=run_key, by=by, retrain=retrain, report=report, client=client, store=st
        )[model]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def run_nights(
    settings: Settings,
    models: Sequence[str],
    ds: date,
    *,
    backfill: bool | None = None,
    run_key: str | None = None,
    by: str | None = None,
    retrain: bool = False,
    report: bool = False,
    client: Client | None = None,
    store: Store | None = None,
) -> dict[str, NightReport | BaseException]:
    """The nights of several models on `ds`, as `run_night` each, but scored in one pass: models whose
    datasets are the same partition share one read of it. One model's failure (its plan, its scoring,
    its monitoring, its decision) is its own: model → its NightReport, or the exception that failed it."""
    for name in models:
        settings.model(name)  # an unknown name fails before anything runs
    plans: list[NightPlan] = []
    out: dict[str, NightReport | BaseException] = {}
    with _store(settings, store) as st:
        for name in dict.fromkeys(models):
            try:
                plans.append(plan_night(settings, name, ds, backfill=backfill, store=st))
            except Exception as exc:  # noqa: BLE001 - this model's night failed; the others go on
                out[name] = exc
        out.update(
            _finish_nights(
                settings, plans, run_key=run_key, by=by, retrain=retrain, report=report, client=client, store=st
            )
        )
    return {name: out[name] for name in dict.fromkeys(models)}


def _finish_nights(
    settings: Settings,
    plans: Sequence[NightPlan],
    *,
    run_key: str | None,
    by: str | None,
    retrain: bool,
    report: bool,
    client: Client | None,
    store: Store,
) -> dict[str, NightReport | BaseException]:
    t0 = time.perf_counter()
    out: dict[str, NightReport | BaseException] = {}
    scored_all = score_nights(settings, plans, run_key=run_key, client=client, store=store)
    for plan in plans:
        scored = scored_all[plan.model]
        if isinstance(scored, BaseException):
            out[plan.model] = scored
            continue
        try:
            monitored = monitor_night(settings, plan, store=store, report=report)
            decision = decide_night(settings, plan, monitored, run_key=run_key, by=by, store=store)
            outcome: dict[str, Any] | None = None
            if retrain and decision.trigger_retrain and not decision.replayed and decision.retrain is not None:
                rollouts = Rollouts(settings, store)
                outcome = rollouts.retrain(plan.model, plan.ds, trigger=decision.retrain, by=by).as_dict()
        except Exception as exc:  # noqa: BLE001 - this model's night failed; the others go on
            out[plan.model] = exc
            continue
        out[plan.model] = NightReport(plan, scored, monitored, decision, outcome, time.perf_counter() - t0)
    return out


def days_between(first: date, last: date) -> list[date]:
    """Every day from `first` to `last`, inclusive."""
    if last < first:
        raise NightshiftError(f"the backfill range is empty: --to {last} is before --from {first}")
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def backfill(
    settings: Settings,
    model: str,
    first: date,
    last: date,
    *,
    parallel: int = 1,
    run_key: str | None = None,
    by: str | None = None,
    on_night: Callable[[date, NightReport | None, BaseException | None], None] | None = None,
) -> dict[date, NightReport | BaseException]:
    """Backfill every ds from `first` to `last`: score and monitor each as a backfill, deciding nothing.

    Up to `parallel` nights at once, on one Dask cluster started once (runs of different ds never
    wait on each other; the store's run lock serialises runs of the same ds). A failed night is
    reported and the others go on. Returns ds → NightReport, or the exception that failed it.
    """
    from nightshift.scoring import dask_client

    if parallel < 1:
        raise NightshiftError(f"--parallel must be at least 1, got {parallel}")
    days = days_between(first, last)
    settings.model(model)
    results: dict[date, NightReport | BaseException] = {}

    def one(ds: date, client: Client, store: Store) -> None:
        try:
            report = run_night(settings, model, ds, backfill=True, run_key=run_key, by=by, client=client, store=store)
        except Exception as exc:  # noqa: BLE001 - one failed night does not stop the others; it is reported
            results[ds] = exc
            if on_night:
                on_night(ds, None, exc)
            return
        results[ds] = report
        if on_night:
            on_night(ds, report, None)

    with _store(settings, None) as st, dask_client(settings.dask) as client:
        if parallel == 1:
            for ds in days:
                one(ds, client, st)
        else:
            with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="nightshift-backfill") as pool:
                for future in [pool.submit(one, ds, client, st) for ds in days]:
                    future.result()
    return dict(sorted(results.items()))
