"""Lineage of a prediction: from a committed score back to the run, input files, model version, training data
and the people who approved and promoted that version (`nightshift lineage`).

The walk, for (model, ds[, entity][, version]):

1. **served** — which version served the day (the `served` table, written by each nightly night): the
   champion, or for an entity inside a canary's share, the challenger. Without a record, the one committed
   version of the day (or the champion among several).
2. **prediction** — the entity's committed row of that version and day (score, label, value).
3. **run** — the run that wrote it: run id, run key (Airflow's run id), status, start and end, host and pid.
4. **inputs** — the run's manifest (migration 0009): every file's URI, bytes, rows and SHA-256 fingerprint;
   with `verify`, each file as it is now (unchanged, changed, missing).
5. **model** — the version's artifact (URI, SHA-256, checked against what the run recorded), algorithm, who
   registered it, its source when it was brought from outside.
6. **training** — the partitions it was trained on and the training set's content hash.
7. **approval** — its candidate (trigger, gates, who approved and when), its audit trail and every alias move
   to it (who promoted it, when, why).

A step that cannot be answered says why (a run that predates lineage recording, a version brought from outside,
a day nothing recorded as served, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import sqlalchemy as sa

from nightshift.config import Settings
from nightshift.db import Store, open_store, schema
from nightshift.db.engine import as_date
from nightshift.errors import ModelNotFound
from nightshift.models.registry import CHAMPION, ModelVersion, Registry
from nightshift.rollout.canary import serves_challenger
from nightshift.rollout.lifecycle import CHALLENGER
from nightshift.telemetry.manifest import verify_manifest

STEPS = ("served", "prediction", "run", "inputs", "model", "training", "approval")


@dataclass
class Step:
    """One step of the walk: its facts, or why it cannot be answered (both, when it is answered in part)."""

    name: str
    answered: bool
    facts: dict[str, Any] = field(default_factory=dict)
    why: str | None = None


@dataclass
class Lineage:
    """The answer of `nightshift lineage`: the version it is about and every step."""

    model: str
    ds: date
    entity: str | None
    version: int | None
    steps: dict[str, Step]

    @property
    def unanswered(self) -> list[Step]:
        return [s for s in self.steps.values() if not s.answered]

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "ds": self.ds.isoformat(),
            "entity": self.entity,
            "version": self.version,
            "steps": {name: {"answered": s.answered, "why": s.why, **s.facts} for name, s in self.steps.items()},
        }


def trace(
    settings: Settings,
    model: str,
    ds: date,
    *,
    entity: str | None = None,
    version: int | None = None,
    verify: bool = False,
    store: Store | None = None,
) -> Lineage:
    """Walk the lineage of `model`'s prediction for `entity` on `ds` (of the whole day's partition without one).

    `version`: explain that version instead of the one that served. `verify`: fingerprint the recorded input
    files again and say which changed since. Raises ModelNotFound for a model the project does not declare.
    """
    settings.model(model)
    own = store is None
    st = store or open_store(settings)
    try:
        return _Walk(settings, st, model, ds, entity, verify).run(version)
    finally:
        if own:
            st.dispose()


class _Walk:
    def __init__(self, settings: Settings, store: Store, model: str, ds: date, entity: str | None, verify: bool):
        self.settings = settings
        self.store = store
        self.registry = Registry(store, settings.artifacts_uri)
        self.model = model
        self.ds = ds
        self.entity = entity
        self.verify = verify
        self.steps: dict[str, Step] = {}

    def run(self, asked: int | None) -> Lineage:
        served = self._served_rows()
        version, reason = self._choose(served, asked)
        self.steps["served"] = self._served_step(served, version, reason)
        if version is None:
            why = f"no version of {self.model} has a committed partition for ds={self.ds}"
            for name in STEPS[1:]:
                self.steps[name] = Step(name, False, why=why)
            return Lineage(self.model, self.ds, self.entity, None, self.steps)
        run_id = self._prediction(version, served)
        run = self._run(version, run_id, served)
        self._inputs(run)
        mv = self._model(version, run)
        self._training(mv)
        self._approval(version, mv)
        return Lineage(self.model, self.ds, self.entity, version, self.steps)

    # -- 1. served -----------------------------------------------------------------------------------

    def _served_rows(self) -> list[dict[str, Any]]:
        t = schema.served
        with self.store.connect() as conn:
            rows = conn.execute(
                sa.select(t).where(t.c.model == self.model, t.c.ds == self.ds).order_by(t.c.share.desc())
            ).mappings()
            return [dict(r) for r in rows]

    def _committed_versions(self) -> list[int]:
        p = schema.partitions
        with self.store.connect() as conn:
            found = conn.execute(
                sa.select(p.c.version).where(p.c.model == self.model, p.c.ds == self.ds, p.c.status == "committed")
            ).scalars()
            return sorted(int(v) for v in found)

    def _choose(self, served: list[dict[str, Any]], asked: int | None) -> tuple[int | None, str]:
        if asked is not None:
            return asked, f"v{asked} as asked (--version)"
        by_role = {str(r["role"]): r for r in served}
        if served:
            challenger = by_role.get(CHALLENGER)
            champion = by_role.get(CHAMPION) or served[0]
            share = float(challenger["share"]) if challenger else 0.0
            if challenger is not None and share > 0:
                if self.entity is None:
                    return int(champion["version"]), (
                        f"the champion v{champion['version']} served {1 - share:.0%} of entities, the canary "
                        f"challenger v{challenger['version']} {share:.0%}: the champion is shown (--entity tells "
                        "which one served an entity)"
                    )
                if serves_challenger(self.model, self.entity, share):
                    return int(challenger["version"]), (
                        f"entity {self.entity} is inside the canary's {share:.0%} share: the challenger "
                        f"v{challenger['version']} served it"
                    )
                return int(champion["version"]), (
                    f"entity {self.entity} is outside the canary's {share:.0%} share: the champion "
                    f"v{champion['version']} served it"
                )
            return int(champion["version"]), f"{champion['role']} v{champion['version']} served the day"
        committed = self._committed_versions()
        if not committed:
            return None, f"nothing served ds={self.ds} and no version has a committed partition for it"
        if len(committed) == 1:
            return committed[0], (
                f"no night recorded what served ds={self.ds}; v{committed[0]} is its only committed version"
            )
        champion_now = self.registry.aliases(self.model).get(CHAMPION)
        pick = champion_now if champion_now in committed else committed[-1]
        which = "today's champion" if pick == champion_now else "the newest"
        listed = ", ".join(f"v{v}" for v in committed)
        return pick, (
            f"no night recorded what served ds={self.ds}; versions {listed} are committed for it: v{pick} "
            f"({which}) is shown, --version picks another"
        )

    def _served_step(self, served: list[dict[str, Any]], version: int | None, reason: str) -> Step:
        facts: dict[str, Any] = {
            "version": version,
            "reason": reason,
            "served": [
                {
                    "role": r["role"],
                    "version": int(r["version"]),
                    "share": float(r["share"]),
                    "run_id": int(r["run_id"]) if r["run_id"] is not None else None,
                    "recorded_at": r["recorded_at"],
                }
                for r in served
            ],
        }
        if not served:
            return Step(
                "served",
                False,
                facts,
                why=f"no night of {self.model} recorded what served ds={self.ds} (only `nightshift night` and the "
                "score DAG record it: a day scored by `nightshift score` or only ever backfilled has no record)",
            )
        if version is not None and all(int(r["version"]) != version for r in served):
            return Step(
                "served", True, facts, why=f"v{version} did not serve ds={self.ds}: the lineage below is of v{version}"
            )
        return Step("served", True, facts)

    # -- 2. prediction -------------------------------------------------------------------------------

    def _prediction(self, version: int, served: list[dict[str, Any]]) -> int | None:
        """The prediction step; returns the run id that holds the rows (committed, else the one that served)."""
        part = self.store.partition(self.model, version, self.ds)
        served_run = next((r["run_id"] for r in served if int(r["version"]) == version), None)
        run_id = part.run_id if part is not None else (int(served_run) if served_run is not None else None)
        if self.entity is None:
            self.steps["prediction"] = Step(
                "prediction", False, why="no entity asked for (--entity E): the lineage is of the whole partition"
            )
            return run_id
        if part is None:
            self.steps["prediction"] = Step(
                "prediction",
                False,
                why=f"v{version} has no committed partition for ds={self.ds} (never committed, or expired by "
                "retention)",
            )
            return run_id
        found = self.store.lookup(self.model, version, self.ds, [self.entity])
        if not found:
            self.steps["prediction"] = Step(
                "prediction",
                False,
                why=f"entity {self.entity!r} is not among the {part.row_count:,} rows of v{version} ds={self.ds} "
                f"(run {part.run_id})",
            )
            return run_id
        p = found[0]
        facts = {
            "entity_id": p.entity_id,
            "score": p.score,
            "label": p.label,
            "value": p.value,
            "probs": p.probs,
            "version": p.version,
            "run_id": p.run_id,
            "committed_at": p.committed_at,
            # Why this score: its stored top-k reasons (feature, contribution), or None (scored without them).
            "reasons": None if p.reasons is None else self._reasons(version, p.reasons),
        }
        self.steps["prediction"] = Step("prediction", True, facts)
        return p.run_id

    def _reasons(self, version: int, codes: list[tuple[int, float]]) -> list[dict[str, Any]]:
        from nightshift.models.explainers import feature_names, reason_name

        try:
            names = feature_names(self.registry.get(self.model, version).features)
        except ModelNotFound:
            names = ()
        return [{"feature": reason_name(names, code), "contribution": value} for code, value in codes]

    # -- 3. run --------------------------------------------------------------------------------------

    def _run(self, version: int, run_id: int | None, served: list[dict[str, Any]]) -> dict[str, Any] | None:
        if run_id is None:
            self.steps["run"] = Step("run", False, why=f"no run of v{version} for ds={self.ds} is recorded")
            return None
        r = schema.runs
        with self.store.connect() as conn:
            row = conn.execute(sa.select(r).where(r.c.run_id == run_id)).mappings().first()
        if row is None:
            self.steps["run"] = Step("run", False, why=f"run {run_id} is not in the store any more")
            return None
        run = dict(row)
        keys = ("run_id", "run_key", "status", "started_at", "finished_at", "host", "pid", "input_rows", "rows")
        facts = {k: run.get(k) for k in keys}
        facts["files"] = run.get("files")
        if run.get("error"):
            facts["error"] = run["error"]
        served_run = next((r_["run_id"] for r_ in served if int(r_["version"]) == version), None)
        why = None
        if served_run is not None and int(served_run) != run_id:
            facts["served_run_id"] = int(served_run)
            why = (
                f"run {served_run} served the night; the day was re-scored since and run {run_id} holds the "
                "predictions now (`nightshift runs show` has both)"
            )
        self.steps["run"] = Step("run", True, facts, why=why)
        return run

    # -- 4. inputs -----------------------------------------------------------------------------------

    def _inputs(self, run: dict[str, Any] | None) -> None:
        if run is None:
            self.steps["inputs"] = Step("inputs", False, why="no run: nothing tells which files were read")
            return
        manifest = run.get("manifest")
        if not manifest:
            self.steps["inputs"] = Step(
                "inputs",
                False,
                {"files": run.get("files"), "input_rows": run.get("input_rows")},
                why=f"run {run['run_id']} predates lineage recording (migration 0009): it read "
                f"{run.get('files') or '?'} file(s), {run.get('input_rows') or '?'} rows, but their names and "
                "fingerprints were not recorded",
            )
            return
        facts = {k: manifest.get(k) for k in ("partition", "fingerprint", "digest", "rows", "size_bytes", "files")}
        why = None
        if manifest.get("error"):
            why = f"the files could not be fingerprinted when the run started: {manifest['error']}"
        if self.verify:
            checks = verify_manifest(manifest)
            by_uri = {c["uri"]: c for c in checks}
            facts["files"] = [{**f, "now": by_uri.get(f["uri"])} for f in manifest.get("files") or []]
            changed = [c["uri"] for c in checks if c["status"] != "unchanged"]
            facts["verified"] = "unchanged" if not changed else f"{len(changed)} of {len(checks)} changed or gone"
            if changed:
                why = (why + "; " if why else "") + (
                    f"{len(changed)} file(s) differ from what run {run['run_id']} read: "
                    + ", ".join(f"{c['uri']} ({c['status']})" for c in checks if c["status"] != "unchanged")
                )
        self.steps["inputs"] = Step("inputs", True, facts, why=why)

    # -- 5. model ------------------------------------------------------------------------------------

    def _model(self, version: int, run: dict[str, Any] | None) -> ModelVersion | None:
        try:
            mv = self.registry.get(self.model, version)
        except ModelNotFound as exc:
            self.steps["model"] = Step("model", False, why=str(exc))
            return None
        facts: dict[str, Any] = {
            "version": mv.version,
            "artifact_uri": mv.artifact_uri,
            "sha256": mv.sha256,
            "size_bytes": mv.size_bytes,
            "algorithm": mv.algorithm,
            "task": mv.task,
            "registered_by": mv.created_by,
            "registered_at": mv.created_at,
            "source": mv.source,
        }
        why = None
        recorded = ((run or {}).get("manifest") or {}).get("model") or {}
        if recorded.get("sha256"):
            facts["run_sha256"] = recorded["sha256"]
            if recorded["sha256"] != mv.sha256:
                why = (
                    f"the run recorded artifact SHA-256 {recorded['sha256'][:16]}…, the registry holds "
                    f"{mv.sha256[:16]}…: the version changed after the run"
                )
        self.steps["model"] = Step("model", True, facts, why=why)
        return mv

    # -- 6. training ---------------------------------------------------------------------------------

    def _training(self, mv: ModelVersion | None) -> None:
        if mv is None:
            self.steps["training"] = Step("training", False, why="the version is not in the registry")
            return
        data = mv.training_data or {}
        parts = data.get("partitions") or []
        facts: dict[str, Any] = {
            "rows": data.get("rows"),
            "content_sha256": data.get("content_sha256"),
            "until": data.get("until") or data.get("train_until") or (parts[-1].get("ds") if parts else None),
            "partitions": [
                {
                    "ds": p.get("ds"),
                    "features": p.get("features"),
                    "labels": p.get("labels"),
                    "rows": p.get("sampled_rows"),
                    "labelled_rows": p.get("labelled_rows"),
                    "files": p.get("files"),
                }
                for p in parts
            ],
        }
        if data.get("confidence_test"):
            test = data["confidence_test"]
            facts["confidence_test"] = {
                "days": [p.get("ds") for p in test.get("partitions") or []],
                "rows": test.get("rows"),
                "content_sha256": test.get("content_sha256"),
            }
        if parts:
            self.steps["training"] = Step("training", True, facts)
            return
        if mv.source:
            flavour = mv.source.get("flavour") or mv.source.get("library") or "another library"
            why = (
                f"v{mv.version} was brought from outside ({flavour}, from {mv.source.get('uri') or '?'}): it was "
                "trained elsewhere, on data nightshift never saw"
            )
        else:
            why = f"v{mv.version} was registered without the partitions it was trained on"
        self.steps["training"] = Step("training", False, facts, why=why)

    # -- 7. approval ---------------------------------------------------------------------------------

    def _approval(self, version: int, mv: ModelVersion | None) -> None:
        c, ev, al = schema.candidates, schema.audit_events, schema.alias_events
        with self.store.connect() as conn:
            cands = [
                dict(r)
                for r in conn.execute(
                    sa.select(c).where(c.c.model == self.model, c.c.version == version).order_by(c.c.candidate_id)
                ).mappings()
            ]
            audit = [
                dict(r)
                for r in conn.execute(
                    sa.select(ev).where(ev.c.model == self.model, ev.c.version == version).order_by(ev.c.event_id)
                ).mappings()
            ]
            moves = [
                dict(r)
                for r in conn.execute(
                    sa.select(al)
                    .where(al.c.model == self.model, sa.or_(al.c.new_version == version, al.c.old_version == version))
                    .order_by(al.c.event_id)
                ).mappings()
            ]
        facts: dict[str, Any] = {
            "candidates": [
                {
                    "candidate_id": int(x["candidate_id"]),
                    "created_by": x["created_by"],
                    "created_at": x["created_at"],
                    "trigger": x["trigger"],
                    "status": x["status"],
                    "reason": x["reason"],
                    "strategy": x["strategy"],
                    "approved_by": x["approved_by"],
                    "approved_at": x["approved_at"],
                    "gates": [
                        {"name": g.get("name"), "passed": g.get("passed"), "value": g.get("value")}
                        for g in (x["gates"] or [])
                    ],
                }
                for x in cands
            ],
            "audit": [
                {"event": a["event"], "by": a["by"], "at": a["at"], "candidate_id": a["candidate_id"]} for a in audit
            ],
            "alias_moves": [
                {
                    "alias": m["alias"],
                    "from_version": m["old_version"],
                    "to_version": m["new_version"],
                    "by": m["by"],
                    "at": m["at"],
                    "reason": m["reason"],
                    "effective_ds": as_date(m["effective_ds"]) if m["effective_ds"] is not None else None,
                }
                for m in moves
            ],
        }
        approvals = [x for x in cands if x["approved_by"]]
        facts["approved_by"] = approvals[-1]["approved_by"] if approvals else None
        facts["approved_at"] = approvals[-1]["approved_at"] if approvals else None
        promotions = [m for m in moves if m["alias"] == CHAMPION and m["new_version"] == version]
        facts["promoted_by"] = promotions[-1]["by"] if promotions else None
        facts["promoted_at"] = promotions[-1]["at"] if promotions else None
        if not (cands or audit or moves):
            self.steps["approval"] = Step(
                "approval",
                False,
                facts,
                why=f"v{version} has no candidate, audit event or alias move recorded"
                + (" (registered before they were recorded?)" if mv is not None else ""),
            )
            return
        why = None
        if not approvals and not any(a["event"] == "approved" for a in audit):
            why = "no approval is recorded: its rollout did not ask for one (rollout.require_approval = false)"
        if not promotions:
            why = (why + "; " if why else "") + f"v{version} was never made champion"
        self.steps["approval"] = Step("approval", True, facts, why=why)
