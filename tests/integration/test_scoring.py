"""Scoring a partition end to end on real SQLite and PostgreSQL with a real Dask cluster."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from nightshift.db import open_store
from nightshift.errors import (
    ArtifactIntegrityError,
    ContractError,
    DuplicateEntityError,
    ModelNotFound,
    NightshiftError,
    PartitionNotReady,
)
from nightshift.scoring import score_partition
from nightshift.training import onnx_scores
from tests.conftest import DEMO_FILES, DEMO_ROWS, SCORE_DS


def _part_dir(data_root: Path) -> Path:
    return data_root / "features" / f"ds={SCORE_DS.isoformat()}"


def _split_files(data_root: Path, pieces: int) -> Path:
    """Replace each file of the scored partition by `pieces` files of equal rows (<stem>-<k>.parquet); returns
    the partition's folder."""
    part = _part_dir(data_root)
    for path in sorted(part.glob("*.parquet")):
        table = pq.read_table(path)
        size = -(-table.num_rows // pieces)
        for k in range(pieces):
            pq.write_table(table.slice(k * size, size), path.with_name(f"{path.stem}-{k}.parquet"))
        path.unlink()
    return part


def _committed(store: Any, version: int = 1) -> dict[str, float]:
    part = store.partition("churn", version, SCORE_DS)
    assert part is not None
    with store.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT entity_id, score FROM predictions WHERE run_id = :r"), {"r": part.run_id}
        ).all()
    return {r[0]: float(r[1]) for r in rows}


def _runs(store: Any) -> list[tuple[int, str]]:
    return [(r["run_id"], r["status"]) for r in reversed(store.runs("churn"))]


def _total_prediction_rows(store: Any) -> int:
    with store.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM predictions")).scalar_one())


def test_score_commits_every_row_with_the_models_scores(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path, trained_model: Any
) -> None:
    settings = make_settings(store_url)
    registered(settings)
    summary = score_partition(settings, "churn", SCORE_DS, client=dask_client, run_key="t1")
    assert summary.rows == DEMO_ROWS
    assert summary.files == DEMO_FILES
    store = open_store(settings)
    part = store.partition("churn", 1, SCORE_DS)
    assert part is not None
    assert part.row_count == DEMO_ROWS
    assert part.run_id == summary.run_id
    committed = _committed(store)
    assert len(committed) == DEMO_ROWS
    # The stored scores are the model's scores for those rows, computed independently here.
    from nightshift.data.features import model_inputs

    table = pq.read_table(_part_dir(data_root))
    contract = settings.model("churn").contract
    expected = onnx_scores(trained_model.onnx_bytes, model_inputs(table, contract))
    ids = [str(i) for i in table.column("customer_id").to_pylist()]
    got = np.array([committed[i] for i in ids])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # The readable view joins the catalog: exactly the committed rows.
    with store.connect() as conn:
        n = conn.execute(
            sa.text("SELECT count(*) FROM committed_predictions WHERE model = 'churn' AND ds = :d"),
            {"d": SCORE_DS},
        ).scalar_one()
    assert n == DEMO_ROWS
    hits = store.lookup("churn", 1, SCORE_DS, ["1", "2", "no-such-id"])
    assert sorted(h.entity_id for h in hits) == ["1", "2"]
    assert all(h.label == int(h.score >= 0.5) for h in hits)


def test_rescore_replaces_without_duplicates_and_gives_identical_scores(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any
) -> None:
    settings = make_settings(store_url)
    registered(settings)
    first = score_partition(settings, "churn", SCORE_DS, client=dask_client)
    store = open_store(settings)
    before = _committed(store)
    second = score_partition(settings, "churn", SCORE_DS, client=dask_client)
    assert second.replaced_run_id == first.run_id
    after = _committed(store)
    assert after == before
    # The replaced run's rows are gone: the table holds exactly one copy.
    assert _total_prediction_rows(store) == DEMO_ROWS
    assert _runs(store) == [(first.run_id, "superseded"), (second.run_id, "committed")]


def test_two_concurrent_runs_of_one_partition_are_serialised(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any
) -> None:
    settings = make_settings(store_url)
    registered(settings)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(score_partition(settings, "churn", SCORE_DS, client=dask_client))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(results) == 2
    store = open_store(settings)
    statuses = sorted(s for _, s in _runs(store))
    assert statuses == ["committed", "superseded"]
    assert _total_prediction_rows(store) == DEMO_ROWS
    assert len(_committed(store)) == DEMO_ROWS


def _install_failing_trigger(store: Any, table: str, when: str) -> None:
    """A real failure inside the database: a trigger that aborts a write."""
    with store.begin() as conn:
        if store.is_sqlite:
            event = "INSERT" if table == "run_chunks" else "UPDATE"
            conn.exec_driver_sql(
                f"CREATE TRIGGER inject_failure BEFORE {event} ON {table} "
                f"WHEN {when} BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            )
        else:
            event = "INSERT" if table == "run_chunks" else "UPDATE"
            conn.exec_driver_sql(
                "CREATE FUNCTION inject_failure() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER inject_failure BEFORE {event} ON {table} "
                f"FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION inject_failure()"
            )


@pytest.mark.parametrize("where", ["load", "commit"])
def test_a_failure_mid_run_leaves_the_old_rows_serving(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, where: str
) -> None:
    settings = make_settings(store_url, dask="task_min_rows = 1\n")  # a chunk per file
    registered(settings)
    first = score_partition(settings, "churn", SCORE_DS, client=dask_client)
    store = open_store(settings)
    before = _committed(store)
    if where == "load":
        # The second run's load fails part way: the database refuses the last file's chunk
        # after the others were staged.
        _install_failing_trigger(store, "run_chunks", "substr(NEW.chunk, 1, 10) = 'part-00002'")
    else:
        # The load succeeds, then the catalog switch itself fails inside the commit transaction.
        _install_failing_trigger(store, "partitions", "NEW.run_id <> OLD.run_id")
    with pytest.raises(Exception, match="injected failure"):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)
    assert _committed(store) == before
    assert store.partition("churn", 1, SCORE_DS).run_id == first.run_id  # type: ignore[union-attr]
    runs = _runs(store)
    assert runs[-1][1] == "failed"
    failed = store.runs("churn")[0]
    assert "injected failure" in failed["error"]
    # The failed run's staged rows were removed.
    assert _total_prediction_rows(store) == DEMO_ROWS


def test_a_tampered_model_file_is_refused_before_any_work(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any
) -> None:
    settings = make_settings(store_url)
    mv = registered(settings)
    path = Path(mv.artifact_uri)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match=r"SHA-256 .* refusing"):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)
    assert open_store(settings).runs("churn") == []


def test_a_missing_model_file_fails_before_reading_data(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any
) -> None:
    settings = make_settings(store_url)
    mv = registered(settings)
    Path(mv.artifact_uri).unlink()
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)
    assert open_store(settings).runs("churn") == []


def test_no_champion_is_a_clear_error(store_url: str, make_settings: Any, dask_client: Any) -> None:
    settings = make_settings(store_url)
    with pytest.raises(ModelNotFound, match="nightshift train"):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)


def test_a_corrupt_parquet_file_is_refused_with_its_name(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    settings = make_settings(store_url)
    registered(settings)
    victim = sorted(_part_dir(data_root).glob("*.parquet"))[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(ContractError, match=rf"{victim.name}.*unreadable Parquet"):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)
    assert open_store(settings).runs("churn") == []


def test_random_bytes_are_refused_with_the_file_name(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    settings = make_settings(store_url)
    registered(settings)
    victim = _part_dir(data_root) / "part-99999.parquet"
    victim.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ContractError, match=r"part-99999\.parquet: unreadable Parquet"):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)


def _rewrite(path: Path, change: Any) -> None:
    table = pq.read_table(path)
    pq.write_table(change(table), path)


def test_a_missing_column_is_refused_with_file_and_column(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    settings = make_settings(store_url)
    registered(settings)
    victim = sorted(_part_dir(data_root).glob("*.parquet"))[0]
    column = settings.model("churn").contract.columns[3].name
    _rewrite(victim, lambda t: t.drop_columns([column]))
    with pytest.raises(ContractError, match=rf"{victim.name}: missing column '{column}'"):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)
    assert open_store(settings).runs("churn") == []


def test_a_wrong_type_is_refused_with_file_and_column(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    settings = make_settings(store_url)
    registered(settings)
    victim = sorted(_part_dir(data_root).glob("*.parquet"))[2]
    column = settings.model("churn").contract.numeric[0].name

    def to_text(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index(column)
        return t.set_column(i, column, pa.array([str(v) for v in t.column(column).to_pylist()]))

    _rewrite(victim, to_text)
    with pytest.raises(ContractError, match=rf"{victim.name}: column '{column}' has type string, expected float64"):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)


def test_duplicate_entity_ids_across_files_fail_and_the_old_rows_serve(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    settings = make_settings(store_url)
    registered(settings)
    score_partition(settings, "churn", SCORE_DS, client=dask_client)
    store = open_store(settings)
    before = _committed(store)
    files = sorted(_part_dir(data_root).glob("*.parquet"))
    first_id = pq.read_table(files[0]).column("customer_id")[0].as_py()

    def steal_id(t: pa.Table) -> pa.Table:
        ids = t.column("customer_id").to_pylist()
        ids[0] = first_id
        return t.set_column(t.schema.get_field_index("customer_id"), "customer_id", pa.array(ids, pa.int64()))

    _rewrite(files[1], steal_id)
    with pytest.raises(DuplicateEntityError, match=rf"'{first_id}'|={first_id}|\b{first_id}\b"):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)
    assert _committed(store) == before


def test_duplicate_entity_ids_within_a_file_name_the_file(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    settings = make_settings(store_url)
    registered(settings)
    victim = sorted(_part_dir(data_root).glob("*.parquet"))[0]
    _rewrite(victim, lambda t: pa.concat_tables([t, t.slice(0, 3)]))
    with pytest.raises(DuplicateEntityError, match=rf"{victim.name}: entity id"):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)


def test_a_partition_without_its_success_marker_is_not_ready(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    settings = make_settings(store_url)
    registered(settings)
    (_part_dir(data_root) / "_SUCCESS").unlink()
    with pytest.raises(PartitionNotReady, match="no _SUCCESS marker"):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)


def _empty_partition(data_root: Path) -> None:
    files = sorted(_part_dir(data_root).glob("*.parquet"))
    schema = pq.read_schema(files[0])
    for f in files:
        f.unlink()
    pq.write_table(schema.empty_table(), _part_dir(data_root) / "part-00000.parquet")


def test_an_empty_partition_fails_loudly_by_default(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    settings = make_settings(store_url)
    registered(settings)
    _empty_partition(data_root)
    with pytest.raises(ContractError, match="has no rows"):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)
    assert open_store(settings).runs("churn") == []


def test_an_empty_partition_commits_empty_when_the_model_says_so(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    settings = make_settings(store_url, extra_model='empty_partition = "commit"')
    registered(settings)
    _empty_partition(data_root)
    summary = score_partition(settings, "churn", SCORE_DS, client=dask_client)
    assert summary.rows == 0
    part = open_store(settings).partition("churn", 1, SCORE_DS)
    assert part is not None
    assert part.row_count == 0


def test_scoring_a_chunk_never_imports_pandas(data_root: Path, trained_model: Any, tmp_path: Path) -> None:
    """pyarrow's to_numpy imports pandas (0.2-0.7 s in every fresh Dask worker); the scoring path avoids it."""
    import hashlib
    import subprocess
    import sys

    model = tmp_path / "model.onnx"
    model.write_bytes(trained_model.onnx_bytes)
    files = sorted(_part_dir(data_root).glob("*.parquet"))
    # A chunk with nulls in numeric and categorical columns (the demo data has both).
    code = f"""
import sys
import pyarrow.parquet as pq
from nightshift.data import TaskSlice
from nightshift.demo import demo_contract
from nightshift.scoring import ChunkTask, ModelHandle, score_chunk
from nightshift.db.staging import _binary_copy_body
assert "pandas" not in sys.modules, "imported before scoring"
path = {str(files[0])!r}
meta = pq.ParquetFile(path).metadata
task = ChunkTask.single(TaskSlice(path, tuple(range(meta.num_row_groups)), meta.num_rows), demo_contract(),
                 ModelHandle({str(model)!r}, {hashlib.sha256(trained_model.onnx_bytes).hexdigest()!r}, 1, 0.5),
                 1024, 1, None)
part = score_chunk(task).of(1)
assert part.error is None and part.rows == meta.num_rows and part.data is not None
_binary_copy_body(1, part.data)
print("pandas" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("threads", "processes", "staged"),
    [(1, False, "Rows"), (2, False, "Rows"), (2, True, "SqliteImage")],
    ids=["one-thread", "threads-of-the-driver", "worker-processes"],
)
def test_sqlite_with_more_chunks_than_the_in_flight_window_commits_every_row(
    sqlite_url: str,
    make_settings: Any,
    registered: Any,
    data_root: Path,
    trained_model: Any,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    threads: int,
    processes: bool,
    staged: str,
) -> None:
    """The driver keeps at most 2 chunks per worker thread in flight; later chunks go out as earlier ones land.
    One worker thread, or workers that are threads of the driver, send their rows for the driver to bind; two or
    more worker threads in a process of their own pack them into SQLite images the driver merges
    (`staging.SqliteImage`): the same rows are committed either way."""
    _split_files(data_root, 3)
    from distributed import Client, LocalCluster

    import nightshift.scoring.partition as partition

    kinds: list[str] = []
    stage = partition.stage_chunk

    def recording_stage(url: str, run_id: int, chunk: str, rows: Any) -> int:
        kinds.append(type(rows).__name__)
        return stage(url, run_id, chunk, rows)

    monkeypatch.setattr(partition, "stage_chunk", recording_stage)
    settings = make_settings(sqlite_url, dask="task_min_rows = 1\n")  # a task per file
    registered(settings)
    seen: list[int] = []
    with contextlib.ExitStack() as stack:
        if processes:  # the session's two worker processes (one thread each), from a forkserver
            client = request.getfixturevalue("dask_client")
        else:
            cluster = stack.enter_context(
                LocalCluster(n_workers=1, threads_per_worker=threads, processes=False, dashboard_address="127.0.0.1:0")
            )
            client = stack.enter_context(Client(cluster))
        summary = score_partition(
            settings, "churn", SCORE_DS, client=client, progress=lambda done, total: seen.append(done)
        )
    assert summary.tasks == 3 * DEMO_FILES > 2 * threads  # a window of 2 chunks per worker thread
    assert kinds == [staged] * summary.tasks
    assert summary.rows == DEMO_ROWS
    assert seen == sorted(seen)
    assert seen[-1] == DEMO_ROWS
    assert len(seen) == summary.tasks
    store = open_store(settings)
    table = pq.read_table(_part_dir(data_root))
    from nightshift.data.features import model_inputs

    expected = onnx_scores(trained_model.onnx_bytes, model_inputs(table, settings.model("churn").contract))
    got = _committed(store)
    ids = [str(i) for i in table.column("customer_id").to_pylist()]
    assert np.allclose([got[i] for i in ids], expected, atol=1e-6)


def test_a_bad_row_in_a_bundle_of_small_files_is_named_by_its_file(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    """Thirty small files share one task; a row that breaks the contract fails naming its own file, not the
    bundle, and nothing is committed."""
    part = _split_files(data_root, 10)  # 30 files of 100 rows
    victim = sorted(part.glob("*.parquet"))[13]  # the 14th of 30 files, inside the one bundle
    table = pq.read_table(victim)
    ids = table.column("customer_id").to_pylist()
    ids[5] = None
    pq.write_table(table.set_column(0, "customer_id", pa.array(ids, table.schema.field("customer_id").type)), victim)
    settings = make_settings(store_url, dask="task_min_rows = 65536\n")  # the 30 files (3,000 rows) share one task
    registered(settings)
    with pytest.raises(NightshiftError) as failed:
        score_partition(settings, "churn", SCORE_DS, client=dask_client)
    message = str(failed.value)
    assert f"{victim}: entity id column 'customer_id' has 1 null value(s)" in message
    assert "part-00000-0.parquet" not in message  # not the bundle's name (its first file)
    store = open_store(settings)
    assert store.partition("churn", 1, SCORE_DS) is None
    store.dispose()


def test_a_damaged_data_page_fails_naming_the_file_and_row_group(
    store_url: str, make_settings: Any, registered: Any, dask_client: Any, data_root: Path
) -> None:
    """The footer reads (the contract check passes) but a data page does not: the error names the file."""
    settings = make_settings(store_url)
    registered(settings)
    victim = sorted(_part_dir(data_root).glob("*.parquet"))[0]
    meta = pq.ParquetFile(victim).metadata
    column = meta.row_group(0).column(5)  # a numeric feature's first column chunk
    raw = bytearray(victim.read_bytes())
    start = column.data_page_offset + 32
    raw[start : start + 64] = bytes(64 * [0xFF])
    victim.write_bytes(bytes(raw))
    with pytest.raises(ContractError, match=rf"{victim.name} row group\(s\) 0: unreadable data"):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)
    assert open_store(settings).partition("churn", 1, SCORE_DS) is None


@pytest.mark.parametrize(("min_rows", "tasks"), [(65_536, 1), (1_000, 3), (1, 30)])
def test_small_files_are_scored_in_bundles_of_at_least_task_min_rows(
    store_url: str,
    make_settings: Any,
    registered: Any,
    trained_model: Any,
    data_root: Path,
    dask_client: Any,
    min_rows: int,
    tasks: int,
) -> None:
    """30 files of 100 rows: with the default, one task reads them all (one staged chunk, one ledger row); with
    task_min_rows = 1,000, three tasks of ten files; with 1, a task per file. Every row is committed once, equal to
    what a task per file gives, and the ledger names each bundle by its first and last file."""
    part = _split_files(data_root, 10)  # 30 files of 100 rows
    settings = make_settings(store_url, dask=f"task_min_rows = {min_rows}\n")
    registered(settings)
    summary = score_partition(settings, "churn", SCORE_DS, client=dask_client)
    assert (summary.files, summary.tasks, summary.rows) == (30, tasks, DEMO_ROWS)
    store = open_store(settings)
    got = _committed(store)
    table = pq.read_table(part)
    assert sorted(got) == sorted(str(i) for i in table.column("customer_id").to_pylist())
    from nightshift.data.features import model_inputs

    expected = onnx_scores(trained_model.onnx_bytes, model_inputs(table, settings.model("churn").contract))
    ids = [str(i) for i in table.column("customer_id").to_pylist()]
    assert np.allclose([got[i] for i in ids], expected, atol=1e-6)
    if store.dialect == "postgresql":  # the workers' ledger: a row per staged chunk
        import sqlalchemy as sa

        with store.connect() as conn:
            chunks = sorted(conn.execute(sa.text("SELECT chunk FROM run_chunks")).scalars())
        assert len(chunks) == tasks
        if tasks == 1:
            assert chunks == ["part-00000-0.parquet#rg0-0..part-00002-9.parquet#rg0-0"]
    store.dispose()


def test_models_of_one_contract_share_a_batch_inputs_and_a_broken_contract_fails_only_its_models(
    data_root: Path, trained_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs of one chunk with equal contracts and layouts get a batch's inputs built once (cast, checked) and
    the same scores as alone; runs whose contract the batch breaks fail with that error, the others go on."""
    import hashlib

    from nightshift.data import TaskSlice, features
    from nightshift.db.staging import Rows
    from nightshift.demo import demo_contract
    from nightshift.errors import ContractError
    from nightshift.scoring import ChunkTask, ModelHandle, score_chunk
    from nightshift.scoring.chunk import ModelRun
    from nightshift.scoring.outputs import OutputReader

    model = tmp_path / "model.onnx"
    model.write_bytes(trained_model.onnx_bytes)
    handle = ModelHandle(str(model), hashlib.sha256(trained_model.onnx_bytes).hexdigest(), 1, 0.5)
    path = str(sorted(_part_dir(data_root).glob("*.parquet"))[0])
    meta = pq.ParquetFile(path).metadata
    piece = TaskSlice(path, tuple(range(meta.num_row_groups)), meta.num_rows)
    batch_rows = max(1, meta.num_rows // 4)
    # A numeric column with a null in the first batch: a contract that refuses nulls there breaks at once.
    first = pq.ParquetFile(path).read_row_group(0).slice(0, batch_rows)
    holey = next(c.name for c in demo_contract().numeric if first.column(c.name).null_count)
    columns = [c.model_copy(update={"nullable": False}) if c.name == holey else c for c in demo_contract().columns]
    strict = demo_contract().model_copy(update={"columns": columns})
    calls: list[str] = []
    real = features.model_inputs

    def counting(data: Any, contract: Any, source: str = "input") -> Any:
        calls.append("strict" if contract == strict else "demo")
        return real(data, contract, source)

    monkeypatch.setattr(features, "model_inputs", counting)

    def run(run_id: int, contract: Any) -> ModelRun:
        return ModelRun(f"m{run_id}", 1, handle, contract, run_id, OutputReader(threshold=0.5))

    alone = score_chunk(ChunkTask((piece,), (run(1, demo_contract()),), batch_rows, None))
    batches = len(calls)
    assert batches > 1
    calls.clear()
    task = ChunkTask(
        (piece,),
        (run(1, demo_contract()), run(2, strict), run(3, demo_contract()), run(4, strict)),
        batch_rows,
        None,
    )
    result = score_chunk(task)
    # One build a batch for the two demo-contract runs; one for the two strict runs, whose first batch breaks.
    assert calls.count("demo") == batches
    assert calls.count("strict") == 1
    for run_id in (1, 3):
        part = result.of(run_id)
        assert part.error is None
        assert part.rows == meta.num_rows
        shared, own = part.data, alone.of(1).data
        assert isinstance(shared, Rows)
        assert isinstance(own, Rows)
        np.testing.assert_array_equal(shared.scores, own.scores)
        assert shared.ids.equals(own.ids)
    for run_id in (2, 4):
        error = result.of(run_id).error
        assert isinstance(error, ContractError)
        assert holey in str(error)
        assert "null" in str(error)
