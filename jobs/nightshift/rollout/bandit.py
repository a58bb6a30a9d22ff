"""Bandit rollouts: Thompson sampling among K versions on delayed labelled rewards, stable hash routing of entities.

Why Thompson sampling (probability matching): each night every arm gets the share of entities equal to
the posterior probability that it is the best arm, given every labelled reward so far. It needs no
tuning constant (unlike epsilon-greedy or UCB's exploration weight), it explores exactly as much as
the evidence leaves in doubt, it handles batched, delayed feedback gracefully (a night's allocation
is a smooth function of the posterior, so a late label moves it only a little), and its regret is
asymptotically optimal for Bernoulli rewards (Agrawal & Goyal 2012). A floor share per arm keeps
every arm learning (and its outcomes measurable) while the rollout runs.

* Rewards: 'correct' (the served decision matched the label: Bernoulli, Beta(1, 1) prior; a
  regression: minus the absolute error, Gaussian) or a numeric column of the labels (Gaussian: the
  mean's posterior is Normal(mean, s^2 / n); an arm with fewer than two rewards borrows the pooled
  mean and SD).
* Allocation: P(arm k is best) from `draws` joint posterior draws (seeded by model and night, so a
  night's allocation is reproducible), then share_k = floor + (1 - K floor) P_k.
* Routing: an entity's bucket is a stable hash of (model, entity id) in [0, 1); the arms, in version
  order, own consecutive intervals of [0, 1) as wide as their shares (`arm_for`). The same entities
  stay with an arm while shares stay; a reallocation moves only the entities near the boundaries.
  The nightly rollout runs the bandit between the champion and the candidate (K = 2): there the
  candidate's interval is [0, share) of the canary's buckets (`canary.serves_challenger`), so the
  lookup API routes a bandit exactly as it routes a canary, by the share the night published.
  `allocate` and `simulate` take any K.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def arm_bucket(model: str, entity_id: str) -> float:
    """A stable number in [0, 1) per (model, entity), independent of the canary's buckets."""
    digest = hashlib.blake2b(f"bandit\x00{model}\x00{entity_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def arm_for(model: str, entity_id: str, arms: Sequence[tuple[int, float]]) -> int:
    """The version whose arm serves an entity: `arms` is (version, share) in any order; shares sum to 1."""
    ordered = sorted(arms)
    u = arm_bucket(model, entity_id)
    edge = 0.0
    for version, share in ordered:
        edge += share
        if u < edge:
            return version
    return ordered[-1][0]


def assign_arms(model: str, entity_ids: Sequence[str], arms: Sequence[tuple[int, float]]) -> np.ndarray:
    """The serving version of each entity (vectorised over the ids' buckets)."""
    import numpy as np

    ordered = sorted(arms)
    versions = np.asarray([v for v, _ in ordered], dtype=np.int64)
    edges = np.cumsum([s for _, s in ordered])
    edges[-1] = 1.0
    buckets = np.fromiter((arm_bucket(model, e) for e in entity_ids), dtype=np.float64, count=len(entity_ids))
    return versions[np.minimum(np.searchsorted(edges, buckets, side="right"), len(versions) - 1)]


@dataclass
class ArmStats:
    """The labelled rewards of one arm so far."""

    version: int
    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")

    @property
    def var(self) -> float:
        if self.n < 2:
            return float("nan")
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))

    def add(self, rewards: np.ndarray) -> None:
        import numpy as np

        r = np.asarray(rewards, dtype=np.float64)
        self.n += int(r.size)
        self.total += float(r.sum())
        self.total_sq += float((r * r).sum())


@dataclass
class Allocation:
    """One night's shares: version → share, with the posterior probability that each arm is the best."""

    shares: dict[int, float]
    p_best: dict[int, float]
    arms: list[dict[str, Any]] = field(default_factory=list)
    reward: str = "correct"
    kind: str = "bernoulli"
    seed: int = 0
    floor: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        from nightshift.jsonsafe import json_safe

        out = asdict(self)
        out["shares"] = {str(k): v for k, v in self.shares.items()}
        out["p_best"] = {str(k): v for k, v in self.p_best.items()}
        return dict(json_safe(out))


def night_seed(model: str, ds: Any) -> int:
    """A reproducible seed per (model, night)."""
    return int.from_bytes(hashlib.blake2b(f"{model}\x00{ds}".encode(), digest_size=8).digest(), "big")


def p_best(stats: Sequence[ArmStats], *, kind: str, draws: int, seed: int) -> dict[int, float]:
    """P(arm is the best) under each arm's posterior, from `draws` joint draws (ties split evenly)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    k = len(stats)
    if kind == "bernoulli":
        samples = np.column_stack([rng.beta(1 + s.total, 1 + (s.n - s.total), draws) for s in stats])
    else:
        known = [s for s in stats if s.n >= 2]
        n_all = sum(s.n for s in stats)
        pooled_mean = sum(s.total for s in stats) / n_all if n_all else 0.0
        pooled_var = (
            max(0.0, (sum(s.total_sq for s in stats) - n_all * pooled_mean**2) / (n_all - 1)) if n_all > 1 else 1.0
        )
        cols = []
        for s in stats:
            if s in known:
                sd = float(np.sqrt(max(s.var, 1e-12) / s.n))
                cols.append(rng.normal(s.mean, sd, draws))
            else:  # nothing learnt yet: as uncertain as one pooled draw
                cols.append(rng.normal(pooled_mean, float(np.sqrt(max(pooled_var, 1e-12))), draws))
        samples = np.column_stack(cols)
    best = samples.max(axis=1, keepdims=True)
    winners = samples == best
    weights = winners / winners.sum(axis=1, keepdims=True)
    probs = weights.mean(axis=0)
    return {s.version: float(probs[i]) for i, s in enumerate(stats)} if k else {}


def allocate(
    stats: Sequence[ArmStats], *, kind: str, floor: float, draws: int, seed: int, reward: str = "correct"
) -> Allocation:
    """Thompson sampling's allocation with a floor share per arm (see the module's docstring)."""
    k = len(stats)
    if k == 0:
        raise ValueError("a bandit needs at least one arm")
    floor = min(floor, 1.0 / k)
    probs = p_best(stats, kind=kind, draws=draws, seed=seed)
    shares = {v: floor + (1.0 - k * floor) * p for v, p in probs.items()}
    total = sum(shares.values())
    shares = {v: s / total for v, s in shares.items()}
    arms = [
        {"version": s.version, "n": s.n, "mean_reward": s.mean, "p_best": probs[s.version], "share": shares[s.version]}
        for s in stats
    ]
    return Allocation(shares, probs, arms, reward, kind, seed, floor)


def equal_allocation(versions: Sequence[int]) -> dict[int, float]:
    return {v: 1.0 / len(versions) for v in versions}


# -- simulation: convergence and regret on simulated rewards ----------------------------------------


@dataclass
class Simulation:
    """Nightly shares of a simulated bandit, and its cumulative regret against a fixed equal split."""

    true_means: dict[int, float]
    entities_per_night: int
    nights: int
    label_delay: int
    floor: float
    seed: int
    kind: str
    shares: list[dict[int, float]]
    regret: list[float]
    regret_fixed: list[float]
    nights_to_80: int | None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shares"] = [{str(k): round(v, 4) for k, v in s.items()} for s in self.shares]
        out["true_means"] = {str(k): v for k, v in self.true_means.items()}
        return out

    def table(self) -> str:
        """A Markdown table: night, each arm's share, cumulative regret of the bandit and of the fixed split."""
        arms = sorted(self.true_means)
        head = "| night | " + " | ".join(f"share v{a} (mean {self.true_means[a]:g})" for a in arms)
        head += " | cumulative regret, bandit | cumulative regret, fixed equal split |"
        lines = [head, "|" + "---|" * (len(arms) + 3)]
        for i, s in enumerate(self.shares):
            lines.append(
                f"| {i + 1} | "
                + " | ".join(f"{s[a]:.1%}" for a in arms)
                + f" | {self.regret[i]:,.0f} | {self.regret_fixed[i]:,.0f} |"
            )
        return "\n".join(lines)


def simulate(
    true_means: dict[int, float],
    *,
    nights: int = 14,
    entities_per_night: int = 5_000,
    floor: float = 0.05,
    label_delay: int = 1,
    draws: int = 20_000,
    seed: int = 7,
    kind: str = "bernoulli",
    reward_sd: float = 1.0,
    model: str = "sim",
) -> Simulation:
    """Run the nightly allocation on simulated rewards (Bernoulli with the given means, or Gaussian with
    `reward_sd`), each night's rewards landing `label_delay` nights later; deterministic by `seed`.

    Regret of a night: sum over entities of (best mean - mean of the arm that served it); the fixed split
    serves every arm an equal share every night.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    versions = sorted(true_means)
    best = max(true_means.values())
    stats = {v: ArmStats(v) for v in versions}
    pending: list[tuple[int, dict[int, np.ndarray]]] = []
    shares_log: list[dict[int, float]] = []
    regret: list[float] = []
    regret_fixed: list[float] = []
    total = total_fixed = 0.0
    reached: int | None = None
    best_arm = max(versions, key=lambda v: true_means[v])
    shares = equal_allocation(versions)
    ids = [str(i) for i in range(entities_per_night)]
    buckets = None
    for night in range(nights):
        if night > 0:
            shares = allocate(
                [stats[v] for v in versions], kind=kind, floor=floor, draws=draws, seed=seed * 1_000 + night
            ).shares
        shares_log.append(dict(shares))
        if reached is None and shares[best_arm] >= 0.8:
            reached = night + 1
        if buckets is None:
            buckets = np.fromiter((arm_bucket(model, e) for e in ids), dtype=np.float64, count=len(ids))
        edges = np.cumsum([shares[v] for v in versions])
        edges[-1] = 1.0
        served = np.asarray(versions)[np.minimum(np.searchsorted(edges, buckets, side="right"), len(versions) - 1)]
        rewards: dict[int, np.ndarray] = {}
        for v in versions:
            n_v = int((served == v).sum())
            if kind == "bernoulli":
                rewards[v] = (rng.random(n_v) < true_means[v]).astype(np.float64)
            else:
                rewards[v] = rng.normal(true_means[v], reward_sd, n_v)
            total += n_v * (best - true_means[v])
        total_fixed += sum(entities_per_night / len(versions) * (best - true_means[v]) for v in versions)
        regret.append(total)
        regret_fixed.append(total_fixed)
        pending.append((night + label_delay, rewards))
        for _due, got in [p for p in pending if p[0] <= night]:
            for v, r in got.items():
                stats[v].add(r)
        pending = [p for p in pending if p[0] > night]
    return Simulation(
        dict(true_means),
        entities_per_night,
        nights,
        label_delay,
        floor,
        seed,
        kind,
        shares_log,
        regret,
        regret_fixed,
        reached,
    )
