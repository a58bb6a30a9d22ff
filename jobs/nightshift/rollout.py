"""Retraining and safe rollout: candidates, gates, strategies, approval, promotion, rollback, comparison.

Aliases: ``champion`` is what the API serves; ``challenger`` is a candidate in shadow or
canary; ``previous`` is the version the champion replaced, kept ready for an instant
rollback. Every decision is written to ``candidates`` and ``audit_events``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from nightshift import schema
from nightshift.canary import canary_bucket, serves_challenger  # noqa: F401 - re-exported
from nightshift.config import ModelSettings, Settings
from nightshift.errors import ModelNotFound, NightshiftError, ParityError, PartitionNotReady
from nightshift.registry import CHAMPION, ModelVersion, Registry, current_user, json_safe
from nightshift.store import Store, _as_date, _as_utc, _dialect_insert, utcnow

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
    ) -> None:
        with self.store.begin() as conn:
            conn.execute(
                schema.audit_events.insert().values(
                    model=model,
                    version=version,
                    candidate_id=candidate_id,
                    at=utcnow(),
                    by=by or current_user(),
                    event=event,
                    detail=json_safe(detail),
                )
            )

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

    def _set_candidate(self, candidate_id: int, **values: Any) -> None:
        c = schema.candidates
        values["updated_at"] = utcnow()
        with self.store.begin() as conn:
            conn.execute(c.update().where(c.c.candidate_id == candidate_id).values(**_json_values(values)))

    def active(self, model: str) -> dict[str, Any] | None:
        """The shadow or canary rollout in progress for `model`, if any."""
        r = schema.model_rollouts
        with self.store.connect() as conn:
            row = conn.execute(sa.select(r).where(r.c.model == model)).mappings().first()
        return dict(row) if row else None

    # -- retraining -----------------------------------------------------------------------

    def retrain(self, model: str, ds: date, *, trigger: dict[str, Any], by: str | None = None) -> RetrainOutcome:
        """Train a candidate on the labelled window before the held-out test days, prove it, roll it out.

        Gates: ONNX parity; (a) the metric on the confidence test set (the newest
        `gates.test_days` labelled days up to `ds`, never trained on) lies in the acceptable
        range; (b) the registered artifact reproduces its end-to-end set through the production
        scoring code; (c) not worse than the champion on the same test rows. Any failure
        rejects the candidate: aliases do not move and readers see no change.
        """
        from nightshift.features import model_frame
        from nightshift.gates import (
            E2E_FILE,
            GateReport,
            GateResult,
            champion_gate,
            e2e_bytes,
            e2e_gate,
            make_e2e_set,
            range_gate,
            score_with,
        )
        from nightshift.training import classification_metrics, train
        from nightshift.training_set import build_training_set

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
        try:
            tset = build_training_set(self.settings, cfg, train_until)
            test = build_training_set(self.settings, cfg, ds, window_days=gates.test_days)
        except (PartitionNotReady, ValueError) as exc:
            return reject(f"no usable labelled data: {exc}", [])
        data_record = {
            "training": tset.record(),
            "confidence_test": {**test.record(), "days": gates.test_days},
            "train_until": train_until.isoformat(),
        }
        self._set_candidate(cid, training_data=data_record)
        try:
            trained = train(tset.table, tset.labels, cfg.contract, cfg.estimator, cfg.training, cfg.decision_threshold)
        except ParityError as exc:
            failed = GateResult("onnx_parity", False, None, f"|Δ| <= {cfg.training.parity_tolerance}", str(exc))
            return reject(f"onnx_parity failed: {exc}", [failed.as_dict()])
        except ValueError as exc:
            return reject(f"training failed: {exc}", [])

        e2e = make_e2e_set(test.table, cfg.contract, gates.e2e_rows, cfg.training.seed)
        expected = trained.pipeline.predict_proba(model_frame(e2e, cfg.contract))[:, 1]
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
        cand_scores = score_with(trained.onnx_bytes, test.table, cfg.contract)
        cand_value = classification_metrics(test.labels, cand_scores, cfg.decision_threshold)[metric]
        champion_value: float | None = None
        champion_version: int | None = None
        try:
            champ = self.registry.resolve(model)
            champion_version = champ.version
            champ_scores = score_with(self.registry.load_bytes(champ), test.table, cfg.contract)
            champion_value = classification_metrics(test.labels, champ_scores, champ.decision_threshold)[metric]
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
                e2e_gate(mv.artifact_uri, mv.sha256, e2e_uri, cfg.contract, gates.e2e_tolerance),
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
        status = self._roll_out(cfg, cid, mv, who)
        return RetrainOutcome(cid, model, mv.version, status, report.summary(), gate_list)

    def approve(self, model: str, version: int, *, by: str | None = None, note: str = "") -> str:
        """Approve a candidate waiting for approval and roll it out by the model's strategy."""
        cand = self._candidate_for_version(model, version)
        if cand is None or cand["status"] != "pending_approval":
            status = cand["status"] if cand else "not a candidate"
            raise RolloutError(f"{model} v{version} is not waiting for approval (status: {status})")
        who = by or current_user()
        self._set_candidate(cand["candidate_id"], approved_by=who, approved_at=utcnow())
        self.audit(model, "approved", {"note": note}, version=version, candidate_id=cand["candidate_id"], by=who)
        return self._roll_out(self.settings.model(model), cand["candidate_id"], self.registry.get(model, version), who)

    def _roll_out(self, cfg: ModelSettings, cid: int, mv: ModelVersion, who: str) -> str:
        strategy = cfg.rollout.strategy
        if strategy in ("direct", "blue_green"):
            self.promote(cfg.name, mv.version, by=who, reason=f"{strategy} rollout of candidate {cid}")
            return "promoted"
        previous = self.active(cfg.name)
        champion = self.registry.aliases(cfg.name).get(CHAMPION)
        if champion is None:
            # Nothing to shadow or compare against: the first version goes live directly.
            self.promote(cfg.name, mv.version, by=who, reason=f"first version ({strategy} needs a champion)")
            return "promoted"
        now = utcnow()
        row = {
            "candidate_id": cid,
            "strategy": strategy,
            "champion_version": champion,
            "challenger_version": mv.version,
            "canary_share": cfg.rollout.canary_share if strategy == "canary" else None,
            "healthy_nights": 0,
            "last_ds": None,
            "started_at": now,
            "updated_at": now,
        }
        with self.store.begin() as conn:
            stmt = _dialect_insert(self.store.dialect, schema.model_rollouts).values(model=cfg.name, **row)
            conn.execute(stmt.on_conflict_do_update(index_elements=["model"], set_=row))
        if previous and previous["candidate_id"] != cid:
            self._set_candidate(previous["candidate_id"], status="superseded", reason=f"replaced by candidate {cid}")
        self.registry.switch_aliases(
            cfg.name, {CHALLENGER: mv.version}, reason=f"{strategy} of candidate {cid}", by=who
        )
        self._set_candidate(cid, status=strategy, reason=f"{strategy} started")
        self.audit(
            cfg.name,
            f"{strategy}_started",
            {"champion": champion, "canary_share": row["canary_share"]},
            version=mv.version,
            candidate_id=cid,
            by=who,
        )
        return strategy

    # -- switching ------------------------------------------------------------------------

    def promote(self, model: str, version: int, *, by: str | None = None, reason: str = "promoted by hand") -> None:
        """Make `version` the champion and keep the old one as `previous`, in one atomic alias switch."""
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
        self.registry.switch_aliases(model, changes, reason=reason, by=by)
        with self.store.begin() as conn:
            conn.execute(schema.model_rollouts.delete().where(schema.model_rollouts.c.model == model))
        cand = self._candidate_for_version(model, version)
        if cand is not None:
            self._set_candidate(cand["candidate_id"], status="promoted", reason=reason)
        self.audit(
            model,
            "promoted",
            {"from": old, "to": version, "reason": reason},
            version=version,
            candidate_id=cand["candidate_id"] if cand else None,
            by=by,
        )

    def rollback(
        self, model: str, *, by: str | None = None, reason: str = "rolled back by hand", automatic: bool = False
    ) -> int:
        """Return the champion alias to the previous version at once. Returns the version now live."""
        self.settings.model(model)
        aliases = self.registry.aliases(model)
        bad, prev = aliases.get(CHAMPION), aliases.get(PREVIOUS)
        if prev is None or bad is None:
            raise RolloutError(f"model {model!r} has no previous version to roll back to")
        self.registry.switch_aliases(model, {CHAMPION: prev, PREVIOUS: bad}, reason=reason, by=by)
        cand = self._candidate_for_version(model, bad)
        if cand is not None:
            self._set_candidate(cand["candidate_id"], status="rolled_back", reason=reason)
        self.audit(
            model,
            "rolled_back",
            {"from": bad, "to": prev, "reason": reason, "automatic": automatic},
            version=bad,
            candidate_id=cand["candidate_id"] if cand else None,
            by=by,
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

    def abort(self, model: str, *, by: str | None = None, reason: str) -> None:
        """Stop a shadow or canary rollout: the challenger stops being scored and served."""
        active = self.active(model)
        if active is None:
            raise RolloutError(f"model {model!r} has no rollout in progress")
        with self.store.begin() as conn:
            conn.execute(schema.model_rollouts.delete().where(schema.model_rollouts.c.model == model))
        self.registry.remove_alias(model, CHALLENGER, reason=reason, by=by)
        self._set_candidate(active["candidate_id"], status="aborted", reason=reason)
        self.audit(
            model,
            "aborted",
            {"reason": reason},
            version=active["challenger_version"],
            candidate_id=active["candidate_id"],
            by=by,
        )
        self._notify(
            "rollout_aborted", f"{model}: rollout of v{active['challenger_version']} aborted: {reason}", model=model
        )

    # -- the nightly step -----------------------------------------------------------------

    def versions_to_score(self, model: str, ds: date | None = None) -> dict[str, int]:
        """Alias → version of every version the nightly run must score for `model`."""
        cfg = self.settings.model(model)
        aliases = self.registry.aliases(model)
        out = {}
        if CHAMPION in aliases:
            out[CHAMPION] = aliases[CHAMPION]
        if CHALLENGER in aliases and self.active(model) is not None:
            out[CHALLENGER] = aliases[CHALLENGER]
        if PREVIOUS in aliases:
            recent = self._promoted_within(model, ds or date.today(), cfg.rollout.rollback_window_days)
            if cfg.rollout.strategy == "blue_green" or recent:
                out[PREVIOUS] = aliases[PREVIOUS]
        return out

    def _promoted_within(self, model: str, ds: date, days: int) -> bool:
        ev = schema.alias_events
        with self.store.connect() as conn:
            at = conn.execute(
                sa.select(sa.func.max(ev.c.at)).where(ev.c.model == model, ev.c.alias == CHAMPION)
            ).scalar()
        if at is None:
            return False
        when: datetime = _as_utc(at)
        return when.date() >= ds - timedelta(days=days)

    def advance(
        self,
        model: str,
        ds: date,
        *,
        champion_ok: bool | None,
        challenger_ok: bool | None,
        previous_ok: bool | None = None,
        by: str | None = None,
    ) -> str:
        """After the night's monitoring: roll back a failing new champion, or move a rollout along.

        A champion promoted within the rollback window whose monitoring fails is rolled back —
        unless the previous version, monitored the same night (`previous_ok`), fails too: then
        the data moved, not the model, and going back would not help (the failure still alerts).
        Idempotent per ds. Returns what happened, as a word: rolled_back, aborted, promoted,
        healthy, unchanged.
        """
        cfg = self.settings.model(model)
        who = by or "nightshift"
        if (
            champion_ok is False
            and previous_ok is not False
            and self._promoted_within(model, ds, cfg.rollout.rollback_window_days)
            and PREVIOUS in self.registry.aliases(model)
        ):
            self.rollback(
                model,
                by=who,
                automatic=True,
                reason=f"monitoring of ds={ds} failed within {cfg.rollout.rollback_window_days} "
                "day(s) of the promotion",
            )
            return "rolled_back"
        active = self.active(model)
        if active is None or challenger_ok is None:
            return "unchanged"
        if active["last_ds"] is not None and _as_date(active["last_ds"]) >= ds:
            return "unchanged"
        if not challenger_ok:
            self.abort(model, by=who, reason=f"challenger monitoring failed on ds={ds}")
            return "aborted"
        healthy = int(active["healthy_nights"]) + 1
        with self.store.begin() as conn:
            conn.execute(
                schema.model_rollouts.update()
                .where(schema.model_rollouts.c.model == model)
                .values(healthy_nights=healthy, last_ds=ds, updated_at=utcnow())
            )
        self.audit(
            model,
            "healthy_night",
            {"ds": ds, "healthy_nights": healthy},
            version=active["challenger_version"],
            candidate_id=active["candidate_id"],
            by=who,
        )
        if healthy >= cfg.rollout.promote_after_nights:
            self.promote(
                model, active["challenger_version"], by=who, reason=f"{active['strategy']}: {healthy} healthy night(s)"
            )
            return "promoted"
        return "healthy"

    def _notify(self, event: str, message: str, **details: Any) -> None:
        try:
            from nightshift.notify import notify
        except ImportError:  # pragma: no cover - the notifier ships with the Airflow issue
            import logging

            logging.getLogger(__name__).warning("%s: %s", event, message)
            return
        notify(self.settings, event, message, **details)


def _json_values(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        out[k] = json_safe(v) if isinstance(v, dict | list) else v
    return out


def compare_versions(
    settings: Settings,
    model: str,
    days: list[date],
    *,
    champion: int | None = None,
    challenger: int | None = None,
    store: Store | None = None,
) -> dict[str, Any]:
    """Champion vs challenger on labelled outcomes over `days`: metrics of each, agreement, and tests.

    Both versions score every entity every night (shadow, canary and blue/green alike), so the
    main test is paired: a paired t-test on the per-entity log-loss difference (n = labelled
    entities scored by both). When a canary share is set, the split the API serves is compared
    too: the challenger on its canary entities against the champion on the others (Welch's t-test,
    unpaired). Each test is reported with its sample size.
    """
    import numpy as np
    from scipy import stats

    from nightshift.data import list_partition_files, open_parquet
    from nightshift.training import classification_metrics

    cfg = settings.model(model)
    store = store or Store(settings.resolved_store_url, connect_retries=settings.connect_retries)
    registry = Registry(store, settings.artifacts_uri)
    aliases = registry.aliases(model)
    champion = champion or aliases.get(CHAMPION)
    challenger = challenger or aliases.get(CHALLENGER)
    if champion is None or challenger is None:
        raise RolloutError(f"model {model!r} needs a champion and a challenger to compare (aliases: {aliases})")
    labels_root = cfg.labels_uri(settings)
    y_all: list[int] = []
    a_all: list[float] = []
    b_all: list[float] = []
    ids_all: list[str] = []
    used: list[str] = []
    for d in days:
        pa_ = store.read_partition(model, champion, d)
        pb_ = store.read_partition(model, challenger, d)
        if pa_ is None or pb_ is None or labels_root is None:
            continue
        try:
            files = list_partition_files(labels_root, cfg.partition_key, d, cfg.success_marker)
        except PartitionNotReady:
            continue
        labels: dict[str, int] = {}
        for f in files:
            t = open_parquet(f).read(columns=[cfg.contract.entity_id, cfg.label_column])
            labels.update(
                zip(
                    (str(x) for x in t.column(cfg.contract.entity_id).to_pylist()),
                    t.column(cfg.label_column).to_pylist(),
                    strict=True,
                )
            )
        b_scores = dict(zip(pb_[0], pb_[1], strict=True))
        for eid, score in zip(pa_[0], pa_[1], strict=True):
            if eid in labels and eid in b_scores and labels[eid] is not None:
                ids_all.append(eid)
                y_all.append(labels[eid])
                a_all.append(score)
                b_all.append(b_scores[eid])
        used.append(d.isoformat())
    if not ids_all:
        raise RolloutError(f"{model}: no labelled day in {[d.isoformat() for d in days]} was scored by both versions")
    y = np.asarray(y_all, dtype=np.int64)
    a = np.clip(np.asarray(a_all, dtype=np.float64), 1e-7, 1 - 1e-7)
    b = np.clip(np.asarray(b_all, dtype=np.float64), 1e-7, 1 - 1e-7)
    loss_a = -(y * np.log(a) + (1 - y) * np.log(1 - a))
    loss_b = -(y * np.log(b) + (1 - y) * np.log(1 - b))
    diff = loss_b - loss_a
    if np.allclose(diff, 0.0):
        # Identical per-entity losses (e.g. the same model retrained on the same data): no difference.
        statistic, p_value = 0.0, 1.0
    else:
        paired = stats.ttest_rel(loss_b, loss_a)
        statistic, p_value = float(paired.statistic), float(paired.pvalue)
    threshold = settings.model(model).decision_threshold
    result: dict[str, Any] = {
        "model": model,
        "champion": champion,
        "challenger": challenger,
        "days": used,
        "n": len(y),
        "metrics": {
            f"v{champion}": classification_metrics(y, a, threshold),
            f"v{challenger}": classification_metrics(y, b, threshold),
        },
        "agreement": float(np.mean((a >= threshold) == (b >= threshold))),
        "score_correlation": float(np.corrcoef(a, b)[0, 1]) if len(y) > 1 else float("nan"),
        "paired_test": {
            "test": "paired t-test on per-entity log loss (challenger - champion)",
            "n": len(y),
            "mean_difference": float(np.mean(diff)),
            "statistic": statistic,
            "p_value": p_value,
            "verdict": _verdict(float(np.mean(diff)), p_value),
        },
    }
    active = Rollouts(settings, store).active(model)
    share = active.get("canary_share") if active else None
    if share:
        in_canary = np.array([serves_challenger(model, e, share) for e in ids_all])
        if in_canary.any() and (~in_canary).any():
            welch = stats.ttest_ind(loss_b[in_canary], loss_a[~in_canary], equal_var=False)
            result["split_test"] = {
                "test": "Welch's t-test on log loss: challenger on its canary entities vs champion on the rest",
                "n_challenger": int(in_canary.sum()),
                "n_champion": int((~in_canary).sum()),
                "canary_share": share,
                "statistic": float(welch.statistic),
                "p_value": float(welch.pvalue),
            }
    return result


def _verdict(mean_diff: float, p_value: float, alpha: float = 0.05) -> str:
    if p_value >= alpha:
        return f"no significant difference at alpha={alpha}"
    return "challenger better" if mean_diff < 0 else "challenger worse"
