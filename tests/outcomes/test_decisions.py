"""Promotion and rollback decided by labelled outcomes, night by night (nightshift.nightly), on real stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nightshift.training import train_and_register
from tests.outcomes.conftest import day

SHADOW = """
[models.rollout]
strategy = "shadow"
promote_after_nights = 1
[models.rollout.outcomes]
effect_size = 0.1
"""


def _last(p: Any, event: str) -> dict[str, Any]:
    return p.events(event)[-1]["detail"]


@pytest.mark.timeout(900)
def test_a_shadow_waits_for_enough_evidence_and_is_promoted_when_its_outcomes_support_it(project: Any) -> None:
    from nightshift.nightly import decide_night, plan_night, score_night

    p = project(SHADOW)
    train_and_register(p.settings, "churn", day(1))  # v1: days 0-1
    p.night(day(3))
    out = p.rollouts.retrain("churn", day(3), trigger={"kind": "test"}, by="test")  # v2: days 1-2, tested on 3
    assert out.status == "shadow", out.reason

    # Night 1 of the shadow: 600 labelled entities both versions scored, 785 needed (effect 0.1, 2 metrics).
    # Its drift verdicts do not matter: a failing challenger monitoring is an alert, not an abort.
    plan = plan_night(p.settings, "churn", day(4), store=p.store)
    assert plan.versions == {"champion": 1, "challenger": 2}
    score_night(p.settings, plan, client=p.client, store=p.store)
    first = decide_night(
        p.settings, plan, {"champion": {"status": "pass"}, "challenger": {"status": "fail"}}, store=p.store
    )
    assert first.rollout == "waiting: not enough evidence yet: n=600 of 785"
    evidence = _last(p, "outcomes_evaluated")["challenger_vs_champion"]
    assert (evidence["design"], evidence["n"], evidence["n_required"], evidence["verdict"]) == (
        "paired",
        600,
        785,
        "insufficient",
    )
    assert {(t["metric"], t["kind"]) for t in evidence["tests"]} == {
        ("log_loss", "difference"),
        ("log_loss", "non_inferiority"),
        ("accuracy", "difference"),
        ("accuracy", "non_inferiority"),
    }
    assert all(t["test"] == "paired t-test" and t["p_value"] is not None for t in evidence["tests"])
    assert p.registry.aliases("churn") == {"champion": 1, "challenger": 2}

    # Night 2: 1,200 labelled entities: enough, and v2 is shown not worse on both metrics.
    second = p.night(day(5))
    assert second.decision.rollout == "promoted", second.decision.rollout
    assert p.registry.aliases("churn") == {"champion": 2, "previous": 1}
    promoted = _last(p, "promoted")
    assert "not worse than v1" in promoted["reason"]
    test = promoted["evidence"]["challenger_vs_champion"]
    assert (test["n"], test["verdict"]) == (1_200, "supported")
    assert all(t["significant"] for t in test["tests"] if t["kind"] == "non_inferiority")


def _shuffle_labels(data: Path, days: list[Any]) -> None:
    rng = np.random.default_rng(0)
    for d in days:
        for f in (data / "labels" / f"ds={d.isoformat()}").glob("*.parquet"):
            t = pq.read_table(f)
            shuffled = rng.permutation(t.column("churned").to_numpy())
            pq.write_table(t.set_column(1, "churned", pa.array(shuffled, t.schema.field("churned").type)), f)


@pytest.mark.timeout(900)
def test_a_shadow_whose_outcomes_are_significantly_worse_is_aborted(project: Any) -> None:
    # Gates let anything through: only the outcomes can stop it.
    p = project(SHADOW + "[models.gates]\nmin = 0.0\nchampion_tolerance = 1.0\n")
    train_and_register(p.settings, "churn", day(1))
    p.night(day(3))
    data = Path(p.settings.model("churn").dataset_uri(p.settings)).parent
    _shuffle_labels(data, [day(1), day(2)])  # v2 learns nothing
    out = p.rollouts.retrain("churn", day(3), trigger={"kind": "test"})
    assert out.status == "shadow", out.reason
    night = p.night(day(4))
    assert night.decision.rollout == "aborted"
    assert p.registry.aliases("churn") == {"champion": 1}
    aborted = _last(p, "aborted")
    assert "significantly worse than v1" in aborted["reason"]
    worse = aborted["evidence"]["challenger_vs_champion"]
    assert worse["verdict"] == "worse"
    assert worse["n"] == 600  # "worse" needs no minimum sample size
    assert p.rollouts.candidate(out.candidate_id)["status"] == "aborted"


@pytest.mark.timeout(900)
def test_a_new_champion_whose_outcomes_are_worse_than_previous_is_rolled_back(project: Any) -> None:
    p = project("[models.rollout]\nrollback_window_days = 3\n")
    train_and_register(p.settings, "churn", day(1))  # v1
    p.night(day(2))
    bad = p.register_bad(day(2))  # v2: shuffled labels; its drift checks pass
    p.rollouts.promote("churn", bad, by="test", reason="let through by hand", ds=day(2))
    night = p.night(day(3))
    assert night.plan.versions == {"champion": bad, "previous": 1}
    assert night.monitored["champion"]["status"] == "pass"  # drift sees nothing wrong
    assert night.decision.rollout == "rolled_back"
    assert p.registry.aliases("churn") == {"champion": 1, "previous": bad}
    rolled = _last(p, "rolled_back")
    assert rolled["automatic"] is True
    assert rolled["reason"].startswith("labelled outcomes: ")
    evidence = rolled["evidence"]
    assert evidence["champion_range"]["breached"] is True
    assert evidence["champion_range"]["metric"] == "roc_auc"
    assert evidence["champion_range"]["value"] < 0.65
    test = evidence["champion_vs_previous"]
    assert (test["design"], test["baseline"], test["candidate"], test["verdict"]) == ("paired", 1, bad, "worse")
    log_loss = next(t for t in test["tests"] if t["metric"] == "log_loss" and t["kind"] == "difference")
    assert log_loss["p_adjusted"] < 0.05
    assert log_loss["difference"] < 0
    assert log_loss["n_a"] == 600
    # The next night serves v1 again, and a good champion in its window is left alone.
    assert p.night(day(4)).decision.rollout == "unchanged"


def test_a_backfill_with_evidence_that_would_roll_back_moves_nothing(project: Any) -> None:
    """Labelled evidence that rolls a bad champion back on a nightly night moves nothing when it lands
    for an old day: re-running that day is a backfill. (Without the backfill rule, this re-run of an
    undecided night, scored by today's champion and its previous, would roll the champion back.)"""
    from nightshift.nightly import BACKFILL, decided_night, monitor_night, plan_night, score_night

    p = project("[models.rollout]\nrollback_window_days = 3\n")
    labels = Path(p.settings.model("churn").labels_uri(p.settings))
    late = labels.parent / "late"
    late.mkdir()
    for i in (3, 4):  # the labels of days 3 and 4 are late
        (labels / f"ds={day(i).isoformat()}").rename(late / f"ds={day(i).isoformat()}")
    train_and_register(p.settings, "churn", day(1))  # v1
    p.night(day(2))
    bad = p.register_bad(day(2))
    p.rollouts.promote("churn", bad, by="test", reason="let through by hand", ds=day(2))
    # Night 3 scored and monitored both versions, then its decide step failed (a store hiccup, say).
    plan3 = plan_night(p.settings, "churn", day(3), store=p.store)
    assert plan3.versions == {"champion": bad, "previous": 1}
    score_night(p.settings, plan3, client=p.client, store=p.store)
    monitor_night(p.settings, plan3, store=p.store)
    assert decided_night(p.store, "churn", day(3)) is None
    assert p.night(day(4)).decision.rollout == "unchanged"  # no labels yet: nothing to judge
    before = (p.registry.aliases("churn"), p.registry.alias_history("churn"), p.rollouts.active("churn"))
    assert before[0]["champion"] == bad

    # Day 3's labels land and day 3 is re-run: older than the newest decided night (day 4).
    (late / f"ds={day(3).isoformat()}").rename(labels / f"ds={day(3).isoformat()}")
    rerun = p.night(day(3))
    assert rerun.plan.mode == BACKFILL
    assert rerun.plan.versions == {"champion": bad, "previous": 1}  # the versions that served day 3
    assert rerun.decision.rollout == "backfill: nothing decided"
    assert (p.registry.aliases("churn"), p.registry.alias_history("churn"), p.rollouts.active("churn")) == before
    assert decided_night(p.store, "churn", day(3)) is None

    # Control: the next nightly night, judging the same window with its labelled days, rolls it back.
    assert p.night(day(5)).decision.rollout == "rolled_back"
    assert p.registry.aliases("churn") == {"champion": 1, "previous": bad}
