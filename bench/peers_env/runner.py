"""The peers nightshift is compared with, in their own environment (`uv sync --project bench/peers_env`).

Never imported by the main environment: `bench.ray_feast` runs this file with the peers env's python,
one command per call, a JSON spec in and one JSON line out (the last line of stdout, prefixed RESULT).

    python runner.py ray SPEC.json          # Ray Data: read_parquet -> map_batches (ORT actors) -> COPY -> primary key
    python runner.py feast-apply SPEC.json  # Feast: apply an entity + feature view, materialize into the online store
    python runner.py feast-teardown SPEC.json

Each peer is written the way its documentation suggests, as a user who wants it fast would: one ONNX
Runtime session per actor (threads set per actor), batches of the suite's `limits.BATCH_ROWS` rows (the
spec's `batch_rows`), binary COPY per block, the same plain table shape and primary key as nightshift's served
table.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

#: Set before Ray is imported (its processes inherit them): every Ray service on the loopback address (on Linux
#: Ray otherwise resolves 127.0.0.1 to the host's own address), no usage report, a patient wait for its agents.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_agent_register_timeout_ms": "180000",
}
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
COPY_TRAILER = b"\xff\xff"
#: nightshift's served table without its partitioning: what every baseline of the suite writes.
TABLE_DDL = (
    'CREATE TABLE {table} (run_id BIGINT NOT NULL, entity_id TEXT COLLATE "C" NOT NULL, '
    "score REAL NOT NULL, label SMALLINT NOT NULL)"
)


def emit(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result), flush=True)


# -- Ray Data ---------------------------------------------------------------------------------------


def copy_body(run_id: int, ids: Any, scores: Any, labels: Any) -> Any:
    """Rows (run_id int8, entity_id text, score float4, label int2) in PostgreSQL's binary COPY format."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(ids)
    ids = ids.cast(pa.binary())
    head = np.empty(n, np.dtype([("nf", ">i2"), ("l1", ">i4"), ("run", ">i8"), ("l2", ">i4")]))
    head["nf"], head["l1"], head["run"], head["l2"] = 4, 8, run_id, pc.binary_length(ids).to_numpy()
    tail = np.empty(n, np.dtype([("l3", ">i4"), ("score", ">f4"), ("l4", ">i4"), ("label", ">i2")]))
    tail["l3"], tail["score"], tail["l4"], tail["label"] = 4, scores, 2, labels
    heads = pa.FixedSizeBinaryArray.from_buffers(pa.binary(18), n, [None, pa.py_buffer(head)])
    tails = pa.FixedSizeBinaryArray.from_buffers(pa.binary(14), n, [None, pa.py_buffer(tail)])
    rows = pc.binary_join_element_wise(heads.cast(pa.binary()), ids, tails.cast(pa.binary()), b"")
    offsets = rows.buffers()[1]
    start, end = np.frombuffer(offsets, np.int32)[[rows.offset, rows.offset + n]]
    return rows.buffers()[2].slice(int(start), int(end - start))


def copy_block(conn: Any, table: str, block: Any, run_id: int) -> int:
    """One binary COPY of a block of predictions (entity_id, score, label) on an open connection."""
    n = block.num_rows
    if n == 0:
        return 0
    body = copy_body(
        run_id,
        block.column("entity_id").combine_chunks(),
        block.column("score").to_numpy(),
        block.column("label").to_numpy(),
    )
    copy = f"COPY {table} (run_id, entity_id, score, label) FROM STDIN WITH (FORMAT binary)"
    with conn.cursor() as cur, cur.copy(copy) as cp:
        cp.write(COPY_HEADER)
        cp.write(memoryview(body))
        cp.write(COPY_TRAILER)
    return n


class OrtScorer:
    """The map_batches UDF: one ONNX Runtime session per actor, created once; each batch of the Parquet
    columns becomes (entity_id, score, label). With `copy_to`, the actor also COPYs its batch and returns
    only its row count (the "COPY in the scoring actor" variant)."""

    def __init__(
        self,
        onnx_path: str,
        entity: str,
        numeric: list[str],
        categorical: list[str],
        missing: str,
        threads: int = 1,
        copy_to: tuple[str, str, int] | None = None,
    ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.sess = ort.InferenceSession(onnx_path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.entity, self.numeric, self.categorical, self.missing = entity, numeric, categorical, missing
        self.copy_to = copy_to
        if copy_to is not None:
            import psycopg

            self.conn = psycopg.connect(copy_to[0], autocommit=True)  # one connection per actor

    def feeds(self, table: Any) -> dict[str, Any]:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        feeds: dict[str, Any] = {}
        for name in self.numeric:
            col = pc.cast(table.column(name), pa.float32()).combine_chunks()
            feeds[name] = col.to_numpy(zero_copy_only=False).reshape(-1, 1)
        for name in self.categorical:
            col = pc.fill_null(table.column(name), self.missing).combine_chunks()
            feeds[name] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=object).reshape(-1, 1)
        return feeds

    def __call__(self, table: Any) -> Any:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        proba = self.sess.run(["probabilities"], self.feeds(table))[0]
        scores = np.ascontiguousarray(proba[:, 1], dtype=np.float32)
        out = pa.table(
            {
                "entity_id": pc.cast(table.column(self.entity), pa.string()),
                "score": scores,
                "label": (scores >= 0.5).astype(np.int16),
            }
        )
        if self.copy_to is None:
            return out
        _, target, run_id = self.copy_to
        return pa.table({"rows": [copy_block(self.conn, target, out, run_id)]})


def _pg_copy_datasink(url: str, table: str, run_id: int) -> Any:
    from ray.data import Datasink

    class PgCopyDatasink(Datasink):
        """Each write task opens one connection and binary-COPYs every block it is handed."""

        def write(self, blocks: Iterable[Any], ctx: Any) -> int:
            import psycopg

            with psycopg.connect(url) as conn:  # one transaction per write task, one COPY per block
                return sum(copy_block(conn, table, block, run_id) for block in blocks)

        def on_write_complete(self, write_result: Any) -> None:
            self.rows = sum(write_result.write_returns)

    return PgCopyDatasink()


def _admin(url: str, *sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for statement in sql:
            conn.execute(statement)


def _count(url: str, table: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _renice_session(sid: int) -> list[int]:
    """Every process of session `sid` (Ray's processes and the workers they started) back to priority 0."""
    done = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        with contextlib.suppress(OSError):
            if os.getsid(pid) == sid:
                os.setpriority(os.PRIO_PROCESS, pid, 0)
                done.append(pid)
    return done


@contextlib.contextmanager
def ray_cluster(cpus: int, object_store_bytes: int, log: Path, attempts: int = 3, nice: int = 0) -> Iterator[float]:
    """`_ray_cluster`, tried up to `attempts` times: its raylet aborts when its agents take more than a fixed
    15-30 s to start (it waits for their port files), which a loaded 2-core machine can exceed. Each failed
    attempt's seconds count in the start-up time reported."""
    t = time.perf_counter()
    for attempt in range(attempts):
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(_ray_cluster(cpus, object_store_bytes, log, nice))
        except Exception as exc:
            stack.close()
            print(f"Ray start, attempt {attempt + 1}: {exc}"[:2000], file=sys.stderr, flush=True)
            if attempt == attempts - 1:
                raise
            continue
        with stack:
            yield time.perf_counter() - t
        return


@contextlib.contextmanager
def _ray_cluster(cpus: int, object_store_bytes: int, log: Path, nice: int = 0) -> Iterator[float]:
    """A local one-node Ray cluster on 127.0.0.1, `ray start --head --block` in its own process group, and this
    driver connected to it; yields the seconds from `ray start` to a connected driver. Ended (the whole group,
    by its id) when the block exits.

    Ray's own `ray.init()` starts the same processes; `ray start` lets the autoscaler monitor and the log
    monitor be left out (not needed on one fixed node), so fewer Python processes import Ray at once while
    the raylet waits for its agents. `nice` (< 0, as root) raises the CPU priority of the start-up alone:
    once Ray is up, every process of its session goes back to the normal priority, before anything is timed
    but the start itself (which a raised priority makes shorter than a user's: in Ray's favour).
    """
    import signal
    import subprocess

    import ray

    gcs, node_manager, object_manager, agent_grpc, agent_http, metrics, runtime_env = _free_ports(7)
    cmd = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        "--include-dashboard=false",
        "--include-log-monitor=false",  # fewer Python processes importing Ray at once (see above)
        "--no-monitor",  # no autoscaler: one fixed node
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--num-cpus={cpus}",
        f"--object-store-memory={object_store_bytes}",
    ]
    if os.environ.get("NIGHTSHIFT_BENCH_RAY_TMP"):
        cmd.append(f"--temp-dir={os.environ['NIGHTSHIFT_BENCH_RAY_TMP']}")
    if nice and os.geteuid() == 0:
        cmd = ["nice", "-n", str(nice), *cmd]
    t = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "Ray runtime started" not in log.read_text(errors="replace"):
            # `ray start` prints this once the head node (GCS, raylet) is up; ray.init before it retries for minutes.
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited ({proc.returncode}): {log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray did not start in 300 s: {log.read_text()[-3000:]}")
            time.sleep(0.1)
        if nice:
            _renice_session(proc.pid)
        ray.init(address=f"127.0.0.1:{gcs}", log_to_driver=False, configure_logging=False)
        yield time.perf_counter() - t
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                continue


def ray_pipeline(spec: dict[str, Any], variant: str) -> dict[str, Any]:
    """One end-to-end Ray Data run into a fresh plain table, the primary key built after; returns its timings."""
    import ray

    url, table, run_id = spec["url"], spec["table"], spec.get("run_id", 1)
    paths = spec["paths"] if variant != "write_sql" else spec.get("sample_paths") or spec["paths"]
    _admin(url, f"DROP TABLE IF EXISTS {table}", TABLE_DDL.format(table=table))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctor = {
        "onnx_path": spec["onnx_path"],
        "entity": spec["entity"],
        "numeric": spec["numeric"],
        "categorical": spec["categorical"],
        "missing": spec["missing"],
        "threads": spec.get("ort_threads", 1),
    }
    if variant == "actor-copy":
        ctor["copy_to"] = (url, table, run_id)
    t = time.perf_counter()
    ds = ray.data.read_parquet(paths, columns=[spec["entity"], *spec["numeric"], *spec["categorical"]])
    ds = ds.map_batches(
        OrtScorer,
        fn_constructor_kwargs=ctor,
        batch_size=spec["batch_rows"],
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=spec.get("actors", 2)),
        num_cpus=spec.get("actor_cpus", 1),
    )
    if variant == "datasink":
        ds.write_datasink(_pg_copy_datasink(url, table, run_id))
    elif variant == "actor-copy":
        ds.sum("rows")  # drive the pipeline; each actor has COPYed its own batches
    elif variant == "write_sql":
        import psycopg

        ds = ds.map_batches(_with_run_id(run_id), batch_format="pyarrow")
        ds.write_sql(
            f"INSERT INTO {table} (run_id, entity_id, score, label) VALUES (%s, %s, %s, %s)",
            lambda: psycopg.connect(url),
        )
    else:
        raise ValueError(f"unknown Ray variant {variant!r}")
    loaded = time.perf_counter() - t
    _admin(url, f"ALTER TABLE {table} ADD PRIMARY KEY (entity_id, run_id)")
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "load_s": loaded, "index_s": seconds - loaded, "rows": _count(url, table)}


def _with_run_id(run_id: int) -> Any:
    def add(table: Any) -> Any:
        import pyarrow as pa

        return pa.table(
            {
                "run_id": pa.array([run_id] * table.num_rows, pa.int64()),
                "entity_id": table.column("entity_id"),
                "score": table.column("score"),
                "label": table.column("label"),
            }
        )

    return add


def cmd_ray(spec: dict[str, Any]) -> dict[str, Any]:
    """Start Ray (timed), then run each requested variant once on it."""
    import ray

    out: dict[str, Any] = {"ray_version": ray.__version__, "variants": {}}
    cpus, store_bytes = spec.get("cpus", os.cpu_count() or 2), spec.get("object_store_bytes", 2 * 2**30)
    log = Path(spec.get("log", "ray-start.log"))
    with ray_cluster(cpus, store_bytes, log, nice=spec.get("start_nice", 0)) as init_s:
        out["init_s"] = init_s
        for variant in spec["variants"]:
            try:
                out["variants"][variant] = ray_pipeline(spec, variant)
            except Exception as exc:
                out["variants"][variant] = {"error": f"{type(exc).__name__}: {exc}"}
        out["cluster_resources"] = ray.cluster_resources()
    return out


# -- Feast ------------------------------------------------------------------------------------------


def feast_repo(spec: dict[str, Any]) -> Path:
    """A feature repository folder with feature_store.yaml for the requested online store."""
    repo = Path(spec["repo"])
    repo.mkdir(parents=True, exist_ok=True)
    online = spec["online_store"]
    if online == "postgres":
        pg = spec["postgres"]
        store = (
            "online_store:\n"
            "  type: postgres\n"
            f"  host: {pg['host']}\n"
            f"  port: {pg['port']}\n"
            f"  database: {pg['database']}\n"
            f"  db_schema: {pg.get('schema', 'public')}\n"
            f"  user: {pg['user']}\n"
            f"  password: {json.dumps(pg.get('password', ''))}\n"
            "  sslmode: disable\n"
            "  conn_type: pool\n"
            f"  min_conn: {pg.get('min_conn', 1)}\n"
            f"  max_conn: {pg.get('max_conn', 8)}\n"
        )
    elif online == "redis":
        store = f"online_store:\n  type: redis\n  connection_string: {json.dumps(spec['redis'])}\n"
    elif online == "sqlite":
        store = f"online_store:\n  type: sqlite\n  path: {json.dumps(str(repo / 'online.db'))}\n"
    else:
        raise ValueError(f"unknown online store {online!r}")
    (repo / "feature_store.yaml").write_text(
        f"project: {spec['project']}\n"
        f"registry: {json.dumps(str(repo / 'registry.db'))}\n"
        "provider: local\n"
        f"{store}"
        "offline_store:\n  type: file\n"
        "entity_key_serialization_version: 3\n"
    )
    return repo


def feast_objects(spec: dict[str, Any]) -> tuple[Any, Any]:
    from datetime import timedelta

    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float32, Int32

    entity = Entity(name="customer", join_keys=[spec["join_key"]], value_type=ValueType.STRING)
    source = FileSource(name="nightshift_predictions", path=spec["parquet"], timestamp_field="event_timestamp")
    view = FeatureView(
        name=spec["view"],
        entities=[entity],
        ttl=timedelta(days=3650),
        schema=[Field(name="score", dtype=Float32), Field(name="label", dtype=Int32)],
        online=True,
        source=source,
    )
    return entity, view


def cmd_feast_apply(spec: dict[str, Any]) -> dict[str, Any]:
    """feast apply (in code) + materialize the predictions file into the online store; timed."""
    from datetime import datetime, timedelta

    import feast
    from feast import FeatureStore

    repo = feast_repo(spec)
    store = FeatureStore(repo_path=str(repo))
    entity, view = feast_objects(spec)
    t = time.perf_counter()
    store.apply([entity, view])
    applied = time.perf_counter() - t
    start = datetime.fromisoformat(spec["start"])
    end = datetime.fromisoformat(spec["end"]) + timedelta(seconds=1)
    t = time.perf_counter()
    store.materialize(start, end, feature_views=[spec["view"]])
    materialized = time.perf_counter() - t
    ids = [str(i) for i in spec.get("check_ids", [])]
    sample = {}
    if ids:
        got = store.get_online_features(
            features=[f"{spec['view']}:score", f"{spec['view']}:label"],
            entity_rows=[{spec["join_key"]: i} for i in ids],
        ).to_dict()
        sample = {i: [s, lab] for i, s, lab in zip(got[spec["join_key"]], got["score"], got["label"], strict=True)}
    return {"feast_version": feast.__version__, "apply_s": applied, "materialize_s": materialized, "sdk_sample": sample}


def cmd_feast_teardown(spec: dict[str, Any]) -> dict[str, Any]:
    from feast import FeatureStore

    repo = feast_repo(spec)
    FeatureStore(repo_path=str(repo)).teardown()
    return {"teardown": True}


COMMANDS = {"ray": cmd_ray, "feast-apply": cmd_feast_apply, "feast-teardown": cmd_feast_teardown}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    os.environ.update(RAY_ENV)
    emit(COMMANDS[argv[0]](spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
