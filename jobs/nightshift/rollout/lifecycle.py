"""Retraining and safe rollout: candidates, gates, strategies, approval, promotion, rollback, comparison.

Aliases: ``champion`` is what the API serves; ``challenger`` is a candidate in shadow, canary or
bandit; ``previous`` is the version the champion replaced, kept ready for an instant rollback.
Promotions and automatic rollbacks are decided by labelled outcomes (`rollout.outcomes`, tests in
`rollout.stats`), a bandit's allocation by Thompson sampling (`rollout.bandit`). Every decision is
written to ``candidates`` and ``audit_events``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nightshift.config import ModelSettings, Settings
from nightshift.db import schema
from nightshift.db.engine import as_date, dialect_insert, utcnow
from nightshift.db.store import Store
from nightshift.errors import ModelNotFound, NightshiftError, ParityError, PartitionNotReady
from nightshift.models.registry import CHAMPION, ModelVersion, Registry, current_user, json_safe

if TYPE_CHECKING:  # pragma: no cover
    from nightshift.rollout.bandit import Allocation
    from nightshift.rollout.outcomes import NightOutcomes

CHALLENGER = "challenger"
PREVIOUS = "previous"


class RolloutError(NightshiftError):
    """A promotion, approval or rollback that cannot be done as asked."""


@dataclass
class RetrainOutcome:
    candidate_id: int
    model: str
    version: int | None
    status: str
    reason: str
    gates: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Rollouts:
    """Candidates and rollouts of the models of one project."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.resolved_store_url, connect_retries=settings.connect_retries)
        self.registry = Registry(self.store, settings.artifacts_uri)

    # -- audit ----------------------------------------------------------------------------

    def audit(
        self,
        model: str,
        event: str,
        detail: dict[str, Any],
        *,
        version: int | None = None,
        candidate_id: int | None = None,
        by: str | None = None,
        conn: Connection | None = None,
    ) -> None:
        """Append an event to the audit trail: on `conn`, inside the caller's transaction, or in its own."""
        stmt = schema.audit_events.insert().values(
            model=model,
            version=version,
            candidate_id=candidate_id,
            at=utcnow(),
            by=by or current_user(),
            event=event,
            detail=json_safe(detail),
        )
        if conn is not None:
            conn.execute(stmt)
            return
        with self.store.begin() as own:
            own.execute(stmt)

    def history(self, model: str, candidate_id: int | None = None) -> list[dict[str, Any]]:
        ev = schema.audit_events
        q = sa.select(ev).where(ev.c.model == model).order_by(ev.c.event_id)
        if candidate_id is not None:
            q = q.where(ev.c.candidate_id == candidate_id)
        with self.store.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def candidates(self, model: str) -> list[dict[str, Any]]:
        c = schema.candidates
        with self.store.connect() as conn:
            return [
                dict(r)
                for r in conn.execute(sa.select(c).where(c.c.model == model).order_by(c.c.candidate_id)).mappings()
            ]

    def candidate(self, candidate_id: int) -> dict[str, Any]:
        c = schema.candidates
        with self.store.connect() as conn:
            row = conn.execute(sa.select(c).where(c.c.candidate_id == candidate_id)).mappings().first()
        if row is None:
            raise RolloutError(f"candidate {candidate_id} does not exist")
        return dict(row)

    def _candidate_for_version(self, model: str, version: int) -> dict[str, Any] | None:
        c = schema.candidates
        with self.store.connect() as conn:
            row = (
                conn.execute(
                    sa.select(c).where(c.c.model == model, c.c.version == version).order_by(c.c.candidate_id.desc())
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    def _set_candidate(self, candidate_id: int, conn: Connection | None = None, **values: Any) -> None:
        c = schema.candidates
        values["updated_at"] = utcnow()
        stmt = c.update().where(c.c.candidate_id == candidate_id).values(**_json_values(values))
        if conn is not None:
            conn.execute(stmt)
            return
        with self.store.begin() as own:
            own.execute(stmt)

    # -- nights ---------------------------------------------------------------------------

    def newest_decided_night(self, model: str) -> date | None:
        """The newest ds whose night was decided (nightshift.nightly); older ds are backfills."""
        n = schema.nights
        with self.store.connect() as conn:
            found = conn.execute(sa.select(sa.func.max(n.c.ds)).where(n.c.model == model)).scalar()
        return as_date(found) if found is not None else None

    def effective_night(self, model: str, ds: date | None) -> date | None:
        """The first night a move decided now applies to: the night after `ds` (the night deciding it),
        and never a night that is already decided. None when nothing ties it to a night yet."""
        newest = self.newest_decided_night(model)
        candidates = [d + timedelta(days=1) for d in (ds, newest) if d is not None]
        return max(candidates) if candidates else None

    def active(self, model: str) -> dict[str, Any] | None:
        """The shadow or canary rollout in progress for `model`, if any."""
        r = schema.model_rollouts
        with self.store.connect() as conn:
            row = conn.execute(sa.select(r).where(r.c.model == model)).mappings().first()
        return dict(row) if row else None

    # -- retraining -----------------------------------------------------------------------

    def retrain(self, model: str, ds: date, *, trigger: dict[str, Any], by: str | None = None) -> RetrainOutcome:
        """`_retrain`, with the run's OpenLineage events and job metrics (nightshift.telemetry), which never fail
        it: COMPLETE when it registered a version (the gates' verdict in its facets), else FAIL with the reason."""
        from nightshift.telemetry import TrainingTelemetry

        telemetry = TrainingTelemetry(self.settings, model, ds, kind="retrain", run_key=trigger.get("dag_run_id"))
        try:
            outcome = self._retrain(model, ds, trigger=trigger, by=by)
        except BaseException as exc:
            telemetry.failed(exc)
            raise
        mv: ModelVersion | None = None
        training: dict[str, Any] | None = None
        try:
            if outcome.version is not None:
                mv = self.registry.get(model, outcome.version)
            else:
                training = (self.candidate(outcome.candidate_id).get("training_data") or {}).get("training")
        except NightshiftError:
            pass  # the events then say less; the outcome stands
        telemetry.finished(
            mv, training, status=outcome.status, reason=outcome.reason, candidate_id=outcome.candidate_id
        )
        return outcome

    def _retrain(self, model: str, ds: date, *, trigger: dict[str, Any], by: str | None = None) -> RetrainOutcome:
        """Train a candidate on the labelled window before the held-out test days, prove it, roll it out.

        Gates: ONNX parity; (a) the metric on the confidence test set (the newest
        `gates.test_days` labelled days up to `ds`, never trained on) lies in the acceptable
        range; (b) the registered artifact reproduces its end-to-end set through the production
        scoring code; (c) not worse than the champion on the same test rows. Any failure
        rejects the candidate: aliases do not move and readers see no change.
        """
        from nightshift.data.features import model_frame
        from nightshift.metrics import TASK_METRICS
        from nightshift.training import train
        from nightshift.training.dataset import build_training_set
        from nightshift.training.gates import (
            E2E_FILE,
            GateReport,
            GateResult,
            champion_gate,
            e2e_bytes,
            e2e_gate,
            expected_scores,
            labelled_metrics,
            make_e2e_set,
            predict_with,
            range_gate,
        )

        cfg = self.settings.model(model)
        gates = cfg.gates
        who = by or current_user()
        now = utcnow()
        with self.store.begin() as conn:
            res = conn.execute(
                schema.candidates.insert().values(
                    model=model,
                    ds=ds,
                    created_at=now,
                    created_by=who,
                    trigger=json_safe(trigger),
                    status="training",
                    strategy=cfg.rollout.strategy,
                    updated_at=now,
                )
            )
            pk = res.inserted_primary_key
            assert pk is not None
            cid = int(pk[0])
        self.audit(model, "candidate_created", {"trigger": trigger, "ds": ds}, candidate_id=cid, by=who)

        def reject(reason: str, report: list[dict[str, Any]], version: int | None = None) -> RetrainOutcome:
            self._set_candidate(cid, status="rejected", reason=reason, gates=report)
            self.audit(
                model, "rejected", {"reason": reason, "gates": report}, version=version, candidate_id=cid, by=who
            )
            self._notify("candidate_rejected", f"{model}: retrained candidate rejected: {reason}", model=model)
            return RetrainOutcome(cid, model, version, "rejected", reason, report)

        train_until = ds - timedelta(days=gates.test_days)
        regime = self._regime(cfg, trigger, train_until)
        try:
            tset = build_training_set(
                self.settings,
                cfg,
                train_until,
                since=date.fromisoformat(regime["since"]) if regime and regime.get("since") else None,
            )
            test = build_training_set(self.settings, cfg, ds, window_days=gates.test_days)
        except (PartitionNotReady, ValueError) as exc:
            return reject(f"no usable labelled data: {exc}", [])
        data_record = {
            "training": tset.record(),
            "confidence_test": {**test.record(), "days": gates.test_days},
            "train_until": train_until.isoformat(),
            "regime": regime,
        }
        if regime:
            self.audit(model, "training_window", regime, candidate_id=cid, by=who)
        self._set_candidate(cid, training_data=data_record)
        try:
            trained = train(tset.table, tset.labels, cfg.contract, cfg.estimator, cfg.training, cfg.decision_threshold)
        except ParityError as exc:
            failed = GateResult("onnx_parity", False, None, f"|Δ| <= {cfg.training.parity_tolerance}", str(exc))
            return reject(f"onnx_parity failed: {exc}", [failed.as_dict()])
        except ValueError as exc:
            return reject(f"training failed: {exc}", [])
        if cfg.explain.enabled and trained.explainer is None:
            return reject(
                f"explain.enabled is set but the trained model has no exact explainer: {trained.explainer_problem}", []
            )

        e2e = make_e2e_set(test.table, cfg.contract, gates.e2e_rows, cfg.training.seed)
        expected = expected_scores(trained.pipeline, model_frame(e2e, cfg.contract), trained.task)
        mv = self.registry.register_trained(
            model,
            trained,
            cfg.contract,
            training_data={**tset.record(), "confidence_test": data_record["confidence_test"], "candidate_id": cid},
            decision_threshold=cfg.decision_threshold,
            description=cfg.description,
            created_by=who,
            extra_files={E2E_FILE: e2e_bytes(e2e, expected)},
        )
        self._set_candidate(cid, version=mv.version)
        self.audit(
            model,
            "registered",
            {"artifact": mv.artifact_uri, "sha256": mv.sha256},
            version=mv.version,
            candidate_id=cid,
            by=who,
        )

        metric = gates.metric
        task = trained.task
        if metric not in TASK_METRICS[task]:
            return reject(
                f"gates.metric {metric!r} does not measure a {task} model (use one of {', '.join(TASK_METRICS[task])})",
                [],
                mv.version,
            )
        cand_prediction = predict_with(trained.onnx_bytes, test.table, cfg.contract, task, trained.signature())
        cand_value = labelled_metrics(cand_prediction, test.labels, task, trained.classes, cfg.decision_threshold).get(
            metric, float("nan")
        )
        champion_value: float | None = None
        champion_version: int | None = None
        try:
            champ = self.registry.resolve(model)
            champion_version = champ.version
            if champ.task == task:  # a champion of another task cannot be compared on this metric
                champ_prediction = predict_with(
                    self.registry.load_bytes(champ), test.table, cfg.contract, champ.task, champ.signature
                )
                champ_classes = ((champ.signature or {}).get("outputs") or {}).get("classes") or ["0", "1"]
                champion_value = labelled_metrics(
                    champ_prediction, test.labels, task, champ_classes, champ.decision_threshold
                ).get(metric, float("nan"))
        except ModelNotFound:
            pass
        e2e_uri = mv.artifact_uri.rsplit("/", 1)[0] + "/" + E2E_FILE
        report = GateReport(
            [
                GateResult(
                    "onnx_parity",
                    True,
                    trained.parity.max_abs_diff,
                    f"|Δ| <= {cfg.training.parity_tolerance}",
                    f"max |ONNX - sklearn| {trained.parity.max_abs_diff:.2e} on {trained.parity.rows} rows",
                ),
                range_gate(metric, cand_value, gates),
                e2e_gate(mv.artifact_uri, mv.sha256, e2e_uri, cfg.contract, gates.e2e_tolerance, task, mv.signature),
                champion_gate(metric, cand_value, champion_value, gates.champion_tolerance),
            ]
        )
        gate_list = report.as_list()
        for g in gate_list:
            if g["name"] == "not_worse_than_champion":
                g["champion_version"] = champion_version
        self._set_candidate(cid, gates=gate_list)
        self.audit(
            model,
            "gates_evaluated",
            {"passed": report.passed, "gates": gate_list},
            version=mv.version,
            candidate_id=cid,
            by=who,
        )
        if not report.passed:
            return reject(report.summary(), gate_list, mv.version)
        if cfg.rollout.require_approval:
            self._set_candidate(cid, status="pending_approval", reason="gates passed; waiting for approval")
            self.audit(
                model,
                "awaiting_approval",
                {"strategy": cfg.rollout.strategy},
                version=mv.version,
                candidate_id=cid,
                by=who,
            )
            self._notify(
                "approval_needed",
                f"{model} v{mv.version} passed its gates and waits for approval",
                model=model,
                version=mv.version,
            )
            return RetrainOutcome(
                cid, model, mv.version, "pending_approval", "gates passed; waiting for approval", gate_list
            )
        status = self._roll_out(cfg, cid, mv, who, ds)
        return RetrainOutcome(cid, model, mv.version, status, report.summary(), gate_list)

    def _regime(self, cfg: ModelSettings, trigger: dict[str, Any], train_until: date) -> dict[str, Any] | None:
        """The training window of a retrain triggered by a sustained shift: the labelled days since its detected
        onset (the trigger's `onset`: the first night of the failing streak), when there are at least
        `training.min_regime_days` of them in the usual window; None keeps the usual window.

        Why: a window that straddles the onset teaches the candidate a mixture of the old and the new
        regime, and its reference (built from its training days) still holds old-regime rows, so the
        retrained champion fails its drift checks on the new data and the loop never settles.
        """
        from nightshift.training.dataset import labelled_days

        onset = trigger.get("onset")
        if not cfg.training.regime_window or not onset:
            return None
        since = date.fromisoformat(str(onset))
        window = [d for d in labelled_days(self.settings, cfg, train_until, cfg.training.window_days) if d >= since]
        if len(window) < cfg.training.min_regime_days:
            return {
                "onset": since.isoformat(),
                "used": False,
                "reason": f"{len(window)} labelled day(s) since the onset, {cfg.training.min_regime_days} needed: "
                "the usual window",
                "since": None,
            }
        return {
            "onset": since.isoformat(),
            "used": True,
            "since": since.isoformat(),
            "days": [d.isoformat() for d in window],
            "reason": f"trained on the {len(window)} labelled day(s) since the detected onset {since}",
        }

    def approve(self, model: str, version: int, *, by: str | None = None, note: str = "") -> str:
        """Approve a candidate waiting for approval and roll it out by the model's strategy."""
        cand = self._candidate_for_version(model, version)
        if cand is None or cand["status"] != "pending_approval":
            status = cand["status"] if cand else "not a candidate"
            raise RolloutError(f"{model} v{version} is not waiting for approval (status: {status})")
        who = by or current_user()
        with self.store.begin() as conn:
            self._set_candidate(cand["candidate_id"], conn, approved_by=who, approved_at=utcnow())
            self.audit(
                model, "approved", {"note": note}, version=version, candidate_id=cand["candidate_id"], by=who, conn=conn
            )
        mv = self.registry.get(model, version)
        return self._roll_out(self.settings.model(model), cand["candidate_id"], mv, who, as_date(cand["ds"]))

    def reject(self, model: str, version: int, *, by: str | None = None, reason: str) -> None:
        """Reject a candidate waiting for approval: it never rolls out; who and why land in the audit trail."""
        if not reason.strip():
            raise RolloutError("a rejection needs a reason (it is recorded in the audit trail)")
        cand = self._candidate_for_version(model, version)
        if cand is None or cand["status"] != "pending_approval":
            status = cand["status"] if cand else "not a candidate"
            raise RolloutError(f"{model} v{version} is not waiting for approval (status: {status})")
        who = by or current_user()
        with self.store.begin() as conn:
            self._set_candidate(cand["candidate_id"], conn, status="rejected", reason=f"rejected by {who}: {reason}")
            self.audit(
                model,
                "rejected",
                {"reason": reason, "by_hand": True},
                version=version,
                candidate_id=cand["candidate_id"],
                by=who,
                conn=conn,
            )
        self._notify("candidate_rejected", f"{model} v{version} rejected by {who}: {reason}", model=model)

    def _roll_out(self, cfg: ModelSettings, cid: int, mv: ModelVersion, who: str, ds: date | None = None) -> str:
        strategy = cfg.rollout.strategy
        if strategy in ("direct", "blue_green"):
            self.promote(cfg.name, mv.version, by=who, reason=f"{strategy} rollout of candidate {cid}", ds=ds)
            return "promoted"
        champion = self.registry.aliases(cfg.name).get(CHAMPION)
        if champion is None:
            # Nothing to shadow or compare against: the first version goes live directly.
            self.promote(cfg.name, mv.version, by=who, reason=f"first version ({strategy} needs a champion)", ds=ds)
            return "promoted"
        now = utcnow()
        row = {
            "candidate_id": cid,
            "strategy": strategy,
            "champion_version": champion,
            "challenger_version": mv.version,
            # A canary serves its configured share from its first night; a bandit routes nothing until its
            # first night publishes the share it served (nightshift.nightly.record_served).
            "canary_share": cfg.rollout.canary_share if strategy == "canary" else None,
            "healthy_nights": 0,
            "last_ds": None,
            "started_at": now,
            "updated_at": now,
        }
        effective = self.effective_night(cfg.name, ds)
        previous = self.active(cfg.name)
        # One transaction: the rollout row, the challenger alias, both candidates' status and the audit
        # event are seen together or not at all.
        with self.store.begin() as conn:
            stmt = dialect_insert(self.store.dialect, schema.model_rollouts).values(model=cfg.name, **row)
            conn.execute(stmt.on_conflict_do_update(index_elements=["model"], set_=row))
            if previous and previous["candidate_id"] != cid:
                self._set_candidate(
                    previous["candidate_id"], conn, status="superseded", reason=f"replaced by candidate {cid}"
                )
            self.registry.move_aliases(
                conn,
                cfg.name,
                {CHALLENGER: mv.version},
                reason=f"{strategy} of candidate {cid}",
                by=who,
                effective_ds=effective,
            )
            self._set_candidate(cid, conn, status=strategy, reason=f"{strategy} started")
            detail: dict[str, Any] = {}
            if strategy == "bandit":
                from nightshift.rollout.bandit import Allocation

                even = {champion: 0.5, mv.version: 0.5}  # no reward yet: an even split
                first = Allocation(
                    even,
                    dict(even),
                    [{"version": v, "n": 0, "mean_reward": None, "p_best": 0.5, "share": 0.5} for v in even],
                    reward=cfg.rollout.bandit.reward,
                    floor=cfg.rollout.bandit.floor,
                )
                if effective is not None:
                    self._record_allocation(conn, cfg.name, effective, ds, first)
                detail = {"allocation": first.as_dict(), "reward": cfg.rollout.bandit.reward}
            self.audit(
                cfg.name,
                f"{strategy}_started",
                {"champion": champion, "canary_share": row["canary_share"], "effective_ds": effective, **detail},
                version=mv.version,
                candidate_id=cid,
                by=who,
                conn=conn,
            )
        return strategy

    # -- switching ------------------------------------------------------------------------
    # Each move is ONE transaction: aliases, their events, the rollout row, the candidate's status
    # and the audit event. `ds` is the night deciding the move (None: by hand); the move applies from
    # `effective_night(model, ds)`, which is what the rollback window counts from.

    def promote(
        self,
        model: str,
        version: int,
        *,
        by: str | None = None,
        reason: str = "promoted by hand",
        ds: date | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        """Make `version` the champion and keep the old one as `previous`, in one atomic alias switch.

        Until the new champion has a committed partition, the lookup API keeps answering from the
        newest committed partition of the version it replaced (see nightshift.api.queries): a
        promotion never leaves business apps without an answer.
        """
        self.settings.model(model)
        self.registry.get(model, version)
        aliases = self.registry.aliases(model)
        old = aliases.get(CHAMPION)
        if old == version:
            raise RolloutError(f"{model} v{version} is already the champion")
        changes: dict[str, int | None] = {CHAMPION: version}
        if old is not None:
            changes[PREVIOUS] = old
        if aliases.get(CHALLENGER) == version:
            changes[CHALLENGER] = None
        cand = self._candidate_for_version(model, version)
        who = by or current_user()
        effective = self.effective_night(model, ds)
        with self.store.begin() as conn:
            self.registry.move_aliases(conn, model, changes, reason=reason, by=who, effective_ds=effective)
            conn.execute(schema.model_rollouts.delete().where(schema.model_rollouts.c.model == model))
            if cand is not None:
                self._set_candidate(cand["candidate_id"], conn, status="promoted", reason=reason)
            self.audit(
                model,
                "promoted",
                {"from": old, "to": version, "reason": reason, "ds": ds, "effective_ds": effective}
                | ({"evidence": evidence} if evidence else {}),
                version=version,
                candidate_id=cand["candidate_id"] if cand else None,
                by=who,
                conn=conn,
            )

    def rollback(
        self,
        model: str,
        *,
        by: str | None = None,
        reason: str = "rolled back by hand",
        automatic: bool = False,
        ds: date | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> int:
        """Return the champion alias to the previous version at once. Returns the version now live."""
        self.settings.model(model)
        aliases = self.registry.aliases(model)
        bad, prev = aliases.get(CHAMPION), aliases.get(PREVIOUS)
        if prev is None or bad is None:
            raise RolloutError(f"model {model!r} has no previous version to roll back to")
        cand = self._candidate_for_version(model, bad)
        who = by or current_user()
        effective = self.effective_night(model, ds)
        with self.store.begin() as conn:
            self.registry.move_aliases(
                conn, model, {CHAMPION: prev, PREVIOUS: bad}, reason=reason, by=who, effective_ds=effective
            )
            if cand is not None:
                self._set_candidate(cand["candidate_id"], conn, status="rolled_back", reason=reason)
            self.audit(
                model,
                "rolled_back",
                {
                    "from": bad,
                    "to": prev,
                    "reason": reason,
                    "automatic": automatic,
                    "ds": ds,
                    "effective_ds": effective,
                }
                | ({"evidence": evidence} if evidence else {}),
                version=bad,
                candidate_id=cand["candidate_id"] if cand else None,
                by=who,
                conn=conn,
            )
        self._notify(
            "rolled_back",
            f"{model}: champion rolled back from v{bad} to v{prev}: {reason}",
            model=model,
            bad_version=bad,
            live_version=prev,
            automatic=automatic,
        )
        return prev

    def abort(
        self,
        model: str,
        *,
        by: str | None = None,
        reason: str,
        ds: date | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        """Stop a shadow, canary or bandit rollout: the challenger stops being scored and served."""
        active = self.active(model)
        if active is None:
            raise RolloutError(f"model {model!r} has no rollout in progress")
        who = by or current_user()
        effective = self.effective_night(model, ds)
        with self.store.begin() as conn:
            conn.execute(schema.model_rollouts.delete().where(schema.model_rollouts.c.model == model))
            self.registry.move_aliases(conn, model, {CHALLENGER: None}, reason=reason, by=who, effective_ds=effective)
            self._set_candidate(active["candidate_id"], conn, status="aborted", reason=reason)
            self.audit(
                model,
                "aborted",
                {"reason": reason, "ds": ds, "effective_ds": effective} | ({"evidence": evidence} if evidence else {}),
                version=active["challenger_version"],
                candidate_id=active["candidate_id"],
                by=who,
                conn=conn,
            )
        self._notify(
            "rollout_aborted", f"{model}: rollout of v{active['challenger_version']} aborted: {reason}", model=model
        )

    # -- the nightly step (called by nightshift.nightly; every decision keyed by ds) ------

    def versions_to_score(self, model: str, ds: date) -> dict[str, int]:
        """Alias → version of every version the night of `ds` must score for `model` (champion first).

        The challenger while a shadow/canary rollout runs; `previous` under blue/green, or while `ds`
        lies in the rollback window of the newest champion move (counted in nights from the night the
        move applies to, never from the wall clock).
        """
        cfg = self.settings.model(model)
        aliases = self.registry.aliases(model)
        out = {}
        if CHAMPION in aliases:
            out[CHAMPION] = aliases[CHAMPION]
        if CHALLENGER in aliases and self.active(model) is not None:
            out[CHALLENGER] = aliases[CHALLENGER]
        if PREVIOUS in aliases:
            recent = self._promoted_within(model, ds, cfg.rollout.rollback_window_days)
            if cfg.rollout.strategy == "blue_green" or recent:
                out[PREVIOUS] = aliases[PREVIOUS]
        return out

    def _promoted_within(self, model: str, ds: date, days: int) -> bool:
        """Whether `ds` is one of the first `days` nights of the champion now serving it.

        The champion move that applies to `ds` is the newest one whose effective night is on or before
        `ds`; a move with no night (made before any night was decided) opens no window.
        """
        if days <= 0:
            return False
        ev = schema.alias_events
        with self.store.connect() as conn:
            row = conn.execute(
                sa.select(ev.c.effective_ds)
                .where(ev.c.model == model, ev.c.alias == CHAMPION, ev.c.effective_ds <= ds)
                .order_by(ev.c.effective_ds.desc(), ev.c.event_id.desc())
                .limit(1)
            ).first()
        if row is None or row.effective_ds is None:
            return False
        return 0 <= (ds - as_date(row.effective_ds)).days < days

    def advance(
        self,
        model: str,
        ds: date,
        *,
        champion_ok: bool | None,
        challenger_ok: bool | None,
        previous_ok: bool | None = None,
        by: str | None = None,
        outcomes: NightOutcomes | None = None,
    ) -> str:
        """The night's rollout decision from its labelled outcomes: roll back a new champion, or move a rollout.

        The verdicts are outcome verdicts (`nightshift.nightly.decide_night` computes them with
        `rollout.outcomes.judge_night`; drift never decides a rollout):

        * `champion_ok` False — the champion's labelled outcomes in its rollback window breach its
          acceptable range or are significantly worse than `previous`'s on the same entities: while
          `ds` lies in the window (plus `label_delay_days`) the champion is rolled back — unless
          `previous_ok` is False (previous breaches the range on the same days too: the data moved,
          going back would not help) — and never back to a version that was itself rolled back;
        * `challenger_ok` — True: the outcome tests support the challenger (enough evidence, not worse
          on any metric); False: significantly worse, the rollout is aborted; None: not enough evidence
          yet. A shadow/canary challenger is promoted on a night its outcomes support it once it has run
          `promote_after_nights` nights; a bandit reallocates every night (see `_bandit_night`).

        Every evaluation lands in the audit trail (`outcomes_evaluated`: tests, statistics, p-values,
        sample sizes). Idempotent per ds. Returns what happened: rolled_back, aborted, promoted,
        healthy, waiting (not enough evidence yet), reallocated (a bandit) or unchanged.
        """
        cfg = self.settings.model(model)
        who = by or "nightshift"
        aliases = self.registry.aliases(model)
        previous = aliases.get(PREVIOUS)
        evidence = outcomes.as_dict() if outcomes is not None else None
        active = self.active(model)
        if outcomes is not None and outcomes.evaluated:
            done = active is not None and active["last_ds"] is not None and as_date(active["last_ds"]) >= ds
            if not done:
                self.audit(
                    model,
                    "outcomes_evaluated",
                    evidence or {},
                    version=aliases.get(CHAMPION),
                    candidate_id=active["candidate_id"] if active else None,
                    by=who,
                )
        window = cfg.rollout.rollback_window_days + cfg.rollout.label_delay_days
        if (
            champion_ok is False
            and previous_ok is not False
            and previous is not None
            and self._promoted_within(model, ds, window)
            and (self._candidate_for_version(model, previous) or {}).get("status") != "rolled_back"
        ):
            reason = (
                outcomes.champion_reason()
                if outcomes is not None and outcomes.champion_ok is False
                else f"the champion failed on ds={ds} within {cfg.rollout.rollback_window_days} night(s) of "
                "its promotion"
            )
            self.rollback(model, by=who, automatic=True, ds=ds, reason=reason, evidence=evidence)
            return "rolled_back"
        if active is None:
            return "unchanged"
        if active["last_ds"] is not None and as_date(active["last_ds"]) >= ds:
            return "unchanged"
        if active["strategy"] == "bandit":
            return self._bandit_night(model, ds, active, outcomes, who)
        comparison = outcomes.challenger if outcomes is not None else None
        if challenger_ok is False:
            why = comparison.message if comparison is not None else f"the challenger failed on ds={ds}"
            self.abort(model, by=who, reason=f"labelled outcomes: {why}", ds=ds, evidence=evidence)
            return "aborted"
        nights = int(active["healthy_nights"]) + 1
        with self.store.begin() as conn:
            conn.execute(
                schema.model_rollouts.update()
                .where(schema.model_rollouts.c.model == model)
                .values(healthy_nights=nights, last_ds=ds, updated_at=utcnow())
            )
            self.audit(
                model,
                "healthy_night" if challenger_ok else "waiting_for_evidence",
                {
                    "ds": ds,
                    "healthy_nights": nights,
                    "verdict": comparison.verdict if comparison else None,
                    "message": comparison.message if comparison else "no labelled outcome yet",
                },
                version=active["challenger_version"],
                candidate_id=active["candidate_id"],
                by=who,
                conn=conn,
            )
        if challenger_ok and nights >= cfg.rollout.promote_after_nights:
            why = comparison.message if comparison is not None else "its labelled outcomes support it"
            self.promote(
                model,
                active["challenger_version"],
                by=who,
                reason=f"{active['strategy']}: after {nights} night(s), {why}",
                ds=ds,
                evidence=evidence,
            )
            return "promoted"
        if challenger_ok:
            return "healthy"
        return "waiting: " + (comparison.message if comparison is not None else "no labelled outcome yet")

    # -- bandits ----------------------------------------------------------------------------

    def bandit_share(self, model: str, ds: date) -> float:
        """The candidate arm's share of entities on the night of `ds`: the newest allocation decided for a night
        on or before it (an even split before the first one)."""
        active = self.active(model)
        if active is None or active["strategy"] != "bandit":
            return 0.0
        a = schema.bandit_allocations
        with self.store.connect() as conn:
            row = conn.execute(
                sa.select(a.c.share)
                .where(a.c.model == model, a.c.version == active["challenger_version"], a.c.ds <= ds)
                .order_by(a.c.ds.desc())
                .limit(1)
            ).first()
        return float(row.share) if row is not None else 0.5

    def bandit_allocations(self, model: str) -> list[dict[str, Any]]:
        """Every allocation decided for the model, oldest night first."""
        a = schema.bandit_allocations
        with self.store.connect() as conn:
            rows = conn.execute(sa.select(a).where(a.c.model == model).order_by(a.c.ds, a.c.version)).mappings()
            return [{**dict(r), "ds": as_date(r["ds"])} for r in rows]

    def _record_allocation(
        self, conn: Connection, model: str, night: date, decided: date | None, allocation: Allocation
    ) -> None:
        a = schema.bandit_allocations
        conn.execute(a.delete().where(a.c.model == model, a.c.ds == night))
        now = utcnow()
        for arm in allocation.arms:
            mean = arm.get("mean_reward")
            conn.execute(
                a.insert().values(
                    model=model,
                    ds=night,
                    version=int(arm["version"]),
                    share=float(arm["share"]),
                    p_best=float(arm["p_best"]),
                    rewards=int(arm["n"]),
                    mean_reward=float(mean) if isinstance(mean, float) and math.isfinite(mean) else None,
                    decided_ds=decided,
                    decided_at=now,
                )
            )

    def _bandit_night(
        self, model: str, ds: date, active: dict[str, Any], outcomes: NightOutcomes | None, who: str
    ) -> str:
        """Reallocate from the labelled rewards so far (Thompson sampling, for the next night), then promote the
        candidate arm when P(it is best) reaches `bandit.promote_probability` and its outcome tests support it
        (after `promote_after_nights`), or abort it when they show it significantly worse."""
        cfg = self.settings.model(model)
        cand = int(active["challenger_version"])
        nights = int(active["healthy_nights"]) + 1
        comparison = outcomes.challenger if outcomes is not None else None
        allocation = outcomes.allocation if outcomes is not None else None
        evidence = outcomes.as_dict() if outcomes is not None else None
        if comparison is not None and comparison.verdict == "worse":
            self.abort(
                model, by=who, reason=f"bandit: labelled outcomes: {comparison.message}", ds=ds, evidence=evidence
            )
            return "aborted"
        next_night = ds + timedelta(days=1)
        with self.store.begin() as conn:
            conn.execute(
                schema.model_rollouts.update()
                .where(schema.model_rollouts.c.model == model)
                .values(healthy_nights=nights, last_ds=ds, updated_at=utcnow())
            )
            if allocation is not None:
                self._record_allocation(conn, model, next_night, ds, allocation)
                self.audit(
                    model,
                    "bandit_reallocated",
                    {
                        "ds": ds,
                        "applies_from": next_night,
                        "allocation": allocation.as_dict(),
                        "comparison": comparison.as_dict() if comparison else None,
                    },
                    version=cand,
                    candidate_id=active["candidate_id"],
                    by=who,
                    conn=conn,
                )
        if allocation is None:
            return "waiting: no labelled reward yet"
        p_cand = allocation.p_best.get(cand, 0.0)
        b = cfg.rollout.bandit
        share = allocation.shares.get(cand, 0.0)
        if (
            p_cand >= b.promote_probability
            and comparison is not None
            and comparison.verdict == "supported"
            and nights >= cfg.rollout.promote_after_nights
        ):
            self.promote(
                model,
                cand,
                by=who,
                reason=f"bandit: P(v{cand} is the best arm) = {p_cand:.3f} >= {b.promote_probability} after "
                f"{nights} night(s); {comparison.message}",
                ds=ds,
                evidence=evidence,
            )
            return "promoted"
        return f"reallocated: v{cand} {share:.1%} from {next_night} (P(best) = {p_cand:.3f})"

    def _notify(self, event: str, message: str, **details: Any) -> None:
        from nightshift.notify import notify

        notify(self.settings, event, message, **details)


def _json_values(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        out[k] = json_safe(v) if isinstance(v, dict | list) else v
    return out
