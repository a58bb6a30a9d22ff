"""The report task builds the HTML from what monitoring stored (no feature file read) and says what the night was."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nightshift.scoring import score_partition
from tests.monitoring.conftest import CLEAN_DAYS, MON_ROWS, NEW_CATEGORY_DAY

#: Evidently renders a plot per drift column (~0.2 s each): these tests keep four.
KEEP = {"monthly_charges", "age", "plan", "region"}


@pytest.fixture
def night(
    sqlite_url: str,
    mon_settings: Callable[..., Any],
    mon_registered: Callable[[Any], Any],
    dask_client: Any,
    tmp_path: Path,
) -> Any:
    """Settings with a scored failing night (a new category in `plan`) and a private copy of its feature files."""
    skip = [c.name for c in mon_settings(sqlite_url).model("churn").contract.columns if c.name not in KEEP]
    overrides = "".join(f"[models.monitoring.columns.{c}]\ndrift = false\n" for c in skip)
    settings = mon_settings(sqlite_url, overrides)
    mon_registered(settings)
    for day in (CLEAN_DAYS[-1], NEW_CATEGORY_DAY):
        score_partition(settings, "churn", day, client=dask_client)
    return settings


def _hide_features(settings: Any, day: Any) -> Callable[[], None]:
    """Move the night's feature files away (the report task must not need them); returns the undo."""
    folder = Path(settings.model("churn").dataset_uri(settings)) / f"ds={day.isoformat()}"
    hidden = folder.with_name(folder.name + ".hidden")
    shutil.move(folder, hidden)
    return lambda: shutil.move(hidden, folder)


def test_the_report_task_reads_no_feature_file_and_puts_the_verdict_first(night: Any) -> None:
    from nightshift.monitoring import monitor_partition, report_partition

    result = monitor_partition(night, "churn", NEW_CATEGORY_DAY, report=False, alert=False)
    assert result.status == "fail"
    stored = result.summary["report_sample"]
    assert Path(stored["uri"]).is_file()
    assert stored["rows"] == night.model("churn").monitoring.report_rows  # bounded by report_rows
    restore = _hide_features(night, NEW_CATEGORY_DAY)
    try:
        uri = report_partition(night, "churn", NEW_CATEGORY_DAY)
    finally:
        restore()
    page = Path(uri).read_text()
    body = page[page.index("<body") :]
    head = body[: body.index("nightshift-verdict") + 6000]
    # Which night and its verdict, then the failed checks: before any of Evidently's widgets.
    assert f"churn v1 · ds={NEW_CATEGORY_DAY.isoformat()}" in head
    assert "FAIL" in head
    failed = [c for c in result.checks if c.failing]
    assert f"{len(failed)} failed check(s)" in head
    assert "new_category" in head
    assert body.index("nightshift-verdict") < body.index("root_metric")
    scored = f"{MON_ROWS:,}"
    assert re.search(rf"300 sample rows vs {scored} scored rows", head), head[:2000]
    # The sample's size is never shown as the night's "Row count".
    assert "Row count" not in page
    # The stored result now points at the report.
    from nightshift.monitoring import monitor_history

    (latest,) = [r for r in monitor_history(night, "churn", kind="data") if r["ds"] == NEW_CATEGORY_DAY]
    assert latest["report_uri"] == uri


def test_a_night_without_a_stored_sample_is_rebuilt_from_the_partition(night: Any) -> None:
    from nightshift.monitoring import monitor_partition, report_partition

    result = monitor_partition(night, "churn", CLEAN_DAYS[-1], report=False, alert=False)
    Path(result.summary["report_sample"]["uri"]).unlink()  # e.g. monitored by an older version
    uri = report_partition(night, "churn", CLEAN_DAYS[-1])
    head = Path(uri).read_text()
    assert f"churn v1 · ds={CLEAN_DAYS[-1].isoformat()}" in head
    assert "sample rows vs" in head


def test_the_in_process_report_has_the_same_header(night: Any) -> None:
    from nightshift.monitoring import monitor_partition

    result = monitor_partition(night, "churn", NEW_CATEGORY_DAY, report=True, alert=False)
    assert result.report_uri
    page = Path(result.report_uri).read_text()
    assert f"churn v1 · ds={NEW_CATEGORY_DAY.isoformat()}: " in page
    assert "sample rows vs" in page
