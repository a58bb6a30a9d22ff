"""nightshift against the peers a user would pick instead (issue 18 §3), in the same run, on the same data and model.

    uv sync --project bench/peers_env             # the peers' own environment (Ray Data, Feast); never a dependency
    uv run python -m bench.ray_feast --size small # or `make bench-peers SIZE=small`

* **scoring** (`ray`): nightshift's `score_partition` into PostgreSQL (a cluster the call starts, and a
  pre-started one) against Ray Data — `read_parquet` → `map_batches` with one ONNX Runtime session per actor
  (2 actors of half a CPU, 1 thread each, `limits.BATCH_ROWS`-row batches) → each block binary-COPYed into a
  plain table by a Datasink (variant 2: the scoring actor COPYs its own batch) → `ADD PRIMARY KEY (entity_id,
  run_id)`, so both leave a table that can be served by id. Round-robin, medians of `repeats` runs. Ray's start-up
  (`ray start` to a connected driver) is timed separately: "Ray started by the program" adds it (vs nightshift
  with the cluster its call starts), "on a started Ray" does not (vs nightshift on a pre-started cluster).
  Ray's own `write_sql` (row inserts) runs once on a sample of the first files, labelled as such.
* **lookups** (`feast`): the predictions nightshift committed, exported as they are and materialized into
  Feast's online store (PostgreSQL, the same server nightshift serves from; and Redis, Feast's fastest
  store, when one answers on 127.0.0.1), served by `feast serve` (1 worker, on 127.0.0.1) against
  `nightshift api` (1 worker; as it ships, answer cache off, and with its per-worker answer cache on) on the
  committed store. One id per request, `--connections` concurrent clients, the same load generator as
  `bench.api_bench` (its Python client) and the same id mix (uniform over 1..rows, `random.Random(7)`, 512
  requests cycled). Servers interleaved round by round.

The peers run in their own environment (bench/peers_env, a separate uv project) as subprocesses
(bench/peers_env/runner.py); nothing from it is imported here. Results: bench/results/<time>-<size>-peers/
(results.jsonl in the suite's format, peers.md, peers.json).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import (
    PG_ADMIN_URL,
    ClusterHolder,
    Contender,
    Measurement,
    Recorder,
    create_database,
    drop_database,
    interleave,
    libpq,
    pg_available,
    scratch_database,
    with_database,
)
from bench.data import MODEL_NAME, Dataset, ModelArtifacts
from bench.limits import BATCH_ROWS

BENCH = Path(__file__).resolve().parent
PEERS_ENV = BENCH / "peers_env"
RUNNER = PEERS_ENV / "runner.py"
RESULTS = BENCH / "results"
GROUP = "peers"
RAY_TABLE = "ray_predictions"
FEAST_VIEW = "nightshift_predictions"
#: What `bench.api_bench` draws ids with (uniform over 1..rows, this seed, this many requests cycled).
ID_SEED, ID_REQUESTS = 7, 512

#: Defaults of the lookup load and the peers' stores (`default_config`, the command line).
CONNECTIONS, ROUNDS, WRITE_SQL_ROWS, REDIS = 8, 3, 250_000, "127.0.0.1:6379,db=9"

NS_FRESH = "nightshift, fresh cluster"
NS_WARM = "nightshift, pre-started cluster"
RAY_VARIANTS = {
    "datasink": "Ray Data, COPY per block (Datasink)",
    "actor-copy": "Ray Data, COPY in the scoring actor",
}
RAY_STARTED = "Ray started by the program"
RAY_RUNNING = "on a started Ray"
RAY_WRITE_SQL = "Ray Data + write_sql (row inserts), sample"

WHAT = {
    NS_FRESH: "score_partition(): contract checks, the local Dask cluster the call starts, staging, primary key + "
    "attach, catalog commit",
    NS_WARM: "score_partition(client=...) on a running 2-worker cluster",
    f"{RAY_VARIANTS['datasink']} ({RAY_STARTED})": "`ray start` (head, 2 CPUs, 127.0.0.1) + connect, then "
    "read_parquet -> map_batches(ORT session per actor, ActorPoolStrategy(size=2), 1 thread, "
    f"{BATCH_ROWS // 1024}k rows) -> "
    "write_datasink (binary COPY of each block) -> ADD PRIMARY KEY",
    f"{RAY_VARIANTS['datasink']} ({RAY_RUNNING})": "the same pipeline, Ray's start-up not counted",
    f"{RAY_VARIANTS['actor-copy']} ({RAY_STARTED})": "`ray start` + connect, then read_parquet -> map_batches "
    "whose actor scores and binary-COPYs its own batch -> ADD PRIMARY KEY",
    f"{RAY_VARIANTS['actor-copy']} ({RAY_RUNNING})": "the same pipeline, Ray's start-up not counted",
    RAY_WRITE_SQL: "read_parquet -> map_batches (ORT actors) -> Dataset.write_sql (DB-API executemany, 128 rows "
    "per call) -> ADD PRIMARY KEY, on the first files only (its rate is per row); Ray's start-up not counted",
}


class PeerFailed(RuntimeError):
    """A peer's command in its own environment failed; the message carries its stderr's tail."""


# -- the peers' environment ----------------------------------------------------------------------


def peers_python() -> Path:
    return PEERS_ENV / ".venv" / "bin" / "python"


def peers_env() -> dict[str, str]:
    """This process's environment without what would point the peers' interpreter at this one's packages."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    # `make bench-peers` runs under `uv run`: Ray sees that ancestor and would start every worker with that
    # `uv run` command in a copy of its working directory, which cost each of its tasks and actors tens of
    # seconds here (the first task took 38 s on a loaded machine, ~10 s without).
    env["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    return env


def peers_missing() -> str | None:
    """None when the peers' environment is installed and imports, else why not (and how to install it)."""
    py = peers_python()
    install = "`uv sync --frozen --project bench/peers_env` (or `make bench-peers`)"
    if not py.exists():
        return f"the peers' environment is not installed ({py.relative_to(BENCH.parent)} missing): {install}"
    probe = subprocess.run(
        [str(py), "-c", "import ray.data, feast, onnxruntime, psycopg, pyarrow"],
        capture_output=True,
        text=True,
        timeout=300,
        env=peers_env(),
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"the peers' environment does not import ({last}): {install}"
    return None


def run_peer(command: str, spec: dict[str, Any], workdir: Path, timeout: float = 1800) -> dict[str, Any]:
    """`runner.py COMMAND SPEC` with the peers' interpreter; returns the JSON it printed last."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{command}-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(spec))
    log = path.with_suffix(".log")
    with log.open("wb") as err:
        proc = subprocess.run(
            [str(peers_python()), str(RUNNER), command, str(path)],
            stdout=subprocess.PIPE,
            stderr=err,
            timeout=timeout,
            cwd=PEERS_ENV,
            env=peers_env(),
            check=False,
        )
    lines = [x for x in proc.stdout.decode(errors="replace").splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = log.read_text(errors="replace")[-1500:]
        raise PeerFailed(f"runner.py {command} exited {proc.returncode}: {tail}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return result


# -- the run's configuration (picklable: each part runs in a spawned process) ----------------------


@dataclass(frozen=True)
class Config:
    size: str
    out: Path
    data: Dataset
    art: ModelArtifacts
    pg_url: str
    repeats: int
    connections: int
    rounds: int
    seconds: float
    write_sql_rows: int
    redis: str | None
    ray_cpus: int

    @property
    def recorder(self) -> Recorder:
        return Recorder(self.out / "results.jsonl")

    def workdir(self, name: str) -> Path:
        path = self.out / "work" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def default_config(size: str, out: Path, data: Dataset, art: ModelArtifacts, pg_url: str, repeats: int) -> Config:
    """The peers' settings as `python -m bench.ray_feast` has them by default (the suite's `peers-*` cases use it)."""
    return Config(
        size=size,
        out=out,
        data=data,
        art=art,
        pg_url=pg_url,
        repeats=repeats,
        connections=CONNECTIONS,
        rounds=ROUNDS,
        seconds=5.0 if size == "small" else 10.0,
        write_sql_rows=WRITE_SQL_ROWS,
        redis=REDIS,
        ray_cpus=len(os.sched_getaffinity(0)),
    )


def _ray_spec(cfg: Config, url: str) -> dict[str, Any]:
    from bench.limits import MISSING, feature_columns

    entity, numeric, categorical = feature_columns()
    return {
        "url": libpq(url),
        "table": RAY_TABLE,
        "paths": cfg.data.paths,
        "onnx_path": str(cfg.art.onnx_path),
        "entity": entity,
        "numeric": numeric,
        "categorical": categorical,
        "missing": MISSING,
        "batch_rows": BATCH_ROWS,
        "actors": 2,
        # Half a (logical) CPU each: with 1 each, two actors hold every CPU of a 2-core machine and Ray Data
        # never schedules the ListFiles/read/write tasks that need one (the run waits forever, measured).
        "actor_cpus": 0.5,
        "ort_threads": 1,
        "cpus": cfg.ray_cpus,
        "log": str(cfg.workdir("ray") / "ray-start.log"),
    }


# -- scoring: nightshift vs Ray Data --------------------------------------------------------------------


def _first_files(paths: list[str], cap: int) -> tuple[list[str], int]:
    import pyarrow.parquet as pq

    chosen, rows = [], 0
    for path in paths:
        n = pq.read_metadata(path).num_rows
        if chosen and rows + n > cap:
            break
        chosen.append(path)
        rows += n
    return chosen, rows


def case_ray(cfg: Config) -> None:
    """nightshift (fresh and pre-started cluster) and the two Ray Data variants, round-robin; then write_sql once."""
    from bench.nightshift_path import NightshiftRunner

    rec = cfg.recorder
    data = cfg.data
    runner = NightshiftRunner("postgresql", cfg.workdir("nightshift"), cfg.art, cfg.pg_url)
    warm = ClusterHolder(2)
    errors: list[str] = []
    try:
        with scratch_database(cfg.pg_url) as url:
            spec = _ray_spec(cfg, url)

            def ray_run(variant: str) -> Any:
                def run() -> dict[str, Any]:
                    try:
                        out = run_peer("ray", spec | {"variants": [variant]}, cfg.workdir("ray"))
                    except (PeerFailed, subprocess.TimeoutExpired) as exc:
                        errors.append(f"{RAY_VARIANTS[variant]}: {exc}")
                        return {"seconds": float("nan"), "error": str(exc)[-500:]}
                    v = out["variants"][variant]
                    if "error" in v or v.get("rows") != data.rows:
                        msg = v.get("error") or f"{v.get('rows')} rows in its table, expected {data.rows}"
                        errors.append(f"{RAY_VARIANTS[variant]}: {msg}")
                        return {"seconds": float("nan"), "error": msg[-500:]}
                    return {
                        "seconds": out["init_s"] + v["seconds"],
                        "init_s": round(out["init_s"], 3),
                        "pipeline_s": round(v["seconds"], 3),
                        "load_s": round(v["load_s"], 3),
                        "index_s": round(v["index_s"], 3),
                        "ray": out["ray_version"],
                    }

                return run

            def warm_setup() -> None:
                warm.start()
                runner.setup()

            def warm_after() -> None:
                runner.teardown()
                warm.stop()

            contenders = {
                NS_FRESH: Contender(lambda: runner.score(data), setup=runner.setup, after=runner.teardown),
                NS_WARM: Contender(lambda: runner.score(data, client=warm.client), setup=warm_setup, after=warm_after),
                **{name: Contender(ray_run(variant)) for variant, name in RAY_VARIANTS.items()},
            }
            results = interleave(contenders, cfg.repeats)
            block = uuid.uuid4().hex[:8]
            for name in (NS_FRESH, NS_WARM):
                seconds, extras = results[name]
                _add(rec, name, data.rows, seconds, extras, block)
            for name in RAY_VARIANTS.values():
                seconds, extras = results[name]
                ok = [i for i, s in enumerate(seconds) if s == s]  # NaN: the run failed
                if len(ok) < len(seconds):
                    rec.write(
                        {
                            "kind": "error",
                            "case": "ray",
                            "error": f"{name}: {len(seconds) - len(ok)} run(s) failed: {errors[-1] if errors else '?'}",
                        }
                    )
                if not ok:
                    continue
                kept = [extras[i] for i in ok]
                b = block if len(ok) == len(seconds) else ""
                _add(rec, f"{name} ({RAY_STARTED})", data.rows, [seconds[i] for i in ok], kept, b)
                _add(rec, f"{name} ({RAY_RUNNING})", data.rows, [e["pipeline_s"] for e in kept], kept, b)
            if cfg.write_sql_rows > 0:
                paths, rows = _first_files(data.paths, cfg.write_sql_rows)
                try:
                    out = run_peer("ray", spec | {"variants": ["write_sql"], "sample_paths": paths}, cfg.workdir("ray"))
                    v = out["variants"]["write_sql"]
                    if "error" in v or v.get("rows") != rows:
                        raise PeerFailed(v.get("error") or f"{v.get('rows')} rows written, expected {rows}")
                    extra = {"init_s": round(out["init_s"], 3), "files": len(paths), "load_s": round(v["load_s"], 3)}
                    _add(rec, RAY_WRITE_SQL, rows, [v["seconds"]], [extra], "")
                except (PeerFailed, subprocess.TimeoutExpired) as exc:
                    rec.write({"kind": "error", "case": "ray", "error": f"{RAY_WRITE_SQL}: {exc}"[-1500:]})
    finally:
        warm.stop()
        runner.close()


def _add(rec: Recorder, name: str, rows: int, seconds: list[float], extras: list[dict[str, Any]], block: str) -> None:
    m = Measurement(name, GROUP, rows, seconds, model="linear", what=WHAT.get(name, ""), extras=extras, block=block)
    rec.add(m)


# -- lookups: nightshift's API vs Feast's feature server -------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its children (gunicorn's worker is a child of its master)."""
        import psutil

        total = 0.0
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
        return total


def start_server(name: str, cmd: list[str], env: dict[str, str], port: int, health: str, log: Path) -> Server:
    """Start a server in its own process group; wait (up to 300 s: a loaded machine) until `health` answers."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=BENCH.parent, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server {name} exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url + health, timeout=2) as r:
            if r.status == 200:
                return Server(name, url, proc)
        time.sleep(0.2)
    stop_server(Server(name, url, proc))
    raise RuntimeError(f"server {name} did not answer {health} in 300 s: {log.read_text()[-2000:]}")


def stop_server(server: Server) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, sig)
        try:
            server.proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


def lookup_ids(rows: int) -> list[int]:
    """The ids `bench.api_bench` asks for, in its order (uniform over 1..rows, seeded)."""
    rng = random.Random(ID_SEED)
    return [rng.randint(1, rows) for _ in range(ID_REQUESTS)]


def nightshift_request(entity_id: int | str, key: str) -> str:
    return (
        f"GET /v1/models/{MODEL_NAME}/predictions/{entity_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n\r\n"
    )


def feast_body(entity_id: int | str, join_key: str) -> str:
    features = [f"{FEAST_VIEW}:score", f"{FEAST_VIEW}:label"]
    return json.dumps({"features": features, "entities": {join_key: [str(entity_id)]}}, separators=(",", ":"))


def feast_request(entity_id: int | str, join_key: str) -> str:
    body = feast_body(entity_id, join_key)
    return (
        f"POST /get-online-features HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )


def nightshift_lookup(server: Server, entity_id: int | str, key: str) -> tuple[float, int]:
    req = urllib.request.Request(
        f"{server.url}/v1/models/{MODEL_NAME}/predictions/{entity_id}", headers={"X-API-Key": key}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        doc = json.loads(r.read())
    return float(doc["score"]), int(doc["label"])


def feast_lookup(server: Server, entity_id: int | str, join_key: str) -> tuple[float, int]:
    req = urllib.request.Request(
        f"{server.url}/get-online-features",
        data=feast_body(entity_id, join_key).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        doc = json.loads(r.read())
    names = doc["metadata"]["feature_names"]
    values = {n: res["values"][0] for n, res in zip(names, doc["results"], strict=True)}
    statuses = {n: res["statuses"][0] for n, res in zip(names, doc["results"], strict=True)}
    if statuses.get("score") != "PRESENT":
        raise RuntimeError(f"Feast has no score for {entity_id}: {doc}")
    return float(values["score"]), int(values["label"])


def export_predictions(store_url: str, path: Path) -> dict[str, Any]:
    """The committed partition as nightshift serves it (committed_predictions), into a Parquet file Feast can
    materialize: (customer_id text, score float32, label int32, event_timestamp = committed_at)."""
    import io

    import psycopg
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    with psycopg.connect(libpq(store_url)) as conn:
        row = conn.execute(
            "SELECT run_id, committed_at FROM partitions WHERE model = %s AND status = 'committed' "
            "ORDER BY committed_at DESC LIMIT 1",
            (MODEL_NAME,),
        ).fetchone()
        if row is None:
            raise RuntimeError("no committed partition to export")
        run_id, committed_at = int(row[0]), row[1]
        buf = io.BytesIO()
        with conn.cursor() as cur:
            copy = (
                f"COPY (SELECT entity_id, score, label FROM predictions WHERE run_id = {run_id}) TO STDOUT (FORMAT csv)"
            )
            with cur.copy(copy) as cp:
                for chunk in cp:
                    buf.write(chunk)
    buf.seek(0)
    types = {"customer_id": pa.string(), "score": pa.float32(), "label": pa.int32()}
    table = pacsv.read_csv(
        buf,
        read_options=pacsv.ReadOptions(column_names=list(types)),
        convert_options=pacsv.ConvertOptions(column_types=types),
    )
    ts = pa.array([committed_at] * table.num_rows, pa.timestamp("us", tz="UTC"))
    table = table.append_column("event_timestamp", ts)
    pq.write_table(table, path)
    return {"run_id": run_id, "committed_at": committed_at.isoformat(), "rows": table.num_rows}


def store_scores(store_url: str, run_id: int, ids: list[int]) -> dict[str, tuple[float, int]]:
    import psycopg

    with psycopg.connect(libpq(store_url)) as conn:
        rows = conn.execute(
            "SELECT entity_id, score, label FROM predictions WHERE run_id = %s AND entity_id = ANY(%s)",
            (run_id, [str(i) for i in ids]),
        ).fetchall()
    return {str(r[0]): (float(r[1]), int(r[2])) for r in rows}


def redis_available(conn: str) -> str | None:
    """None when a Redis answers PING at the host:port of a Feast connection string, else why not."""
    host, _, port = conn.split(",")[0].partition(":")
    try:
        with socket.create_connection((host, int(port or 6379)), timeout=2) as s:
            s.sendall(b"PING\r\n")
            if not s.recv(64).startswith(b"+PONG"):
                return "no PONG"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


#: nightshift's API as it ships (its answer cache off: every lookup reads the store, as Feast's does) and with
#: the per-worker answer cache on (the id mix cycles 512 ids, so nearly every lookup is a hit after the warm-up).
NS_SERVERS = {"nightshift": "", "nightshift-lru": "cache_entries = 100000\n"}


def _nightshift_server(
    store_url: str, workdir: Path, name: str = "nightshift"
) -> tuple[list[str], dict[str, str], str]:
    """`nightshift api`'s command, environment and an API key, configured as bench.api_bench configures it
    (plus NS_SERVERS[name])."""
    from nightshift.api.keys import KeyManager
    from nightshift.db.store import Store

    store = Store(store_url)
    key = KeyManager(store).create(f"bench-{name}", "*", created_by="bench")[1]
    store.dispose()
    config = workdir / f"{name}.toml"
    config.write_text(
        f"state_dir = {json.dumps(str(workdir / 'state'))}\n"
        f"store_url = {json.dumps(store_url)}\n\n"
        "[api]\n"
        "rate_limit_per_minute = 1000000000\n"
        "rate_limit_burst = 1000000\n"
        "docs_enabled = false\n" + NS_SERVERS[name]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTSHIFT_")}
    env["NIGHTSHIFT_CONFIG"] = str(config)
    port = _free_port()
    cmd = [sys.executable, "-m", "nightshift.cli", "api", "--config", str(config), "--port", str(port)]
    return cmd, env, key


def case_feast(cfg: Config) -> None:
    """Commit the dataset with nightshift, materialize the same predictions into Feast, serve both, load both."""
    from bench.api_bench import run_python_load
    from bench.nightshift_path import NightshiftRunner

    rec = cfg.recorder
    work = cfg.workdir("feast")
    runner = NightshiftRunner("postgresql", cfg.workdir("feast-nightshift"), cfg.art, cfg.pg_url)
    servers: dict[str, Server] = {}
    feast_specs: dict[str, dict[str, Any]] = {}
    feast_db: str | None = None
    join_key = "customer_id"  # the demo data's entity id; nightshift serves it as entity_id (text)
    try:
        runner.setup()
        runner.score(cfg.data)
        store_url = runner.store_url
        exported = export_predictions(store_url, work / "predictions.parquet")
        rec.write({"kind": "peers-export", **exported})

        # Feast: one feature repository per online store, the same predictions materialized into each.
        feast_db = create_database(cfg.pg_url, prefix="ns_bench_feast")
        from sqlalchemy.engine import make_url

        u = make_url(with_database(cfg.pg_url, feast_db))
        base = {
            "parquet": str(work / "predictions.parquet"),
            "view": FEAST_VIEW,
            "join_key": join_key,
            "start": exported["committed_at"],
            "end": exported["committed_at"],
            "check_ids": lookup_ids(cfg.data.rows)[:5],
        }
        feast_specs["postgres"] = base | {
            "repo": str(work / "feast_postgres"),
            "project": f"nsbench_{uuid.uuid4().hex[:6]}",
            "online_store": "postgres",
            "postgres": {
                "host": u.host or "127.0.0.1",
                "port": u.port or 5432,
                "database": feast_db,
                "user": u.username or "postgres",
                "password": u.password or "",
                "min_conn": 1,
                "max_conn": 8,
            },
        }
        if cfg.redis:
            why = redis_available(cfg.redis)
            if why is None:
                feast_specs["redis"] = base | {
                    "repo": str(work / "feast_redis"),
                    "project": f"nsbench_{uuid.uuid4().hex[:6]}",
                    "online_store": "redis",
                    "redis": cfg.redis,
                }
            else:
                rec.write({"kind": "note", "case": "feast", "note": f"Feast on Redis skipped: {cfg.redis}: {why}"})
        applied: dict[str, dict[str, Any]] = {}
        for store, spec in list(feast_specs.items()):
            try:
                applied[store] = run_peer("feast-apply", spec, work, timeout=3600)
            except (PeerFailed, subprocess.TimeoutExpired) as exc:
                rec.write({"kind": "error", "case": "feast", "error": f"Feast ({store}) apply/materialize: {exc}"})
                feast_specs.pop(store)
                continue
            rec.write({"kind": "peers-feast-materialize", "store": store, "rows": exported["rows"], **applied[store]})
            print(
                f"  Feast ({store}): materialized {exported['rows']:,} rows in {applied[store]['materialize_s']:.1f} s"
            )

        # The servers: nightshift's API and `feast serve`, each one worker on 127.0.0.1.
        keys: dict[str, str] = {}
        for ns in NS_SERVERS:
            cmd, env, keys[ns] = _nightshift_server(store_url, work, ns)
            servers[ns] = start_server(ns, cmd, env, int(cmd[-1]), "/healthz", work / f"{ns}-api.log")
        feast_bin = str(peers_python().with_name("feast"))
        for store, spec in feast_specs.items():
            port = _free_port()
            fcmd = [feast_bin, "-c", spec["repo"], "serve", "-h", "127.0.0.1", "-p", str(port), "--no-access-log"]
            # One worker, like nightshift's API; worker recycling (gunicorn's max_requests, 1000 by default in
            # `feast serve`) off, so that no measurement pays for a worker restart: Feast's best case.
            fcmd += ["-w", "1", "--max-requests", "0"]
            # gunicorn's control socket goes to $XDG_RUNTIME_DIR (else ~/.gunicorn): one folder per server.
            runtime = work / f"feast-{store}-run"
            runtime.mkdir(exist_ok=True)
            fenv = peers_env() | {"XDG_RUNTIME_DIR": str(runtime)}
            servers[f"feast-{store}"] = start_server(
                f"feast-{store}", fcmd, fenv, port, "/health", work / f"feast-{store}.log"
            )

        # Same answers: a few ids through each server against the committed table.
        ids = lookup_ids(cfg.data.rows)
        check = ids[:5]
        truth = store_scores(store_url, exported["run_id"], check)
        agree: dict[str, Any] = {}
        for name, server in servers.items():
            got = {
                str(i): nightshift_lookup(server, i, keys[name]) if name in keys else feast_lookup(server, i, join_key)
                for i in check
            }
            agree[name] = all(abs(got[i][0] - truth[i][0]) <= 1e-6 and got[i][1] == truth[i][1] for i in truth) and len(
                truth
            ) == len(check)
            if not agree[name]:
                raise RuntimeError(f"{name} answers differ from the committed table: {got} vs {truth}")
        rec.write({"kind": "peers-agreement", "ids": check, "agree": agree})

        # The load: same client, ids, concurrency and duration for each server, interleaved round by round.
        requests = {
            name: [nightshift_request(i, keys[name]) if name in keys else feast_request(i, join_key) for i in ids]
            for name in servers
        }
        for name, server in servers.items():  # warm-up: connections, prepared statements, caches
            run_python_load(server.url, requests[name], connections=cfg.connections, seconds=2.0, workdir=work)
        for rnd in range(1, cfg.rounds + 1):
            for name, server in servers.items():
                cpu0 = server.cpu_seconds()
                load = run_python_load(
                    server.url, requests[name], connections=cfg.connections, seconds=cfg.seconds, workdir=work
                )
                cpu = server.cpu_seconds() - cpu0
                record = {
                    "kind": "peers-lookup",
                    "server": name,
                    "round": rnd,
                    "connections": cfg.connections,
                    "requests": int(load["requests"]),
                    "errors": int(load["errors"]),
                    "seconds": round(float(load["seconds"]), 3),
                    "requests_per_s": round(load["requests"] / load["seconds"], 1) if load["seconds"] else 0.0,
                    "p50_ms": round(float(load["p50_ms"]), 3),
                    "p99_ms": round(float(load["p99_ms"]), 3),
                    "server_cpu_us_per_request": round(cpu / load["requests"] * 1e6, 1) if load["requests"] else None,
                    "tool": "python (bench.api_bench --_load)",
                }
                rec.write(record)
                print(
                    f"  round {rnd} {name:<15} {record['requests_per_s']:9.0f} req/s  p50 {record['p50_ms']:6.2f} ms  "
                    f"p99 {record['p99_ms']:6.2f} ms  errors {record['errors']}",
                    flush=True,
                )
    finally:
        for server in servers.values():
            stop_server(server)
        for spec in feast_specs.values():
            with contextlib.suppress(Exception):
                run_peer("feast-teardown", spec, work, timeout=600)
        if feast_db is not None:
            drop_database(feast_db, cfg.pg_url)
        runner.close()


# -- running the parts, each in a spawned process (as bench.suite runs its cases) -----------------------------

CASES = {"ray": case_ray, "feast": case_feast}


def _child(name: str, cfg: Config) -> None:
    os.setpgrp()  # the part and everything it starts form one group, ended together on a timeout
    try:
        CASES[name](cfg)
    except BaseException as exc:
        cfg.recorder.write({"kind": "error", "case": name, "error": f"{type(exc).__name__}: {exc}"[-3000:]})
        traceback.print_exc()
        sys.exit(1)


def run_part(name: str, cfg: Config, timeout_s: float) -> bool:
    t = time.perf_counter()
    print(f"[{datetime.now():%H:%M:%S}] {name}", flush=True)
    proc = multiprocessing.get_context("spawn").Process(target=_child, args=(name, cfg), name=f"bench-peers-{name}")
    proc.start()
    proc.join(timeout_s)
    if proc.exitcode is None:
        cfg.recorder.write({"kind": "error", "case": name, "error": f"timed out after {timeout_s:.0f} s"})
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            proc.join(10)
            if proc.exitcode is not None:
                break
    seconds = time.perf_counter() - t
    cfg.recorder.write({"kind": "case", "case": name, "seconds": round(seconds, 1), "ok": proc.exitcode == 0})
    print(f"[{datetime.now():%H:%M:%S}] {name} done in {seconds:.0f} s (exit {proc.exitcode})", flush=True)
    return proc.exitcode == 0


# -- the summary ------------------------------------------------------------------------------------


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float] | None:
    """Rate of `a` over rate of `b` (same rows): per round when timed together, else the ratio of medians."""
    ra = [a["rows"] / s for s in a["seconds"]]
    rb = [b["rows"] / s for s in b["seconds"]]
    if not ra or not rb:
        return None
    if a.get("block") and a["block"] == b.get("block") and len(ra) == len(rb):
        pairs = [x / y for x, y in zip(ra, rb, strict=True)]
        return {"median": _median(pairs), "min": min(pairs), "max": max(pairs), "paired": True}
    return {"median": _median(ra) / _median(rb), "min": min(ra) / max(rb), "max": max(ra) / min(rb), "paired": False}


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    ms = {r["name"]: r for r in records if r.get("kind") == "measurement" and r.get("group") == GROUP}
    scoring: dict[str, Any] = {}
    for ns, mode in ((NS_FRESH, RAY_STARTED), (NS_WARM, RAY_RUNNING)):
        if ns not in ms:
            continue
        per_variant = {}
        for variant in RAY_VARIANTS.values():
            other = ms.get(f"{variant} ({mode})")
            if other is not None:
                per_variant[variant] = _paired(ms[ns], other)
        if per_variant:
            best = min(per_variant, key=lambda v: per_variant[v]["median"])  # the fastest Ray: lowest ratio
            scoring[f"{ns} / Ray Data ({mode})"] = {
                "vs_fastest_ray": per_variant[best],
                "fastest": best,
                "per_variant": per_variant,
            }
    if NS_FRESH in ms and RAY_WRITE_SQL in ms:
        scoring[f"{NS_FRESH} / {RAY_WRITE_SQL}"] = {"vs_fastest_ray": _paired(ms[NS_FRESH], ms[RAY_WRITE_SQL])}
    lookups = [r for r in records if r.get("kind") == "peers-lookup"]
    by: dict[str, list[dict[str, Any]]] = {}
    for r in lookups:
        by.setdefault(r["server"], []).append(r)
    servers = {
        name: {
            "requests_per_s": {
                "median": round(_median([r["requests_per_s"] for r in rs]), 1),
                "min": min(r["requests_per_s"] for r in rs),
                "max": max(r["requests_per_s"] for r in rs),
            },
            "p50_ms_median": round(_median([r["p50_ms"] for r in rs]), 3),
            "p99_ms_median": round(_median([r["p99_ms"] for r in rs]), 3),
            "p99_ms_max": max(r["p99_ms"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
            "server_cpu_us_per_request_median": _median(
                [r["server_cpu_us_per_request"] for r in rs if r["server_cpu_us_per_request"]]
            ),
            "rounds": len(rs),
        }
        for name, rs in by.items()
    }
    lookup_ratios = {}
    for ns in (n for n in NS_SERVERS if n in servers):
        for name in servers:
            if name in NS_SERVERS:
                continue
            pairs = []
            for rnd in sorted({r["round"] for r in lookups}):
                a = [r["requests_per_s"] for r in by[ns] if r["round"] == rnd]
                b = [r["requests_per_s"] for r in by[name] if r["round"] == rnd]
                if a and b and b[0]:
                    pairs.append(a[0] / b[0])
            lookup_ratios[f"{ns} / {name}"] = {
                "throughput": {
                    "median": _median(pairs),
                    "min": min(pairs, default=float("nan")),
                    "max": max(pairs, default=float("nan")),
                },
                "p99_ms": {ns: servers[ns]["p99_ms_median"], name: servers[name]["p99_ms_median"]},
                "lower_p99": servers[ns]["p99_ms_median"] < servers[name]["p99_ms_median"],
            }
    targets = {}
    for key, value in scoring.items():
        if "write_sql" not in key:
            targets[f"{key} >= 2"] = value["vs_fastest_ray"]["median"] >= 2.0
    for pair, value in lookup_ratios.items():
        targets[f"{pair} lookups/s >= 2 at a lower p99"] = value["throughput"]["median"] >= 2.0 and value["lower_p99"]
    if by and not lookup_ratios:  # lookups ran, but not both sides: say so rather than drop the target
        targets["nightshift / Feast lookups/s >= 2 at a lower p99 (not measured: a side is missing)"] = False
    return {
        "kind": "peers-summary",
        "scoring": scoring,
        "lookups": servers,
        "lookup_ratios": lookup_ratios,
        "targets": targets,
    }


def _rate(m: dict[str, Any]) -> str:
    q = m["rows_per_s"]
    return f"{q['median'] / 1e3:,.0f} k [{q['min'] / 1e3:,.0f}–{q['max'] / 1e3:,.0f}]"


def _ratio(r: dict[str, Any] | None) -> str:
    return "—" if not r else f"{r['median']:.2f}× [{r['min']:.2f}–{r['max']:.2f}]"


def write_report(out: Path) -> str:
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]
    summary = summarise(records)
    (out / "peers.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    env = next((r for r in records if r.get("kind") == "environment"), {})
    done = next((r for r in records if r.get("kind") == "finished"), {})
    # Run from `python -m bench`, the peers' versions are a record of their own (`case_peer`).
    versions = next((r["versions"] for r in records if r.get("kind") == "peers-versions"), {})
    ms = [r for r in records if r.get("kind") == "measurement" and r.get("group") == GROUP]
    lines = [
        f"# nightshift vs Ray Data and Feast — {env.get('size', {}).get('name', '?')} ({env.get('started', '?')})",
        "",
        f"`{env.get('command', '?')}` on {env.get('cpus', '?')} cores, {env.get('memory_gib', '?')} GiB; load "
        f"average at start {'/'.join(f'{x:.1f}' for x in env.get('load_avg', []))}, at end "
        f"{'/'.join(f'{x:.1f}' for x in done.get('load_avg', []))}. Peers: {env.get('peers') or versions}.",
        "",
    ]
    if ms:
        lines += [
            "## Scoring into PostgreSQL, servable (primary key built)",
            "",
            "| contender | rows | median s [min–max] | rows/s median [min–max] |",
            "|---|---|---|---|",
        ]
        for m in ms:
            lines.append(
                f"| {m['name']} | {m['rows']:,} | {m['median_s']:.2f} [{m['min_s']:.2f}–{m['max_s']:.2f}] "
                f"| {_rate(m)} |"
            )
        starts = [e["init_s"] for m in ms if m["name"].endswith(f"({RAY_STARTED})") for e in m["extras"]]
        if starts:
            lines += [
                "",
                f"Ray's start-up (`ray start` to a connected driver): median {_median(starts):.1f} s "
                f"[{min(starts):.1f}–{max(starts):.1f}].",
            ]
        lines += [
            "",
            "| ratio (rows/s over rows/s, paired by round) | vs the fastest Ray variant | per variant |",
            "|---|---|---|",
        ]
        for key, value in summary["scoring"].items():
            per = "; ".join(f"{k}: {_ratio(v)}" for k, v in value.get("per_variant", {}).items())
            lines.append(f"| {key} | **{_ratio(value['vs_fastest_ray'])}** | {per} |")
        lines.append("")
    if summary["lookups"]:
        lines += [
            "## Single-id lookups at the same concurrency",
            "",
            "| server | req/s median [min–max] | p50 ms | p99 ms median (max) | server CPU µs/req | errors |",
            "|---|---|---|---|---|---|",
        ]
        for name, s in summary["lookups"].items():
            r = s["requests_per_s"]
            lines.append(
                f"| {name} | {r['median']:,.0f} [{r['min']:,.0f}–{r['max']:,.0f}] | {s['p50_ms_median']:.2f} "
                f"| {s['p99_ms_median']:.2f} ({s['p99_ms_max']:.2f}) | {s['server_cpu_us_per_request_median']:,.0f} "
                f"| {s['errors']} |"
            )
        lines.append("")
        for pair, v in summary["lookup_ratios"].items():
            t = v["throughput"]
            ns, peer = pair.split(" / ")
            lines.append(
                f"- {pair}: **{t['median']:.2f}×** lookups/s [{t['min']:.2f}–{t['max']:.2f}] (per round); "
                f"p99 {v['p99_ms'][ns]:.2f} ms vs {v['p99_ms'][peer]:.2f} ms"
            )
        if "nightshift-lru" in summary["lookups"]:
            lines.append(
                "- nightshift: its API as it ships (answer cache off: every lookup reads the store; concurrent "
                "lookups coalesced into one statement); nightshift-lru: `[api] cache_entries = 100000`, the "
                "512 ids cycled are nearly all hits after the warm-up"
            )
        mats = [r for r in records if r.get("kind") == "peers-feast-materialize"]
        for r in mats:
            lines.append(
                f"- Feast ({r['store']}, {r.get('feast_version', '?')}): materialize of {r['rows']:,} rows took "
                f"{r['materialize_s']:.1f} s (not part of any ratio)"
            )
        lines.append("")
    if summary["targets"]:
        lines += ["## Targets (issue 18 §3)", ""]
        lines += [f"- {k}: {'met' if v else '**not met**'}" for k, v in summary["targets"].items()]
        lines.append("")
    # This run's parts only: in `python -m bench` the same results.jsonl holds every case's lines.
    ours = [r for r in records if str(r.get("case", "")).removeprefix("peers-") in CASES]
    notes = [f"- {r['case']}: {r['error']}" for r in ours if r.get("kind") == "error"]
    notes += [f"- {r['case']}: {r['note']}" for r in ours if r.get("kind") == "note"]
    if notes:
        lines += ["## Notes", "", *notes, ""]
    lines += ["Each contender in words:", ""]
    lines += sorted({f"- **{m['name']}**: {m['what']}" for m in ms if m.get("what")})
    text = "\n".join(lines) + "\n"
    (out / "peers.md").write_text(text)
    return text


# -- main --------------------------------------------------------------------------------------------


def peers_versions() -> dict[str, str]:
    code = (
        "import json, ray, feast, onnxruntime, pyarrow, psycopg; print(json.dumps({'ray': ray.__version__, "
        "'feast': feast.__version__, 'onnxruntime': onnxruntime.__version__, 'pyarrow': pyarrow.__version__, "
        "'psycopg': psycopg.__version__}))"
    )
    out = subprocess.run(
        [str(peers_python()), "-c", code], capture_output=True, text=True, env=peers_env(), timeout=300
    )
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {}


def main(argv: list[str] | None = None) -> int:
    from bench import cases
    from bench.data import dataset, describe, train_model

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m bench.ray_feast", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(cases.SIZES), default="default")
    ap.add_argument("--peers", default="ray,feast", help="comma-separated: ray, feast")
    ap.add_argument("--repeats", type=int, default=None, help="scoring runs per contender (default: the size's)")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="lookup rounds (each server once per round)")
    ap.add_argument("--seconds", type=float, default=None, help="lookup load per server per round (10 s; small 5 s)")
    ap.add_argument(
        "--connections", type=int, default=CONNECTIONS, help="concurrent lookup clients (bench.api_bench's)"
    )
    ap.add_argument("--write-sql-rows", type=int, default=WRITE_SQL_ROWS, help="sample for Ray's write_sql (0: skip)")
    ap.add_argument("--redis", default=REDIS, help="Feast's Redis online store ('' to skip)")
    ap.add_argument("--ray-cpus", type=int, default=len(os.sched_getaffinity(0)), help="CPUs Ray is given")
    ap.add_argument("--pg-url", default=PG_ADMIN_URL)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results/<time>-<size>-peers)")
    ap.add_argument("--part-timeout", type=float, default=3600, help="seconds before a stuck part is ended")
    ap.add_argument("--report-only", type=Path, default=None, help="rebuild peers.md of a results folder")
    args = ap.parse_args(argv)
    if args.report_only:
        print(write_report(args.report_only))
        return 0
    selected = [p.strip() for p in args.peers.split(",") if p.strip()]
    if unknown := sorted(set(selected) - set(CASES)):
        ap.error(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    missing = peers_missing()
    if missing:
        print(f"cannot run the peers: {missing}", file=sys.stderr)
        return 2
    if why := pg_available(args.pg_url):
        print(f"cannot run the peers: PostgreSQL at {args.pg_url} not reachable ({why})", file=sys.stderr)
        return 2
    size = cases.SIZES[args.size]
    out: Path = args.out or RESULTS / f"{datetime.now():%Y%m%d-%H%M%S}-{size.name}-peers"
    out.mkdir(parents=True, exist_ok=True)
    print(f"nightshift vs Ray Data / Feast, size {size.name}: results in {out}", flush=True)
    from bench.suite import environment

    rec = Recorder(out / "results.jsonl")
    env = environment(size, argv)
    env["command"] = " ".join(["python -m bench.ray_feast", *argv])
    env["peers"] = peers_versions()
    rec.write(env)
    data = dataset(size.rows, size.files)
    art = train_model("linear", size.train_rows)
    cfg = dataclasses.replace(
        default_config(size.name, out, data, art, args.pg_url, args.repeats or size.repeats),
        connections=args.connections,
        rounds=args.rounds,
        seconds=args.seconds or (5.0 if size.name == "small" else 10.0),
        write_sql_rows=args.write_sql_rows,
        redis=args.redis or None,
        ray_cpus=args.ray_cpus,
    )
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("data", "art", "out")}
    rec.write({"kind": "plan", "dataset": describe(data), "model": describe(art), "peers": selected, "config": config})
    began = time.perf_counter()
    failed = [name for name in selected if not run_part(name, cfg, args.part_timeout)]
    rec.write({"kind": "finished", "seconds": round(time.perf_counter() - began, 1), "load_avg": os.getloadavg()})
    print(write_report(out), flush=True)
    print(f"results in {out}", flush=True)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
