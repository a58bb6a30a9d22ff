"""`python -m bench --size small|default`: generate (or reuse) the data, run every case, write the report.

Each case runs in a fresh process (spawned, so each starts small and Dask forks its workers from
a small parent), appends JSON lines to bench/results/<timestamp>-<size>/results.jsonl, and the
report (summary.md, charts) is built from those lines at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import cases, report
from bench.common import PG_ADMIN_URL, QUIESCE_ENV, Recorder, pg_available
from bench.data import DATA_ROOT, Dataset, dataset, describe, parse_rows, train_brought, train_model
from bench.peers import dask_ml_available
from bench.profiling import py_spy

RESULTS = Path(__file__).resolve().parent / "results"

#: name -> (function, args); run in this order. Cases needing PostgreSQL are skipped without it.
CASES: dict[str, tuple[Callable[..., None], tuple[Any, ...], bool]] = {
    "parts": (cases.case_parts, (), False),
    "onnx-linear": (cases.case_onnx, ("linear",), False),
    "onnx-forest": (cases.case_onnx, ("forest",), False),
    "postgres-linear": (cases.case_postgres, ("linear",), True),
    "postgres-forest": (cases.case_postgres, ("forest",), True),
    "sqlite-linear": (cases.case_sqlite, ("linear",), False),
    "sqlite-forest": (cases.case_sqlite, ("forest",), False),
    "scaling": (cases.case_scaling, (), True),
    "memory": (cases.case_memory, (), True),
    "profile": (cases.case_profile, (), False),
    "api": (cases.case_api, (), True),
    "monitor": (cases.case_monitor, (), False),
    "many-models": (cases.case_many_models, (), True),
    "brought-lightgbm": (cases.case_brought, ("lightgbm",), True),
    "multiclass-commit": (cases.case_multiclass, (), True),
    "explain-linear": (cases.case_explain, ("linear",), True),
    "scale": (cases.case_scale, (), True),
    "report": (cases.case_report, (), False),
    # The peers users would pick instead, in their own environment (bench/peers_env; skipped with a note without it).
    "peers-ray": (cases.case_peer, ("ray",), True),
    "peers-feast": (cases.case_peer, ("feast",), True),
}
PEER_CASES = ("peers-ray", "peers-feast")

#: Bytes one row needs on this machine while `scale` scores it: its Parquet (~66 B), and in PostgreSQL the run's
#: heap and primary key (~90 B) plus as much WAL again until a checkpoint recycles it. A layout whose new files and
#: one run do not fit the free disk (with 10 % kept free) is left out and the summary says so.
SCALE_BYTES_PER_ROW = 66 + 2 * 90


def case_timeout(name: str, plan: cases.Plan, base: float) -> float:
    """`base` seconds, and for `scale` 10 s more per million rows scored per round (a loaded 2-core machine does
    more than 100k rows/s): a 64M-row layout must not be ended as stuck."""
    if name in PEER_CASES:  # `python -m bench.ray_feast`'s own limit per part: Feast materializes 4M rows twice
        return max(base, 3600)
    if name != "scale":
        return base
    rows = sum(d.rows for d in {d.name: d for d in (*plan.scale, plan.main, plan.scale_files) if d}.values())
    return base + plan.size.repeats * rows / 1e6 * 10


def _child(name: str, plan: cases.Plan) -> None:
    fn, args, _ = CASES[name]
    os.setpgrp()  # the case and every process it starts (Dask workers) form one group, ended together
    try:
        fn(plan, *args)
    except BaseException as exc:
        plan.recorder.write({"kind": "error", "case": name, "error": f"{type(exc).__name__}: {exc}"})
        traceback.print_exc()
        sys.exit(1)


def run_case(name: str, plan: cases.Plan, timeout_s: float) -> bool:
    """Run one case in a fresh spawned process, ended (with its Dask workers) after `timeout_s`; True when it
    finished. A shared machine can starve or lose a case's workers; a stuck case must not stall the suite."""
    t = time.perf_counter()
    print(f"[{datetime.now():%H:%M:%S}] {name}", flush=True)
    proc = multiprocessing.get_context("spawn").Process(target=_child, args=(name, plan), name=f"bench-{name}")
    proc.start()
    proc.join(timeout_s)
    if proc.exitcode is None:
        plan.recorder.write({"kind": "error", "case": name, "error": f"timed out after {timeout_s:.0f} s"})
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            proc.join(10)
            if proc.exitcode is not None:
                break
    seconds = time.perf_counter() - t
    plan.recorder.write({"kind": "case", "case": name, "seconds": round(seconds, 1), "ok": proc.exitcode == 0})
    print(f"[{datetime.now():%H:%M:%S}] {name} done in {seconds:.0f} s (exit {proc.exitcode})", flush=True)
    return proc.exitcode == 0


def environment(size: cases.Size, argv: list[str]) -> dict[str, Any]:
    import dask
    import onnxruntime
    import psutil
    import pyarrow
    import sklearn

    return {
        "kind": "environment",
        "command": " ".join(["python -m bench", *argv]),
        "size": dataclasses.asdict(size),
        "started": datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg": os.getloadavg(),
        "python": platform.python_version(),
        "versions": {
            "onnxruntime": onnxruntime.__version__,
            "pyarrow": pyarrow.__version__,
            "scikit-learn": sklearn.__version__,
            "dask": dask.__version__,
        },
    }


def _scale_datasets(size: cases.Size, skipped: dict[str, str]) -> tuple[tuple[Dataset, ...], Dataset]:
    """`scale`'s layouts: each of size.scale_rows at size.scale_rows_per_file rows per file, generated unless
    cached, largest last; a layout that does not fit the free disk is left out (noted in `skipped`)."""
    import shutil

    layouts = []
    for rows in sorted(size.scale_rows):
        files = max(1, -(-rows // size.scale_rows_per_file))
        free = shutil.disk_usage(DATA_ROOT).free
        need = rows * SCALE_BYTES_PER_ROW
        if need > 0.9 * free:
            skipped[f"scale-{rows}"] = (
                f"scale: {rows / 1e6:g}M rows left out: needs ~{need / 2**30:.1f} GiB (Parquet + one run in "
                f"PostgreSQL + its WAL), {free / 2**30:.1f} GiB free under {DATA_ROOT}"
            )
            continue
        t = time.perf_counter()
        layouts.append(dataset(rows, files))
        if time.perf_counter() - t > 5:
            print(f"  generated {rows:,} rows in {files} files in {time.perf_counter() - t:.0f} s", flush=True)
    return tuple(layouts), dataset(size.rows, size.scale_files)


def make_plan(
    size: cases.Size, out: Path, admin_url: str, profile: bool, selected: list[str] | None = None
) -> cases.Plan:
    """Generate or reuse the datasets and models this size needs (those of `scale`, `multiclass-commit` and
    `brought-lightgbm` only when selected: `selected` None means every case)."""
    rows, files = size.rows, size.files
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    wanted = set(CASES if selected is None else selected)
    main = dataset(rows, files)
    models = {label: train_model(label, size.train_rows) for label in ("linear", "forest")}
    pg_missing = pg_available(admin_url)
    dask_ml_missing = dask_ml_available()
    skipped = {}
    if pg_missing:
        skipped["postgres"] = f"PostgreSQL at {admin_url} not reachable ({pg_missing}); set NIGHTSHIFT_BENCH_PG_URL"
    if dask_ml_missing:
        skipped["dask-ml"] = f"dask-ml does not import ({dask_ml_missing}); `uv pip install dask-ml` to add its peer"
    if profile and py_spy() is None:
        skipped["py-spy"] = "py-spy is not installed (`uv pip install py-spy`): no profile; runs.timings still show"
        profile = False
    extra_models = {"multiclass": train_model("multiclass", size.train_rows)} if "multiclass-commit" in wanted else {}
    brought = {"lightgbm": train_brought("lightgbm", size.train_rows)} if "brought-lightgbm" in wanted else {}
    scale, scale_files = _scale_datasets(size, skipped) if "scale" in wanted and not pg_missing else ((), None)
    peers_missing = None
    if wanted & set(PEER_CASES) and not pg_missing:
        from bench.ray_feast import peers_missing as why_not

        try:
            peers_missing = why_not()
        except (OSError, subprocess.SubprocessError) as exc:  # the import probe hung or could not start
            peers_missing = f"the peers' environment could not be probed ({type(exc).__name__}: {exc})"
        if peers_missing:
            skipped["peers"] = f"Ray Data and Feast left out: {peers_missing}"
    return cases.Plan(
        size=size,
        out=out,
        main=main,
        quarter=dataset(rows // 4, max(1, files // 4)),
        few_files=dataset(rows, size.few_files),
        many_files=dataset(rows, size.many_files),
        models=models,
        pg_url=None if pg_missing else admin_url,
        dask_ml_missing=dask_ml_missing,
        profile=profile,
        skipped=skipped,
        extra_models=extra_models,
        brought=brought,
        scale=scale,
        scale_files=scale_files,
        peers_missing=peers_missing,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--size", choices=sorted(cases.SIZES), default="default")
    parser.add_argument("--repeats", type=int, default=None, help="runs per measurement (median, min, max)")
    parser.add_argument("--only", default="", help=f"comma-separated cases: {', '.join(CASES)}")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results/<timestamp>)")
    parser.add_argument("--pg-url", default=PG_ADMIN_URL, help="PostgreSQL admin URL; databases are created in it")
    parser.add_argument("--forest-full", action="store_true", help="score the forest on the main dataset too")
    parser.add_argument(
        "--scale-rows",
        default=None,
        help="`scale`: comma-separated rows, e.g. 1M,4M,16M,64M (default: the size's; --size xl adds 64M)",
    )
    parser.add_argument(
        "--scale-files", type=int, default=None, help="`scale`: files holding the main dataset's rows (default 1000)"
    )
    parser.add_argument(
        "--models-in-pass", type=int, default=None, help="`many-models`: models scored in one pass (default 5)"
    )
    parser.add_argument("--case-timeout", type=float, default=900, help="seconds before a stuck case is ended")
    parser.add_argument("--report-only", type=Path, default=None, help="rebuild the report of a results folder")
    args = parser.parse_args(argv)

    if args.report_only:
        report.write(args.report_only)
        return 0
    size = cases.SIZES[args.size]
    if args.repeats:
        size = dataclasses.replace(size, repeats=args.repeats)
    if args.forest_full:
        size = dataclasses.replace(size, forest_on_quarter=False)
    if args.scale_rows:
        size = dataclasses.replace(size, scale_rows=tuple(parse_rows(r) for r in args.scale_rows.split(",") if r))
    if args.scale_files:
        size = dataclasses.replace(size, scale_files=args.scale_files)
    if args.models_in_pass:
        size = dataclasses.replace(size, models_in_pass=args.models_in_pass)
    selected = [c.strip() for c in args.only.split(",") if c.strip()] or list(CASES)
    unknown = sorted(set(selected) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")

    out = args.out or RESULTS / f"{datetime.now():%Y%m%d-%H%M%S}-{size.name}"
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    print(f"nightshift benchmark, size {size.name}: results in {out}", flush=True)
    recorder = Recorder(out / "results.jsonl")
    recorder.write(environment(size, argv))
    plan = make_plan(size, out, args.pg_url, profile="profile" in selected, selected=selected)
    os.environ[QUIESCE_ENV] = plan.pg_url or ""  # the spawned cases checkpoint this server before each timed run
    recorder.write(
        {
            "kind": "plan",
            "data_root": str(DATA_ROOT),
            "datasets": {k: describe(getattr(plan, k)) for k in ("main", "quarter", "few_files", "many_files")}
            | {d.name: describe(d) for d in (*plan.scale, *([plan.scale_files] if plan.scale_files else []))},
            "models": {k: describe(v) for k, v in (plan.models | plan.extra_models | plan.brought).items()},
            "naive_files": {label: len(plan.naive_paths_for(label)) for label in plan.models},
            "forest_dataset": plan.data_for("forest").name,
            "skipped": plan.skipped,
        }
    )
    for note in plan.skipped.values():
        print(f"  note: {note}", flush=True)
    failed = []
    for name in selected:
        if (CASES[name][2] and plan.pg_url is None) or (name == "profile" and not plan.profile):
            continue
        if name in PEER_CASES and plan.peers_missing:
            continue
        if not run_case(name, plan, case_timeout(name, plan, args.case_timeout)):
            failed.append(name)
    recorder.write({"kind": "finished", "seconds": round(time.perf_counter() - began, 1), "load_avg": os.getloadavg()})
    summary = report.write(out)
    print(summary, flush=True)
    print(f"total {time.perf_counter() - began:.0f} s; results in {out}", flush=True)
    if failed:
        print(f"FAILED cases: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
