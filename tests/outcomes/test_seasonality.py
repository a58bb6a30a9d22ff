"""Seasonal demo data (weekly cycle, slow trend; every draw as before when off) and weekday references."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from nightshift.demo import Seasonality, generate
from nightshift.demo.data import SEASONAL_COLUMNS, TREND_ANCHOR, TREND_COLUMNS

MONDAY = date(2026, 11, 16)


def _day(root: Path, ds: date, kind: str = "features") -> Any:
    return pq.read_table(root / kind / f"ds={ds.isoformat()}").sort_by("customer_id")


def test_seasonality_off_keeps_every_value_and_on_scales_only_its_columns(tmp_path: Path) -> None:
    saturday = date(2026, 11, 21)
    kw: dict[str, Any] = {"start": saturday, "days": 1, "rows_per_day": 2_000, "files_per_day": 1, "seed": 3}
    generate(tmp_path / "plain" / "features", tmp_path / "plain" / "labels", **kw)
    generate(tmp_path / "off" / "features", tmp_path / "off" / "labels", seasonality=Seasonality(), **kw)
    season = Seasonality(weekly=0.15, trend_per_year=0.05)
    generate(tmp_path / "on" / "features", tmp_path / "on" / "labels", seasonality=season, **kw)
    plain, off, on = (_day(tmp_path / k, saturday) for k in ("plain", "off", "on"))
    assert off.equals(plain)
    assert _day(tmp_path / "on", saturday, "labels").equals(_day(tmp_path / "plain", saturday, "labels"))
    factors = season.factors(saturday)
    weekly = 1 + 0.15 * math.cos(2 * math.pi * (5 - 5.5) / 7)  # Saturday: near the weekly peak
    grow = 1 + 0.05 * (saturday - TREND_ANCHOR).days / 365
    assert factors["streaming_hours_30d"] == pytest.approx(weekly * grow)
    assert factors["logins_30d"] == pytest.approx(weekly)
    assert factors["monthly_charges"] == pytest.approx(grow)
    for name in plain.column_names:
        a, b = plain.column(name).to_pylist(), on.column(name).to_pylist()
        if name in SEASONAL_COLUMNS or name in TREND_COLUMNS:
            ratio = sum(x for x in b if x is not None) / sum(x for x in a if x is not None)
            assert ratio == pytest.approx(factors[name], rel=0.01), name
        else:
            assert a == b, name
    tuesday = Seasonality(weekly=0.15).factors(date(2026, 11, 17))["logins_30d"]
    assert tuesday < 1 < weekly  # lowest mid-week, highest at the weekend


@pytest.mark.timeout(900)
def test_weekly_seasonality_checks_a_night_against_the_reference_days_of_its_weekday(
    tmp_path: Path, sqlite_url: str, dask_client: Any
) -> None:
    from nightshift.config import load_settings
    from nightshift.monitoring import monitor_partition
    from nightshift.scoring import score_partition
    from nightshift.training import train_and_register
    from tests.conftest import write_project

    data = tmp_path / "data"
    generate(
        data / "features",
        data / "labels",
        start=MONDAY,
        days=9,
        rows_per_day=1_500,
        files_per_day=1,
        seed=3,
        seasonality=Seasonality(weekly=0.3),
    )
    extra = '[models.monitoring]\nseasonality = "weekly"\nreport = false\n'
    settings = load_settings(write_project(tmp_path, sqlite_url, data, extra_model=extra))
    train_and_register(settings, "churn", date(2026, 11, 17))  # trained (and referenced) on Monday and Tuesday
    monday, wednesday = date(2026, 11, 23), date(2026, 11, 18)
    for ds in (monday, wednesday):
        score_partition(settings, "churn", ds, client=dask_client)
    night = monitor_partition(settings, "churn", monday, report=False)
    assert night.summary["reference"]["partitions"] == ["2026-11-16"]  # its own weekday: no weekly swing
    assert night.status == "pass", night.summary["failed"]
    assert Path(night.summary["reference"]["uri"]).name == "weekday-0"
    # A weekday the training window does not cover: the whole reference (and the weekly swing shows).
    other = monitor_partition(settings, "churn", wednesday, report=False)
    assert other.summary["reference"]["partitions"] == ["2026-11-16", "2026-11-17"]
