"""rollout/stats.py against scipy on fixed data: each test, Holm-Bonferroni, the power calculation, the verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from nightshift.rollout.stats import (
    decide,
    holm,
    paired_tests,
    proportion_tests,
    required_paired,
    required_two_sample,
    welch_tests,
)

RNG = np.random.default_rng(20261204)
A = RNG.normal(0.50, 0.30, 400)  # the champion's per-entity loss
B = A - 0.03 + RNG.normal(0.0, 0.10, 400)  # the candidate's: a little better, correlated


def test_the_paired_t_test_is_scipys_on_the_per_entity_differences() -> None:
    better = A - B  # a loss: champion's minus candidate's
    two, ni = paired_tests("log_loss", better, margin_effect=0.1, test="t")
    ref = stats.ttest_rel(A, B)
    assert two.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert two.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    margin = 0.1 * better.std(ddof=1)
    assert ni.margin == pytest.approx(margin)
    shifted = stats.ttest_1samp(better + margin, 0.0, alternative="greater")
    assert ni.p_value == pytest.approx(shifted.pvalue, rel=1e-12)
    assert two.difference == pytest.approx(float(np.mean(A - B)))


def test_the_wilcoxon_signed_rank_test_is_scipys() -> None:
    better = A - B
    two, ni = paired_tests("log_loss", better, margin_effect=0.1, test="wilcoxon")
    ref = stats.wilcoxon(A, B)
    assert two.test == "Wilcoxon signed-rank test"
    assert two.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    margin = 0.1 * better.std(ddof=1)
    assert ni.p_value == pytest.approx(stats.wilcoxon(better + margin, alternative="greater").pvalue, rel=1e-12)


def test_welchs_t_test_is_scipys_on_disjoint_groups() -> None:
    a, b = A[:300], B[300:]  # a canary: different entities
    two, ni = welch_tests("log_loss", -a, -b, margin_effect=0.1)  # oriented: larger is better
    ref = stats.ttest_ind(-b, -a, equal_var=False)
    assert two.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert two.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    pooled = math.sqrt((299 * a.var(ddof=1) + 99 * b.var(ddof=1)) / 398)
    ref_ni = stats.ttest_ind(-b + 0.1 * pooled, -a, equal_var=False, alternative="greater")
    assert ni.p_value == pytest.approx(ref_ni.pvalue, rel=1e-12)
    assert (two.n_a, two.n_b) == (300, 100)


def test_welchs_t_test_on_groups_without_variance_is_exact_not_undecided() -> None:
    # Every served entity of each arm has the same loss (exact binary fractions: zero variance): scipy's
    # statistic is undefined, the difference is not.
    two, ni = welch_tests("log_loss", -np.full(50, 0.25), -np.full(40, 0.5), margin_effect=0.1)
    assert (two.p_value, two.statistic) == (0.0, -math.inf)  # the candidate is worse, for certain
    assert ni.p_value == 1.0
    two, ni = welch_tests("log_loss", -np.full(50, 0.5), -np.full(40, 0.25), margin_effect=0.1)
    assert (two.p_value, ni.p_value) == (0.0, 0.0)  # better, and so not inferior
    two, ni = welch_tests("log_loss", -np.full(50, 0.25), -np.full(40, 0.25), margin_effect=0.1)
    assert (two.p_value, ni.p_value) == (1.0, 0.0)


def test_the_two_proportion_z_test_is_the_chi_square_test_of_the_2x2_table() -> None:
    two, ni = proportion_tests("accuracy", 7_650, 10_000, 820, 1_000, margin_effect=0.05)
    chi2, p, _dof, _expected = stats.chi2_contingency([[7_650, 2_350], [820, 180]], correction=False)
    assert two.statistic**2 == pytest.approx(chi2, rel=1e-9)
    assert two.p_value == pytest.approx(p, rel=1e-9)
    assert two.difference == pytest.approx(0.82 - 0.765)
    # Non-inferiority on the arcsine scale (Cohen's h), one-sided.
    h = 2 * math.asin(math.sqrt(0.82)) - 2 * math.asin(math.sqrt(0.765))
    z = (h + 0.05) / math.sqrt(1 / 10_000 + 1 / 1_000)
    assert ni.statistic == pytest.approx(z)
    assert ni.p_value == pytest.approx(stats.norm.sf(z))


def test_holm_bonferroni_adjusts_step_down_and_stays_monotone() -> None:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5]
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    assert holm([float("nan"), 0.001]) == pytest.approx([1.0, 0.002])
    from statsmodels.stats.multitest import multipletests

    ps = list(np.random.default_rng(3).uniform(0, 0.1, 7))
    assert holm(ps) == pytest.approx(list(multipletests(ps, method="holm")[1]))


def _paired_power(n: int, effect: float, alpha: float) -> float:
    """Exact power of the one-sided one-sample t-test (noncentral t)."""
    df = n - 1
    crit = stats.t.ppf(1 - alpha, df)
    return float(stats.nct.sf(crit, df, effect * math.sqrt(n)))


def test_the_minimum_sample_size_gives_the_configured_power() -> None:
    n = required_paired(0.05, 0.05, 0.8, metrics=2)
    assert n == math.ceil(((stats.norm.ppf(1 - 0.025) + stats.norm.ppf(0.8)) / 0.05) ** 2) == 3_140
    assert _paired_power(n, 0.05, 0.025) >= 0.799  # exact t: the normal approximation is within a hair
    assert _paired_power(int(n * 0.9), 0.05, 0.025) < 0.78  # and it is not needlessly large
    assert required_paired(0.05, 0.05, 0.8, metrics=2, test="wilcoxon") == math.ceil(
        ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / 0.05) ** 2 * math.pi / 3
    )
    # A canary of 10%: the champion's 90% and the challenger's 10% together.
    total = required_two_sample(0.05, 0.05, 0.8, share_b=0.1, metrics=2)
    assert 34_800 < total < 35_000
    se = math.sqrt(1 / (total * 0.9) + 1 / (total * 0.1))  # in SD units
    assert stats.norm.sf(stats.norm.ppf(0.975) - 0.05 / se) == pytest.approx(0.8, abs=0.002)
    with pytest.raises(ValueError):
        required_two_sample(0.05, 0.05, 0.8, share_b=0.0)


def _verdict(better: np.ndarray, n_required: int) -> object:
    two, ni = paired_tests("log_loss", better, margin_effect=0.05)
    return decide(
        "paired", 1, 2, ["2026-11-18"], [two], [ni], n=len(better), n_required=n_required, alpha=0.05, settings={}
    )


def test_the_verdicts_say_how_much_evidence_there_is() -> None:
    rng = np.random.default_rng(1)
    slightly_better = rng.normal(0.01, 0.2, 12_400)
    waiting = _verdict(slightly_better, 31_000)
    assert waiting.verdict == "insufficient"  # type: ignore[attr-defined]
    assert waiting.message == "not enough evidence yet: n=12,400 of 31,000"  # type: ignore[attr-defined]
    assert _verdict(slightly_better, 3_140).verdict == "supported"  # type: ignore[attr-defined]
    worse = _verdict(rng.normal(-0.05, 0.2, 2_000), 3_140)  # worse shows before the sample size is reached
    assert worse.verdict == "worse"  # type: ignore[attr-defined]
    assert "significantly worse" in worse.message  # type: ignore[attr-defined]
    noisy = _verdict(rng.normal(-0.004, 0.2, 3_200), 3_140)  # enough entities, but non-inferiority not shown
    assert noisy.verdict in ("undecided", "worse")  # type: ignore[attr-defined]
