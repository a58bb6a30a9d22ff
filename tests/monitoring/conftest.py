"""Monitoring fixtures: eight demo days with drift injected from day six on, a reference, settings per store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

MON_START = date(2026, 11, 10)
MON_DAYS = 8
MON_ROWS = 3_000
TRAIN_DAYS = [date(2026, 11, 10), date(2026, 11, 11)]
CLEAN_DAYS = [date(2026, 11, 12), date(2026, 11, 13), date(2026, 11, 14)]
MEAN_SHIFT_DAY = date(2026, 11, 15)  # monthly_charges + 1 sd from here on
NEW_CATEGORY_DAY = date(2026, 11, 16)  # 5% of plan = "plan_x" from here on
MISSING_SPIKE_DAY = date(2026, 11, 17)  # 30% of tenure_months missing from here on

#: Small, fast monitoring settings for tests: no HTML report unless a test asks for it.
BASE_MONITORING = """
[models.monitoring]
report = false
sample_rows = 2000
reference_rows = 4000
report_rows = 300
min_rows = 200
"""


@pytest.fixture(scope="session")
def mon_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Features and labels for MON_DAYS days with a mean shift, a new category and a missing spike injected."""
    from nightshift.demo import DriftSpec, generate

    root = tmp_path_factory.mktemp("mon")
    generate(
        root / "features",
        root / "labels",
        start=MON_START,
        days=MON_DAYS,
        rows_per_day=MON_ROWS,
        files_per_day=2,
        seed=11,
        drift=[
            DriftSpec("mean_shift", "monthly_charges", 1.0, MEAN_SHIFT_DAY),
            DriftSpec("new_category", "plan", 0.05, NEW_CATEGORY_DAY),
            DriftSpec("missing_spike", "tenure_months", 0.3, MISSING_SPIKE_DAY),
        ],
    )
    return root


def day_files(root: Path, day: date) -> list[str]:
    return sorted(str(p) for p in (root / "features" / f"ds={day.isoformat()}").glob("*.parquet"))


@pytest.fixture(scope="session")
def mon_cfg(mon_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The demo model's settings (monitoring as in BASE_MONITORING) for pure-function tests."""
    from nightshift.config import load_settings
    from tests.conftest import write_project

    folder = tmp_path_factory.mktemp("moncfg")
    settings = load_settings(
        write_project(folder, f"sqlite:///{folder / 'unused.db'}", mon_root, extra_model=BASE_MONITORING)
    )
    return settings.model("churn")


@pytest.fixture(scope="session")
def mon_reference(mon_root: Path, mon_cfg: Any, trained_model: Any) -> Any:
    """The reference of the session's model over the two training days (built in memory, not saved)."""
    from nightshift.monitoring.reference import reference_from_files

    uris = [u for d in TRAIN_DAYS for u in day_files(mon_root, d)]
    return reference_from_files(
        uris,
        mon_cfg.contract,
        trained_model.onnx_bytes,
        model="churn",
        version=1,
        uri="memory://unused",
        cap=mon_cfg.monitoring.reference_rows,
        seed=mon_cfg.monitoring.sample_seed,
    )


@pytest.fixture
def mon_settings(tmp_path: Path, mon_root: Path) -> Callable[..., Any]:
    """Settings over the monitoring dataset for a store URL; `monitoring` adds keys to [models.monitoring]."""
    from nightshift.config import load_settings
    from tests.conftest import write_project

    def _make(store_url: str, monitoring: str = "") -> Any:
        extra = BASE_MONITORING + monitoring
        return load_settings(write_project(tmp_path, store_url, mon_root, extra_model=extra))

    return _make


@pytest.fixture
def mon_registered(trained_model: Any, registered: Callable[..., Any]) -> Callable[[Any], Any]:
    """Register the session's model as champion with the training days recorded (what the reference reads)."""

    def _register(settings: Any) -> Any:
        days = [{"ds": d.isoformat()} for d in TRAIN_DAYS]
        return registered(settings, training_data={"rows": trained_model.train_rows, "partitions": days})

    return _register


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
