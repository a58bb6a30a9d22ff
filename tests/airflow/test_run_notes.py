"""The note a scoring run gets when it ends (nightshift_airflow.run_notes), from its tasks' returns."""

from __future__ import annotations

from nightshift_airflow.run_notes import PREFIX, note_of

PLAN = {"model": "churn", "ds": "2026-11-17", "mode": "nightly", "versions": {"champion": 2, "previous": 1}}


def test_a_model_run_says_ds_versions_rows_input_and_decision() -> None:
    returns = {
        "plan": {**PLAN, "files": 2, "input_rows": 4000},
        "score": {"champion": {"version": 2, "rows": 4000}, "previous": {"version": 1, "rows": 4000}},
        "decide": {"rollout": "unchanged", "trigger_retrain": True},
    }
    assert note_of("score_churn", returns) == (
        f"{PREFIX}ds 2026-11-17 (nightly) · churn: champion v2 4,000 rows, previous v1 4,000 rows"
        " · input 4,000 rows in 2 files · rollout unchanged · retraining triggered"
    )


def test_a_run_that_failed_before_scoring_names_what_it_planned() -> None:
    note = note_of("score_churn", {"plan": {**PLAN, "mode": "backfill", "files": 2, "input_rows": 10}})
    assert note == (
        f"{PREFIX}ds 2026-11-17 (backfill) · churn: not scored; planned champion v2, previous v1"
        " · input 10 rows in 2 files"
    )


def test_a_run_that_never_planned_gets_no_note() -> None:
    assert note_of("score_churn", {}) is None
    assert note_of("score_churn", {"score": {"champion": {"version": 1, "rows": 3}}}) is None


def test_a_group_run_says_each_model_and_names_the_one_that_failed() -> None:
    plans = {
        "churn": {**PLAN, "versions": {"champion": 1}, "files": 2, "input_rows": 50},
        "spend": {**PLAN, "model": "spend", "versions": {"champion": 3}, "files": 2, "input_rows": 50},
    }
    returns = {
        "plan": plans,
        "score:scored": {"churn": {"champion": {"version": 1, "rows": 50}}, "spend": {"error": "ModelError: boom"}},
        "churn_night.decide": {"rollout": "unchanged", "trigger_retrain": False},
    }
    note = note_of("score_nightly", returns)
    assert note == (
        f"{PREFIX}ds 2026-11-17 (nightly) · churn: champion v1 50 rows · input 50 rows in 2 files · rollout unchanged"
        " · spend: NOT SCORED (ModelError: boom) · input 50 rows in 2 files"
    )


def test_a_long_note_is_cut_to_what_airflows_column_holds() -> None:
    from nightshift_airflow.run_notes import NOTE_MAX, fit

    plans = {f"model_{i}": {**PLAN, "model": f"model_{i}", "files": 2, "input_rows": 50} for i in range(12)}
    scored = {f"model_{i}": {"error": "ModelError: " + "x" * 300} for i in range(12)}
    note = note_of("score_big", {"plan": plans, "score:scored": scored})
    assert note is not None
    assert len(note) > NOTE_MAX
    cut = fit(note)
    assert cut is not None
    assert len(cut) == NOTE_MAX
    assert cut.endswith("…")
    assert fit("short") == "short"
    assert fit(None) is None
