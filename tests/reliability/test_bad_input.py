"""Bad input data: refused loudly with the file, column or id named, or accepted and scored exactly as intended.

(Covered in tests/integration/test_scoring.py and not repeated here: a corrupt or random-bytes
file, a dropped column, a whole column of the wrong type, duplicate ids across files and within
a file by file name, a missing _SUCCESS marker, empty partitions.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from nightshift.data.features import model_inputs
from nightshift.db import open_store
from nightshift.errors import ContractError, DuplicateEntityError
from nightshift.scoring import score_partition
from nightshift.training import onnx_scores
from tests.conftest import SCORE_DS
from tests.reliability.conftest import (
    MODEL,
    LibraryBug,
    assert_exactly_once,
    catalog_run,
    committed,
    input_ids,
    load,
    partition_dir,
    project,
    runs,
    stored_rows,
)


def _files(root: Path) -> list[Path]:
    return sorted(partition_dir(root).glob("*.parquet"))


def _rewrite(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def _replace(table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


class Scenario:
    """A store with the demo model registered and (optionally) yesterday's predictions committed."""

    def __init__(self, tmp_path: Path, store_url: str, root: Path, registered: Any, client: Any, **project_kw: Any):
        self.root, self.client = root, client
        self.settings = load(project(tmp_path, store_url, root, **project_kw))
        registered(self.settings)
        self.store = open_store(self.settings)
        self.expected = input_ids(root)

    def score(self) -> Any:
        return score_partition(self.settings, MODEL, SCORE_DS, client=self.client)

    def baseline(self) -> tuple[int, dict[str, float]]:
        summary = self.score()
        return summary.run_id, assert_exactly_once(self.store, self.expected)

    def assert_old_rows_serve(self, run_id: int, rows: dict[str, float]) -> None:
        assert catalog_run(self.store) == run_id
        assert committed(self.store) == rows
        assert stored_rows(self.store) == {run_id: len(rows)}


@pytest.fixture
def scenario(
    store_url: str, tmp_path: Path, data_root: Path, registered: Any, dask_client: Any
) -> Callable[..., Scenario]:
    def make(**project_kw: Any) -> Scenario:
        return Scenario(tmp_path / "project", store_url, data_root, registered, dask_client, **project_kw)

    return make


# -- columns renamed, added, retyped ----------------------------------------------------------------


@pytest.mark.parametrize("extra_columns", ["ignore", "error"])
def test_a_renamed_column_is_refused_naming_the_file_and_the_column(
    scenario: Callable[..., Scenario], data_root: Path, extra_columns: str
) -> None:
    s = scenario(contract=f'extra_columns = "{extra_columns}"')
    run_id, before = s.baseline()
    victim = _files(data_root)[1]
    _rewrite(
        victim, lambda t: t.rename_columns(["monthly_fee" if n == "monthly_charges" else n for n in t.column_names])
    )
    with pytest.raises(ContractError) as err:
        s.score()
    msg = str(err.value)
    assert f"{victim.name}: missing column 'monthly_charges' (expected float64)" in msg
    if extra_columns == "error":
        assert "unexpected column(s) 'monthly_fee'" in msg
    assert [f for f in _files(data_root) if f.name in msg] == [victim]
    s.assert_old_rows_serve(run_id, before)
    assert len(runs(s.store)) == 1  # refused before a run was even started


def test_an_extra_column_is_ignored_by_default_and_changes_no_score(
    scenario: Callable[..., Scenario], data_root: Path
) -> None:
    s = scenario()
    _, before = s.baseline()
    for f in _files(data_root):
        _rewrite(f, lambda t: t.append_column("loyalty_tier", pa.array(["gold"] * t.num_rows)))
    s.score()
    assert assert_exactly_once(s.store, s.expected) == before


def test_an_extra_column_is_refused_when_the_contract_says_so(
    scenario: Callable[..., Scenario], data_root: Path
) -> None:
    s = scenario(contract='extra_columns = "error"')
    run_id, before = s.baseline()
    victim = _files(data_root)[2]
    _rewrite(victim, lambda t: t.append_column("loyalty_tier", pa.array(["gold"] * t.num_rows)))
    with pytest.raises(ContractError, match=rf"{victim.name}: unexpected column\(s\) 'loyalty_tier'"):
        s.score()
    s.assert_old_rows_serve(run_id, before)


# -- values that do not fit the declared type -----------------------------------------------------


def _refusal(s: Scenario) -> str | None:
    """The ContractError message if the run is refused, None if it commits."""
    try:
        s.score()
    except ContractError as exc:
        return str(exc)
    return None


def test_strings_in_a_float_column_are_refused_naming_only_that_file(
    scenario: Callable[..., Scenario], data_root: Path
) -> None:
    s = scenario()
    run_id, before = s.baseline()
    victim = _files(data_root)[0]

    def stringly(t: pa.Table) -> pa.Table:
        values = [None if v is None else f"{v:.2f}" for v in t.column("monthly_charges").to_pylist()]
        values[:3] = ["n/a", "", "12,50"]  # what a CSV export leaves behind
        return _replace(t, "monthly_charges", pa.array(values, pa.string()))

    _rewrite(victim, stringly)
    with pytest.raises(ContractError) as err:
        s.score()
    msg = str(err.value)
    assert f"{victim.name}: column 'monthly_charges' has type string, expected float64" in msg
    assert [f for f in _files(data_root) if f.name in msg] == [victim]
    s.assert_old_rows_serve(run_id, before)


def test_float64_values_beyond_float32_range_are_refused_not_scored_as_infinity(
    scenario: Callable[..., Scenario], data_root: Path
) -> None:
    s = scenario()
    run_id, before = s.baseline()
    victim = _files(data_root)[1]

    def overflow(t: pa.Table) -> pa.Table:
        values = t.column("monthly_charges").to_pylist()
        values[:2] = [1e300, -1e300]
        return _replace(t, "monthly_charges", pa.array(values, pa.float64()))

    _rewrite(victim, overflow)
    ids = [str(i) for i in pq.read_table(victim, columns=["customer_id"]).column(0).to_pylist()[:2]]
    refusal = _refusal(s)
    if refusal is None:
        now = committed(s.store)
        raise LibraryBug(
            f"1e300 and -1e300 in {victim.name}:monthly_charges were committed as scores {now[ids[0]]} and "
            f"{now[ids[1]]} (previously {before[ids[0]]:.4f} and {before[ids[1]]:.4f})"
        )
    assert victim.name in refusal
    assert "monthly_charges" in refusal
    s.assert_old_rows_serve(run_id, before)


def test_nan_in_a_non_nullable_float_column_is_refused(scenario: Callable[..., Scenario], data_root: Path) -> None:
    for f in _files(data_root):
        _rewrite(f, lambda t: _replace(t, "credit_score", pc.fill_null(t.column("credit_score"), 650.0)))
    s = scenario(not_nullable=("credit_score",))
    run_id, before = s.baseline()
    victim = _files(data_root)[0]

    def nan(t: pa.Table) -> pa.Table:
        values = t.column("credit_score").to_pylist()
        values[:5] = [float("nan")] * 5
        return _replace(t, "credit_score", pa.array(values, pa.float64()))

    _rewrite(victim, nan)
    refusal = _refusal(s)
    if refusal is None:
        raise LibraryBug(
            f"5 NaN values in the non-nullable column credit_score of {victim.name} were scored as missing"
        )
    assert victim.name in refusal
    assert "credit_score" in refusal
    s.assert_old_rows_serve(run_id, before)


# -- all-null columns of Arrow's null type ----------------------------------------------------------


def _expected_scores(onnx_bytes: bytes, contract: Any, table: pa.Table) -> dict[str, float]:
    scores = onnx_scores(onnx_bytes, model_inputs(table, contract))
    ids = [str(i) for i in table.column("customer_id").to_pylist()]
    return dict(zip(ids, np.float32(scores).tolist(), strict=True))


@pytest.mark.parametrize(("column", "typed_nulls"), [("monthly_charges", pa.float64()), ("plan", pa.string())])
def test_an_all_null_column_of_null_type_scores_as_missing_when_nullable(
    scenario: Callable[..., Scenario], data_root: Path, trained_model: Any, column: str, typed_nulls: pa.DataType
) -> None:
    s = scenario()
    victim = _files(data_root)[1]
    _rewrite(victim, lambda t: _replace(t, column, pa.nulls(t.num_rows)))
    assert pq.read_schema(victim).field(column).type == pa.null()
    s.score()
    got = assert_exactly_once(s.store, s.expected)
    # The null-typed file scores exactly like the same file with typed, all-null values.
    table = pq.read_table(victim)
    expected = _expected_scores(
        trained_model.onnx_bytes,
        s.settings.model(MODEL).contract,
        _replace(table, column, pa.nulls(table.num_rows, typed_nulls)),
    )
    # (Compared as float32, the type the store keeps: PostgreSQL hands a real back as its shortest decimal.)
    assert {k: np.float32(got[k]) for k in expected} == {k: np.float32(v) for k, v in expected.items()}


@pytest.mark.parametrize("column", ["monthly_charges", "plan"])
def test_an_all_null_column_of_null_type_is_refused_when_not_nullable(
    scenario: Callable[..., Scenario], data_root: Path, column: str
) -> None:
    files = _files(data_root)
    for f in files:  # only the null-typed file breaks the contract
        _rewrite(f, lambda t: _replace(t, column, pc.fill_null(t.column(column), t.column(column).drop_null()[0])))
    s = scenario(not_nullable=(column,))
    run_id, before = s.baseline()
    victim = files[2]
    _rewrite(victim, lambda t: _replace(t, column, pa.nulls(t.num_rows)))
    with pytest.raises(ContractError) as err:
        s.score()
    msg = str(err.value)
    assert f"{victim.name}: column '{column}' is entirely null but the contract says not nullable" in msg
    assert [f for f in files if f.name in msg] == [victim]
    s.assert_old_rows_serve(run_id, before)


# -- the files of one partition disagree -------------------------------------------------------------


def test_files_with_int_and_float_types_for_one_float_column_score_identically(
    scenario: Callable[..., Scenario], data_root: Path
) -> None:
    s = scenario()
    _, before = s.baseline()
    # credit_score holds whole numbers (and nulls): each file stores it with another type.
    for f, dtype in zip(_files(data_root), [pa.int64(), pa.int32(), pa.float32()], strict=True):
        _rewrite(f, lambda t, dtype=dtype: _replace(t, "credit_score", pc.cast(t.column("credit_score"), dtype)))
        assert pq.read_schema(f).field("credit_score").type == dtype
    s.score()
    assert assert_exactly_once(s.store, s.expected) == before


# -- duplicate entity ids ---------------------------------------------------------------------------


def test_a_duplicate_entity_id_in_another_batch_of_one_file_names_the_id_and_the_old_rows_serve(
    scenario: Callable[..., Scenario], data_root: Path
) -> None:
    s = scenario(model="batch_rows = 1024")
    run_id, before = s.baseline()
    first, second, *_ = _files(data_root)
    # One file of two 1,024-row batches whose last row repeats the id of its first row.
    merged = pa.concat_tables([pq.read_table(first), pq.read_table(second)])
    ids = merged.column("customer_id").to_pylist()
    dup = ids[0]
    ids[-1] = dup
    merged = _replace(merged, "customer_id", pa.array(ids, pa.int64()))
    assert merged.num_rows > 1024
    pq.write_table(merged, first)
    second.unlink()
    with pytest.raises(DuplicateEntityError) as err:
        s.score()
    msg = str(err.value)
    assert f"'{dup}'" in msg
    assert first.name in msg
    s.assert_old_rows_serve(run_id, before)
    failed = runs(s.store)[-1]
    assert failed["status"] == "failed"
    assert f"'{dup}'" in failed["error"]
    assert first.name in failed["error"]
