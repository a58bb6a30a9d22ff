"""The night's facts on its Airflow run: ds, versions, rows, the decision, written as the run's note.

An Airflow listener (registered by the nightshift plugin) that runs in the scheduler when a `score_*` run
ends, successful or failed. It reads what the run's own tasks returned (the XComs of `plan`, `score` and
`decide`) and sets the run's note, which the UI shows in the runs list and on the run's page, and the REST
API returns (`note`), e.g.::

    nightshift · ds 2026-11-17 (nightly) · churn: champion v2 100,000 rows, previous v1 100,000 rows
    · input 100,000 rows in 2 files · rollout unchanged

A note someone wrote by hand is left alone; a note this listener wrote is replaced when the run ends
again (a cleared task re-ran). It writes in the scheduler's own transaction (the session that is ending the
run), touches no nightshift store, and never fails the scheduler: any error is logged and dropped.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)

PREFIX = "nightshift · "
TASKS = ("plan", "score", "decide")
#: Airflow's dag_run_note.content is a String(1000): longer fails the scheduler's flush (PostgreSQL enforces it).
NOTE_MAX = 1000


def _rows(n: Any) -> str:
    return f"{int(n):,} rows" if isinstance(n, int | float) else "? rows"


def _model_facts(model: str, plan: dict[str, Any], scored: Any, decision: Any) -> str:
    parts: list[str] = []
    if isinstance(scored, dict) and "error" in scored:
        parts.append(f"NOT SCORED ({str(scored['error'])[:160]})")
    elif isinstance(scored, dict) and scored:
        parts.append(
            ", ".join(
                f"{role} v{r.get('version')} {_rows(r.get('rows'))}"
                for role, r in scored.items()
                if isinstance(r, dict)
            )
        )
    else:
        versions = plan.get("versions") or {}
        parts.append("not scored; planned " + ", ".join(f"{role} v{v}" for role, v in versions.items()))
    if plan.get("input_rows") is not None:
        parts.append(f"input {_rows(plan['input_rows'])} in {plan.get('files', '?')} files")
    if isinstance(decision, dict) and decision.get("rollout"):
        retrain = " · retraining triggered" if decision.get("trigger_retrain") else ""
        parts.append(f"rollout {decision['rollout']}{retrain}")
    return f"{model}: " + " · ".join(parts)


def night_note(plans: dict[str, Any], scored: dict[str, Any], decisions: dict[str, Any]) -> str | None:
    """The note of one run from its tasks' returns, keyed by model (a group DAG has several); None when
    the run never planned (its partition never came, or its contract check failed)."""
    if not plans:
        return None
    first = next(iter(plans.values()))
    head = f"{PREFIX}ds {first.get('ds')} ({first.get('mode', '?')})"
    return " · ".join(
        [head, *(_model_facts(m, p, scored.get(m), decisions.get(m)) for m, p in plans.items() if isinstance(p, dict))]
    )


def _returns(session: Any, dag_run: Any) -> dict[str, Any]:
    """task_id → return value of the run's plan/score/decide tasks (a group's `<model>_night.decide` too), from
    the tasks that ran to an end in this attempt: a cleared task keeps its old XComs until it runs again, and a
    run cleared and failed upstream must not be described by the previous attempt's facts."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    rows = session.scalars(
        select(XComModel)
        .join(
            TaskInstance,
            (TaskInstance.dag_id == XComModel.dag_id)
            & (TaskInstance.run_id == XComModel.run_id)
            & (TaskInstance.task_id == XComModel.task_id)
            & (TaskInstance.map_index == XComModel.map_index),
        )
        .where(
            XComModel.dag_id == dag_run.dag_id,
            XComModel.run_id == dag_run.run_id,
            XComModel.key.in_(["return_value", "scored"]),
            XComModel.map_index == -1,
            TaskInstance.state.in_([TaskInstanceState.SUCCESS, TaskInstanceState.FAILED]),
        )
    ).all()
    out: dict[str, Any] = {}
    for row in rows:
        if row.task_id.split(".")[-1] in TASKS:
            key = row.task_id if row.key == "return_value" else f"{row.task_id}:{row.key}"
            out[key] = XComModel.deserialize_value(row)
    return out


def note_of(dag_id: str, returns: dict[str, Any]) -> str | None:
    """The note of a `score_<model>` or `score_<group>` run from its tasks' returns."""
    plan = returns.get("plan")
    if not isinstance(plan, dict):
        return None
    if "model" in plan and "ds" in plan:  # score_<model>: one night
        model = str(plan["model"])
        scored = returns.get("score")
        return night_note({model: plan}, {model: scored} if scored else {}, {model: returns.get("decide")})
    scored = returns.get("score:scored") or returns.get("score") or {}  # score_<group>: pushed before a failure
    decisions = {m: returns.get(f"{m}_night.decide") for m in plan}
    return night_note(plan, scored if isinstance(scored, dict) else {}, decisions)


def fit(note: str | None) -> str | None:
    """The note cut to what Airflow's column holds (NOTE_MAX characters), an ellipsis saying it was cut."""
    return note if note is None or len(note) <= NOTE_MAX else note[: NOTE_MAX - 1] + "…"


def write_note(dag_run: Any) -> None:
    from sqlalchemy.orm import object_session

    if not str(dag_run.dag_id).startswith("score_"):
        return
    session = object_session(dag_run)
    if session is None:
        return
    current = dag_run.note
    if current and not str(current).startswith(PREFIX):
        return  # someone's own note
    note = note_of(dag_run.dag_id, _returns(session, dag_run))
    if note is not None:
        note = note[: NOTE_MAX - 1] + "…" if len(note) > NOTE_MAX else note
    if note != current and (note is not None or current is not None):
        dag_run.note = note  # None: this attempt never planned; the previous attempt's note goes


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    try:
        write_note(dag_run)
    except Exception:  # never fail the scheduler for a note
        log.exception("nightshift: could not write the note of %s", getattr(dag_run, "run_id", dag_run))


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    try:
        write_note(dag_run)
    except Exception:
        log.exception("nightshift: could not write the note of %s", getattr(dag_run, "run_id", dag_run))
