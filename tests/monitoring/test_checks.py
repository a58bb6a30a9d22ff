"""The nightly checks as pure functions: drift, quality and edge cases on demo partitions (no database)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from nightshift.monitoring.checks import FAIL, INSUFFICIENT, PASS, run_checks, verdict
from nightshift.monitoring.profile import profile_batches, profile_files
from nightshift.monitoring.reference import model_session, score_sample
from tests.monitoring.conftest import (
    CLEAN_DAYS,
    MEAN_SHIFT_DAY,
    MISSING_SPIKE_DAY,
    NEW_CATEGORY_DAY,
    day_files,
)


def _profile(cfg: Any, files: list[str]) -> Any:
    return profile_files(files, cfg.contract, cap=cfg.monitoring.sample_rows, seed=cfg.monitoring.sample_seed)


def _night(cfg: Any, ref: Any, profile: Any, trained_model: Any, history: list[int] | None = None) -> list[Any]:
    scores = score_sample(model_session(trained_model.onnx_bytes), profile.sample, cfg.contract)
    return run_checks(profile, ref, cfg, current_scores=scores, volume_history=history)


def _failing(checks: list[Any]) -> set[tuple[str, str | None]]:
    return {(c.kind, c.column) for c in checks if c.failing}


def _by(checks: list[Any], kind: str, column: str | None = None) -> Any:
    return next(c for c in checks if c.kind == kind and c.column == column)


def test_clean_nights_raise_no_alarm(mon_root: Path, mon_cfg: Any, mon_reference: Any, trained_model: Any) -> None:
    for day in CLEAN_DAYS:
        checks = _night(mon_cfg, mon_reference, _profile(mon_cfg, day_files(mon_root, day)), trained_model, [3000] * 3)
        assert verdict(checks) == PASS, (day, [c.describe() for c in checks if c.status != PASS])
        assert _by(checks, "score_drift").status == PASS
        assert _by(checks, "row_count").value == pytest.approx(1.0)


def test_mean_shift_is_detected_on_its_column(
    mon_root: Path, mon_cfg: Any, mon_reference: Any, trained_model: Any
) -> None:
    checks = _night(mon_cfg, mon_reference, _profile(mon_cfg, day_files(mon_root, MEAN_SHIFT_DAY)), trained_model)
    drift = _by(checks, "drift", "monthly_charges")
    assert drift.status == FAIL
    assert drift.value > 0.5
    assert drift.statistic == "wasserstein_normed"
    assert {c for k, c in _failing(checks) if k == "drift"} == {"monthly_charges"}
    assert verdict(checks) == FAIL
    assert _by(checks, "dataset_drift").status == PASS  # one feature of 39 is not dataset drift


def test_new_category_is_detected(mon_root: Path, mon_cfg: Any, mon_reference: Any, trained_model: Any) -> None:
    checks = _night(mon_cfg, mon_reference, _profile(mon_cfg, day_files(mon_root, NEW_CATEGORY_DAY)), trained_model)
    new = _by(checks, "new_category", "plan")
    assert new.status == FAIL
    assert new.value == pytest.approx(0.05, abs=0.015)
    assert set(new.detail["unseen"]) == {"plan_x"}
    assert not new.sampled
    assert _by(checks, "drift", "plan").statistic == "jensenshannon"
    assert _by(checks, "new_category", "region").status == PASS


def test_missing_spike_is_detected(mon_root: Path, mon_cfg: Any, mon_reference: Any, trained_model: Any) -> None:
    checks = _night(mon_cfg, mon_reference, _profile(mon_cfg, day_files(mon_root, MISSING_SPIKE_DAY)), trained_model)
    missing = _by(checks, "missing_share", "tenure_months")
    assert missing.status == FAIL
    assert missing.value == pytest.approx(0.3, abs=0.03)
    assert missing.rows == 3000
    assert not missing.sampled
    assert _by(checks, "missing_share", "age").status == PASS


def _day_table(mon_root: Path, mon_cfg: Any) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in day_files(mon_root, CLEAN_DAYS[0])]).select(
        mon_cfg.contract.read_columns
    )


def _replace(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def test_all_nan_column_fails_on_missing_and_drift_is_insufficient(
    mon_root: Path, mon_cfg: Any, mon_reference: Any, trained_model: Any
) -> None:
    table = _day_table(mon_root, mon_cfg)
    table = _replace(table, "age", pa.array(np.full(table.num_rows, np.nan)))  # NaN, not null
    table = _replace(table, "region", pa.nulls(table.num_rows, pa.string()))
    profile = profile_batches([table], mon_cfg.contract, expected_rows=table.num_rows, cap=2000, seed=0)
    checks = _night(mon_cfg, mon_reference, profile, trained_model)
    assert _by(checks, "missing_share", "age").value == 1.0
    assert _by(checks, "missing_share", "age").status == FAIL
    assert _by(checks, "drift", "age").status == INSUFFICIENT
    assert _by(checks, "out_of_range", "age").status == INSUFFICIENT
    assert _by(checks, "drift", "region").status == INSUFFICIENT
    assert _by(checks, "new_category", "region").status == INSUFFICIENT
    assert verdict(checks) == FAIL


def test_empty_partition_is_insufficient_data_or_a_volume_failure(mon_cfg: Any, mon_reference: Any) -> None:
    profile = profile_batches([], mon_cfg.contract, expected_rows=0, cap=2000, seed=0)
    checks = run_checks(profile, mon_reference, mon_cfg, current_scores=np.zeros(0), volume_history=[])
    assert profile.sampled_rows == 0
    assert profile.rows == 0
    assert _by(checks, "dataset_drift").status == INSUFFICIENT
    assert _by(checks, "score_drift").status == INSUFFICIENT
    assert _by(checks, "missing_share", "age").status == INSUFFICIENT
    assert verdict(checks) == INSUFFICIENT
    with_history = run_checks(profile, mon_reference, mon_cfg, current_scores=None, volume_history=[3000] * 5)
    assert _by(with_history, "row_count").status == FAIL
    assert _by(with_history, "row_count").value == 0.0
    assert verdict(with_history) == FAIL


def test_single_valued_column_and_unseen_category(
    mon_root: Path, mon_cfg: Any, mon_reference: Any, trained_model: Any
) -> None:
    table = _day_table(mon_root, mon_cfg)
    n = table.num_rows
    table = _replace(table, "discount_pct", pa.array(np.full(n, 5.0)))
    region = table.column("region").combine_chunks()
    atlantis = pa.array(np.arange(n) % 10 == 0)
    table = _replace(table, "region", pc.if_else(atlantis, pa.scalar("atlantis"), region.cast(pa.string())))
    profile = profile_batches([table], mon_cfg.contract, expected_rows=n, cap=2000, seed=0)
    checks = _night(mon_cfg, mon_reference, profile, trained_model)
    assert _by(checks, "drift", "discount_pct").status == FAIL  # a stuck feed
    new = _by(checks, "new_category", "region")
    assert new.status == FAIL
    assert "atlantis" in new.detail["unseen"]
    assert new.value == pytest.approx(0.1, abs=0.01)


def test_column_overrides_and_warn_severity(
    mon_root: Path, mon_cfg: Any, mon_reference: Any, trained_model: Any
) -> None:
    from nightshift.config import ColumnMonitoring

    cfg = mon_cfg.model_copy(deep=True)
    cfg.monitoring.columns = {
        "monthly_charges": ColumnMonitoring(drift_threshold=5.0),
        "tenure_months": ColumnMonitoring(max_missing_share=0.5, max_missing_increase=0.5),
    }
    checks = _night(cfg, mon_reference, _profile(cfg, day_files(mon_root, MISSING_SPIKE_DAY)), trained_model)
    assert _by(checks, "drift", "monthly_charges").status == PASS
    assert _by(checks, "drift", "monthly_charges").threshold == 5.0
    assert _by(checks, "missing_share", "tenure_months").status == PASS
    cfg.monitoring.columns = {}
    cfg.monitoring.column_drift = "warn"
    checks = _night(cfg, mon_reference, _profile(cfg, day_files(mon_root, MEAN_SHIFT_DAY)), trained_model)
    drift = _by(checks, "drift", "monthly_charges")
    assert drift.status == FAIL
    assert drift.severity == "warn"
    assert not drift.failing


def test_unknown_override_column_is_a_config_error(mon_cfg: Any, mon_reference: Any) -> None:
    from nightshift.config import ColumnMonitoring
    from nightshift.errors import ConfigError

    cfg = mon_cfg.model_copy(deep=True)
    cfg.monitoring.columns = {"no_such_column": ColumnMonitoring()}
    profile = profile_batches([], cfg.contract, expected_rows=0, cap=1000, seed=0)
    with pytest.raises(ConfigError, match="no_such_column"):
        run_checks(profile, mon_reference, cfg, current_scores=None, volume_history=None)


def test_sampled_rows_without_a_committed_score_fail_coverage(
    mon_root: Path, mon_cfg: Any, mon_reference: Any, trained_model: Any
) -> None:
    profile = _profile(mon_cfg, day_files(mon_root, CLEAN_DAYS[0]))
    scores = score_sample(model_session(trained_model.onnx_bytes), profile.sample, mon_cfg.contract)
    scores[:20] = np.nan  # features rewritten after scoring: some sampled entities have no committed row
    checks = run_checks(profile, mon_reference, mon_cfg, current_scores=scores, volume_history=None)
    coverage = _by(checks, "score_coverage")
    assert coverage.status == FAIL
    assert coverage.detail["unscored"] == 20
    assert _by(checks, "score_drift").rows == profile.sampled_rows - 20
