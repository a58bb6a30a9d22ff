"""Monitoring: data quality and drift per committed partition, label quality, retraining decisions."""

from __future__ import annotations

from nightshift.monitoring.cbpe import estimate_performance
from nightshift.monitoring.checks import Check, run_checks, verdict
from nightshift.monitoring.history import (
    monitor_checks,
    monitor_history,
    plot_history,
    reference_for,
    retrain_requests,
)
from nightshift.monitoring.quality import DayQuality, LabelledDay, label_quality, labelled_day, quality_of_day
from nightshift.monitoring.reference import Reference, ReferenceUnavailable, build_reference, ensure_reference
from nightshift.monitoring.results import MonitorResult
from nightshift.monitoring.retrain import RetrainDecision, record_retrain_request, retrain_decision, retrain_run_id
from nightshift.monitoring.runner import monitor_partition, report_partition

__all__ = [
    "Check",
    "DayQuality",
    "LabelledDay",
    "MonitorResult",
    "Reference",
    "ReferenceUnavailable",
    "RetrainDecision",
    "build_reference",
    "ensure_reference",
    "estimate_performance",
    "label_quality",
    "labelled_day",
    "monitor_checks",
    "monitor_history",
    "monitor_partition",
    "plot_history",
    "quality_of_day",
    "record_retrain_request",
    "reference_for",
    "report_partition",
    "retrain_decision",
    "retrain_requests",
    "retrain_run_id",
    "run_checks",
    "verdict",
]
