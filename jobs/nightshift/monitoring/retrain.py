"""Whether a night's breaches ask for retraining: hysteresis (N of the last M nights), cooldown, exactly once."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from nightshift.config import Settings
from nightshift.db import schema
from nightshift.db.engine import as_date, as_utc, utcnow
from nightshift.db.schema import retrain_requests
from nightshift.db.store import Store
from nightshift.monitoring.checks import FAIL
from nightshift.monitoring.results import _json_safe, advisory_lock, failing_checks, night_statuses

#: Breaches listed in a decision (their count is exact).
MAX_BREACHES = 50


def retrain_run_id(model: str, ds: date, source: str = "drift") -> str:
    """The deterministic Airflow run id of the retraining run a request asks for."""
    return f"retrain__{model}__{ds.isoformat()}__{source}"


@dataclass
class RetrainDecision:
    """Whether to trigger retraining after monitoring `ds`; `run_id` is the retraining DAG run to trigger.

    `replayed` is True when this ds had already triggered: the decision is returned again (same
    run id) so a retried or re-run Airflow task triggers the same run id, which Airflow dedupes.
    """

    model: str
    ds: date
    version: int
    trigger: bool
    run_id: str
    reason: str
    breaches: list[dict[str, Any]] = field(default_factory=list)
    failing_nights: list[date] = field(default_factory=list)
    window: tuple[date, date] | None = None
    replayed: bool = False
    #: The first night of the failing streak ending at ds (the detected onset of the shift): what a
    #: retrain trains from when there are enough labelled days since (training.regime_window).
    onset: date | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe: an XCom, or the `trigger` of Rollouts.retrain."""
        return _json_safe(
            {
                "model": self.model,
                "ds": self.ds,
                "version": self.version,
                "trigger": self.trigger,
                "run_id": self.run_id,
                "reason": self.reason,
                "breaches": self.breaches,
                "failing_nights": self.failing_nights,
                "window": list(self.window) if self.window else None,
                "replayed": self.replayed,
                "onset": self.onset,
            }
        )


def _request_dict(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["ds"] = as_date(out["ds"])
    out["created_at"] = as_utc(out["created_at"])
    return out


def retrain_requests_of(store: Store, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Recorded retraining requests, newest ds first."""
    t = retrain_requests
    q = sa.select(t).order_by(t.c.ds.desc(), t.c.created_at.desc()).limit(limit)
    if model:
        q = q.where(t.c.model == model)
    with store.connect() as conn:
        return [_request_dict(r) for r in conn.execute(q).mappings()]


def _insert_request(conn: Any, values: dict[str, Any]) -> bool:
    """Insert unless the request id exists; True when inserted."""
    t = retrain_requests
    if conn.execute(sa.select(t.c.request_id).where(t.c.request_id == values["request_id"])).first():
        return False
    try:
        with conn.begin_nested():
            conn.execute(t.insert().values(**values))
    except IntegrityError:
        return False
    return True


def record_retrain_request(
    settings: Settings,
    model: str,
    ds: date,
    reason: str,
    *,
    source: str = "manual",
    version: int | None = None,
    breaches: list[dict[str, Any]] | None = None,
    run_id: str | None = None,
    created_by: str | None = None,
    store: Store | None = None,
) -> tuple[dict[str, Any], bool]:
    """Store a retraining request (idempotent on its run id); returns (the request, whether it is new)."""
    from nightshift.models.registry import current_user

    settings.model(model)
    request_id = run_id or retrain_run_id(model, ds, source)
    own = store is None
    if store is None:
        from nightshift.db import open_store

        store = open_store(settings)
    try:
        values = {
            "request_id": request_id,
            "model": model,
            "ds": ds,
            "version": version,
            "source": source,
            "reason": reason,
            "breaches": _json_safe(breaches or []),
            "status": "requested",
            "created_at": utcnow(),
            "created_by": created_by or current_user(),
        }
        with store.begin() as conn:
            advisory_lock(conn, f"nightshift-retrain:{model}")
            created = _insert_request(conn, values)
        t = retrain_requests
        with store.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.request_id == request_id)).mappings().one()
        return _request_dict(row), created
    finally:
        if own:
            store.dispose()


#: The monitor run kinds that make a night fail.
JUDGED_KINDS = ("data", "quality")
#: How far back the onset of a failing streak is looked for.
MAX_ONSET_DAYS = 366


def detect_onset(store: Store, model: str, version: int, ds: date) -> date | None:
    """The first night of the streak of consecutive failing nights of `version` ending at `ds` (its data or
    quality result failed; an unmonitored or passing night ends the streak); None when ds did not fail."""
    nights = night_statuses(store, model, version, ds - timedelta(days=MAX_ONSET_DAYS), ds)
    onset = None
    day = ds
    while any(r["status"] == FAIL and r["kind"] in JUDGED_KINDS for r in nights.get(day, [])):
        onset = day
        day -= timedelta(days=1)
    return onset


def _still_failing_after_retrain(
    conn: Any, model: str, version: int, recent: Any, failing: list[date], need: int
) -> str | None:
    """Why the cooldown of an earlier request does not apply, or None when it does.

    The cooldown keeps a shift from asking for retraining again while the answer to the first request is
    on its way. It does not hold once that answer is the version judged now: `version` was trained in
    answer to the request (its candidate names the request's run id, or it was trained on data reaching
    the request's ds), and it fails at least N nights after its own training window — the shift moved on,
    or the retrain did not capture it, and waiting out the cooldown would leave a failing champion serving.
    """
    c = schema.candidates
    cand = conn.execute(
        sa.select(c.c.trigger, c.c.training_data)
        .where(c.c.model == model, c.c.version == version)
        .order_by(c.c.candidate_id.desc())
    ).first()
    row = conn.execute(
        sa.select(schema.model_versions.c.training_data).where(
            schema.model_versions.c.model == model, schema.model_versions.c.version == version
        )
    ).first()
    trigger = (cand.trigger if cand is not None else None) or {}
    data = (row.training_data if row is not None else None) or {}
    days = [str(p.get("ds")) for p in (data.get("partitions") or []) if isinstance(p, dict) and p.get("ds")]
    test = data.get("confidence_test") or {}
    days += [str(p.get("ds")) for p in (test.get("partitions") or []) if isinstance(p, dict) and p.get("ds")]
    if not days:
        return None
    last = max(date.fromisoformat(d) for d in days)
    answered = recent.request_id in (trigger.get("run_id"), trigger.get("dag_run_id")) or last >= as_date(recent.ds)
    after = [d for d in failing if d > last]
    if answered and len(after) >= need:
        return (
            f"v{version} was retrained in answer to {recent.request_id} (trained on data up to {last}) and still "
            f"fails {len(after)} night(s) after its training window: the cooldown does not apply"
        )
    return None


def retrain_decision(
    settings: Settings, model: str, ds: date, *, version: int | None = None, store: Store | None = None
) -> RetrainDecision:
    """Decide whether monitoring `ds` asks for retraining, and record a trigger exactly once.

    Triggers when ds's own night failed (data or label quality), at least
    `retrain_failing_nights` (N) of the `retrain_window_nights` (M) nights ending at ds failed,
    and no retraining was requested for the model within `retrain_cooldown_days` (K) of ds
    (either side, so a backfill does not trigger again) — unless the version judged is the answer to
    that earlier request and still fails N nights after its own training window. A trigger is recorded
    as a retraining request with run id `retrain__<model>__<ds>__drift` and carries the detected onset
    of the failing streak; deciding the same ds again replays it. `version` defaults to the champion.
    """
    from nightshift.models.registry import Registry, current_user

    cfg = settings.model(model)
    mon = cfg.monitoring
    own = store is None
    if store is None:
        from nightshift.db import open_store

        store = open_store(settings)
    try:
        mv_version = version if version is not None else Registry(store, settings.artifacts_uri).resolve(model).version
        run_id = retrain_run_id(model, ds)
        first = ds - timedelta(days=mon.retrain_window_nights - 1)
        t = retrain_requests
        with store.connect() as conn:
            existing = conn.execute(sa.select(t).where(t.c.request_id == run_id)).mappings().first()
        if existing is not None:
            return RetrainDecision(
                model,
                ds,
                mv_version,
                True,
                run_id,
                existing["reason"],
                list(existing["breaches"] or []),
                window=(first, ds),
                replayed=True,
                onset=detect_onset(store, model, mv_version, ds),
            )
        nights = {
            d: [r for r in runs if r["kind"] in JUDGED_KINDS]
            for d, runs in night_statuses(store, model, mv_version, first, ds).items()
        }
        nights = {d: runs for d, runs in nights.items() if runs}
        failing = sorted(d for d, runs in nights.items() if any(r["status"] == FAIL for r in runs))
        failed_ids = [int(r["monitor_id"]) for d in failing for r in nights[d] if r["status"] == FAIL]
        by_id = {int(r["monitor_id"]): r for runs in nights.values() for r in runs}
        breaches = [
            {
                "ds": by_id[int(c["monitor_id"])]["ds"],
                "run": by_id[int(c["monitor_id"])]["kind"],
                "check": c["kind"],
                "column": c["column_name"],
                "statistic": c["statistic"],
                "value": c["value"],
                "threshold": c["threshold"],
            }
            for c in failing_checks(store, failed_ids)
        ]
        breaches.sort(key=lambda b: (b["ds"], b["run"], b["check"], b["column"] or ""))

        def no(reason: str) -> RetrainDecision:
            return RetrainDecision(
                model, ds, mv_version, False, run_id, reason, breaches[:MAX_BREACHES], failing, (first, ds)
            )

        need, window = mon.retrain_failing_nights, mon.retrain_window_nights
        if ds not in nights:
            return no(f"ds={ds} of v{mv_version} has not been monitored")
        if ds not in failing:
            return no(f"ds={ds} did not fail")
        if len(failing) < need:
            return no(f"hysteresis: {len(failing)} of the last {window} night(s) failed, {need} needed")
        cooldown = mon.retrain_cooldown_days
        overridden: str | None = None
        with store.begin() as conn:
            advisory_lock(conn, f"nightshift-retrain:{model}")
            if cooldown > 0:
                recent = conn.execute(
                    sa.select(t.c.request_id, t.c.ds)
                    .where(
                        t.c.model == model,
                        t.c.ds > ds - timedelta(days=cooldown),
                        t.c.ds < ds + timedelta(days=cooldown),
                        t.c.request_id != run_id,
                    )
                    .order_by(t.c.ds.desc())
                ).first()
                if recent is not None:
                    if as_date(recent.ds) < ds:
                        overridden = _still_failing_after_retrain(conn, model, mv_version, recent, failing, need)
                    if overridden is None:
                        return no(
                            f"cooldown: retraining was already requested for ds={as_date(recent.ds)} "
                            f"({recent.request_id}), within {cooldown} day(s)"
                        )
            kinds = sorted({b["check"] for b in breaches})
            reason = (
                f"{len(failing)} of the last {window} night(s) failed ({', '.join(d.isoformat() for d in failing)}); "
                f"{len(breaches)} breach(es): {', '.join(kinds)}"
            ) + (f"; {overridden}" if overridden else "")
            created = _insert_request(
                conn,
                {
                    "request_id": run_id,
                    "model": model,
                    "ds": ds,
                    "version": mv_version,
                    "source": "drift",
                    "reason": reason,
                    "breaches": _json_safe(breaches[:MAX_BREACHES]),
                    "status": "requested",
                    "created_at": utcnow(),
                    "created_by": current_user(),
                },
            )
        decision = RetrainDecision(
            model,
            ds,
            mv_version,
            True,
            run_id,
            reason,
            breaches[:MAX_BREACHES],
            failing,
            (first, ds),
            replayed=not created,
            onset=detect_onset(store, model, mv_version, ds),
        )
        if created:
            from nightshift.notify import notify

            notify(
                settings,
                "retrain_requested",
                f"{model}: retraining requested after ds={ds} ({reason})",
                model=model,
                ds=ds,
                version=mv_version,
                run_id=run_id,
                breaches=decision.breaches[:10],
            )
        return decision
    finally:
        if own:
            store.dispose()
