"""The one JSON rule for everything nightshift stores as JSON: NaN and ±inf become null, never a crash."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime
from pathlib import PurePosixPath

import numpy as np
import pytest

from nightshift.jsonsafe import json_safe


def test_non_finite_floats_become_null_everywhere() -> None:
    value = {
        "nan": float("nan"),
        "inf": float("inf"),
        "-inf": -math.inf,
        "np_nan": np.float64("nan"),
        "np32_inf": np.float32("inf"),
        "nested": [{"x": float("nan")}, (1.5, float("-inf"))],
    }
    out = json_safe(value)
    assert out == {
        "nan": None,
        "inf": None,
        "-inf": None,
        "np_nan": None,
        "np32_inf": None,
        "nested": [{"x": None}, [1.5, None]],
    }
    # Strict JSON (what PostgreSQL's json type accepts): no NaN / Infinity tokens.
    json.dumps(out, allow_nan=False)


def test_numpy_dates_tuples_keys_and_unknown_objects() -> None:
    out = json_safe(
        {
            1: np.int64(3),
            "f": np.float32(0.5),
            "b": np.bool_(True),
            "arr": np.array([1.0, np.nan]),
            "d": date(2026, 11, 18),
            "t": datetime(2026, 11, 18, 1, 2, 3, tzinfo=UTC),
            "tuple": (1, "a"),
            "path": PurePosixPath("/x/y"),
            "none": None,
            "bool": False,
        }
    )
    assert out == {
        "1": 3,
        "f": 0.5,
        "b": True,
        "arr": [1.0, None],
        "d": "2026-11-18",
        "t": "2026-11-18T01:02:03+00:00",
        "tuple": [1, "a"],
        "path": "/x/y",
        "none": None,
        "bool": False,
    }
    assert type(out["1"]) is int
    assert type(out["f"]) is float
    assert type(out["b"]) is bool
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize(
    "name",
    [
        "nightshift.models.registry",
        "nightshift.models",
    ],
)
def test_the_registry_re_exports_the_one_rule(name: str) -> None:
    import importlib

    module = importlib.import_module(name)
    assert module.json_safe is json_safe
    assert module.json_safe({"roc_auc": float("nan")}) == {"roc_auc": None}


def test_every_other_sanitiser_is_the_same_rule() -> None:
    from nightshift.monitoring import results
    from nightshift.training import pipeline

    for fn in (results._json_safe, pipeline._json_safe):
        assert fn({"v": float("nan"), "w": np.float64("inf")}) == {"v": None, "w": None}
