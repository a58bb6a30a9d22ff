"""The benchmark cases. Each runs in a fresh process, times its contenders round-robin and records them."""

from __future__ import annotations

import contextlib
import multiprocessing
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import limits, peers, profiling
from bench.common import (
    LIMIT_PK_AGAIN,
    SQLITE_BULK_CHUNKS,
    ClusterHolder,
    Contender,
    Measurement,
    Recorder,
    count_rows,
    interleave,
    local_cluster,
    reset_plain_table,
    run_isolated,
    scratch_database,
    worker_pids,
)
from bench.data import MODEL_NAME, BroughtArtifact, Dataset, ModelArtifacts
from bench.nightshift_path import NightshiftRunner

PLAIN = "bench_predictions"


@dataclass(frozen=True)
class Size:
    """How big a suite run is. `rows` in `files` is the main dataset; the rest derive from it."""

    name: str
    rows: int
    files: int
    #: The naive peers write through to_sql at tens of thousands of rows/s: they score the first
    #: files up to this many rows (their rate is per row, so the comparison holds).
    naive_rows: int
    #: Rows the forest's in-memory ONNX Runtime limits use (a forest is ~10x slower than the linear model).
    ort_forest_rows: int
    repeats: int = 3
    #: The forest scores ~5x slower than the linear model: by default its end-to-end cases use the
    #: quarter dataset (the same rows as the main dataset's first quarter of files) to keep a
    #: default run well under 30 minutes; --forest-full gives it the main dataset.
    forest_on_quarter: bool = True
    few_files: int = 4
    many_files: int = 64
    train_rows: int = 100_000
    #: `scale`: the rows of each layout it scores (issue 18 §2), each at `scale_rows_per_file` rows per file
    #: (the main dataset's density at the default size), and the main dataset's rows in `scale_files` files.
    scale_rows: tuple[int, ...] = (1_000_000, 4_000_000, 16_000_000)
    scale_rows_per_file: int = 250_000
    scale_files: int = 1_000
    #: `many-models`: how many models read the main dataset in one pass.
    models_in_pass: int = 5


SIZES = {
    "default": Size("default", rows=4_000_000, files=16, naive_rows=500_000, ort_forest_rows=262_144),
    "small": Size(
        "small",
        rows=1_000_000,
        files=16,
        naive_rows=250_000,
        ort_forest_rows=131_072,
        scale_rows=(1_000_000, 4_000_000),
    ),
    # The default suite, with `scale` up to 64M rows (~4 GiB of Parquet, ~6 GiB in PostgreSQL per run).
    "xl": Size(
        "xl",
        rows=4_000_000,
        files=16,
        naive_rows=500_000,
        ort_forest_rows=262_144,
        scale_rows=(1_000_000, 4_000_000, 16_000_000, 64_000_000),
    ),
}


@dataclass(frozen=True)
class Plan:
    """Everything a case needs, picklable: sizes, datasets, models, where results go."""

    size: Size
    out: Path
    main: Dataset
    #: A quarter of the rows in a quarter of the files (same rows per file): rows scaling.
    quarter: Dataset
    few_files: Dataset
    many_files: Dataset
    models: dict[str, ModelArtifacts]
    pg_url: str | None
    dask_ml_missing: str | None
    profile: bool = True
    skipped: dict[str, str] = field(default_factory=dict)
    #: Models beyond the two every case knows (`multiclass`), made only when a case that needs them runs.
    extra_models: dict[str, ModelArtifacts] = field(default_factory=dict)
    #: Models brought by their users (`lightgbm`), likewise.
    brought: dict[str, BroughtArtifact] = field(default_factory=dict)
    #: `scale`'s layouts (rows at a constant rows per file), and the main dataset's rows in size.scale_files files.
    scale: tuple[Dataset, ...] = ()
    scale_files: Dataset | None = None
    #: Why the peers' environment cannot run (the `peers-*` cases are skipped), or None.
    peers_missing: str | None = None

    @property
    def recorder(self) -> Recorder:
        return Recorder(self.out / "results.jsonl")

    def data_for(self, label: str) -> Dataset:
        """The dataset the end-to-end cases of model `label` score."""
        return self.quarter if label != "linear" and self.size.forest_on_quarter else self.main

    def naive_paths_for(self, label: str) -> list[str]:
        """The first files of the model's dataset, up to size.naive_rows rows (half for the slower forest)."""
        cap = self.size.naive_rows if label == "linear" else self.size.naive_rows // 2
        paths: list[str] = []
        rows = 0
        for path in self.data_for(label).paths:
            rows += rows_in([path])
            if paths and rows > cap:
                break
            paths.append(path)
        return paths

    def workdir(self, name: str) -> Path:
        path = self.out / "work" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def _record(
    plan: Plan,
    group: str,
    model: str | None,
    results: dict[str, tuple[list[float], list[dict[str, Any]]]],
    rows: dict[str, int],
    what: dict[str, str],
) -> None:
    rec = plan.recorder
    block = uuid.uuid4().hex[:8]
    for name, (seconds, extras) in results.items():
        m = Measurement(name, group, rows[name], seconds, model=model, what=what.get(name, ""), extras=extras)
        m.block = block
        rec.add(m)


def rows_in(paths: list[str]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(p).num_rows for p in paths)


def _expect(url: str, table: str, rows: int) -> Callable[[], None]:
    def check() -> None:
        got = count_rows(url, table)
        if got != rows:
            raise RuntimeError(f"{table}: {got} rows written, expected {rows}")

    return check


# -- the machine's limits, stage by stage -------------------------------------------------------


def case_parts(plan: Plan) -> None:
    """Arrow read rate; PostgreSQL binary COPY without and with a primary key."""
    data = plan.main
    limits.arrow_read(data.paths)  # the files into the page cache, as for every other case
    read = Contender(lambda: _rows(limits.arrow_read(data.paths)))
    results = interleave({"Arrow read, 1 thread": read}, plan.size.repeats)
    _record(plan, "parts", None, results, {"Arrow read, 1 thread": data.rows}, {})
    if plan.pg_url is None:
        return
    bodies = limits.copy_bodies(data.rows, data.files)
    with scratch_database(plan.pg_url) as url:
        results = interleave(
            {
                "PG binary COPY, no index": Contender(
                    lambda: _rows(limits.pg_copy(url, PLAIN, bodies)),
                    setup=lambda: reset_plain_table(url, PLAIN),
                ),
                "PG binary COPY, primary key": Contender(
                    lambda: _rows(limits.pg_copy(url, PLAIN, bodies)),
                    setup=lambda: reset_plain_table(url, PLAIN, primary_key=True),
                ),
            },
            plan.size.repeats,
        )
    what = "prebuilt binary COPY bodies, one connection, one transaction, into (run_id, entity_id, score, label)"
    _record(plan, "parts", None, results, dict.fromkeys(results, data.rows), dict.fromkeys(results, what))


def _on_warm_cluster(runner: NightshiftRunner, data: Dataset, warm: ClusterHolder) -> Contender:
    """nightshift with `client=` a cluster started before, and stopped after, the timed call."""

    def setup() -> None:
        warm.start()
        runner.setup()

    def after() -> None:
        runner.teardown()
        warm.stop()

    return Contender(lambda: runner.score(data, client=warm.client), setup=setup, after=after)


def _indexed(rows: int, url: str) -> None:
    _rows(rows)
    limits.add_primary_key(url, PLAIN)


def _rows(n: int) -> None:
    if n <= 0:
        raise RuntimeError("nothing was processed")


def case_onnx(plan: Plan, label: str) -> None:
    """ONNX Runtime alone on in-memory features: `BATCH_ROWS`-row batches (16k) vs the whole matrix in one call."""
    art = plan.models[label]
    cap = plan.size.ort_forest_rows if art.kind != "logistic_regression" else None
    feeds = limits.load_feeds(plan.main.paths, cap)
    rows = len(next(iter(feeds.values())))
    sess = limits.session(art.onnx_bytes)
    limits.onnx_in_batches(sess, {k: v[: limits.BATCH_ROWS] for k, v in feeds.items()})  # warm up the session
    results = interleave(
        {
            f"ONNX Runtime, {limits.BATCH_ROWS // 1024}k batches": Contender(
                lambda: _rows(limits.onnx_in_batches(sess, feeds))
            ),
            "ONNX Runtime, whole matrix": Contender(lambda: _rows(limits.onnx_whole(sess, feeds))),
        },
        plan.size.repeats,
    )
    what = "one thread, features already in memory"
    _record(plan, "parts", label, results, dict.fromkeys(results, rows), dict.fromkeys(results, what))


# -- end to end: PostgreSQL -------------------------------------------------------------------


def case_postgres(plan: Plan, label: str) -> None:
    """nightshift into PostgreSQL (fresh and pre-started cluster) vs the pipelined limit and the peers,
    all in one round-robin."""
    assert plan.pg_url is not None
    art, data = plan.models[label], plan.data_for(label)
    pipeline, onnx_bytes = art.pipeline(), art.onnx_bytes
    runner = NightshiftRunner("postgresql", plan.workdir(f"pg_{label}"), art, plan.pg_url)
    warm = ClusterHolder(2)
    try:
        with scratch_database(plan.pg_url) as url, limits.LimitWorkers(2) as lw:
            reset = lambda: reset_plain_table(url, PLAIN)  # noqa: E731
            check = _expect(url, PLAIN, data.rows)
            contenders = {
                "pipelined limit": Contender(
                    lambda: _rows(limits.pipelined(data.paths, onnx_bytes, url, PLAIN, workers=lw)),
                    setup=reset,
                    after=check,
                ),
                "nightshift, fresh cluster": Contender(
                    lambda: runner.score(data), setup=runner.setup, after=runner.teardown
                ),
                "nightshift, pre-started cluster": _on_warm_cluster(runner, data, warm),
                "pipelined limit + primary key": Contender(
                    lambda: _indexed(limits.pipelined(data.paths, onnx_bytes, url, PLAIN, workers=lw), url),
                    setup=reset,
                    after=check,
                ),
                "Dask peer": Contender(
                    lambda: run_isolated(peers.dask_map_partitions, data.paths, art.pipeline_path, url, PLAIN),
                    setup=reset,
                    after=check,
                ),
            }
            if plan.dask_ml_missing is None:
                contenders["dask-ml peer"] = Contender(
                    lambda: run_isolated(peers.dask_ml_parallel_post_fit, data.paths, art.pipeline_path, url, PLAIN),
                    setup=reset,
                    after=check,
                )
            if label == "linear":  # what writing costs; the forest is bound by scoring anyway
                contenders["pipelined limit, no write"] = Contender(
                    lambda: _rows(limits.pipelined(data.paths, onnx_bytes, None, PLAIN, workers=lw))
                )
                # The same program a second time, elsewhere in the round: its ratio to the first is the noise
                # floor of a paired ratio on this machine (what "held in the worst round" can mean here).
                contenders[LIMIT_PK_AGAIN] = Contender(
                    lambda: _indexed(limits.pipelined(data.paths, onnx_bytes, url, PLAIN, workers=lw), url),
                    setup=reset,
                    after=check,
                )
            naive_paths = plan.naive_paths_for(label)
            naive_rows = rows_in(naive_paths)
            contenders["naive peer"] = Contender(
                lambda: _rows(peers.naive(naive_paths, pipeline, url, PLAIN)),
                setup=reset,
                after=_expect(url, PLAIN, naive_rows),
            )
            results = interleave(contenders, plan.size.repeats)
            rows = dict.fromkeys(results, data.rows) | {"naive peer": naive_rows}
            _record(plan, "postgres", label, results, rows, WHAT)
    finally:
        warm.stop()
        runner.close()


WHAT = {
    "pipelined limit": f"2 forked processes: Arrow read, ONNX Runtime {limits.BATCH_ROWS // 1024}k batches, one "
    "binary COPY stream each "
    "into a plain table (no index, no contract check, no commit, no catalog)",
    "pipelined limit, no write": "the pipelined limit without writing: read + score only",
    "pipelined limit + primary key": "the pipelined limit, then ADD PRIMARY KEY (entity_id, run_id) on its table: "
    "the limit for rows that can be served by id",
    LIMIT_PK_AGAIN: "the pipelined limit + primary key once more, later in each round: its ratio to the first run "
    "is the noise floor of a paired ratio",
    "nightshift, fresh cluster": "score_partition(): model + contract checks, local Dask cluster started by the call, "
    "staging, index + attach, catalog commit",
    "nightshift, pre-started cluster": "score_partition(client=...) on an already running 2-worker cluster",
    "Dask peer": "local cluster (2 forked workers) started by the program, dd.read_parquet -> map_partitions "
    "(sklearn predict_proba, COPY csv from each worker)",
    "dask-ml peer": "local cluster started by the program, dask-ml ParallelPostFit.predict_proba, "
    "ids joined per block, COPY csv",
    "naive peer": "one process: pandas.read_parquet -> sklearn predict_proba -> DataFrame.to_sql, file by file "
    "(first files only)",
    "SQLite bulk insert": "executemany of prebuilt tuples in key order, one transaction, nightshift's table shape",
    SQLITE_BULK_CHUNKS: "the same executemany, in nightshift's order: each file's rows (sorted) in a transaction of "
    "their own, file after file (as text the files' ids interleave, so each chunk inserts across the whole key)",
    "nightshift -> SQLite, fresh cluster": "score_partition() into SQLite: one worker per core scores and (two or "
    "more workers) packs each chunk into a SQLite image the driver merges (INSERT ... SELECT), an adaptive window "
    "of chunks in flight",
    "nightshift -> SQLite, pre-started cluster": "the same on an already running 2-worker cluster",
    "nightshift -> SQLite, 1 worker": "score_partition() into SQLite with dask.n_workers = 1 (a core kept for "
    "the driver, which binds the rows the worker sends: executemany)",
    "naive peer -> SQLite": "pandas.read_parquet -> predict_proba -> DataFrame.to_sql into SQLite (first files only)",
}


# -- end to end: SQLite ------------------------------------------------------------------------


def _bulk_insert_in_child(path: Path, rows: int) -> float:
    """Builds the rows and times only the insert, in a spawned child, so this process stays small (and never forks
    while its Dask client runs threads)."""
    tuples = limits.sqlite_rows(rows)
    t = time.perf_counter()
    limits.sqlite_bulk_insert(path, tuples)
    return time.perf_counter() - t


def _bulk_insert_chunks_in_child(path: Path, paths: list[str]) -> float:
    """Like `_bulk_insert_in_child`, the rows in the files' chunks (`limits.sqlite_bulk_insert_chunks`)."""
    chunks = limits.sqlite_rows_by_file(paths)
    t = time.perf_counter()
    limits.sqlite_bulk_insert_chunks(path, chunks)
    return time.perf_counter() - t


def case_sqlite(plan: Plan, label: str) -> None:
    """nightshift into SQLite vs SQLite's own bulk-insert rate (and the naive peer), in one round-robin."""
    art, data = plan.models[label], plan.data_for(label)
    work = plan.workdir(f"sqlite_{label}")
    runner = NightshiftRunner("sqlite", work, art)
    warm = ClusterHolder(2)
    bulk_db = work / "bulk.db"

    def bulk() -> dict[str, Any]:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            seconds = pool.apply(_bulk_insert_in_child, (bulk_db, data.rows))
        bulk_db.unlink(missing_ok=True)
        return {"seconds": seconds}

    def bulk_chunks() -> dict[str, Any]:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            seconds = pool.apply(_bulk_insert_chunks_in_child, (bulk_db, list(data.paths)))
        bulk_db.unlink(missing_ok=True)
        return {"seconds": seconds}

    contenders = {
        "SQLite bulk insert": Contender(bulk),
        SQLITE_BULK_CHUNKS: Contender(bulk_chunks),
        "nightshift -> SQLite, fresh cluster": Contender(
            lambda: runner.score(data), setup=runner.setup, after=runner.teardown
        ),
        # Not the default: one worker, a core kept for the driver (the default before the driver's
        # adaptive in-flight window made idle workers wait for it).
        "nightshift -> SQLite, 1 worker": Contender(
            lambda: runner.score(data, n_workers=1), setup=runner.setup, after=runner.teardown
        ),
    }
    rows = dict.fromkeys(contenders, data.rows)
    if label == "linear":  # the forest's SQLite run is bound by scoring: these add nothing there
        contenders["nightshift -> SQLite, pre-started cluster"] = _on_warm_cluster(runner, data, warm)
        naive_paths = plan.naive_paths_for(label)
        db = work / "naive.db"
        contenders["naive peer -> SQLite"] = Contender(
            lambda: _rows(peers.naive(naive_paths, art.pipeline(), f"sqlite:///{db}", PLAIN)),
            setup=lambda: db.unlink(missing_ok=True),
        )
        rows |= {"nightshift -> SQLite, pre-started cluster": data.rows, "naive peer -> SQLite": rows_in(naive_paths)}
    try:
        results = interleave(contenders, plan.size.repeats)
        _record(plan, "sqlite", label, results, rows, WHAT)
    finally:
        warm.stop()
        runner.close()


# -- scaling and memory ------------------------------------------------------------------------


def _layout(data: Dataset) -> str:
    return f"{data.rows / 1e6:g}M rows / {data.files} files"


def case_scaling(plan: Plan) -> None:
    """Linear model into PostgreSQL on pre-started clusters, one round-robin: rows, files per partition,
    1 vs 2 workers (each contender's cluster starts before and stops after its own run, untimed)."""
    assert plan.pg_url is not None
    art = plan.models["linear"]
    runner = NightshiftRunner("postgresql", plan.workdir("scaling"), art, plan.pg_url)
    clusters = {1: ClusterHolder(1), 2: ClusterHolder(2)}
    limit_workers = {1: limits.LimitWorkers(1).__enter__(), 2: limits.LimitWorkers(2).__enter__()}

    layouts = [(plan.quarter, 2), (plan.few_files, 2), (plan.main, 2), (plan.many_files, 2), (plan.main, 1)]
    names = {f"{_layout(d)}, {w} worker{'s' if w > 1 else ''}": (d, w) for d, w in layouts}
    try:
        contenders = {name: _on_warm_cluster(runner, d, clusters[w]) for name, (d, w) in names.items()}
        # What the machine itself gains from a second process (other jobs share its 2 cores).
        for procs in (1, 2):
            contenders[f"pipelined limit (no write), {procs} process{'es' if procs > 1 else ''}"] = Contender(
                lambda procs=procs: _rows(
                    limits.pipelined(plan.main.paths, art.onnx_bytes, None, PLAIN, procs, workers=limit_workers[procs])
                )
            )
            names[f"pipelined limit (no write), {procs} process{'es' if procs > 1 else ''}"] = (plan.main, procs)
        results = interleave(contenders, plan.size.repeats)
        _record(plan, "scaling", "linear", results, {name: d.rows for name, (d, _) in names.items()}, {})
    finally:
        for c in clusters.values():
            c.stop()
        for w in limit_workers.values():
            w.__exit__(None, None, None)
        runner.close()


def case_memory(plan: Plan) -> None:
    """Peak RSS of each worker process as the files of a partition grow: one fresh-cluster call per layout."""
    assert plan.pg_url is not None
    runner = NightshiftRunner("postgresql", plan.workdir("memory"), plan.models["linear"], plan.pg_url)
    layouts = [plan.many_files, plan.main, plan.few_files]
    try:
        results = interleave(
            {
                f"{_layout(d)}, fresh cluster": Contender(
                    lambda d=d: runner.score(d), setup=runner.setup, after=runner.teardown
                )
                for d in layouts
            },
            1,
        )
        _record(plan, "memory", "linear", results, {f"{_layout(d)}, fresh cluster": d.rows for d in layouts}, {})
    finally:
        runner.close()


# -- several models, brought models, multiclass outputs, scale (issues 16 and 18) ---------------


def _warm(runner: NightshiftRunner, warm: ClusterHolder, run: Callable[[Any], dict[str, Any]]) -> Contender:
    """`run(client)` on a cluster started before, and stopped after, the timed call (a fresh store each time)."""

    def setup() -> None:
        warm.start()
        runner.setup()

    def after() -> None:
        runner.teardown()
        warm.stop()

    return Contender(lambda: run(warm.client), setup=setup, after=after)


def _sized(runner: NightshiftRunner, data: Dataset) -> Callable[[Any], dict[str, Any]]:
    """A `_warm` run: score `data` on the given client, timing the call itself and measuring the stored partition."""

    def run(client: Any) -> dict[str, Any]:
        return runner.score(data, client=client, store_size=True)

    return run


def case_many_models(plan: Plan) -> None:
    """Several models of one dataset (issue 18 §1): `size.models_in_pass` models (the linear pipeline registered
    under as many names) over the main dataset in ONE `score_partitions` pass, vs one model's `score_partition`,
    vs the same models one `score_partition` after another; each on its own pre-started 2-worker cluster,
    round-robin. Every model must commit every row."""
    assert plan.pg_url is not None
    art, data = plan.models["linear"], plan.main
    n = plan.size.models_in_pass
    names = (MODEL_NAME, *(f"{MODEL_NAME}_{i}" for i in range(2, n + 1)))
    runner = NightshiftRunner("postgresql", plan.workdir("many_models"), art, plan.pg_url, names=names)
    holders = {k: ClusterHolder(2) for k in ("one", "pass", "each")}
    try:
        contenders = {
            "nightshift, 1 model": _warm(runner, holders["one"], lambda c: runner.score(data, client=c)),
            f"nightshift, {n} models in one pass": _warm(
                runner, holders["pass"], lambda c: runner.score_many(data, client=c, one_pass=True)
            ),
            f"nightshift, {n} models one after another": _warm(
                runner, holders["each"], lambda c: runner.score_many(data, client=c, one_pass=False)
            ),
        }
        results = interleave(contenders, plan.size.repeats)
        what = {
            "nightshift, 1 model": "score_partition() of one linear model on a pre-started 2-worker cluster",
            f"nightshift, {n} models in one pass": f"score_partitions() of {n} models of the same dataset: each file "
            "read once, every model's session run on each batch, each model committed on its own",
            f"nightshift, {n} models one after another": f"{n} score_partition() calls in a row on one cluster",
        }
        _record(plan, "many-models", "linear", results, dict.fromkeys(results, data.rows), what)
    finally:
        for h in holders.values():
            h.stop()
        runner.close()


def case_brought(plan: Plan, label: str = "lightgbm") -> None:
    """A model brought by its user (issue 16): a LightGBM text file registered with `register_brought` (converted to
    ONNX by onnxmltools, parity-checked on the partition), scored into PostgreSQL by score_partition, vs the
    pipelined limit for the SAME ONNX graph (the registered version's artifact), fed its float32 matrix, with and
    without the primary key; on the main dataset, round-robin."""
    assert plan.pg_url is not None
    brought, data = plan.brought[label], plan.main
    t = time.perf_counter()
    runner = NightshiftRunner("postgresql", plan.workdir(f"brought_{label}"), brought, plan.pg_url, data=data)
    register_s = time.perf_counter() - t
    onnx_bytes, signature = runner.artifact()
    feed = limits.Feed.of(signature)
    mv = runner.versions[MODEL_NAME]
    plan.recorder.write(
        {
            "kind": "brought",
            "model": label,
            "library": brought.kind,
            "n_estimators": brought.n_estimators,
            "register_s": round(register_s, 2),
            "algorithm": mv.algorithm,
            "onnx_bytes": len(onnx_bytes),
            "feed": {"matrix": feed.matrix, "features": len(feed.features), "output": feed.output},
            "parity": mv.parity,
        }
    )
    print(
        f"  registered brought {label} in {register_s:.1f} s; the limit feeds {feed.matrix!r} [N, {len(feed.features)}]"
    )
    warm = ClusterHolder(2)
    try:
        with scratch_database(plan.pg_url) as url, limits.LimitWorkers(2) as lw:
            reset = lambda: reset_plain_table(url, PLAIN)  # noqa: E731
            check = _expect(url, PLAIN, data.rows)
            contenders = {
                "pipelined limit": Contender(
                    lambda: _rows(limits.pipelined(data.paths, onnx_bytes, url, PLAIN, workers=lw, feed=feed)),
                    setup=reset,
                    after=check,
                ),
                "nightshift, fresh cluster": Contender(
                    lambda: runner.score(data), setup=runner.setup, after=runner.teardown
                ),
                "nightshift, pre-started cluster": _on_warm_cluster(runner, data, warm),
                "pipelined limit + primary key": Contender(
                    lambda: _indexed(limits.pipelined(data.paths, onnx_bytes, url, PLAIN, workers=lw, feed=feed), url),
                    setup=reset,
                    after=check,
                ),
            }
            results = interleave(contenders, plan.size.repeats)
        what = {
            "pipelined limit": "the pipelined limit for the registered ONNX graph: Arrow read of the "
            f"{len(feed.features)} numeric columns, one float32 [N, F] matrix per "
            f"{limits.BATCH_ROWS // 1024}k batch, "
            "one binary COPY per process",
            "pipelined limit + primary key": "the same, then ADD PRIMARY KEY (entity_id, run_id)",
            "nightshift, fresh cluster": "score_partition() of the brought version (its signature's matrix feed), "
            "local cluster started by the call",
            "nightshift, pre-started cluster": "the same on an already running 2-worker cluster",
        }
        _record(plan, "brought", label, results, dict.fromkeys(results, data.rows), what)
    finally:
        warm.stop()
        runner.close()


def case_multiclass(plan: Plan) -> None:
    """A multiclass model's wider rows (issue 16): the demo's linear pipeline as a binary model (`churned`) and
    as a 4-class model (`next_plan`: label, score and 4 packed float32 probabilities per row, a bytea) over the
    same rows, each on its own pre-started cluster, round-robin. The report compares the write (tasks_write_s,
    workers' COPY) plus commit (primary key + attach) seconds per row, the end-to-end time, and the bytes per row
    stored."""
    assert plan.pg_url is not None
    data = plan.main
    arts = {"binary": plan.models["linear"], "multiclass": plan.extra_models["multiclass"]}
    runners = {
        task: NightshiftRunner("postgresql", plan.workdir(f"multiclass_{task}"), art, plan.pg_url)
        for task, art in arts.items()
    }
    holders = {task: ClusterHolder(2) for task in arts}
    names = {"binary": "binary (churned, 2 classes)", "multiclass": "multiclass (next_plan, 4 classes)"}
    try:
        contenders = {names[task]: _warm(runners[task], holders[task], _sized(runners[task], data)) for task in arts}
        results = interleave(contenders, plan.size.repeats)
        what = {
            names["binary"]: "score_partition() of the linear pipeline, binary: (run_id, entity_id, score, label)",
            names["multiclass"]: "the same pipeline as a 4-class model: (run_id, entity_id, score, label, probs "
            "bytea of 4 float32)",
        }
        _record(plan, "multiclass", "linear", results, dict.fromkeys(results, data.rows), what)
    finally:
        for h in holders.values():
            h.stop()
        for r in runners.values():
            r.close()


#: The k of `explain-linear`: the reasons each prediction keeps.
EXPLAIN_TOP_K = 3


def case_explain(plan: Plan, label: str = "linear") -> None:
    """Reasons for each score (issue 19 §2): the linear pipeline over the main dataset into PostgreSQL with
    `[models.explain]` off (scores only: the COPY path as always) and on (k = EXPLAIN_TOP_K: every feature's
    exact contribution on the workers, the top k packed in one more bytea per row), each on its own pre-started
    2-worker cluster, round-robin. The report gives on ÷ off, paired by round (goal ≤ 1.5×), with the seconds
    the reasons took on the workers and the bytes stored per row."""
    assert plan.pg_url is not None
    data, art = plan.main, plan.models[label]
    modes = {"off": None, "on": EXPLAIN_TOP_K}
    runners = {
        mode: NightshiftRunner("postgresql", plan.workdir(f"explain_{mode}"), art, plan.pg_url, explain_top_k=k)
        for mode, k in modes.items()
    }
    holders = {mode: ClusterHolder(2) for mode in modes}
    names = {"off": "explain off (scores only)", "on": f"explain on (top {EXPLAIN_TOP_K} reasons)"}
    try:
        contenders = {names[m]: _warm(runners[m], holders[m], _sized(runners[m], data)) for m in modes}
        results = interleave(contenders, plan.size.repeats)
        what = {
            names["off"]: "score_partition() of the linear pipeline: (run_id, entity_id, score, label) by binary COPY",
            names["on"]: f"the same with [models.explain] top_k = {EXPLAIN_TOP_K}: every feature's contribution "
            f"(closed form, numpy on each {limits.BATCH_ROWS // 1024}k batch), the top k packed in the rows' "
            "`reasons` bytea (k int16 feature indices + k float32 contributions) in the same COPY",
        }
        _record(plan, "explain", label, results, dict.fromkeys(results, data.rows), what)
    finally:
        for h in holders.values():
            h.stop()
        for r in runners.values():
            r.close()


def _interleave_tolerant(
    plan: Plan, case: str, contenders: dict[str, Contender], repeats: int
) -> dict[str, tuple[list[float], list[dict[str, Any]]]]:
    """`interleave`, except that a contender that raises is recorded as an error and dropped from the later
    rounds (its cleanup still runs): at scale, the first thing that breaks must not lose the other figures."""
    out: dict[str, tuple[list[float], list[dict[str, Any]]]] = {name: ([], []) for name in contenders}
    failed: set[str] = set()
    for round_no in range(repeats):
        for name, c in contenders.items():
            if name in failed:
                continue
            try:
                [(seconds, extras)] = interleave({name: c}, 1).values()
            except Exception as exc:
                failed.add(name)
                if c.after is not None:
                    with contextlib.suppress(Exception):
                        c.after()
                error = f"{name}, round {round_no}: {type(exc).__name__}: {exc}"
                plan.recorder.write({"kind": "error", "case": case, "error": error})
                print(f"  {case}: {error}", flush=True)
                continue
            extras[0]["round"] = round_no
            out[name][0].extend(seconds)
            out[name][1].extend(extras)
    return {name: v for name, v in out.items() if name not in failed}


def case_report(plan: Plan) -> None:
    """`bench.report_bench` (issue 18 §6): the nightly report task against the scoring task of the same night,
    each a fresh CLI process as Airflow runs them, on 50k-row nights (the issue's) and on nights of the size's rows
    (the report's cost is fixed, the scoring's grows); one round at size small. Writes report_bench.md/.jsonl
    into the results folder."""
    from bench import report_bench

    rows = [str(n) for n in dict.fromkeys((50_000, plan.size.rows))]
    rounds = ["--rounds", "1"] if plan.size.name == "small" else []
    report_bench.main(["--out", str(plan.out), "--rows", *rows, *rounds])


def case_peer(plan: Plan, name: str) -> None:
    """A peer users would pick instead (issue 18 §3: `ray` or `feast`), on the suite's main dataset and linear model,
    in the peers' own environment (bench/peers_env): `bench.ray_feast`'s part of that name, its lines in this run's
    results.jsonl, `peers.md` beside the summary."""
    from bench import ray_feast

    assert plan.pg_url is not None
    plan.recorder.write({"kind": "peers-versions", "case": f"peers-{name}", "versions": ray_feast.peers_versions()})
    cfg = ray_feast.default_config(
        plan.size.name, plan.out, plan.main, plan.models["linear"], plan.pg_url, plan.size.repeats
    )
    ray_feast.CASES[name](cfg)


def case_scale(plan: Plan) -> None:
    """Cost against rows (issue 18 §2): the linear model into PostgreSQL over `size.scale_rows` rows at constant rows
    per file, and the main dataset's rows in 16 vs `size.scale_files` files; each on its own pre-started 2-worker
    cluster, round-robin. Per call: seconds, peak RSS of each worker, and the committed partition's size on disk."""
    assert plan.pg_url is not None
    runner = NightshiftRunner("postgresql", plan.workdir("scale"), plan.models["linear"], plan.pg_url)
    layouts: dict[str, Dataset] = {}
    for d in (*plan.scale, plan.main, *([plan.scale_files] if plan.scale_files else [])):
        layouts.setdefault(d.name, d)
    holders = {name: ClusterHolder(2) for name in layouts}
    labels = {name: _layout(d) for name, d in layouts.items()}
    try:
        contenders = {labels[name]: _warm(runner, holders[name], _sized(runner, d)) for name, d in layouts.items()}
        results = _interleave_tolerant(plan, "scale", contenders, plan.size.repeats)
        what = dict.fromkeys(
            results, "score_partition() of the linear model on a pre-started 2-worker cluster (the call's own time)"
        )
        rows = {labels[name]: d.rows for name, d in layouts.items()}
        _record(plan, "scale", "linear", results, {k: rows[k] for k in results}, what)
    finally:
        for h in holders.values():
            h.stop()
        runner.close()


# -- profile ----------------------------------------------------------------------------------


def case_profile(plan: Plan) -> None:
    """py-spy on the Dask workers during one PostgreSQL scoring call per model, and on the driver
    and the two workers (the default: one per core) during one SQLite call: the share of samples per
    stage of nightshift's path."""
    out = plan.out / "profiles"
    rec = plan.recorder
    if plan.pg_url is not None:
        for label in plan.models:
            work = plan.workdir(f"profile_pg_{label}")
            runner = NightshiftRunner("postgresql", work, plan.models[label], plan.pg_url)
            try:
                with local_cluster(2) as client:
                    runner.setup()
                    runner.score(plan.quarter, client=client)  # warm the workers' sessions and connections
                    runner.setup()
                    t = time.perf_counter()
                    with profiling.sampling(sorted(worker_pids(client)), out, f"pg-{label}-workers") as files:
                        extras = runner.score(plan.data_for(label), client=client)
                    seconds = time.perf_counter() - t
                    runner.teardown()
                rec.write(_profile_record("postgres", label, "Dask workers", files, seconds, extras))
            finally:
                runner.close()
    import os

    runner = NightshiftRunner("sqlite", plan.workdir("profile_sqlite"), plan.models["linear"])
    try:
        with local_cluster(2) as client:
            runner.setup()
            runner.score(plan.quarter, client=client)
            runner.setup()
            t = time.perf_counter()
            with (
                profiling.sampling([os.getpid()], out, "sqlite-linear-driver") as driver,
                profiling.sampling(sorted(worker_pids(client)), out, "sqlite-linear-workers") as workers,
            ):
                extras = runner.score(plan.main, client=client)
            seconds = time.perf_counter() - t
            runner.teardown()
        rec.write(_profile_record("sqlite", "linear", "driver", driver, seconds, extras))
        rec.write(_profile_record("sqlite", "linear", "Dask workers", workers, seconds, extras))
    finally:
        runner.close()


def _profile_record(
    store: str, label: str, where: str, files: list[Path], seconds: float, extras: dict[str, Any]
) -> dict[str, Any]:
    breakdown = profiling.stage_breakdown(profiling.read_raw(files))
    print(f"  profile {store} {label} {where}: {breakdown['stages']}", flush=True)
    return {
        "kind": "profile",
        "store": store,
        "model": label,
        "where": where,
        "seconds": round(seconds, 3),
        "timings": extras.get("timings", {}),
        "files": [str(f) for f in files],
        **breakdown,
    }


# -- the lookup API and monitoring (their own modules, results beside the scoring figures) ------------


def case_api(plan: Plan) -> None:
    """`bench.api_bench` (wrk or a Python load against the real server, pgbench for the database's own rate);
    `--quick` at size small. Writes api_bench.md/.jsonl into the results folder."""
    from bench import api_bench

    api_bench.main([*(["--quick"] if plan.size.name == "small" else []), "--out", str(plan.out)])


def case_monitor(plan: Plan) -> None:
    """`bench.monitor_bench` (detector quality over simulated nights; cost on 1M rows vs direct scipy and
    Evidently; the rate on a 10M-row night); fewer nights, 250k and 2.5M rows at size small. Writes
    monitor_bench.md/.json into the results folder."""
    from bench import monitor_bench

    small = ["--clean-nights", "8", "--nights-per-size", "2", "--big-rows", "250000", "--work", "small"]
    small += ["--rate-rows", "2500000"]
    monitor_bench.main([*(small if plan.size.name == "small" else []), "--out", str(plan.out)])
