"""The demo: a synthetic churn dataset (`demo.data`) and one whole drift → retrain → rollout loop (`demo.loop`)."""

from __future__ import annotations

from nightshift.demo.data import (
    DEMO_ENTITY_ID,
    DEMO_LABEL,
    DEMO_NEXT_PLAN,
    DEMO_SPEND,
    DemoSummary,
    DriftSpec,
    Seasonality,
    check_drift,
    demo_contract,
    generate,
    parse_drift,
)

__all__ = [
    "DEMO_ENTITY_ID",
    "DEMO_LABEL",
    "DEMO_NEXT_PLAN",
    "DEMO_SPEND",
    "DemoSummary",
    "DriftSpec",
    "Seasonality",
    "check_drift",
    "demo_contract",
    "generate",
    "parse_drift",
]
