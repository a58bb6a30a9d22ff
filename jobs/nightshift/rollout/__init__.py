"""Rollout: candidates, gates, strategies, approval, promotion and rollback (`lifecycle`), canary routing
(`canary`), champion vs challenger on outcomes (`compare`)."""

from __future__ import annotations

from nightshift.rollout.canary import canary_bucket, serves_challenger
from nightshift.rollout.compare import compare_versions
from nightshift.rollout.lifecycle import CHALLENGER, PREVIOUS, RetrainOutcome, RolloutError, Rollouts

__all__ = [
    "CHALLENGER",
    "PREVIOUS",
    "RetrainOutcome",
    "RolloutError",
    "Rollouts",
    "canary_bucket",
    "compare_versions",
    "serves_challenger",
]
