"""Real rows for imported models: demo partitions with NaNs and categoricals, and labels of every task.

Models are trained on one day and checked on another. The binary label is the demo's own `churned`;
the regression and multiclass labels are derived from the features, deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from nightshift.contracts import Column, ColumnType, FeatureContract
from nightshift.data.features import MISSING_CATEGORY
from nightshift.demo import DEMO_ENTITY_ID, DEMO_LABEL, demo_contract
from tests.conftest import DEMO_START, SCORE_DS

#: The demo's numeric columns a matrix model (XGBoost, LightGBM, CatBoost) reads.
NUMERIC = [c.name for c in demo_contract().numeric]
CATEGORICAL = [c.name for c in demo_contract().categorical]
#: Multiclass: a plan tier from binned tenure and monthly charges (4 classes).
TIERS = 4


@dataclass(frozen=True)
class Day:
    table: pa.Table
    binary: np.ndarray
    regression: np.ndarray
    multiclass: np.ndarray

    def frame(self, columns: list[str]) -> Any:
        """The columns as pandas, numerics float64 with NaN, null categories as "__missing__"."""
        frame = self.table.select(columns).to_pandas()
        for name in columns:
            if name in CATEGORICAL:
                frame[name] = frame[name].fillna(MISSING_CATEGORY).astype(object)
        return frame


def _day(root: Path, ds: str) -> Day:
    features = pq.read_table(root / "features" / f"ds={ds}")
    labels = pq.read_table(root / "labels" / f"ds={ds}")
    order = pc.index_in(features.column(DEMO_ENTITY_ID), labels.column(DEMO_ENTITY_ID))
    binary = labels.column(DEMO_LABEL).take(order).to_numpy().astype(np.int64)
    charges = np.nan_to_num(features.column("monthly_charges").to_numpy(zero_copy_only=False))
    tenure = np.nan_to_num(features.column("tenure_months").to_numpy(zero_copy_only=False))
    regression = 2.0 * charges + 0.5 * tenure + 3.0 * np.sqrt(tenure)
    multiclass = (tenure > 24).astype(np.int64) + 2 * (charges > 70).astype(np.int64)
    return Day(features, binary, regression, multiclass)


@pytest.fixture(scope="session")
def train_day(demo_root: Path) -> Day:
    return _day(demo_root, DEMO_START.isoformat())


@pytest.fixture(scope="session")
def check_day(demo_root: Path) -> Day:
    return _day(demo_root, SCORE_DS.isoformat())


@pytest.fixture(scope="session")
def contract() -> FeatureContract:
    return demo_contract()


@pytest.fixture(scope="session")
def numeric_contract() -> FeatureContract:
    """The demo's numeric columns only (what the matrix models read)."""
    return FeatureContract(
        entity_id=DEMO_ENTITY_ID,
        columns=tuple(Column(name=n, type=ColumnType.float64) for n in NUMERIC),
    )


#: Parity figures measured by the tests, printed at the end of the session (max |Δ| per flavour).
FIGURES: dict[str, float] = {}


def record(label: str, value: float) -> None:
    FIGURES[label] = value


@pytest.fixture(scope="session", autouse=True)
def _print_figures() -> Any:
    yield
    if FIGURES:
        width = max(map(len, FIGURES))
        lines = [f"  {k.ljust(width)}  {v:.3g}" for k, v in sorted(FIGURES.items())]
        print("\nparity figures (max |Δ|; regression relative to max(1, |original|)):\n" + "\n".join(lines))
