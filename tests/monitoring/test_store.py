"""Monitoring on real SQLite and PostgreSQL: stored verdicts and history, label quality, retraining decisions."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from nightshift.db import open_store
from nightshift.db.schema import monitor_checks as checks_table
from nightshift.monitoring import (
    label_quality,
    monitor_checks,
    monitor_history,
    monitor_partition,
    record_retrain_request,
    retrain_decision,
    retrain_requests,
)
from nightshift.monitoring.checks import FAIL, INSUFFICIENT, PASS, Check
from nightshift.monitoring.results import MonitorResult, save_result
from nightshift.scoring import score_partition
from tests.monitoring.conftest import CLEAN_DAYS, NEW_CATEGORY_DAY, TRAIN_DAYS


def test_monitor_stores_verdicts_history_quality_and_triggers_once(
    store_url: str, mon_settings: Callable[..., Any], mon_registered: Callable[[Any], Any], dask_client: Any
) -> None:
    settings = mon_settings(
        store_url, "volume_min_history = 1\nretrain_failing_nights = 1\nretrain_window_nights = 2\n"
    )
    mv = mon_registered(settings)
    clean, drifted = CLEAN_DAYS[-1], NEW_CATEGORY_DAY
    for day in (clean, drifted):
        score_partition(settings, "churn", day, client=dask_client)

    ok = monitor_partition(settings, "churn", clean)
    assert ok.status == PASS
    assert ok.ok is True
    assert ok.version == mv.version
    assert ok.sampled_rows == 2000
    assert ok.rows == 3000
    assert ok.summary["sample"]["method"].startswith("bottom-k")
    assert ok.summary["missing_scores"] == 0  # every sampled row has its committed score
    bad = monitor_partition(settings, "churn", drifted)
    assert bad.status == FAIL
    assert bad.ok is False
    failing = {(c.kind, c.column) for c in bad.failed}
    assert {("drift", "monthly_charges"), ("new_category", "plan")} <= failing
    assert next(c for c in bad.checks if c.kind == "row_count").status == PASS  # vs the clean day's volume

    first = retrain_decision(settings, "churn", drifted)
    assert first.trigger
    assert not first.replayed
    assert first.run_id == f"retrain__churn__{drifted.isoformat()}__drift"
    assert any(b["check"] == "new_category" and b["column"] == "plan" for b in first.breaches)

    again = monitor_partition(settings, "churn", drifted)  # the same failing ds, monitored twice
    second = retrain_decision(settings, "churn", drifted)
    assert second.trigger
    assert second.replayed
    assert second.run_id == first.run_id
    assert [r["request_id"] for r in retrain_requests(settings, "churn")] == [first.run_id]

    runs = monitor_history(settings, "churn", kind="data")
    assert [(r["ds"], r["status"]) for r in runs] == [(drifted, FAIL), (clean, PASS)]
    assert runs[0]["failed_checks"] == len(bad.failed)
    assert runs[0]["sampled_rows"] == 2000
    stored = monitor_checks(settings, "churn", drifted)
    assert len(stored) == len(again.checks)
    assert any(c["kind"] == "new_category" and c["column_name"] == "plan" and c["passed"] is False for c in stored)
    store = open_store(settings)
    with store.connect() as conn:  # the replaced run's checks are gone
        assert conn.execute(sa.select(sa.func.count()).select_from(checks_table)).scalar_one() == len(ok.checks) + len(
            again.checks
        )

    quality = label_quality(settings, "churn", drifted)
    metrics = quality.summary["metrics"]
    assert quality.kind == "quality"
    assert metrics["n"] == 3000
    assert 0.6 < metrics["roc_auc"] <= 1.0
    assert 0 < metrics["base_rate"] < 1
    assert metrics["log_loss"] > 0
    settings.model("churn").monitoring.min_roc_auc = 0.999
    strict = label_quality(settings, "churn", drifted)
    assert strict.status == FAIL
    assert [c.kind for c in strict.failed] == ["roc_auc"]
    assert {r["kind"] for r in monitor_history(settings, "churn", since=drifted)} == {"data", "quality"}
    folder = Path(mv.artifact_uri).parent / "monitoring"
    assert (folder / "reference.json").is_file()
    assert (folder / "reference.parquet").is_file()


def _night(settings: Any, day: date, status: str, kind: str = "data") -> None:
    check = Check("drift", "age", "wasserstein_normed", 0.5 if status == FAIL else 0.01, 0.1, status, 100, True)
    result = MonitorResult("churn", 1, day, kind, status, [check], 100, 100, {"status": status})
    store = open_store(settings)
    save_result(store, result)
    store.dispose()


def test_retraining_hysteresis_cooldown_and_requests(store_url: str, mon_settings: Callable[..., Any]) -> None:
    settings = mon_settings(
        store_url, "retrain_failing_nights = 2\nretrain_window_nights = 3\nretrain_cooldown_days = 5\n"
    )
    d = [date(2026, 12, 1) + timedelta(days=i) for i in range(20)]

    def decide(day: date) -> Any:
        return retrain_decision(settings, "churn", day, version=1)

    _night(settings, d[1], FAIL)
    assert "hysteresis: 1 of the last 3" in decide(d[1]).reason
    _night(settings, d[2], PASS)
    assert not decide(d[2]).trigger  # ds itself passed
    _night(settings, d[3], FAIL)
    fired = decide(d[3])  # d1 and d3 fail among d1..d3
    assert fired.trigger
    assert fired.failing_nights == [d[1], d[3]]
    assert not fired.replayed
    assert decide(d[3]).replayed  # idempotent per ds
    _night(settings, d[4], FAIL)
    cooled = decide(d[4])
    assert not cooled.trigger
    assert cooled.reason.startswith("cooldown")
    assert fired.run_id in cooled.reason
    _night(settings, d[8], FAIL)
    _night(settings, d[9], INSUFFICIENT)
    assert not decide(d[9]).trigger
    _night(settings, d[9], FAIL)  # re-monitored: now it failed
    later = decide(d[9])  # 6 days after the last trigger, beyond the 5-day cooldown
    assert later.trigger
    assert later.failing_nights == [d[8], d[9]]
    _night(settings, d[5], FAIL)
    assert decide(d[5]).reason.startswith("cooldown")  # a backfill between two triggers
    _night(settings, d[15], PASS)
    _night(settings, d[15], FAIL, kind="quality")  # label quality fails a night too
    _night(settings, d[16], FAIL, kind="quality")
    assert decide(d[16]).trigger
    assert [r["ds"] for r in retrain_requests(settings, "churn")] == [d[16], d[9], d[3]]

    request, created = record_retrain_request(settings, "churn", d[18], "new labels policy", version=1)
    assert created
    assert request["source"] == "manual"
    assert request["request_id"] == "retrain__churn__2026-12-19__manual"
    assert record_retrain_request(settings, "churn", d[18], "again")[1] is False
    assert len(retrain_requests(settings, "churn")) == 4


def test_empty_committed_partition_is_insufficient_data(
    tmp_path: Path, mon_root: Path, mon_registered: Callable[[Any], Any], sqlite_url: str, dask_client: Any
) -> None:
    from nightshift.config import load_settings
    from tests.conftest import write_project
    from tests.monitoring.conftest import BASE_MONITORING

    data = tmp_path / "data"
    for sub in ("features", "labels"):
        for day in TRAIN_DAYS:
            shutil.copytree(mon_root / sub / f"ds={day}", data / sub / f"ds={day}")
    empty_day = date(2026, 11, 12)
    folder = data / "features" / f"ds={empty_day}"
    folder.mkdir(parents=True)
    schema = pq.read_schema(next((mon_root / "features" / f"ds={TRAIN_DAYS[0]}").glob("*.parquet")))
    pq.write_table(schema.empty_table(), folder / "part-00000.parquet")
    (folder / "_SUCCESS").write_bytes(b"")
    settings = load_settings(
        write_project(tmp_path, sqlite_url, data, extra_model='empty_partition = "commit"\n' + BASE_MONITORING)
    )
    mon_registered(settings)
    score_partition(settings, "churn", empty_day, client=dask_client)
    result = monitor_partition(settings, "churn", empty_day, report=True)
    assert result.status == INSUFFICIENT
    assert result.ok is None
    assert result.rows == 0
    assert result.report_uri is None
    assert "no rows" in result.summary["report_error"]
    assert monitor_history(settings, "churn")[0]["status"] == INSUFFICIENT


def test_monitoring_an_uncommitted_partition_raises(
    sqlite_url: str, mon_settings: Callable[..., Any], mon_registered: Callable[[Any], Any]
) -> None:
    from nightshift.errors import PartitionNotReady

    settings = mon_settings(sqlite_url)
    mon_registered(settings)
    with pytest.raises(PartitionNotReady, match="no committed partition"):
        monitor_partition(settings, "churn", CLEAN_DAYS[0])
