"""The statistics behind outcome-driven decisions: tests per metric, Holm-Bonferroni, and the minimum sample size.

Every comparison is oriented so that a positive difference means *the candidate is better*
(for a loss: champion's loss - candidate's loss; for a rate: candidate's rate - champion's rate).

* **Same entities** (shadow, champion vs previous: both versions scored every entity): paired
  tests on the per-entity difference, a paired t-test (default) or the Wilcoxon signed-rank test.
* **Disjoint shares** (canary, bandit: each entity was served by one version): two-sample tests,
  Welch's t-test for continuous metrics (a loss, a reward), the two-proportion z-test for rates
  (its square is the chi-square statistic of the 2x2 table without continuity correction).
* Each metric gets two tests: a two-sided **difference** test (H0: no difference; a significant
  result in the candidate's disfavour aborts or rolls back) and a one-sided **non-inferiority** test
  (H0: the candidate is worse by at least the margin; rejecting it supports a promotion). The margin
  is the configured standardized effect size times the test's own scale (the SD of the paired
  differences, the pooled SD, or Cohen's h on the arcsine scale for rates).
* **Holm-Bonferroni** adjusts each family of p-values over the configured metrics.
* The **minimum sample size** is the one at which the one-sided tests at alpha/m (Bonferroni, the
  most Holm can demand) have the configured power against the configured effect size.

No I/O here: numpy and scipy on arrays, so each test can be checked against scipy on fixed data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Metrics of one entity that are rates (0/1 per entity); the others are continuous.
RATE_METRICS = frozenset({"accuracy"})
#: Per-entity metrics where lower is better.
LOSS_METRICS = frozenset({"log_loss", "brier", "squared_error", "absolute_error"})
#: The default outcome metrics of each task.
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("log_loss", "accuracy"),
    "multiclass": ("log_loss", "accuracy"),
    "regression": ("squared_error", "absolute_error"),
}
#: Asymptotic relative efficiency of the Wilcoxon signed-rank test against the t-test under normality (3/pi):
#: it needs about 1/0.955 times the t-test's sample size for the same power.
WILCOXON_ARE = 3 / math.pi


@dataclass
class TestResult:
    """One test of one metric. `difference` > 0: the candidate is better."""

    metric: str
    kind: str  # "difference" (two-sided, H0: equal) or "non_inferiority" (one-sided, H0: worse by >= margin)
    test: str
    statistic: float
    p_value: float
    difference: float
    n_a: int
    n_b: int
    margin: float = 0.0
    p_adjusted: float | None = None
    significant: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else float("nan")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down; monotone; NaN counts as 1)."""
    m = len(p_values)
    ps = [1.0 if not math.isfinite(p) else float(p) for p in p_values]
    order = sorted(range(m), key=lambda i: ps[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def _z(q: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(q))


def required_paired(effect: float, alpha: float, power: float, metrics: int = 1, test: str = "t") -> int:
    """Entities both versions scored needed for a one-sided paired test at alpha/metrics to have `power`
    against a standardized effect `effect` (Cohen's d_z): ((z_(1-alpha/m) + z_power) / d_z)^2, and 1/0.955
    times that for the Wilcoxon signed-rank test."""
    n = ((_z(1 - alpha / metrics) + _z(power)) / effect) ** 2
    if test == "wilcoxon":
        n /= WILCOXON_ARE
    return max(2, math.ceil(n))


def required_two_sample(effect: float, alpha: float, power: float, share_b: float, metrics: int = 1) -> int:
    """Entities in all (both groups together) needed for a one-sided two-sample test at alpha/metrics to have
    `power` against a standardized effect (Cohen's d, or h for rates) when a share `share_b` of them is
    served by the candidate: ((z_(1-alpha/m) + z_power) / d)^2 / (share_b (1 - share_b))."""
    if not 0 < share_b < 1:
        raise ValueError(f"share_b must be in (0, 1), got {share_b}")
    n = ((_z(1 - alpha / metrics) + _z(power)) / effect) ** 2 / (share_b * (1 - share_b))
    return max(4, math.ceil(n))


def paired_tests(
    metric: str, better: np.ndarray, *, margin_effect: float, test: str = "t"
) -> tuple[TestResult, TestResult]:
    """Difference (two-sided) and non-inferiority tests on per-entity paired differences `better`
    (> 0: the candidate is better on that entity). Margin: `margin_effect` x SD of the differences."""
    from scipy import stats

    d = np.asarray(better, dtype=np.float64)
    n = int(d.size)
    mean = float(d.mean()) if n else float("nan")
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    margin = margin_effect * sd if math.isfinite(sd) else float("nan")
    name = "paired t-test" if test == "t" else "Wilcoxon signed-rank test"
    detail = {"mean_difference": mean, "sd_difference": sd, "n": n}
    if n < 2:
        nan = float("nan")
        return (
            TestResult(metric, "difference", name, nan, nan, mean, n, n, detail=detail),
            TestResult(metric, "non_inferiority", name, nan, nan, mean, n, n, margin, detail=detail),
        )
    if sd == 0.0:  # every entity differs by the same amount (identical versions: by zero)
        diff = TestResult(
            metric,
            "difference",
            name,
            0.0 if mean == 0 else math.copysign(math.inf, mean),
            1.0 if mean == 0 else 0.0,
            mean,
            n,
            n,
            detail=detail,
        )
        ni = TestResult(
            metric,
            "non_inferiority",
            name,
            math.inf if mean >= 0 else -math.inf,
            0.0 if mean >= 0 else 1.0,
            mean,
            n,
            n,
            0.0,
            detail=detail,
        )
        return diff, ni
    if test == "t":
        two = stats.ttest_1samp(d, 0.0)
        one = stats.ttest_1samp(d, -margin, alternative="greater")
    else:
        two = stats.wilcoxon(d)
        one = stats.wilcoxon(d + margin, alternative="greater")
    return (
        TestResult(metric, "difference", name, _finite(two.statistic), float(two.pvalue), mean, n, n, detail=detail),
        TestResult(
            metric,
            "non_inferiority",
            name,
            _finite(one.statistic),
            float(one.pvalue),
            mean,
            n,
            n,
            margin,
            detail=detail,
        ),
    )


def welch_tests(metric: str, a: np.ndarray, b: np.ndarray, *, margin_effect: float) -> tuple[TestResult, TestResult]:
    """Welch's t-tests of a continuous metric, oriented so that larger is better: champion's values `a`,
    candidate's `b` (disjoint entities). Margin: `margin_effect` x the pooled SD."""
    from scipy import stats

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = int(a.size), int(b.size)
    diff = float(b.mean() - a.mean()) if na and nb else float("nan")
    pooled = (
        math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
        if na > 1 and nb > 1
        else float("nan")
    )
    margin = margin_effect * pooled if math.isfinite(pooled) else float("nan")
    detail = {
        "mean_champion": float(a.mean()) if na else None,
        "mean_candidate": float(b.mean()) if nb else None,
        "pooled_sd": pooled,
    }
    name = "Welch's t-test"
    if na < 2 or nb < 2:
        nan = float("nan")
        return (
            TestResult(metric, "difference", name, nan, nan, diff, na, nb, detail=detail),
            TestResult(metric, "non_inferiority", name, nan, nan, diff, na, nb, margin, detail=detail),
        )
    if pooled == 0.0:  # every entity of each group has the same value: the difference is exact, as in paired_tests
        return (
            TestResult(
                metric,
                "difference",
                name,
                0.0 if diff == 0 else math.copysign(math.inf, diff),
                1.0 if diff == 0 else 0.0,
                diff,
                na,
                nb,
                detail=detail,
            ),
            TestResult(
                metric,
                "non_inferiority",
                name,
                math.inf if diff >= 0 else -math.inf,
                0.0 if diff >= 0 else 1.0,
                diff,
                na,
                nb,
                0.0,
                detail=detail,
            ),
        )
    two = stats.ttest_ind(b, a, equal_var=False)
    one = stats.ttest_ind(b + margin, a, equal_var=False, alternative="greater")
    return (
        TestResult(metric, "difference", name, _finite(two.statistic), float(two.pvalue), diff, na, nb, detail=detail),
        TestResult(
            metric,
            "non_inferiority",
            name,
            _finite(one.statistic),
            float(one.pvalue),
            diff,
            na,
            nb,
            margin,
            detail=detail,
        ),
    )


def proportion_tests(
    metric: str, successes_a: int, n_a: int, successes_b: int, n_b: int, *, margin_effect: float
) -> tuple[TestResult, TestResult]:
    """Tests of a rate (e.g. correct decisions) on disjoint groups: champion `a`, candidate `b`.

    Difference: the pooled two-proportion z-test, two-sided (z^2 is the chi-square statistic of the 2x2
    table without continuity correction, and the p-values agree). Non-inferiority: on the arcsine scale
    (Cohen's h, variance 1/n per group): z = (phi_b - phi_a + h) / sqrt(1/n_a + 1/n_b), one-sided, h the margin.
    """
    from scipy import stats

    detail: dict[str, Any] = {
        "rate_champion": successes_a / n_a if n_a else None,
        "rate_candidate": successes_b / n_b if n_b else None,
    }
    if n_a == 0 or n_b == 0:
        nan = float("nan")
        return (
            TestResult(metric, "difference", "two-proportion z-test", nan, nan, nan, n_a, n_b, detail=detail),
            TestResult(
                metric,
                "non_inferiority",
                "arcsine z-test (Cohen's h)",
                nan,
                nan,
                nan,
                n_a,
                n_b,
                margin_effect,
                detail=detail,
            ),
        )
    pa_, pb_ = successes_a / n_a, successes_b / n_b
    diff = pb_ - pa_
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        z, p = 0.0, 1.0
    else:
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    detail["chi_square"] = z * z
    phi_a, phi_b = 2 * math.asin(math.sqrt(pa_)), 2 * math.asin(math.sqrt(pb_))
    detail["cohens_h"] = phi_b - phi_a
    z_ni = (phi_b - phi_a + margin_effect) / math.sqrt(1 / n_a + 1 / n_b)
    p_ni = float(stats.norm.sf(z_ni))
    return (
        TestResult(metric, "difference", "two-proportion z-test", z, p, diff, n_a, n_b, detail=detail),
        TestResult(
            metric,
            "non_inferiority",
            "arcsine z-test (Cohen's h)",
            z_ni,
            p_ni,
            diff,
            n_a,
            n_b,
            margin_effect,
            detail=detail,
        ),
    )


def adjust(results: list[TestResult], alpha: float) -> None:
    """Holm-Bonferroni over the results of one kind (one test per metric), in place."""
    adjusted = holm([r.p_value for r in results])
    for r, p in zip(results, adjusted, strict=True):
        r.p_adjusted = p
        r.significant = p < alpha


@dataclass
class Comparison:
    """A candidate against a baseline on labelled outcomes: the tests, the sample sizes and what they support.

    `verdict`: 'worse' (a difference test significant in the baseline's favour), 'supported' (enough
    evidence and every non-inferiority test significant), 'undecided' (enough evidence, non-inferiority not
    shown yet) or 'insufficient' (fewer entities than the power calculation asks for).
    """

    design: str  # "paired" or "two-sample"
    baseline: int
    candidate: int
    days: list[str]
    n: int
    n_required: int
    tests: list[TestResult]
    verdict: str
    message: str
    settings: dict[str, Any] = field(default_factory=dict)
    better: list[str] = field(default_factory=list)
    worse: list[str] = field(default_factory=list)

    @property
    def enough(self) -> bool:
        return self.n >= self.n_required

    def as_dict(self) -> dict[str, Any]:
        from nightshift.jsonsafe import json_safe

        out = asdict(self)
        out["enough"] = self.enough
        return dict(json_safe(out))


def decide(
    design: str,
    baseline: int,
    candidate: int,
    days: list[str],
    difference: list[TestResult],
    non_inferiority: list[TestResult],
    *,
    n: int,
    n_required: int,
    alpha: float,
    settings: dict[str, Any],
) -> Comparison:
    """Holm-adjust both families and turn them into a verdict (see Comparison)."""
    adjust(difference, alpha)
    adjust(non_inferiority, alpha)
    worse = [r.metric for r in difference if r.significant and r.difference < 0]
    better = [r.metric for r in difference if r.significant and r.difference > 0]
    shown = all(bool(r.significant) for r in non_inferiority) and bool(non_inferiority)
    if worse:
        tests = ", ".join(
            f"{r.metric}: {r.test} p={r.p_adjusted:.3g} (Holm), difference {r.difference:+.4g}"
            for r in difference
            if r.metric in worse
        )
        verdict, message = "worse", f"v{candidate} significantly worse than v{baseline} ({tests})"
    elif n < n_required:
        verdict, message = "insufficient", f"not enough evidence yet: n={n:,} of {n_required:,}"
    elif shown:
        verdict = "supported"
        worst_p = max(1.0 if r.p_adjusted is None else r.p_adjusted for r in non_inferiority)  # 0.0 is a p-value
        message = (
            f"v{candidate} not worse than v{baseline} on {', '.join(r.metric for r in non_inferiority)} "
            + (f"and better on {', '.join(better)} " if better else "")
            + f"(n={n:,} >= {n_required:,}; non-inferiority p={worst_p:.3g})"
        )
    else:
        pending = [r.metric for r in non_inferiority if not r.significant]
        verdict, message = "undecided", f"non-inferiority not shown yet on {', '.join(pending)} (n={n:,})"
    return Comparison(
        design,
        baseline,
        candidate,
        days,
        n,
        n_required,
        [*difference, *non_inferiority],
        verdict,
        message,
        settings,
        better,
        worse,
    )
