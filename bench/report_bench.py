"""The nightly report task against the scoring task of the same night: each a fresh process, as Airflow runs them.

    uv run python -m bench.report_bench                  # 50,000 rows a night, 3 rounds
    uv run python -m bench.report_bench --rows 50000 --rounds 1
    uv run python -m bench.report_bench --rows 50000 1000000 4000000   # one project per night size

One demo night (the demo churn contract: 36 numeric + 3 categorical features, 2 files) is
scored, monitored and reported by the CLI, each command in its own process, timed from the
outside (wall clock), round after round:

  * `score`: `nightshift score -m churn --ds D` (Dask cluster started by the command, commit);
  * `monitor`: `nightshift monitor --no-report` (profile of every row, checks, stored verdict, and
    the report's rows kept beside the report);
  * `report`: `nightshift monitor-report` with the night's feature files MOVED AWAY, which proves
    it reads none: built from what monitoring stored;
  * `report-rebuilt`: the same command after deleting the stored sample, so it reads the partition
    again (what the report task did before: profile every row, checks, then Evidently).

Also timed: a process that only imports nightshift's CLI, and one that imports Evidently, so the
fixed costs are visible. Several `--rows`: each night size in a project of its own, one after the other;
the report reads a fixed number of sample rows (`report_rows`) whatever the night's size while scoring
grows with it, so the sizes show where the report stops costing more than the scoring.
Results: bench/results/report_bench.{jsonl,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
START = date(2026, 11, 10)
DAYS = 4
NIGHT = START + timedelta(days=DAYS - 1)


def project(folder: Path) -> Path:
    """A project file with the demo churn model only, its state and data under `folder`."""
    from nightshift.demo import demo_contract

    contract = demo_contract()
    cols = ",\n".join(
        "  {"
        + ", ".join(f"{k} = {json.dumps(v)}" for k, v in c.model_dump(mode="json", exclude_none=True).items())
        + "}"
        for c in contract.columns
    )
    path = folder / "nightshift.toml"
    path.write_text(
        f"""state_dir = {json.dumps(str(folder / "state"))}

[dask]
n_workers = 2
threads_per_worker = 1

[[models]]
name = "churn"
dataset = {json.dumps(str(folder / "data" / "features"))}
labels = {json.dumps(str(folder / "data" / "labels"))}
label_column = "churned"

[models.estimator]
kind = "logistic_regression"
params = {{ C = 1.0, max_iter = 200 }}

[models.training]
window_days = 3

[models.contract]
entity_id = "{contract.entity_id}"
entity_id_type = "{contract.entity_id_type}"
extra_columns = "ignore"
columns = [
{cols}
]
"""
    )
    return path


def cli(config: Path, *args: str) -> float:
    """Run `nightshift ARGS` in a fresh process; its wall time in seconds (a failure stops the bench)."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "nightshift.cli", *args, "-c", str(config)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return time.perf_counter() - t0


def python(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def measure(rows: int, rounds: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """One project of `rows`-row nights: set up, then `rounds` rounds of score, monitor and report (timed);
    the rounds and the fixed costs (import times)."""
    folder = Path(tempfile.mkdtemp(prefix="ns-reportbench-"))
    config = project(folder)
    ds = NIGHT.isoformat()
    night_dir = folder / "data" / "features" / f"ds={ds}"
    print(f"{rows:,} rows a night; setting up in {folder} ...", flush=True)
    results: list[dict[str, Any]] = []
    try:
        cli(config, "demo-data", "--start", START.isoformat(), "--days", str(DAYS), "--rows-per-day", str(rows),
            "--files-per-day", "2")  # fmt: skip
        cli(config, "db", "upgrade")
        cli(config, "train", "-m", "churn", "--ds", (NIGHT - timedelta(days=1)).isoformat())
        cli(config, "score", "-m", "churn", "--ds", ds)
        cli(config, "monitor", "-m", "churn", "--ds", ds, "--no-report")  # builds the version's reference once
        reports = folder / "state" / "reports" / "churn" / "v1" / f"ds={ds}"
        fixed = {
            "import nightshift.cli": python("import nightshift.cli"),
            "import evidently": python("import evidently"),
        }
        for rnd in range(1, rounds + 1):
            row: dict[str, Any] = {"rows": rows, "round": rnd, "load_before": os.getloadavg()[0]}
            row["score_s"] = cli(config, "score", "-m", "churn", "--ds", ds)
            row["monitor_s"] = cli(config, "monitor", "-m", "churn", "--ds", ds, "--no-report")
            hidden = night_dir.with_name(night_dir.name + ".hidden")
            shutil.move(night_dir, hidden)  # the report task must not need the night's feature files
            try:
                row["report_s"] = cli(config, "monitor-report", "-m", "churn", "--ds", ds)
            finally:
                shutil.move(hidden, night_dir)
            (reports / "data.sample.parquet").unlink()
            row["report_rebuilt_s"] = cli(config, "monitor-report", "-m", "churn", "--ds", ds)
            row["report_vs_score"] = row["report_s"] / row["score_s"]
            row["rebuilt_vs_score"] = row["report_rebuilt_s"] / row["score_s"]
            results.append(row)
            print(
                f"  round {rnd}: score {row['score_s']:.1f}s  monitor {row['monitor_s']:.1f}s  "
                f"report {row['report_s']:.1f}s ({row['report_vs_score']:.2f}x score)  "
                f"report rebuilt from the partition {row['report_rebuilt_s']:.1f}s "
                f"({row['rebuilt_vs_score']:.2f}x)  load {row['load_before']:.1f}",
                flush=True,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results, fixed


def summarize(rows: int, results: list[dict[str, Any]], fixed: dict[str, float]) -> dict[str, Any]:
    """The medians of one night size's rounds, and whether the report cost at most the scoring."""

    def med(key: str) -> float:
        return statistics.median(r[key] for r in results)

    ratios = [r["report_vs_score"] for r in results]
    return {
        "kind": "summary",
        "rows": rows,
        "rounds": len(results),
        "median_s": {k: round(med(k), 2) for k in ("score_s", "monitor_s", "report_s", "report_rebuilt_s")},
        "report_vs_score_median": round(med("report_vs_score"), 2),
        "report_vs_score_range": [round(f(ratios), 2) for f in (min, max)],
        "rebuilt_vs_score_median": round(med("rebuilt_vs_score"), 2),
        "fixed_s": {k: round(v, 2) for k, v in fixed.items()},
        "target_report_le_1x_score": med("report_vs_score") <= 1.0,
    }


def markdown(command: str, meta: dict[str, Any], rounds: int, summaries: list[dict[str, Any]]) -> list[str]:
    """report_bench.md: one row per night size measured so far."""
    lines = [
        "# Report task vs scoring task",
        "",
        f"`{command}` — {meta['started']}, {meta['machine']}; {rounds} round(s) a night size; "
        "each step a fresh process (wall clock), as an Airflow task. Medians in seconds.",
        "",
        "| rows a night | score (`nightshift score`) | monitor (`monitor --no-report`) | report from what monitoring "
        "stored (`monitor-report`, feature files moved away) | report rebuilt from the partition (the old path) "
        "| report / score [range] | target ≤ 1× | the old path / score | importing nightshift.cli / evidently |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        m, lo_hi, fixed = s["median_s"], s["report_vs_score_range"], s["fixed_s"]
        lines.append(
            f"| {s['rows']:,} | {m['score_s']:.1f} | {m['monitor_s']:.1f} | {m['report_s']:.1f} "
            f"| {m['report_rebuilt_s']:.1f} | **{s['report_vs_score_median']:.2f}×** [{lo_hi[0]:.2f}–{lo_hi[1]:.2f}] "
            f"| {'met' if s['target_report_le_1x_score'] else 'NOT met'} | {s['rebuilt_vs_score_median']:.2f}× "
            f"| {fixed['import nightshift.cli']:.1f} / {fixed['import evidently']:.1f} |"
        )
    lines += [
        "",
        "- Importing Evidently is the report's floor whatever the night's size; the report reads a fixed sample.",
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=[50_000],
        help="rows of the night (and of each training day); several: one project per size, one after the other",
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds of score, monitor and report per night size")
    ap.add_argument(
        "--out", type=Path, default=RESULTS, help="folder that report_bench.jsonl (appended) and report_bench.md go to"
    )
    args = ap.parse_args(argv)
    if any(n < 1 for n in args.rows):
        ap.error(f"--rows: a night needs at least one row; got {' '.join(map(str, args.rows))}")
    if args.rounds < 1:
        ap.error(f"--rounds: at least one round; got {args.rounds}")
    command = "uv run python -m bench.report_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {
        "kind": "meta",
        "bench": "report",
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{os.cpu_count()} CPU(s), {platform.python_implementation()} {platform.python_version()}",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / "report_bench.jsonl"
    with jsonl.open("a") as f:
        f.write(json.dumps(meta) + "\n")
    summaries: list[dict[str, Any]] = []
    for rows in args.rows:  # each size's lines as soon as it is measured: a later size that fails loses nothing
        results, fixed = measure(rows, args.rounds)
        summaries.append(summarize(rows, results, fixed))
        with jsonl.open("a") as f:
            for line in (*({"kind": "round", **r} for r in results), summaries[-1]):
                f.write(json.dumps(line) + "\n")
        (args.out / "report_bench.md").write_text("\n".join(markdown(command, meta, args.rounds, summaries)) + "\n")
    print()
    print("\n".join(markdown(command, meta, args.rounds, summaries)))


if __name__ == "__main__":
    main()
