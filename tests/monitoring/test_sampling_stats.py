"""The sampling policy (cap, determinism, nesting) and the distance and quality formulas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nightshift.contracts import Column, ColumnType, FeatureContract
from nightshift.errors import NightshiftError
from nightshift.monitoring import stats
from nightshift.monitoring.profile import profile_batches, profile_files
from nightshift.monitoring.sampling import entity_hashes

CONTRACT = FeatureContract(
    entity_id="id",
    columns=(
        Column(name="x", type=ColumnType.float64, min=-10, max=10),
        Column(name="c", type=ColumnType.string),
    ),
)


def _big(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    x[rng.random(rows) < 0.01] = np.nan
    return pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64) * 7 + 3),
            "x": pa.array(x),
            "c": pa.array(rng.choice(["a", "b", "c"], rows)),
        }
    )


def test_sample_cap_is_respected_on_a_large_partition(tmp_path: Path) -> None:
    rows = 400_000
    table = _big(rows)
    for i, start in enumerate(range(0, rows, 100_000)):
        pq.write_table(table.slice(start, 100_000), tmp_path / f"part-{i}.parquet", row_group_size=50_000)
    files = sorted(str(p) for p in tmp_path.glob("*.parquet"))
    profile = profile_files(files, CONTRACT, cap=5_000, seed=3)
    assert profile.rows == rows
    assert profile.sampled_rows == 5_000
    assert profile.columns["x"].missing == int(np.isnan(table.column("x").to_numpy()).sum())  # exact, every row
    info = profile.sample_info()
    assert info["cap"] == 5_000
    assert info["sampled_rows"] == 5_000
    assert info["rows"] == rows
    # The same entities whatever the file order and batch size; a smaller cap is a prefix.
    reordered = profile_batches(
        reversed(table.to_batches(max_chunksize=30_000)), CONTRACT, expected_rows=rows, cap=5_000, seed=3
    )
    ids = profile.sample.column("id").to_pylist()
    assert reordered.sample.column("id").to_pylist() == ids
    small = profile_files(files, CONTRACT, cap=500, seed=3)
    assert small.sample.column("id").to_pylist() == ids[:500]
    other_seed = profile_files(files, CONTRACT, cap=5_000, seed=4)
    assert len(set(other_seed.sample.column("id").to_pylist()) & set(ids)) < 500


def test_threads_and_row_groups_change_nothing_in_a_profile(tmp_path: Path) -> None:
    """The pass over files in parallel (whole files, or row groups where files are few) counts exactly what the
    one-thread pass counts and keeps the same sample; categoricals are counted as the dictionaries they are read
    as, integers as floats; a column the files lack counts as missing on every row."""
    contract = FeatureContract(
        entity_id="id",
        columns=(
            *CONTRACT.columns,
            Column(name="k", type=ColumnType.int64, min=1, max=2),
            Column(name="absent", type=ColumnType.float64),
        ),
    )
    rows = 120_000
    table = _big(rows, seed=5)
    k = np.random.default_rng(1).integers(0, 4, rows)
    table = table.append_column("k", pa.array(k)).append_column("y", pa.array(np.zeros(rows)))
    for i, start in enumerate(range(0, rows, 20_000)):  # 6 files of 2 row groups each
        pq.write_table(table.slice(start, 20_000), tmp_path / f"part-{i}.parquet", row_group_size=10_000)
    files = sorted(str(p) for p in tmp_path.glob("*.parquet"))
    one = profile_files(files, contract, cap=3_000, seed=7, threads=1)
    for threads in (2, 4):  # 2 threads: a file per part; 4: files < 2 × threads, so a row group per part
        many = profile_files(files, contract, cap=3_000, seed=7, threads=threads)
        assert many.rows == one.rows == rows
        assert {n: c.as_dict() for n, c in many.columns.items()} == {n: c.as_dict() for n, c in one.columns.items()}
        assert many.sample.to_pandas().equals(one.sample.to_pandas())  # NaN where NaN
    assert one.columns["c"].categories == {v: int((table.column("c").to_numpy() == v).sum()) for v in "abc"}
    assert (one.columns["k"].below_min, one.columns["k"].above_max) == (int((k < 1).sum()), int((k > 2).sum()))
    assert one.columns["absent"].missing == rows
    assert one.columns["x"].missing == int(np.isnan(table.column("x").to_numpy()).sum())
    assert one.sample.schema.field("c").type == pa.string()  # the sample is normalised: no dictionaries
    assert one.sample.column("absent").null_count == one.sampled_rows == 3_000
    assert profile_files([], contract, cap=3_000, seed=7).rows == 0


def test_samplers_merge_only_with_the_same_cut_off_and_seed() -> None:
    from nightshift.monitoring.sampling import HashSampler

    table = _big(1_000)
    a, b = HashSampler(100, 1_000, seed=1), HashSampler(100, 1_000, seed=1)
    a.offer(table.slice(0, 500), table.column("id").slice(0, 500))
    b.offer(table.slice(500), table.column("id").slice(500))
    a.merge(b)
    whole = HashSampler(100, 1_000, seed=1)
    whole.offer(table, table.column("id"))
    assert a.seen == whole.seen == 1_000
    assert a.finish(table.schema)[0].column("id").to_pylist() == whole.finish(table.schema)[0].column("id").to_pylist()
    for other in (HashSampler(100, 1_000, seed=2), HashSampler(100, 50_000, seed=1)):
        with pytest.raises(ValueError, match="different cut-offs or seeds"):
            a.merge(other)


def test_an_unreadable_file_fails_the_pass_naming_it(tmp_path: Path) -> None:
    table = _big(40_000)
    for i in range(4):
        pq.write_table(table, tmp_path / f"part-{i}.parquet", row_group_size=10_000)
    files = sorted(str(p) for p in tmp_path.glob("*.parquet"))
    bad = tmp_path / "part-2.parquet"
    data = bad.read_bytes()
    bad.write_bytes(data[:4] + b"\0" * 4096 + data[4100:])  # the first pages overwritten, the footer intact
    for threads in (1, 2):
        with pytest.raises(NightshiftError, match=r"monitoring could not read .*part-2\.parquet"):
            profile_files(files, CONTRACT, cap=1_000, seed=0, threads=threads)


def test_string_and_integer_ids_hash_deterministically() -> None:
    ints = pa.array([1, 2, 3, 1], pa.int64())
    strings = pa.array(["1", "2", "3", "1"])
    for ids in (ints, strings):
        h = entity_hashes(ids, 0)
        assert h.dtype == np.uint64
        assert h[0] == h[3]
        assert len(set(h.tolist())) == 3
        assert (entity_hashes(ids, 0) == h).all()
        assert not (entity_hashes(ids, 1) == h).all()


def test_distances_match_scipy() -> None:
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=5000), rng.normal(0.3, 1.2, size=4000)
    assert stats.wasserstein_normed(a, b) == pytest.approx(wasserstein_distance(a, b) / np.std(a), rel=1e-9)
    assert stats.wasserstein_normed(np.ones(10), np.ones(20)) == 0.0  # single-valued: no division by zero
    assert stats.wasserstein_normed(np.ones(10), np.full(10, 2.0)) == pytest.approx(1000.0)
    p, q = np.array([0.5, 0.3, 0.2, 0.0]), np.array([0.4, 0.3, 0.2, 0.1])
    assert stats.jensenshannon(p, q) == pytest.approx(jensenshannon(p, q), rel=1e-9)
    ref, cur = {"a": 50, "b": 50}, {"a": 50, "b": 40, "new": 10}
    assert stats.categorical_distance("jensenshannon", ref, cur) == pytest.approx(
        jensenshannon([0.5, 0.5, 0.0], [0.5, 0.4, 0.1])
    )
    assert stats.categorical_distance("psi", ref, ref) == pytest.approx(0.0)
    assert stats.numeric_distance("psi", a, a) == pytest.approx(0.0)
    assert stats.numeric_distance("jensenshannon", a, b) > stats.numeric_distance("jensenshannon", a, a[::-1])


def test_label_metrics_match_scikit_learn() -> None:
    from sklearn.metrics import log_loss, precision_score, recall_score, roc_auc_score

    rng = np.random.default_rng(1)
    y = (rng.random(3000) < 0.3).astype(int)
    p = np.clip(0.3 + 0.3 * (y - 0.3) + rng.normal(0, 0.2, 3000), 0.01, 0.99)
    p[:100] = 0.5  # ties
    pred = (p >= 0.5).astype(int)
    m = stats.label_metrics(y, p, pred)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p), rel=1e-9)
    assert m["log_loss"] == pytest.approx(log_loss(y, p), rel=1e-9)
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["recall"] == pytest.approx(recall_score(y, pred))
    assert m["n"] == 3000
    assert m["base_rate"] == pytest.approx(y.mean())
    assert np.isnan(stats.roc_auc(np.ones(5), np.linspace(0, 1, 5)))
