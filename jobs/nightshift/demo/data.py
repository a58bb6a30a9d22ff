"""A deterministic, streaming generator of daily customer-churn feature and label partitions for the demo."""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from nightshift.contracts import Column, ColumnType, FeatureContract

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

    FloatArray = npt.NDArray[np.float64]
    IntArray = npt.NDArray[np.int64]
    BoolArray = npt.NDArray[np.bool_]

DEMO_ENTITY_ID: Final = "customer_id"
DEMO_LABEL: Final = "churned"
#: The other outcomes the labels carry, for a regression and a multiclass model on the same customers.
DEMO_SPEND: Final = "spend_next_month"  # what the customer pays next month (0 when they churn)
DEMO_NEXT_PLAN: Final = "next_plan"  # the plan the customer is on next month

#: Customers are generated in fixed blocks of this many ids, each block from its own
#: random streams, so a customer's values depend only on (seed, day, id): not on
#: rows_per_day, files_per_day or the order files are written in.
BLOCK_ROWS: Final = 16_384
#: Rows per Parquet row group (the last one of a file may be shorter).
ROW_GROUP_ROWS: Final = 131_072
PARQUET_COMPRESSION: Final = "snappy"
SUCCESS_MARKER: Final = "_SUCCESS"
PARTITION_KEY: Final = "ds"

# Random streams: the first entropy word after the seed says what a stream is for.
_STREAM_CUSTOMER: Final = 0  # stable per-customer traits: (seed, block)
_STREAM_DAY: Final = 1  # that day's behaviour and label: (seed, day, block)
_STREAM_NULLS: Final = 2  # which values are missing that day: (seed, day, block)
_STREAM_DRIFT: Final = 3  # drift injection: (seed, day, block, drift index)
_STREAM_OUTCOMES: Final = 4  # next month's spend and plan: (seed, day, block); churn keeps its own stream


@dataclass(frozen=True)
class _NumericSpec:
    name: str
    min: float | None
    max: float | None
    null_rate: float
    #: Integer-valued with few distinct values: Parquet dictionary encoding pays off.
    dictionary: bool = False


@dataclass(frozen=True)
class _CategoricalSpec:
    name: str
    values: tuple[str, ...]
    null_rate: float


# Column order here is the column order of the files and of demo_contract().
_NUMERIC: Final[tuple[_NumericSpec, ...]] = (
    _NumericSpec("age", 18, 95, 0.010, dictionary=True),
    _NumericSpec("tenure_months", 0, 120, 0.005, dictionary=True),
    _NumericSpec("contract_term_months", 1, 24, 0.005, dictionary=True),
    _NumericSpec("contract_months_left", 0, 24, 0.020, dictionary=True),
    _NumericSpec("monthly_charges", 0, None, 0.010),
    _NumericSpec("total_charges", 0, None, 0.020),
    _NumericSpec("discount_pct", 0, 100, 0.015, dictionary=True),
    _NumericSpec("num_products", 1, 8, 0.005, dictionary=True),
    _NumericSpec("num_devices", 1, 15, 0.012, dictionary=True),
    _NumericSpec("household_size", 1, 10, 0.030, dictionary=True),
    _NumericSpec("estimated_income_k", 0, None, 0.050),
    _NumericSpec("credit_score", 300, 850, 0.040, dictionary=True),
    _NumericSpec("has_autopay", 0, 1, 0.008, dictionary=True),
    _NumericSpec("paperless_billing", 0, 1, 0.008, dictionary=True),
    _NumericSpec("late_payments_12m", 0, 12, 0.010, dictionary=True),
    _NumericSpec("billing_disputes_12m", 0, None, 0.010, dictionary=True),
    _NumericSpec("payment_delay_days_avg", 0, None, 0.025),
    _NumericSpec("num_referrals", 0, None, 0.020, dictionary=True),
    _NumericSpec("support_calls_30d", 0, None, 0.015, dictionary=True),
    _NumericSpec("support_tickets_open", 0, None, 0.015, dictionary=True),
    _NumericSpec("complaints_90d", 0, None, 0.020, dictionary=True),
    _NumericSpec("satisfaction_score", 1, 10, 0.045, dictionary=True),
    _NumericSpec("cancel_page_views_30d", 0, None, 0.030, dictionary=True),
    _NumericSpec("logins_30d", 0, None, 0.010, dictionary=True),
    _NumericSpec("days_since_last_login", 0, 365, 0.020, dictionary=True),
    _NumericSpec("app_sessions_7d", 0, None, 0.015, dictionary=True),
    _NumericSpec("avg_session_minutes", 0, None, 0.025),
    _NumericSpec("data_usage_gb_30d", 0, None, 0.012),
    _NumericSpec("overage_charges_30d", 0, None, 0.012),
    _NumericSpec("voice_minutes_30d", 0, None, 0.012),
    _NumericSpec("sms_count_30d", 0, None, 0.015, dictionary=True),
    _NumericSpec("roaming_minutes_30d", 0, None, 0.020),
    _NumericSpec("streaming_hours_30d", 0, None, 0.020),
    _NumericSpec("dropped_calls_30d", 0, None, 0.010, dictionary=True),
    _NumericSpec("avg_download_mbps", 0, None, 0.035),
    _NumericSpec("network_outage_minutes_30d", 0, None, 0.030),
)

_PLANS: Final = ("basic", "standard", "premium", "family")
_REGIONS: Final = ("north", "south", "east", "west", "central", "coastal")
_PAYMENT_METHODS: Final = ("credit_card", "bank_transfer", "electronic_check", "mailed_check")

_CATEGORICAL: Final[tuple[_CategoricalSpec, ...]] = (
    _CategoricalSpec("plan", _PLANS, 0.005),
    _CategoricalSpec("region", _REGIONS, 0.010),
    _CategoricalSpec("payment_method", _PAYMENT_METHODS, 0.015),
)

_NUMERIC_NAMES: Final = frozenset(s.name for s in _NUMERIC)
_CATEGORICAL_NAMES: Final = frozenset(s.name for s in _CATEGORICAL)

# Per-plan constants, indexed by plan code.
_PLAN_BASE_CHARGE: Final = (29.0, 55.0, 89.0, 109.0)
_PLAN_DATA_CAP_GB: Final = (10.0, 30.0, 120.0, 80.0)
# Network quality by region code: better networks, fewer dropped calls and outages.
_REGION_QUALITY: Final = (0.3, -0.2, 0.1, 0.0, -0.5, 0.4)
_REGION_SHARE: Final = (0.22, 0.20, 0.18, 0.16, 0.14, 0.10)
_ELECTRONIC_CHECK: Final = _PAYMENT_METHODS.index("electronic_check")
# Sets the base rate of churn (about 22%).
_CHURN_INTERCEPT: Final = -2.1


def demo_contract() -> FeatureContract:
    """The feature contract of the demo churn model: 36 float64 features and 3 string features."""
    columns = [Column(name=s.name, type=ColumnType.float64, nullable=True, min=s.min, max=s.max) for s in _NUMERIC]
    columns += [Column(name=s.name, type=ColumnType.string, nullable=True) for s in _CATEGORICAL]
    return FeatureContract(
        entity_id=DEMO_ENTITY_ID, entity_id_type="int64", columns=tuple(columns), extra_columns="ignore"
    )


# -- drift ---------------------------------------------------------------------------------

DRIFT_KINDS: Final = ("mean_shift", "variance_change", "new_category", "missing_spike")
_DRIFT_SYNTAX: Final = "KIND:COLUMN:MAGNITUDE@YYYY-MM-DD, e.g. mean_shift:monthly_charges:1.5@2026-11-05"


@dataclass(frozen=True)
class DriftSpec:
    """A change injected into one column's values on every day from `start` on.

    mean_shift: add magnitude x the column's standard deviation (numeric columns).
    variance_change: scale deviations from the column's mean by magnitude > 0 (numeric columns).
    new_category: give a share `magnitude` (0-1] of rows the never-seen value "<column>_x" (string columns).
    missing_spike: set a share `magnitude` (0-1] of the column's values to null (any column).

    Labels always come from the undrifted values: drift models a broken or shifted feature
    feed, which the model then scores worse on.
    """

    kind: str
    column: str
    magnitude: float
    start: date

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"unknown drift kind {self.kind!r}: expected one of {', '.join(DRIFT_KINDS)}")
        if self.column not in _NUMERIC_NAMES and self.column not in _CATEGORICAL_NAMES:
            raise ValueError(f"unknown drift column {self.column!r}: not a feature of the demo contract")
        numeric = self.column in _NUMERIC_NAMES
        if self.kind in ("mean_shift", "variance_change") and not numeric:
            raise ValueError(f"drift kind {self.kind!r} needs a numeric column, {self.column!r} is a string column")
        if self.kind == "new_category" and numeric:
            raise ValueError(f"drift kind 'new_category' needs a string column, {self.column!r} is numeric")
        m = self.magnitude
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m):
            raise ValueError(f"drift magnitude must be a finite number, got {m!r}")
        if self.kind == "variance_change" and m <= 0:
            raise ValueError(f"drift magnitude for 'variance_change' must be > 0, got {m!r}")
        if self.kind in ("new_category", "missing_spike") and not 0 < m <= 1:
            raise ValueError(f"drift magnitude for {self.kind!r} is a share of rows and must be in (0, 1], got {m!r}")
        if not isinstance(self.start, date) or isinstance(self.start, datetime):
            raise ValueError(f"drift start must be a date (not a datetime), got {self.start!r}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.column}:{self.magnitude:g}@{self.start.isoformat()}"


def check_drift(drift: Sequence[DriftSpec], start: date, days: int) -> None:
    """ValueError unless each drift starts on one of the generated days start .. start + days - 1: a drift
    starting later would never be injected, one starting earlier would drift every day (the reference too)."""
    last = start + timedelta(days=days - 1)
    for spec in drift:
        if not isinstance(spec, DriftSpec):
            raise ValueError(f"drift must hold DriftSpec values, got {spec!r}")
        if not start <= spec.start <= last:
            raise ValueError(
                f"drift {spec}: its start {spec.start.isoformat()} is outside the generated days "
                f"{start.isoformat()}..{last.isoformat()}; pick a day in that range (or move --start/--days)"
            )


_DRIFT_RE: Final = re.compile(r"^\s*([^:@\s]+)\s*:\s*([^:@\s]+)\s*:\s*([^:@\s]+)\s*@\s*(\S+)\s*$")


def parse_drift(text: str) -> DriftSpec:
    """`KIND:COLUMN:MAGNITUDE@YYYY-MM-DD` (the CLI syntax) as a DriftSpec; ValueError naming what is wrong."""
    match = _DRIFT_RE.match(text)
    if match is None:
        raise ValueError(f"drift {text!r}: expected {_DRIFT_SYNTAX}")
    kind, column, magnitude_s, start_s = match.groups()
    try:
        magnitude = float(magnitude_s)
    except ValueError:
        raise ValueError(f"drift {text!r}: magnitude {magnitude_s!r} is not a number") from None
    try:
        start = date.fromisoformat(start_s)
    except ValueError:
        raise ValueError(f"drift {text!r}: start {start_s!r} is not a date (YYYY-MM-DD)") from None
    try:
        return DriftSpec(kind=kind, column=column, magnitude=magnitude, start=start)
    except ValueError as exc:
        raise ValueError(f"drift {text!r}: {exc}") from None


# -- seasonality ---------------------------------------------------------------------------

#: Usage and behaviour features that follow the week (people stream, call and log in more at weekends).
SEASONAL_COLUMNS: Final = (
    "data_usage_gb_30d",
    "streaming_hours_30d",
    "voice_minutes_30d",
    "sms_count_30d",
    "app_sessions_7d",
    "logins_30d",
    "avg_session_minutes",
    "roaming_minutes_30d",
)
#: Columns that follow the slow trend (prices and usage grow).
TREND_COLUMNS: Final = ("monthly_charges", "total_charges", "data_usage_gb_30d", "streaming_hours_30d")
#: The day the slow trend is measured from (a fixed date: a day's values depend on that day alone).
TREND_ANCHOR: Final = date(2026, 1, 1)


@dataclass(frozen=True)
class Seasonality:
    """Real-world rhythm in the generated features (off by default; no random draw is added or moved).

    weekly: amplitude of a weekly cycle of the usage features (SEASONAL_COLUMNS): each value times
        1 + weekly x cos(2 pi (weekday - 5.5) / 7), highest at the weekend (Saturday and Sunday
        x0.90 of the amplitude), lowest mid-week (Tuesday, Wednesday).
    trend_per_year: the prices and usage (TREND_COLUMNS) grow by this share per year, linearly from
        TREND_ANCHOR (0.05: +5% a year).

    Like a drift it changes what the features report, not who churns.
    """

    weekly: float = 0.0
    trend_per_year: float = 0.0

    def __post_init__(self) -> None:
        for name in ("weekly", "trend_per_year"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"seasonality {name} must be a finite number, got {v!r}")
        if not -0.9 <= self.weekly <= 0.9:
            raise ValueError(f"seasonality weekly amplitude must be in [-0.9, 0.9], got {self.weekly!r}")

    @property
    def active(self) -> bool:
        return self.weekly != 0.0 or self.trend_per_year != 0.0

    def factors(self, day: date) -> dict[str, float]:
        """The multiplier of each seasonal or trending column on `day`."""
        out: dict[str, float] = {}
        if self.weekly:
            cycle = 1.0 + self.weekly * math.cos(2 * math.pi * (day.weekday() - 5.5) / 7)
            out.update(dict.fromkeys(SEASONAL_COLUMNS, cycle))
        if self.trend_per_year:
            grow = 1.0 + self.trend_per_year * (day - TREND_ANCHOR).days / 365.0
            for name in TREND_COLUMNS:
                out[name] = out.get(name, 1.0) * grow
        return out


def _apply_seasonality(blk: _Block, season: Seasonality | None, day: date) -> None:
    """Scale the block's seasonal columns for `day` (after labels and drift; deterministic, no draws)."""
    if season is None or not season.active:
        return
    for name, factor in season.factors(day).items():
        x = blk.numeric[name]
        spec = next(s for s in _NUMERIC if s.name == name)
        scaled = x * factor
        if spec.dictionary:  # integer-valued counts stay integers
            scaled = scaled.round()
        if spec.max is not None:
            scaled = scaled.clip(max=spec.max)
        blk.numeric[name] = scaled


# -- generation of one block of customers on one day ---------------------------------------


@dataclass
class _Block:
    """One block of customers on one day, before nulls: numeric values, category codes, labels."""

    ids: IntArray
    numeric: dict[str, FloatArray]
    codes: dict[str, IntArray]
    label: npt.NDArray[np.int8]
    spend: FloatArray
    next_plan: IntArray
    # Extra values a new_category drift added to a column's dictionary.
    extra_values: dict[str, list[str]] = field(default_factory=dict)
    # Extra nulls from missing_spike drifts.
    extra_nulls: dict[str, BoolArray] = field(default_factory=dict)


def _rng(seed: int, *words: int) -> np.random.Generator:
    import numpy as np

    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


def _sigmoid(x: FloatArray) -> FloatArray:
    import numpy as np

    out: FloatArray = 1.0 / (1.0 + np.exp(-x))
    return out


def _generate_block(seed: int, day: date, block: int) -> _Block:
    """All values of customers block*BLOCK_ROWS+1 .. (block+1)*BLOCK_ROWS on `day` (vectorised)."""
    import numpy as np

    n = BLOCK_ROWS
    ids = np.arange(block * n + 1, (block + 1) * n + 1, dtype=np.int64)

    # Stable traits: the same for a customer on every day.
    c = _rng(seed, _STREAM_CUSTOMER, block)
    engagement = c.standard_normal(n)  # latent: how much the customer uses the service
    dissatisfaction = c.standard_normal(n)  # latent: unhappiness, drives calls, complaints and churn
    fin_risk = c.standard_normal(n)  # latent: financial stress, drives late payments
    age = np.clip(np.round(c.normal(44.0, 15.0, n)), 18, 95)
    tenure = np.clip(np.floor(c.exponential(26.0, n)), 0, 120)
    household = np.clip(1 + c.poisson(1.3, n), 1, 10).astype(np.float64)
    income = np.clip(c.lognormal(math.log(55.0), 0.5, n), 5.0, 1000.0).round(1)
    credit = np.clip(np.round(c.normal(690.0 + 0.8 * (age - 44.0) - 45.0 * fin_risk, 50.0)), 300, 850)
    num_products = np.clip(1 + c.poisson(0.7 + 0.12 * household), 1, 8).astype(np.float64)
    num_devices = np.clip(household + c.poisson(1.0, n), 1, 15).astype(np.float64)

    region = c.choice(len(_REGIONS), size=n, p=_REGION_SHARE).astype(np.int64)
    quality = np.asarray(_REGION_QUALITY)[region]

    plan_score = (np.log(income) - math.log(55.0)) / 0.5 + c.standard_normal(n)
    plan = np.where(plan_score < -0.4, 0, np.where(plan_score < 0.9, 1, 2)).astype(np.int64)
    plan = np.where((household >= 3) & (c.random(n) < 0.55), 3, plan)

    p_month_to_month = np.clip(0.68 - 0.005 * tenure, 0.2, 0.7)
    u = c.random(n)
    term = np.where(u < p_month_to_month, 1.0, np.where(u < p_month_to_month + (1 - p_month_to_month) / 2, 12.0, 24.0))
    anchor = c.integers(0, 24, n)

    p_echeck = _sigmoid(-1.3 + 0.8 * fin_risk)
    u = c.random(n)
    rest = (u - p_echeck) / (1 - p_echeck)  # uniform on [0, 1) given u >= p_echeck
    payment = np.where(u < p_echeck, _ELECTRONIC_CHECK, np.where(rest < 0.42, 0, np.where(rest < 0.78, 1, 3))).astype(
        np.int64
    )
    card_or_bank = payment <= 1
    has_autopay = (c.random(n) < np.where(card_or_bank, 0.75, 0.08)).astype(np.float64)
    paperless = (c.random(n) < _sigmoid(0.5 + 0.6 * engagement - 0.02 * (age - 44.0))).astype(np.float64)
    discount = np.where(c.random(n) < np.where(term > 1, 0.5, 0.15), c.choice([5.0, 10.0, 15.0, 20.0, 25.0], n), 0.0)
    late_payments = np.clip(c.poisson(np.exp(-0.9 + 0.7 * fin_risk)), 0, 12).astype(np.float64)
    disputes = c.poisson(np.exp(-2.2 + 0.4 * dissatisfaction + 0.3 * fin_risk)).astype(np.float64)
    referrals = c.poisson(np.exp(-0.7 + 0.4 * engagement)).astype(np.float64)

    plan_charge = np.asarray(_PLAN_BASE_CHARGE)[plan]
    list_price = plan_charge + 9.0 * (num_products - 1) + 2.5 * (num_devices - 1) + c.normal(0.0, 6.0, n)
    monthly = np.maximum(list_price * (1 - discount / 100.0), 10.0).round(2)
    total = np.round(monthly * (tenure * np.exp(c.normal(0.0, 0.06, n)) + c.random(n)), 2)

    premium_like = (plan >= 2).astype(np.float64)
    usage_mu = math.log(12.0) + 0.35 * engagement + 0.5 * premium_like + c.normal(0.0, 0.4, n)
    voice_base = c.lognormal(math.log(240.0), 0.6, n)
    sms_base = c.lognormal(math.log(50.0), 0.8, n) * np.clip(1.6 - 0.012 * (age - 18.0), 0.3, None)
    stream_base = c.lognormal(math.log(18.0), 0.7, n) * (1 + 0.6 * premium_like)
    roam_p = 0.3 * c.random(n) ** 3 + 0.05 * (income > 90)
    support_rate = np.exp(-0.6 + 0.55 * dissatisfaction - 0.3 * quality + 0.1 * (num_products - 1))

    # That day's behaviour (30-day windows and the like): differs from day to day.
    d = _rng(seed, _STREAM_DAY, day.toordinal(), block)
    month = day.toordinal() // 30
    months_left = np.where(term > 1, (anchor - month) % np.maximum(term, 1).astype(np.int64), 0).astype(np.float64)
    support_calls = d.poisson(support_rate * d.gamma(4.0, 0.25, n)).astype(np.float64)
    tickets_open = d.poisson(0.1 + 0.2 * support_calls).astype(np.float64)
    complaints = d.poisson(np.exp(-1.3 + 0.6 * dissatisfaction) * d.gamma(4.0, 0.25, n)).astype(np.float64)
    data_gb = np.round(d.lognormal(usage_mu, 0.25), 2)
    overage = np.round(np.clip(data_gb - np.asarray(_PLAN_DATA_CAP_GB)[plan], 0.0, None) * 1.5, 2)
    voice = np.round(d.gamma(4.0, voice_base / 4.0), 1)
    sms = d.poisson(sms_base).astype(np.float64)
    roaming = np.where(d.random(n) < roam_p, np.round(d.exponential(45.0, n), 1), 0.0)
    streaming = np.round(d.gamma(3.0, stream_base / 3.0), 1)
    logins = d.poisson(np.exp(2.2 + 0.5 * engagement - 0.15 * dissatisfaction)).astype(np.float64)
    last_login = np.clip(np.floor(d.exponential(np.exp(0.9 - 0.9 * engagement + 0.2 * dissatisfaction))), 0, 365)
    sessions = d.poisson(np.exp(1.6 + 0.55 * engagement)).astype(np.float64)
    session_minutes = np.round(d.lognormal(math.log(7.0) + 0.2 * engagement, 0.35), 1)
    dropped = d.poisson(np.exp(0.6 - 0.8 * quality) * d.gamma(5.0, 0.2, n)).astype(np.float64)
    download = np.round(d.lognormal(math.log(95.0) + 0.5 * quality + 0.3 * premium_like, 0.3), 1)
    outage = np.where(d.random(n) < 0.12 - 0.08 * quality, np.round(d.exponential(60.0, n)), 0.0)
    pay_delay = np.round(d.gamma(1.5, np.exp(0.6 + 0.6 * fin_risk) / 1.5), 1)
    satisfaction = np.clip(
        np.round(7.2 - 1.2 * dissatisfaction - 0.15 * support_calls - 0.1 * dropped + d.normal(0.0, 1.0, n)), 1, 10
    )
    cancel_views = d.poisson(np.exp(-2.0 + 0.8 * dissatisfaction + 0.4 * (term == 1))).astype(np.float64)

    # Who churns: a logistic model of the day's (clean) values, with an interaction
    # (new customers are price-sensitive), a U-shape in age, and unobserved dissatisfaction.
    logit = (
        _CHURN_INTERCEPT
        + 1.0 * (term == 1)
        - 0.35 * (term == 24)
        - 0.45 * np.log1p(tenure)
        + 0.010 * (monthly - 65.0)
        + 0.020 * (monthly - 65.0) * (tenure < 12)
        + 0.20 * support_calls
        + 0.22 * late_payments
        + 0.30 * np.log1p(last_login)
        - 0.20 * (satisfaction - 7.0)
        + 0.30 * cancel_views
        + 0.35 * (payment == _ELECTRONIC_CHECK)
        - 0.30 * has_autopay
        + 0.08 * dropped
        - 0.20 * (num_products - 1)
        + 0.0010 * (age - 45.0) ** 2
        + 0.35 * dissatisfaction
    )
    label = (d.random(n) < _sigmoid(logit)).astype(np.int8)

    numeric: dict[str, FloatArray] = {
        "age": age,
        "tenure_months": tenure,
        "contract_term_months": term,
        "contract_months_left": months_left,
        "monthly_charges": monthly,
        "total_charges": total,
        "discount_pct": discount,
        "num_products": num_products,
        "num_devices": num_devices,
        "household_size": household,
        "estimated_income_k": income,
        "credit_score": credit,
        "has_autopay": has_autopay,
        "paperless_billing": paperless,
        "late_payments_12m": late_payments,
        "billing_disputes_12m": disputes,
        "payment_delay_days_avg": pay_delay,
        "num_referrals": referrals,
        "support_calls_30d": support_calls,
        "support_tickets_open": tickets_open,
        "complaints_90d": complaints,
        "satisfaction_score": satisfaction,
        "cancel_page_views_30d": cancel_views,
        "logins_30d": logins,
        "days_since_last_login": last_login,
        "app_sessions_7d": sessions,
        "avg_session_minutes": session_minutes,
        "data_usage_gb_30d": data_gb,
        "overage_charges_30d": overage,
        "voice_minutes_30d": voice,
        "sms_count_30d": sms,
        "roaming_minutes_30d": roaming,
        "streaming_hours_30d": streaming,
        "dropped_calls_30d": dropped,
        "avg_download_mbps": download,
        "network_outage_minutes_30d": outage,
    }
    codes: dict[str, IntArray] = {"plan": plan, "region": region, "payment_method": payment}

    # Next month, from a stream of its own (so churn and every feature stay as they were): the bill
    # follows plan, usage and discount, and is 0 for a customer who churns; the plan moves up with
    # engagement and income, down with dissatisfaction, and often stays.
    o = _rng(seed, _STREAM_OUTCOMES, day.toordinal(), block)
    usage = 0.8 * overage + 0.05 * data_gb + 0.01 * voice
    spend = np.round(np.maximum(monthly + usage + o.normal(0.0, 4.0, n), 0.0) * (label == 0), 2)
    move = 0.6 * engagement + 0.5 * (np.log(income) - math.log(55.0)) / 0.5 - 0.5 * dissatisfaction
    step = np.where(move + o.normal(0.0, 0.8, n) > 1.2, 1, np.where(move + o.normal(0.0, 0.8, n) < -1.2, -1, 0))
    next_plan = np.where(plan == 3, np.where(o.random(n) < 0.85, 3, 2), np.clip(plan + step, 0, 2)).astype(np.int64)
    return _Block(ids=ids, numeric=numeric, codes=codes, label=label, spend=spend, next_plan=next_plan)


def _apply_drift(blk: _Block, drift: Sequence[DriftSpec], seed: int, day: date, block: int) -> None:
    """Change the block's values in place for every drift active on `day` (each from its own stream)."""
    import numpy as np

    n = len(blk.ids)
    for index, spec in enumerate(drift):
        if day < spec.start:
            continue
        r = _rng(seed, _STREAM_DRIFT, day.toordinal(), block, index)
        if spec.kind == "mean_shift":
            x = blk.numeric[spec.column]
            blk.numeric[spec.column] = x + spec.magnitude * float(np.std(x))
        elif spec.kind == "variance_change":
            x = blk.numeric[spec.column]
            mean = float(np.mean(x))
            blk.numeric[spec.column] = mean + (x - mean) * spec.magnitude
        elif spec.kind == "new_category":
            spec_values = next(s.values for s in _CATEGORICAL if s.name == spec.column)
            extra = blk.extra_values.setdefault(spec.column, [])
            new_value = f"{spec.column}_x"
            if new_value not in extra:
                extra.append(new_value)
            code = len(spec_values) + extra.index(new_value)
            blk.codes[spec.column] = np.where(r.random(n) < spec.magnitude, code, blk.codes[spec.column])
        else:  # missing_spike
            hit = r.random(n) < spec.magnitude
            prev = blk.extra_nulls.get(spec.column)
            blk.extra_nulls[spec.column] = hit if prev is None else (prev | hit)


# -- Arrow and Parquet ---------------------------------------------------------------------


def _features_schema() -> pa.Schema:
    import pyarrow as pa

    fields = [pa.field(DEMO_ENTITY_ID, pa.int64(), nullable=False)]
    fields += [pa.field(s.name, pa.float64()) for s in _NUMERIC]
    fields += [pa.field(s.name, pa.string()) for s in _CATEGORICAL]
    return pa.schema(fields)


def _labels_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field(DEMO_ENTITY_ID, pa.int64(), nullable=False),
            pa.field(DEMO_LABEL, pa.int8()),
            pa.field(DEMO_SPEND, pa.float64()),
            pa.field(DEMO_NEXT_PLAN, pa.string()),
        ]
    )


def _to_tables(blk: _Block, seed: int, day: date, block: int) -> tuple[pa.Table, pa.Table]:
    """The block as (features, labels) Arrow tables, with the day's missing values as real nulls."""
    import numpy as np
    import pyarrow as pa

    n = len(blk.ids)
    r = _rng(seed, _STREAM_NULLS, day.toordinal(), block)
    arrays: list[pa.Array] = [pa.array(blk.ids, type=pa.int64())]
    for num in _NUMERIC:
        mask = r.random(n) < num.null_rate
        extra = blk.extra_nulls.get(num.name)
        if extra is not None:
            mask |= extra
        arrays.append(pa.array(blk.numeric[num.name], type=pa.float64(), mask=mask))
    for cat in _CATEGORICAL:
        mask = r.random(n) < cat.null_rate
        extra = blk.extra_nulls.get(cat.name)
        if extra is not None:
            mask |= extra
        dictionary = pa.array([*cat.values, *blk.extra_values.get(cat.name, [])], type=pa.string())
        indices = pa.array(blk.codes[cat.name].astype(np.int32), type=pa.int32(), mask=mask)
        arrays.append(dictionary.take(indices))
    features = pa.Table.from_arrays(arrays, schema=_features_schema())
    plans = pa.array(_PLANS, type=pa.string()).take(pa.array(blk.next_plan.astype(np.int32), type=pa.int32()))
    labels = pa.Table.from_arrays(
        [arrays[0], pa.array(blk.label, type=pa.int8()), pa.array(blk.spend, type=pa.float64()), plans],
        schema=_labels_schema(),
    )
    return features, labels


class _AtomicParquetWriter:
    """Streams tables into `<dir>/.<name>.tmp-<pid>` in full row groups, then renames it to `<dir>/<name>`.

    Parquet encoding runs on `executor` (one thread, which releases the GIL) while the caller
    generates the next rows; at most one write per writer is in flight, so memory stays bounded.
    """

    def __init__(self, path: Path, schema: pa.Schema, dictionary_columns: list[str], executor: Executor) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.rows = 0
        self._executor = executor
        self._in_flight: Future[None] | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer = pq.ParquetWriter(
            self.tmp,
            schema,
            compression=PARQUET_COMPRESSION,
            use_dictionary=dictionary_columns,
            write_statistics=True,
        )

    def write(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush(final=False)

    def _wait(self) -> None:
        if self._in_flight is not None:
            future, self._in_flight = self._in_flight, None
            future.result()

    def _flush(self, final: bool) -> None:
        import pyarrow as pa

        if not self._pending:
            return
        data = pa.concat_tables(self._pending)
        full = data.num_rows if final else data.num_rows - data.num_rows % ROW_GROUP_ROWS
        rest = data.slice(full)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        if full:
            self._wait()
            self._in_flight = self._executor.submit(
                self._writer.write_table, data.slice(0, full), row_group_size=ROW_GROUP_ROWS
            )

    def commit(self) -> None:
        self._flush(final=True)
        self._wait()
        self._writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            with contextlib.suppress(Exception):  # the error that made us abort is the one to report
                self._wait()
            self._writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def _part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def _prepare_partition(directory: Path, keep: set[str]) -> None:
    """Unmark the partition and remove part files a new run will not write (and stray temp files)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SUCCESS_MARKER).unlink(missing_ok=True)
    for p in directory.iterdir():
        stale_part = p.name.startswith("part-") and p.name.endswith(".parquet") and p.name not in keep
        temp = p.name.startswith(".part-") and ".tmp-" in p.name
        if (stale_part or temp) and p.is_file():
            p.unlink(missing_ok=True)


def _mark_success(directory: Path) -> None:
    marker = directory / SUCCESS_MARKER
    tmp = directory / f".{SUCCESS_MARKER}.tmp-{os.getpid()}"
    tmp.write_bytes(b"")
    os.replace(tmp, marker)


def _file_bounds(rows: int, files: int) -> list[tuple[int, int]]:
    """[lo, hi) row ranges (0-based customer offsets) of each file of a day, as even as possible."""
    edges = [rows * k // files for k in range(files + 1)]
    return [(edges[k], edges[k + 1]) for k in range(files)]


def _day_blocks(
    seed: int, day: date, rows: int, drift: Sequence[DriftSpec], season: Seasonality | None = None
) -> Iterator[tuple[int, pa.Table, pa.Table]]:
    """(first row offset, features, labels) for each block of the day, trimmed to `rows` customers."""
    blocks = -(-rows // BLOCK_ROWS)
    for b in range(blocks):
        blk = _generate_block(seed, day, b)
        _apply_drift(blk, drift, seed, day, b)
        _apply_seasonality(blk, season, day)
        features, labels = _to_tables(blk, seed, day, b)
        keep = min(BLOCK_ROWS, rows - b * BLOCK_ROWS)
        yield b * BLOCK_ROWS, features.slice(0, keep), labels.slice(0, keep)


def _write_day(
    features_dir: Path,
    labels_dir: Path,
    *,
    seed: int,
    day: date,
    rows: int,
    files: int,
    drift: Sequence[DriftSpec],
    on_file: Callable[[int], None],
    executor: Executor,
    season: Seasonality | None = None,
) -> None:
    bounds = _file_bounds(rows, files)
    names = [_part_name(k) for k in range(files)]
    _prepare_partition(features_dir, set(names))
    _prepare_partition(labels_dir, {_part_name(0)})
    dictionary_columns = [s.name for s in _NUMERIC if s.dictionary] + [s.name for s in _CATEGORICAL]
    features_schema = _features_schema()

    current = 0
    writer: _AtomicParquetWriter | None = None
    labels_writer = _AtomicParquetWriter(labels_dir / _part_name(0), _labels_schema(), [DEMO_LABEL], executor)
    try:
        for offset, features, labels in _day_blocks(seed, day, rows, drift, season):
            labels_writer.write(labels)
            pos = 0
            while pos < features.num_rows:
                hi = bounds[current][1]
                if writer is None:
                    writer = _AtomicParquetWriter(
                        features_dir / names[current], features_schema, dictionary_columns, executor
                    )
                take = min(features.num_rows - pos, hi - (offset + pos))
                writer.write(features.slice(pos, take))
                pos += take
                if offset + pos == hi:
                    writer.commit()
                    written, writer = writer.rows, None
                    current += 1
                    on_file(written)
        _mark_success(features_dir)
        labels_writer.commit()
        _mark_success(labels_dir)
    except BaseException:
        if writer is not None:
            writer.abort()
        labels_writer.abort()
        raise


# -- public entry point ----------------------------------------------------------------------


@dataclass
class DemoSummary:
    """What generate() wrote: `files` counts feature part files (labels add one file a day)."""

    days: list[date]
    rows: int
    files: int
    seconds: float
    features_root: str
    labels_root: str


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def generate(
    features_root: str | Path,
    labels_root: str | Path,
    *,
    start: date,
    days: int,
    rows_per_day: int,
    files_per_day: int = 4,
    seed: int = 42,
    drift: Sequence[DriftSpec] = (),
    progress: Callable[[int, int], None] | None = None,
    seasonality: Seasonality | None = None,
) -> DemoSummary:
    """Write `days` daily partitions of churn features and labels, starting at `start`.

    Features go to `<features_root>/ds=YYYY-MM-DD/part-NNNNN.parquet` (`files_per_day` files),
    labels (customer_id, churned) to `<labels_root>/ds=YYYY-MM-DD/part-00000.parquet`; each
    partition gets an empty `_SUCCESS` marker after its files. Customers 1..rows_per_day appear
    every day. The same arguments always write the same values; a rerun replaces a day's files.
    Memory stays bounded (a few blocks of rows) whatever rows_per_day is. `seasonality` adds a weekly
    cycle and a slow trend (off by default: without it every value is exactly as before).
    """
    if not isinstance(start, date) or isinstance(start, datetime):
        raise ValueError(f"start must be a date (not a datetime), got {start!r}")
    _positive_int("days", days)
    _positive_int("rows_per_day", rows_per_day)
    _positive_int("files_per_day", files_per_day)
    if files_per_day > rows_per_day:
        raise ValueError(f"files_per_day ({files_per_day}) must not exceed rows_per_day ({rows_per_day})")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    drift = tuple(drift)
    check_drift(drift, start, days)

    began = time.perf_counter()
    features_path = Path(features_root)
    labels_path = Path(labels_root)
    day_list = [start + timedelta(days=i) for i in range(days)]
    total = days * rows_per_day
    done = 0

    def on_file(rows: int) -> None:
        nonlocal done
        done += rows
        if progress is not None:
            progress(done, total)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nightshift-demo-writer") as executor:
        for day in day_list:
            ds = f"{PARTITION_KEY}={day.isoformat()}"
            _write_day(
                features_path / ds,
                labels_path / ds,
                seed=seed,
                day=day,
                rows=rows_per_day,
                files=files_per_day,
                drift=drift,
                on_file=on_file,
                executor=executor,
                season=seasonality,
            )
    return DemoSummary(
        days=day_list,
        rows=total,
        files=days * files_per_day,
        seconds=time.perf_counter() - began,
        features_root=str(features_path),
        labels_root=str(labels_path),
    )
