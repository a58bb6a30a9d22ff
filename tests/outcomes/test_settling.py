"""A loop that settles: retraining on the days since the onset, a cooldown that yields to a retrained champion that
still fails after its training window, and the demo loop from shift to settled to a bad candidate rolled back."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

D = date(2026, 11, 1)


def _night(store: Any, version: int, ds: date, status: str) -> None:
    from nightshift.monitoring.checks import FAIL, PASS, Check
    from nightshift.monitoring.results import MonitorResult, save_result

    check = Check(
        "drift", "monthly_charges", "wasserstein_normed", 1.5 if status == FAIL else 0.01, 0.1, status, 1_000, True
    )
    summary = {"status": status}
    save_result(store, MonitorResult("churn", version, ds, "data", status, [check], 1_000, 1_000, summary))
    _ = PASS


def test_the_cooldown_yields_when_the_retrained_champion_still_fails_after_its_training_window(
    make_settings: Any, store_url: str, registered: Any
) -> None:
    from nightshift.db import open_store
    from nightshift.monitoring import retrain_decision

    settings = make_settings(store_url)
    v1 = registered(settings, {"partitions": [{"ds": (D - timedelta(days=1)).isoformat()}]}).version
    store = open_store(settings)
    try:
        _night(store, v1, D, "pass")
        _night(store, v1, D + timedelta(days=1), "fail")
        _night(store, v1, D + timedelta(days=2), "fail")
        first = retrain_decision(settings, "churn", D + timedelta(days=2), version=v1, store=store)
        assert first.trigger
        assert first.onset == D + timedelta(days=1)  # the first night of the failing streak
        assert first.as_dict()["onset"] == (D + timedelta(days=1)).isoformat()
        # The answer to that request: trained on the days since the onset, tested on the request's day.
        v2 = registered(
            settings,
            {
                "partitions": [{"ds": (D + timedelta(days=1)).isoformat()}],
                "confidence_test": {"partitions": [{"ds": (D + timedelta(days=2)).isoformat()}]},
            },
        ).version
        for i in (3, 4):
            _night(store, v1, D + timedelta(days=i), "fail")  # the old champion, still scored: it fails too
            _night(store, v2, D + timedelta(days=i), "fail")
        # Judged on the old champion, the cooldown holds (the retrain is the answer to it) ...
        old = retrain_decision(settings, "churn", D + timedelta(days=4), version=v1, store=store)
        assert not old.trigger
        assert old.reason.startswith("cooldown: retraining was already requested for ds=2026-11-03")
        # ... judged on the retrained champion that fails after its own training window, it does not.
        new = retrain_decision(settings, "churn", D + timedelta(days=4), version=v2, store=store)
        assert new.trigger, new.reason
        assert "cooldown does not apply" in new.reason
        assert new.onset == D + timedelta(days=3)
    finally:
        store.dispose()


@pytest.mark.timeout(1500)
def test_the_demo_loop_settles_after_a_shift_and_rolls_a_bad_candidate_back(tmp_path: Path, sqlite_url: str) -> None:
    from nightshift.config import load_settings
    from nightshift.demo.loop import loop_settings, run_loop
    from tests.conftest import write_project

    # Thread workers: a local cluster forking worker processes from this (threaded) pytest worker hung once in
    # a fresh-clone CI run, its nanny waiting for a forked worker that never started.
    project = write_project(tmp_path, sqlite_url, tmp_path / "unused", dask="processes = false\n")
    settings = loop_settings(load_settings(project), "churn")
    lines: list[str] = []
    report = run_loop(settings, "churn", start=date(2026, 11, 1), rows_per_day=8_000, say=lines.append)
    text = "\n".join(lines)
    assert report.retrained_on == date(2026, 11, 5)  # two failing nights after the shift of 11-04
    assert report.retrain is not None
    assert report.retrain["status"] == "promoted"
    assert report.settled_on is not None
    assert report.nights_to_settle is not None
    assert report.nights_to_settle <= 3
    assert "trained on the 1 labelled day(s) since the detected onset 2026-11-04" in text
    assert report.bad_version is not None
    assert report.bad_promoted_on is not None
    assert report.rolled_back_on == report.bad_promoted_on + timedelta(days=1)
    assert report.rollback_reason is not None
    assert "significantly worse than v2" in report.rollback_reason
    assert report.champion_after == report.retrain["version"]
    assert "SETTLED" in text
    assert "CAUGHT BY OUTCOMES" in text
