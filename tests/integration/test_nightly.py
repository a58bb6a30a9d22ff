"""nightshift.nightly: one night's policy keyed by ds; a backfill never changes what production serves."""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from nightshift.db import open_store
from nightshift.models import open_registry
from nightshift.nightly import BACKFILL, NIGHTLY, decide_night, plan_night, run_night, served_on
from nightshift.rollout import Rollouts
from nightshift.training import train_and_register

D1 = date(2026, 11, 16)
DAYS = 4  # 11-16 .. 11-19
ROWS = 2_000


@pytest.fixture(scope="module")
def night_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clean days 11-16..11-19, and beside them a drifted copy of every day (monthly_charges +3σ)."""
    from nightshift.demo import generate, parse_drift

    root = tmp_path_factory.mktemp("nights")
    generate(root / "features", root / "labels", start=D1, days=DAYS, rows_per_day=ROWS, files_per_day=2, seed=5)
    drift = parse_drift(f"mean_shift:monthly_charges:3.0@{D1.isoformat()}")
    generate(
        root / "drifted" / "features",
        root / "drifted" / "labels",
        start=D1,
        days=DAYS,
        rows_per_day=ROWS,
        files_per_day=2,
        seed=5,
        drift=[drift],
    )
    return root


@pytest.fixture
def nights(night_data: Path, tmp_path: Path, store_url: str, dask_client: Any) -> Any:
    """A project on a private copy of the data: v1 (trained on 11-16) champion, v2 (on 11-17) registered."""
    from nightshift.config import load_settings
    from tests.conftest import write_project

    data = tmp_path / "data"
    shutil.copytree(night_data, data, ignore=shutil.ignore_patterns("drifted"))
    extra = "[models.rollout]\nrollback_window_days = 3\n[models.monitoring]\nretrain_failing_nights = 2\n"
    settings = load_settings(write_project(tmp_path, store_url, data, extra_model=extra))
    train_and_register(settings, "churn", D1)
    train_and_register(settings, "churn", D1 + timedelta(days=1), promote="never")

    class Nights:
        def __init__(self) -> None:
            self.settings = settings
            self.store = open_store(settings)
            self.registry = open_registry(settings, self.store)
            self.rollouts = Rollouts(settings, self.store)

        def run(self, ds: date, **kw: Any) -> Any:
            return run_night(self.settings, "churn", ds, client=dask_client, store=self.store, **kw)

        def drift(self, ds: date) -> None:
            """Upstream re-delivers day `ds` with monthly_charges shifted by 3σ."""
            part = f"ds={ds.isoformat()}"
            shutil.rmtree(data / "features" / part)
            shutil.copytree(night_data / "drifted" / "features" / part, data / "features" / part)

    n = Nights()
    yield n
    n.store.dispose()


def _state(n: Any) -> tuple[dict[str, int], Any, list[tuple[str, int | None]]]:
    events = [(e["alias"], e["new_version"]) for e in n.registry.alias_history("churn")]
    return n.registry.aliases("churn"), n.rollouts.active("churn"), events


def test_a_backfill_never_changes_what_production_serves(nights: Any) -> None:
    d17, d18, d19 = (D1 + timedelta(days=i) for i in (1, 2, 3))
    for ds in (d17, d18):
        report = nights.run(ds)
        assert (report.plan.mode, report.plan.versions) == (NIGHTLY, {"champion": 1})
        assert report.monitored["champion"]["status"] == "pass"
    nights.rollouts.promote("churn", 2, reason="v2 by hand after the night of 11-18", ds=d18)
    night19 = nights.run(d19)  # v2's first night: the rollback window keeps v1 scored beside it
    assert night19.plan.versions == {"champion": 2, "previous": 1}
    assert night19.decision.rollout == "unchanged"
    before = _state(nights)
    assert before[0] == {"champion": 2, "previous": 1}

    # Upstream re-delivers 11-17 drifted; re-scoring it (a backfill, or a plain re-run of an old day) must
    # not roll v2 back, although "a champion within its rollback window failed" is what it sees.
    nights.drift(d17)
    asked = nights.run(d17, backfill=True)
    implied = nights.run(d17)  # older than the newest decided night (11-19): a backfill all the same
    for report in (asked, implied):
        assert report.plan.mode == BACKFILL
        assert report.plan.versions == {"champion": 1}  # the version that served 11-17, not today's champion
        assert report.monitored["champion"]["status"] == "fail"
        assert report.decision.rollout == "backfill: nothing decided"
        assert report.decision.retrain is None
    assert "older than the newest decided night (2026-11-19)" in implied.plan.why
    assert _state(nights) == before
    assert served_on(nights.store, "churn", d17) == {"champion": (1, 1.0)}
    # The re-scored day replaced v1's partition of 11-17 atomically; the newest night still serves v2.
    assert nights.store.partition("churn", 1, d17).run_id == implied.scored["champion"]["store_run_id"]


def test_a_failing_night_inside_the_window_rolls_back_by_nights_never_by_the_wall_clock(nights: Any) -> None:
    d17, d18 = D1 + timedelta(days=1), D1 + timedelta(days=2)
    nights.run(d17)
    nights.rollouts.promote("churn", 2, reason="by hand", ds=d17)
    # 11-18 is v2's first night (the move applies from the night after 11-17): both versions scored.
    nights.drift(d18)
    report = nights.run(d18)
    assert report.plan.versions == {"champion": 2, "previous": 1}
    # Both fail on the drifted day: the data moved, not the model, so going back would not help.
    assert (report.monitored["champion"]["status"], report.monitored["previous"]["status"]) == ("fail", "fail")
    assert report.decision.rollout == "unchanged"
    assert nights.registry.aliases("churn") == {"champion": 2, "previous": 1}


def test_a_night_is_decided_once_and_not_on_a_champion_that_moved_since_its_plan(nights: Any) -> None:
    d17, d18 = D1 + timedelta(days=1), D1 + timedelta(days=2)
    first = nights.run(d17)
    again = nights.run(d17)  # a retried task, a re-run of the newest night: the recorded decision replays
    assert again.plan.mode == NIGHTLY
    assert again.decision.replayed
    assert again.decision.rollout == first.decision.rollout

    plan = plan_night(nights.settings, "churn", d18, store=nights.store)
    nights.rollouts.promote("churn", 2, reason="by hand, while the night of 11-18 runs", ds=d17)
    failing = {"champion": {"status": "fail"}}  # the planned champion (v1) failed: it is no longer the champion
    decision = decide_night(nights.settings, plan, failing, store=nights.store)
    assert decision.rollout == "unchanged: the champion moved since the night was planned"
    assert nights.registry.aliases("churn") == {"champion": 2, "previous": 1}


def test_the_rollback_window_is_counted_in_nights_from_the_night_a_move_applies(nights: Any) -> None:
    d17 = D1 + timedelta(days=1)
    nights.run(d17)
    nights.rollouts.promote("churn", 2, reason="by hand", ds=d17)
    r = nights.rollouts
    window = [d17 + timedelta(days=i) for i in range(1, 4)]
    assert all(r.versions_to_score("churn", ds) == {"champion": 2, "previous": 1} for ds in window)
    assert r.versions_to_score("churn", d17) == {"champion": 2}  # before the move applies
    assert r.versions_to_score("churn", d17 + timedelta(days=4)) == {"champion": 2}  # after its window
    # A far-future or far-past night is judged by its ds alone (no wall clock anywhere).
    assert r.versions_to_score("churn", date(2031, 1, 1)) == {"champion": 2}
    assert r.versions_to_score("churn", date(2020, 1, 1)) == {"champion": 2}
    [event] = [e for e in nights.registry.alias_history("churn") if e["alias"] == "champion" and e["new_version"] == 2]
    assert event["effective_ds"] == d17 + timedelta(days=1)


def test_models_sharing_a_dataset_are_scored_in_one_read_and_each_fails_alone(
    night_data: Path, tmp_path: Path, store_url: str, dask_client: Any
) -> None:
    """Three models on one dataset, one night: one read of the partition for all three; the one whose
    contract the data breaks (found while reading) fails naming the column, the other two commit every row
    and are decided."""
    from nightshift.config import load_settings
    from nightshift.nightly import run_nights
    from tests.conftest import write_project

    data = tmp_path / "data"
    shutil.copytree(night_data, data, ignore=shutil.ignore_patterns("drifted"))
    group = '[models.schedule]\ngroup = "customers"\n'
    settings = load_settings(
        write_project(
            tmp_path,
            store_url,
            data,
            extra_model=group,
            more_models={"churn_b": (data, group), "strict": (data, group)},
        )
    )
    assert [m.name for m in settings.groups()["customers"]] == ["churn", "churn_b", "strict"]
    for name in ("churn", "churn_b", "strict"):
        train_and_register(settings, name, D1)
    # Tightened after training: tonight's data has missing ages, which `strict` no longer accepts.
    strict = settings.model("strict")
    columns = [c.model_copy(update={"nullable": False}) if c.name == "age" else c for c in strict.contract.columns]
    strict.contract = strict.contract.model_copy(update={"columns": columns})
    ds = D1 + timedelta(days=2)
    # Tonight's writer kept no column statistics: no footer can tell the missing ages, only the read can.
    import pyarrow.parquet as pq

    for path in sorted((data / "features" / f"ds={ds.isoformat()}").glob("*.parquet")):
        pq.write_table(pq.read_table(path), path, write_statistics=False)
    reports = run_nights(settings, ["churn", "churn_b", "strict"], ds, client=dask_client)
    assert isinstance(reports["strict"], Exception)
    assert "age" in str(reports["strict"])
    store = open_store(settings)
    try:
        runs = {(r["model"], r["status"]): r for r in store.runs(limit=20) if r["ds"] == ds}
        for name in ("churn", "churn_b"):
            report = reports[name]
            assert not isinstance(report, Exception), report
            assert report.scored["champion"]["rows"] == ROWS
            assert report.decision.rollout  # decided, like a night of its own
            part = store.partition(name, 1, ds)
            assert part is not None
            assert part.row_count == ROWS
            # All three models rode the same read: one pass, as many chunk tasks as one model alone needs.
            assert runs[(name, "committed")]["timings"]["models_in_read"] == 3
        assert store.partition("strict", 1, ds) is None
        assert runs[("strict", "failed")]["error"]
        assert "age" in runs[("strict", "failed")]["error"]
    finally:
        store.dispose()
