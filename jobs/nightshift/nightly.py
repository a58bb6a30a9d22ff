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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from nightshift.config import Settings
from nightshift.db import Store, open_store, schema, utcnow
from nightshift.db.store import _as_date, _dialect_insert
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
            ds=_as_date(data["ds"]),
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
    """Record (replacing) which version served which share of entities on the plan's night."""
    t = schema.served
    now = utcnow()
    with store.begin() as conn:
        conn.execute(t.delete().where(t.c.model == plan.model, t.c.ds == plan.ds))
        for role, version in plan.versions.items():
            conn.execute(
                t.insert().values(
                    model=plan.model,
                    ds=plan.ds,
                    version=version,
                    role=role,
                    share=plan.shares.get(role, 0.0),
                    run_id=run_ids.get(role),
                    recorded_at=now,
                )
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
    """Score and commit the partition once per planned version (champion first), on one Dask client.

    Returns role → {version, rows, store_run_id, replaced_run_id, seconds, rows_per_s}. A nightly
    night then records what served it. The first failure raises: the versions committed before it
    stay committed (each partition is atomic on its own), the previous predictions of the failed
    one still serve.
    """
    from nightshift.scoring import dask_client, score_partition

    scored: dict[str, dict[str, Any]] = {}
    summaries: dict[str, RunSummary] = {}
    with _store(settings, store) as st, dask_client(settings.dask, client) as c:
        for role, version in plan.versions.items():
            report: Callable[[int, int], None] | None = None
            if progress is not None:
                report = (lambda r: lambda done, total: progress(r, done, total))(role)
            summary = score_partition(
                settings, plan.model, plan.ds, version=version, run_key=run_key, client=c, store=st, progress=report
            )
            summaries[role] = summary
            scored[role] = {
                "version": summary.version,
                "rows": summary.rows,
                "files": summary.files,
                "store_run_id": summary.run_id,
                "replaced_run_id": summary.replaced_run_id,
                "seconds": summary.seconds,
                "rows_per_s": summary.rows_per_s,
            }
            log.info(
                "committed %s %s v%s ds=%s: %s rows from %s file(s) in %.2fs (%s rows/s), store run %s%s; "
                "lock wait %.2fs, commit %.2fs",
                plan.model,
                role,
                summary.version,
                plan.ds,
                f"{summary.rows:,}",
                summary.files,
                summary.seconds,
                f"{summary.rows_per_s:,.0f}",
                summary.run_id,
                f", replaced run {summary.replaced_run_id}" if summary.replaced_run_id else "",
                summary.timings.get("lock_wait_s", 0.0),
                summary.timings.get("commit_s", 0.0),
            )
        if not plan.backfill:
            record_served(st, plan, {role: s.run_id for role, s in summaries.items()})
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

    if not settings.model(plan.model).monitoring.enabled:
        log.info("monitoring of %s is disabled (monitoring.enabled = false)", plan.model)
        return {}
    out: dict[str, dict[str, Any] | None] = {}
    with _store(settings, store) as st:
        for role, version in plan.versions.items():
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
            out[role] = result.as_dict()
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
    """
    from nightshift.monitoring import retrain_decision

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
        champion_now = rollouts.registry.aliases(plan.model).get(CHAMPION)
        if champion_now != plan.versions.get(CHAMPION):
            action = "unchanged: the champion moved since the night was planned"
        else:
            action = rollouts.advance(
                plan.model,
                plan.ds,
                champion_ok=ok.get(CHAMPION),
                challenger_ok=ok.get(CHALLENGER),
                previous_ok=ok.get(PREVIOUS),
                by=who,
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
            stmt = _dialect_insert(st.dialect, schema.nights).values(model=plan.model, ds=plan.ds, **values)
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
    t0 = time.perf_counter()
    with _store(settings, store) as st:
        plan = plan_night(settings, model, ds, backfill=backfill, store=st)
        scored = score_night(settings, plan, run_key=run_key, client=client, store=st)
        monitored = monitor_night(settings, plan, store=st, report=report)
        decision = decide_night(settings, plan, monitored, run_key=run_key, by=by, store=st)
        outcome: dict[str, Any] | None = None
        if retrain and decision.trigger_retrain and not decision.replayed and decision.retrain is not None:
            outcome = Rollouts(settings, st).retrain(model, ds, trigger=decision.retrain, by=by).as_dict()
    return NightReport(plan, scored, monitored, decision, outcome, time.perf_counter() - t0)


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
