"""Bandits: Thompson sampling on simulated rewards (convergence, regret), routing, and a bandit rollout's nights."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from nightshift.rollout.bandit import ArmStats, allocate, arm_for, assign_arms, p_best, simulate
from nightshift.training import train_and_register
from tests.outcomes.conftest import day

#: Documented in docs/retraining.md: correct-decision rates 0.76 vs 0.78, 5,000 entities a night, labels a
#: night late, floor 5%: the better arm serves >= 80% from night 3 and the bandit's regret is a quarter of a
#: fixed 50/50 split's after 14 nights.
MEANS = {1: 0.76, 2: 0.78}


def test_thompson_sampling_gives_the_better_arm_most_traffic_and_beats_a_fixed_split() -> None:
    sim = simulate(MEANS, nights=14, entities_per_night=5_000, label_delay=1, floor=0.05, seed=7)
    assert sim.nights_to_80 is not None
    assert sim.nights_to_80 <= 4
    assert all(s[2] >= 0.8 for s in sim.shares[sim.nights_to_80 - 1 :])
    assert all(s[1] >= 0.05 - 1e-9 for s in sim.shares)  # the floor: the worse arm keeps learning
    assert sim.regret[-1] < 0.35 * sim.regret_fixed[-1]
    assert sim.regret_fixed[-1] == pytest.approx(14 * 5_000 / 2 * 0.02)
    again = simulate(MEANS, nights=14, entities_per_night=5_000, label_delay=1, floor=0.05, seed=7)
    assert again.shares == sim.shares  # deterministic by seed
    # The better arm wins whichever version it is, and Gaussian rewards (a business reward column) too.
    flipped = simulate({1: 0.78, 2: 0.76}, nights=8, entities_per_night=5_000, seed=7)
    assert flipped.shares[-1][1] >= 0.8
    gauss = simulate({1: 10.0, 2: 10.4}, nights=8, entities_per_night=5_000, kind="gaussian", reward_sd=4.0, seed=7)
    assert gauss.shares[-1][2] >= 0.8


def test_p_best_is_the_posterior_probability_of_the_better_arm() -> None:
    from scipy import integrate, stats

    a, b = ArmStats(1), ArmStats(2)
    a.add(np.r_[np.ones(70), np.zeros(30)])
    b.add(np.r_[np.ones(78), np.zeros(22)])
    got = p_best([a, b], kind="bernoulli", draws=400_000, seed=1)
    pa, pb = stats.beta(71, 31), stats.beta(79, 23)
    exact = integrate.quad(lambda x: pb.pdf(x) * pa.cdf(x), 0, 1)[0]  # P(B > A)
    assert got[2] == pytest.approx(exact, abs=0.005)
    assert got[1] + got[2] == pytest.approx(1.0)
    shares = allocate([a, b], kind="bernoulli", floor=0.1, draws=50_000, seed=1).shares
    assert shares[1] == pytest.approx(0.1 + 0.8 * got[1], abs=0.01)


def test_entities_are_routed_to_arms_by_a_stable_hash_in_proportion_to_the_shares() -> None:
    ids = [str(i) for i in range(100_000)]
    arms = [(1, 0.7), (2, 0.3)]
    served = assign_arms("churn", ids, arms)
    assert abs((served == 2).mean() - 0.3) < 0.005
    assert [arm_for("churn", e, arms) for e in ids[:2_000]] == served[:2_000].tolist()
    moved = assign_arms("churn", ids, [(1, 0.6), (2, 0.4)])
    assert ((served == 2) & (moved == 1)).sum() == 0  # a reallocation only moves entities across one boundary
    assert abs(((served == 1) & (moved == 2)).mean() - 0.1) < 0.005


BANDIT = """
[models.rollout]
strategy = "bandit"
promote_after_nights = 5
[models.rollout.outcomes]
effect_size = 0.1
"""


@pytest.mark.timeout(900)
def test_a_bandit_rollout_reallocates_nightly_records_what_served_and_routes_the_api_by_it(project: Any) -> None:
    from nightshift.api.queries import build
    from nightshift.nightly import served_on

    p = project(BANDIT)
    train_and_register(p.settings, "churn", day(1))
    p.night(day(3))
    out = p.rollouts.retrain("churn", day(3), trigger={"kind": "test"})
    assert out.status == "bandit", out.reason
    started = {(a["ds"], a["version"]): a["share"] for a in p.rollouts.bandit_allocations("churn")}
    assert started == {(day(4), 1): 0.5, (day(4), 2): 0.5}  # an even split until rewards land

    night = p.night(day(4))
    assert night.plan.shares == {"champion": 0.5, "challenger": 0.5}
    assert served_on(p.store, "churn", day(4)) == {"champion": (1, 0.5), "challenger": (2, 0.5)}
    assert night.decision.rollout.startswith("reallocated: v2 ")
    nxt = {a["version"]: a for a in p.rollouts.bandit_allocations("churn") if a["ds"] == day(5)}
    assert set(nxt) == {1, 2}
    assert nxt[1]["rewards"] + nxt[2]["rewards"] == 600  # each entity's reward counted for the arm that served it
    assert nxt[1]["share"] + nxt[2]["share"] == pytest.approx(1.0)
    assert min(nxt[1]["share"], nxt[2]["share"]) >= 0.05 - 1e-9
    realloc = p.events("bandit_reallocated")[-1]["detail"]
    assert realloc["allocation"]["shares"] == {"1": nxt[1]["share"], "2": nxt[2]["share"]}
    assert realloc["comparison"]["design"] == "two-sample"

    second = p.night(day(5))
    share = nxt[2]["share"]
    assert second.plan.shares["challenger"] == pytest.approx(share)
    assert served_on(p.store, "churn", day(5))["challenger"] == (2, pytest.approx(share))
    # The lookup API routes by the share the night published, exactly like a canary's.
    with p.store.connect() as conn:
        published = conn.execute(sa.text(build(p.store.dialect).canary), {"model": "churn"}).scalar()
    assert published == pytest.approx(share)
