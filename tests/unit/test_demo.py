"""The demo dataset generator: layout, determinism, realism, drift injection and argument checks."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nightshift.demo import (
    DEMO_ENTITY_ID,
    DEMO_LABEL,
    DemoSummary,
    DriftSpec,
    demo_contract,
    generate,
    parse_drift,
)
from nightshift.demo import data as demo

START = date(2026, 11, 1)
REPO_ROOT = Path(__file__).resolve().parents[2]


def _gen(root: Path, **kwargs: Any) -> DemoSummary:
    args: dict[str, Any] = {"start": START, "days": 2, "rows_per_day": 2_000, "files_per_day": 3, "seed": 11}
    args.update(kwargs)
    return generate(root / "features", root / "labels", **args)


def _ds(root: Path, tree: str, day: date) -> Path:
    return root / tree / f"ds={day.isoformat()}"


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))


def _features(root: Path, day: date) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in _parts(_ds(root, "features", day))])


def _labels(root: Path, day: date) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in _parts(_ds(root, "labels", day))])


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoSummary, list[tuple[int, int]]]:
    root = tmp_path_factory.mktemp("demo")
    calls: list[tuple[int, int]] = []
    summary = _gen(root, days=3, rows_per_day=2_500, files_per_day=4, progress=lambda d, t: calls.append((d, t)))
    return root, summary, calls


# -- layout -----------------------------------------------------------------------------------


def test_layout_markers_and_row_counts(small: tuple[Path, DemoSummary, list[tuple[int, int]]]) -> None:
    root, summary, _ = small
    days = [START + timedelta(days=i) for i in range(3)]
    assert summary.days == days
    assert summary.rows == 3 * 2_500
    assert summary.files == 3 * 4
    assert summary.features_root == str(root / "features")
    assert summary.labels_root == str(root / "labels")
    assert summary.seconds > 0
    assert sorted(p.name for p in (root / "features").iterdir()) == [f"ds={d.isoformat()}" for d in days]
    assert sorted(p.name for p in (root / "labels").iterdir()) == [f"ds={d.isoformat()}" for d in days]
    for day in days:
        fdir, ldir = _ds(root, "features", day), _ds(root, "labels", day)
        assert {p.name for p in fdir.iterdir()} == {f"part-{k:05d}.parquet" for k in range(4)} | {"_SUCCESS"}
        assert {p.name for p in ldir.iterdir()} == {"part-00000.parquet", "_SUCCESS"}
        assert (fdir / "_SUCCESS").stat().st_size == 0
        counts = [pq.ParquetFile(p).metadata.num_rows for p in _parts(fdir)]
        assert sum(counts) == 2_500
        assert max(counts) - min(counts) <= 1
        # The marker is written after every part file.
        assert (fdir / "_SUCCESS").stat().st_mtime_ns >= max(p.stat().st_mtime_ns for p in _parts(fdir))
        assert (ldir / "_SUCCESS").stat().st_mtime_ns >= (ldir / "part-00000.parquet").stat().st_mtime_ns


def test_progress_after_each_file(small: tuple[Path, DemoSummary, list[tuple[int, int]]]) -> None:
    _, _, calls = small
    assert len(calls) == 3 * 4
    assert all(total == 7_500 for _, total in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done)
    assert done[-1] == 7_500


def test_schema_matches_contract(small: tuple[Path, DemoSummary, list[tuple[int, int]]]) -> None:
    root, _, _ = small
    contract = demo_contract()
    assert contract.entity_id == DEMO_ENTITY_ID == "customer_id"
    assert contract.entity_id_type == "int64"
    assert len(contract.numeric) >= 30
    assert len(contract.categorical) == 3
    assert all(c.nullable for c in contract.columns)
    assert all(len(c.name) <= 40 and c.name == c.name.lower() for c in contract.columns)
    assert contract.columns[contract.feature_names.index("tenure_months")].min == 0
    for f in _parts(_ds(root, "features", START)):
        schema = pq.read_schema(f)
        contract.check_schema(schema, str(f))
        assert schema.names == contract.read_columns  # no label, no ds column
        assert schema.field(DEMO_ENTITY_ID).type == pa.int64()
        for c in contract.numeric:
            assert schema.field(c.name).type == pa.float64()
        for c in contract.categorical:
            assert schema.field(c.name).type == pa.string()
        # String columns are dictionary-encoded in the file; row groups are bounded.
        meta = pq.ParquetFile(f).metadata
        for i in range(meta.num_columns):
            col = meta.row_group(0).column(i)
            if col.path_in_schema in ("plan", "region", "payment_method"):
                assert col.has_dictionary_page
        assert all(meta.row_group(i).num_rows <= demo.ROW_GROUP_ROWS for i in range(meta.num_row_groups))


def test_labels_separate_and_aligned(small: tuple[Path, DemoSummary, list[tuple[int, int]]]) -> None:
    root, _, _ = small
    feats, labels = _features(root, START), _labels(root, START)
    assert DEMO_LABEL not in feats.column_names
    assert labels.column_names == [DEMO_ENTITY_ID, DEMO_LABEL, "spend_next_month", "next_plan"]
    assert labels.schema.field(DEMO_LABEL).type == pa.int8()
    assert labels.column(DEMO_ENTITY_ID).equals(feats.column(DEMO_ENTITY_ID))
    y = labels.column(DEMO_LABEL).to_numpy()
    assert labels.column(DEMO_LABEL).null_count == 0
    assert set(np.unique(y)) <= {0, 1}


def test_ids_stable_across_days(small: tuple[Path, DemoSummary, list[tuple[int, int]]]) -> None:
    root, _, _ = small
    expected = np.arange(1, 2_501, dtype=np.int64)
    tables = [_features(root, START + timedelta(days=i)) for i in range(3)]
    for t in tables:
        ids = t.column(DEMO_ENTITY_ID).to_numpy()
        assert np.array_equal(ids, expected)
    # Customer traits are stable, behaviour differs from day to day.
    age0 = tables[0].column("age").to_numpy(zero_copy_only=False)
    age1 = tables[1].column("age").to_numpy(zero_copy_only=False)
    both = ~np.isnan(age0) & ~np.isnan(age1)
    assert np.array_equal(age0[both], age1[both])
    calls0 = tables[0].column("support_calls_30d").to_numpy(zero_copy_only=False)
    calls1 = tables[1].column("support_calls_30d").to_numpy(zero_copy_only=False)
    assert not np.array_equal(calls0, calls1, equal_nan=True)


def test_nulls_present_at_realistic_rates(tmp_path: Path) -> None:
    _gen(tmp_path, days=1, rows_per_day=16_000, files_per_day=1)
    table = _features(tmp_path, START)
    assert table.column(DEMO_ENTITY_ID).null_count == 0
    for name in demo_contract().feature_names:
        rate = table.column(name).null_count / table.num_rows
        assert 0.002 <= rate <= 0.07, (name, rate)


def test_realistic_distributions(tmp_path: Path) -> None:
    _gen(tmp_path, days=1, rows_per_day=16_000, files_per_day=1)
    t = _features(tmp_path, START)

    def col(name: str) -> np.ndarray:
        return np.asarray(t.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)

    contract = demo_contract()
    for spec in contract.numeric:
        x = col(spec.name)
        x = x[~np.isnan(x)]
        if spec.min is not None:
            assert x.min() >= spec.min, spec.name
        if spec.max is not None:
            assert x.max() <= spec.max, spec.name
        assert x.std() > 0, spec.name
    tenure, monthly, total = col("tenure_months"), col("monthly_charges"), col("total_charges")
    ok = ~np.isnan(tenure) & ~np.isnan(monthly) & ~np.isnan(total)
    assert np.corrcoef(tenure[ok] * monthly[ok], total[ok])[0, 1] > 0.95
    assert set(t.column("plan").drop_null().unique().to_pylist()) == {"basic", "standard", "premium", "family"}
    assert len(t.column("region").drop_null().unique()) == 6
    assert len(t.column("payment_method").drop_null().unique()) == 4
    y = _labels(tmp_path, START).column(DEMO_LABEL).to_numpy()
    assert 0.15 <= y.mean() <= 0.30


# -- determinism --------------------------------------------------------------------------------


def test_same_arguments_same_data(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _gen(a)
    _gen(b)
    for i in range(2):
        day = START + timedelta(days=i)
        assert _features(a, day).equals(_features(b, day))
        assert _labels(a, day).equals(_labels(b, day))
        for pa_, pb in zip(_parts(_ds(a, "features", day)), _parts(_ds(b, "features", day)), strict=True):
            assert pq.read_table(pa_).equals(pq.read_table(pb))


def test_other_seed_other_data(tmp_path: Path) -> None:
    _gen(tmp_path / "a", days=1, seed=1)
    _gen(tmp_path / "b", days=1, seed=2)
    assert not _features(tmp_path / "a", START).equals(_features(tmp_path / "b", START))


def test_values_independent_of_file_split_and_row_count(tmp_path: Path) -> None:
    _gen(tmp_path / "a", days=1, rows_per_day=3_000, files_per_day=1)
    _gen(tmp_path / "b", days=1, rows_per_day=20_000, files_per_day=7)
    a, b = _features(tmp_path / "a", START), _features(tmp_path / "b", START)
    assert b.slice(0, 3_000).equals(a)
    assert _labels(tmp_path / "b", START).slice(0, 3_000).equals(_labels(tmp_path / "a", START))


def test_rerun_replaces_the_day(tmp_path: Path) -> None:
    _gen(tmp_path, days=1, files_per_day=5)
    before = _features(tmp_path, START)
    fdir = _ds(tmp_path, "features", START)
    (fdir / ".part-00001.parquet.tmp-999").write_bytes(b"half a file")
    _gen(tmp_path, days=1, files_per_day=2)
    assert sorted(p.name for p in fdir.iterdir()) == ["_SUCCESS", "part-00000.parquet", "part-00001.parquet"]
    assert _features(tmp_path, START).equals(before)


def test_failure_leaves_no_marker_and_no_temp_files(tmp_path: Path) -> None:
    def boom(done: int, total: int) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        _gen(tmp_path, days=1, files_per_day=3, progress=boom)
    fdir, ldir = _ds(tmp_path, "features", START), _ds(tmp_path, "labels", START)
    assert not (fdir / "_SUCCESS").exists()
    assert not (ldir / "_SUCCESS").exists()
    assert [p.name for p in fdir.iterdir()] == ["part-00000.parquet"]  # the one file finished before the error
    assert list(ldir.iterdir()) == []


def test_row_groups_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "ROW_GROUP_ROWS", 1_000)
    _gen(tmp_path, days=1, rows_per_day=5_500, files_per_day=2)
    for f in _parts(_ds(tmp_path, "features", START)):
        meta = pq.ParquetFile(f).metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        assert sizes == [1_000, 1_000, 750]


# -- drift --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("mean_shift:monthly_charges:1.5@2026-11-02", "monthly_charges"),
        ("variance_change:data_usage_gb_30d:3@2026-11-02", "data_usage_gb_30d"),
        ("new_category:plan:0.2@2026-11-02", "plan"),
        ("missing_spike:credit_score:0.4@2026-11-02", "credit_score"),
        ("missing_spike:region:0.3@2026-11-02", "region"),
    ],
)
def test_drift_changes_only_its_column_from_its_start(tmp_path: Path, text: str, column: str) -> None:
    spec = parse_drift(text)
    _gen(tmp_path / "base", days=2, rows_per_day=4_000)
    _gen(tmp_path / "drift", days=2, rows_per_day=4_000, drift=[spec])
    day1, day2 = START, START + timedelta(days=1)
    base1, drift1 = _features(tmp_path / "base", day1), _features(tmp_path / "drift", day1)
    base2, drift2 = _features(tmp_path / "base", day2), _features(tmp_path / "drift", day2)
    assert drift1.equals(base1)  # before the start day nothing changes
    for name in base2.column_names:
        if name != column:
            assert drift2.column(name).equals(base2.column(name)), name
    assert not drift2.column(column).equals(base2.column(column))
    # Labels come from the undrifted values.
    assert _labels(tmp_path / "drift", day2).equals(_labels(tmp_path / "base", day2))

    before, after = base2.column(column), drift2.column(column)
    if spec.kind in ("mean_shift", "variance_change"):
        x = np.asarray(before.to_numpy(zero_copy_only=False), dtype=np.float64)
        z = np.asarray(after.to_numpy(zero_copy_only=False), dtype=np.float64)
        if spec.kind == "mean_shift":
            assert np.nanmean(z) - np.nanmean(x) == pytest.approx(1.5 * np.nanstd(x), rel=0.1)
        else:
            assert np.nanstd(z) / np.nanstd(x) == pytest.approx(3.0, rel=0.1)
    elif spec.kind == "new_category":
        share = after.to_pylist().count("plan_x") / len(after)
        assert share == pytest.approx(0.2, abs=0.03)
        assert "plan_x" not in before.to_pylist()
    else:
        assert after.null_count / len(after) == pytest.approx(0.4 if column == "credit_score" else 0.3, abs=0.04)


def test_parse_drift_good() -> None:
    spec = parse_drift("mean_shift:monthly_charges:1.5@2026-11-05")
    assert spec == DriftSpec("mean_shift", "monthly_charges", 1.5, date(2026, 11, 5))
    assert parse_drift(str(spec)) == spec
    assert parse_drift(" missing_spike : plan : 0.25 @ 2026-01-02 ") == DriftSpec(
        "missing_spike", "plan", 0.25, date(2026, 1, 2)
    )
    assert parse_drift("variance_change:age:0.5@2026-01-02").magnitude == 0.5
    assert parse_drift("mean_shift:tenure_months:-2@2026-01-02").magnitude == -2.0


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("mean_shift:monthly_charges:1.5", "KIND:COLUMN:MAGNITUDE@YYYY-MM-DD"),
        ("", "KIND:COLUMN:MAGNITUDE"),
        ("mean_shift:monthly_charges@2026-11-05", "KIND:COLUMN:MAGNITUDE"),
        ("shift:monthly_charges:1.5@2026-11-05", "unknown drift kind 'shift'"),
        ("mean_shift:monthly_charge:1.5@2026-11-05", "unknown drift column 'monthly_charge'"),
        ("mean_shift:customer_id:1.5@2026-11-05", "unknown drift column 'customer_id'"),
        ("mean_shift:monthly_charges:big@2026-11-05", "magnitude 'big'"),
        ("mean_shift:monthly_charges:nan@2026-11-05", "finite"),
        ("mean_shift:monthly_charges:1.5@2026-13-05", "start '2026-13-05'"),
        ("mean_shift:plan:1.5@2026-11-05", "needs a numeric column"),
        ("new_category:age:0.1@2026-11-05", "needs a string column"),
        ("new_category:plan:1.5@2026-11-05", r"\(0, 1\]"),
        ("missing_spike:age:0@2026-11-05", r"\(0, 1\]"),
        ("variance_change:age:-1@2026-11-05", "> 0"),
    ],
)
def test_parse_drift_bad(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_drift(text)


def test_drift_spec_validates_directly() -> None:
    with pytest.raises(ValueError, match="unknown drift kind"):
        DriftSpec("mean_shift2", "age", 1.0, START)
    with pytest.raises(ValueError, match="start must be a date"):
        DriftSpec("mean_shift", "age", 1.0, cast(Any, "2026-11-01"))


# -- arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"days": 0}, "days"),
        ({"rows_per_day": 0}, "rows_per_day"),
        ({"files_per_day": 0}, "files_per_day"),
        ({"rows_per_day": 3, "files_per_day": 4}, "files_per_day"),
        ({"days": 1.5}, "days"),
        ({"seed": -1}, "seed"),
        ({"start": "2026-11-01"}, "start"),
        ({"drift": ["mean_shift:age:1@2026-11-01"]}, "DriftSpec"),
    ],
)
def test_argument_validation(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _gen(tmp_path, **kwargs)
    assert not (tmp_path / "features").exists()


# -- the model it is for ------------------------------------------------------------------------


def test_logistic_regression_learns_it(tmp_path: Path) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from nightshift.data.features import model_frame

    contract = demo_contract()
    _gen(tmp_path, days=2, rows_per_day=16_000, files_per_day=2)

    def xy(day: date) -> tuple[object, np.ndarray]:
        return model_frame(_features(tmp_path, day), contract), _labels(tmp_path, day).column(DEMO_LABEL).to_numpy()

    x_train, y_train = xy(START)
    x_test, y_test = xy(START + timedelta(days=1))
    prep = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), [c.name for c in contract.numeric]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), [c.name for c in contract.categorical]),
        ]
    )
    model = make_pipeline(prep, LogisticRegression(max_iter=300)).fit(x_train, y_train)
    auc = roc_auc_score(y_test, model.predict_proba(x_test)[:, 1])
    assert 0.7 <= auc <= 0.95


def test_project_file_declares_the_demo_contract() -> None:
    from nightshift.config import load_settings

    settings = load_settings(REPO_ROOT / "nightshift.toml")
    model = settings.model("churn")
    assert model.contract == demo_contract()
    assert model.label_column == DEMO_LABEL
