"""Small files scored together: data.bundle_slices joins consecutive slices into tasks of at least min_rows."""

from __future__ import annotations

from nightshift.data import TaskSlice, bundle_slices


def _slices(*rows: int) -> list[TaskSlice]:
    return [TaskSlice(f"part-{i:05d}.parquet", (0,), n) for i, n in enumerate(rows)]


def _rows(bundles: list[tuple[TaskSlice, ...]]) -> list[list[int]]:
    return [[s.rows for s in b] for b in bundles]


def test_small_slices_fill_a_bundle_to_min_rows_in_file_order() -> None:
    slices = _slices(40, 40, 40, 40, 40, 40, 40)
    bundles = bundle_slices(slices, min_rows=100, max_rows=1_000)
    assert _rows(bundles) == [[40, 40, 40], [40, 40, 40], [40]]
    assert [s for b in bundles for s in b] == slices  # every slice once, in order


def test_a_slice_of_min_rows_or_more_is_a_task_of_its_own() -> None:
    assert _rows(bundle_slices(_slices(500, 10, 600, 10), min_rows=100, max_rows=1_000)) == [[500], [10, 600], [10]]


def test_a_bundle_never_passes_max_rows_unless_one_slice_does() -> None:
    assert _rows(bundle_slices(_slices(60, 60, 2_000, 60), min_rows=1_000, max_rows=1_000)) == [[60, 60], [2_000], [60]]


def test_min_rows_one_gives_a_task_per_slice() -> None:
    assert _rows(bundle_slices(_slices(5, 5, 5), min_rows=1, max_rows=1_000)) == [[5], [5], [5]]
    assert bundle_slices([], min_rows=100, max_rows=1_000) == []
