"""A champion move and its audit row are one transaction: promote, rollback and abort on SQLite and PostgreSQL.

A trigger on `audit_events` makes the database itself refuse the audit insert, the last statement of each
move. Everything the move wrote before it (aliases, alias events, the rollout row, the candidate's status)
must then be rolled back with it: the store reads exactly as before, and no audit row exists.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from nightshift.db import schema
from nightshift.db.engine import utcnow
from nightshift.db.store import Store
from nightshift.models.registry import CHAMPION
from nightshift.rollout import CHALLENGER, PREVIOUS, Rollouts
from tests.conftest import SCORE_DS

REFUSED = "audit_events insert refused by the test trigger"
#: Every table a move may write: compared whole, row by row, before and after a refused move.
TABLES = (
    schema.model_versions,
    schema.model_aliases,
    schema.alias_events,
    schema.model_rollouts,
    schema.candidates,
    schema.audit_events,
    schema.bandit_allocations,
)


def _refuse_audit(store: Store) -> None:
    """A database trigger that fails every insert into audit_events."""
    with store.begin() as conn:
        if store.dialect == "sqlite":
            conn.exec_driver_sql(
                f"CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN RAISE EXCEPTION '{REFUSED}'; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse_audit()"
            )


def _allow_audit(store: Store) -> None:
    with store.begin() as conn:
        if store.dialect == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER refuse_audit")
        else:
            conn.exec_driver_sql("DROP TRIGGER refuse_audit ON audit_events")
            conn.exec_driver_sql("DROP FUNCTION refuse_audit()")


def _snapshot(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table a move touches, in primary-key order."""
    out = {}
    with store.connect() as conn:
        for table in TABLES:
            order = list(table.primary_key.columns) or list(table.columns)
            out[table.name] = [dict(r) for r in conn.execute(sa.select(table).order_by(*order)).mappings()]
    return out


def _in_shadow(settings: Any, trained_model: Any) -> Rollouts:
    """churn v1 champion, v2 a candidate in shadow (approved by hand: the production path to a rollout)."""
    r = Rollouts(settings)
    contract = settings.model("churn").contract
    v1 = r.registry.register_trained(
        "churn", trained_model, contract, training_data={"rows": 1}, decision_threshold=0.5
    )
    r.registry.set_alias("churn", CHAMPION, v1.version, reason="test")
    now = utcnow()
    with r.store.begin() as conn:
        res = conn.execute(
            schema.candidates.insert().values(
                model="churn",
                ds=SCORE_DS,
                created_at=now,
                created_by="test",
                trigger={"kind": "manual"},
                status="training",
                strategy="shadow",
                updated_at=now,
            )
        )
    pk = res.inserted_primary_key
    assert pk is not None
    cid = int(pk[0])
    v2 = r.registry.register_trained(
        "churn", trained_model, contract, training_data={"rows": 2, "candidate_id": cid}, decision_threshold=0.5
    )
    with r.store.begin() as conn:
        conn.execute(
            schema.candidates.update()
            .where(schema.candidates.c.candidate_id == cid)
            .values(version=v2.version, status="pending_approval", updated_at=now)
        )
    assert r.approve("churn", v2.version, by="alice") == "shadow"
    assert r.registry.aliases("churn") == {CHAMPION: 1, CHALLENGER: 2}
    return r


def _move(r: Rollouts, op: str) -> None:
    if op == "promote":
        r.promote("churn", 2, by="bob", reason="the test promotes", ds=SCORE_DS)
    elif op == "rollback":
        r.rollback("churn", by="bob", reason="the test rolls back", ds=SCORE_DS)
    else:
        r.abort("churn", by="bob", reason="the test aborts", ds=SCORE_DS)


#: op → (aliases before, the candidate's status before, a rollout in progress before, aliases after it succeeds)
CASES = {
    "promote": ({CHAMPION: 1, CHALLENGER: 2}, "shadow", True, {CHAMPION: 2, PREVIOUS: 1}),
    "rollback": ({CHAMPION: 2, PREVIOUS: 1}, "promoted", False, {CHAMPION: 1, PREVIOUS: 2}),
    "abort": ({CHAMPION: 1, CHALLENGER: 2}, "shadow", True, {CHAMPION: 1}),
}
EVENT = {"promote": "promoted", "rollback": "rolled_back", "abort": "aborted"}


@pytest.mark.parametrize("op", list(CASES))
def test_a_refused_audit_row_rolls_the_whole_move_back(
    op: str, store_url: str, make_settings: Any, trained_model: Any
) -> None:
    settings = make_settings(store_url, extra_model='\n[models.rollout]\nstrategy = "shadow"\n')
    r = _in_shadow(settings, trained_model)
    if op == "rollback":
        r.promote("churn", 2, by="alice", reason="set up a rollback")
    aliases, status, rollout, after = CASES[op]
    assert r.registry.aliases("churn") == aliases
    (cand,) = r.candidates("churn")
    assert cand["status"] == status
    assert (r.active("churn") is not None) is rollout
    before = _snapshot(r.store)
    audit_rows = len(before["audit_events"])

    _refuse_audit(r.store)
    with pytest.raises(sa.exc.DBAPIError, match=REFUSED):
        _move(r, op)

    assert r.registry.aliases("churn") == aliases
    assert r.candidate(cand["candidate_id"])["status"] == status
    assert (r.active("churn") is not None) is rollout
    assert len(r.history("churn")) == audit_rows
    assert _snapshot(r.store) == before  # every row of every table, not one of them changed

    # The same move with the audit allowed: it goes through, with its one audit row (the trigger was all that
    # stopped it).
    _allow_audit(r.store)
    _move(r, op)
    assert r.registry.aliases("churn") == after
    assert r.active("churn") is None
    assert [e["event"] for e in r.history("churn")[audit_rows:]] == [EVENT[op]]
