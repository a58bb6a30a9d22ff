"""Monitoring benchmark: detector quality on demo nights with injected shifts, the 1M-row cost vs plain scipy,
and the rate on a 10M-row night.

    uv run python -m bench.monitor_bench                 # all three parts (data cached in bench/results/monitor/)
    uv run python -m bench.monitor_bench --skip-detection --rate-rows 0   # the 1M-row cost only
    uv run python -m bench.monitor_bench --skip-timing --rate-rows 0   # detection table only
    uv run python -m bench.monitor_bench --skip-detection --skip-timing   # the 10M-row rate only (…-rate.md)
    uv run python -m bench.monitor_bench --evidently-full  # also Evidently's DataDriftPreset on all rows
    uv run python -m bench.monitor_bench --weekly 0 --trend 0 --ref-days 2   # the flat data of the first bench

Part 1 runs the nightly code path (profile_files → run_checks → verdict, the same functions
monitor_partition calls, with the sample scored by the model like the committed scores) over
clean nights and nights with one injected shift each, and reports the detection rate per kind
and size of shift and the false-alarm rate on clean nights. By default the data has real rhythm:
a weekly cycle of the usage features (±15%, weekend high) and a slow trend of prices and usage
(+5% a year), and every night is checked twice: against one reference of all the reference days
(two whole weeks), and against the reference days of its own weekday (`monitoring.seasonality =
"weekly"`, nightshift.monitoring.seasonal). Part 2 commits a 1M-row partition to SQLite and times
`monitor_partition` (each run in a fresh process, peak RSS from the kernel) against a direct
pandas/scipy implementation of the same tests on every row.
Part 3 commits a 10M-row night (`--rate-rows`; 0 skips it) and measures `monitor_partition`'s rate and peak
RSS against the target of >= 2M rows/s within 1 GiB.
Results: bench/results/monitor_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
WORK = RESULTS / "monitor"
SEED = 42
#: The reference days start on a Monday, so 7 or 14 of them are whole weeks.
REF_START = date(2026, 1, 5)
REF_DAYS = [REF_START, REF_START + timedelta(days=1)]  # part 2's (the timing's) training days
FIRST_NIGHT = date(2026, 2, 1)
BIG_NIGHT = date(2026, 6, 1)
BIG_FILES = 4
#: The two ways a night is checked: one reference of every reference day, or the days of its own weekday.
MODES = ("all reference days", "same weekday")

#: (kind, sizes, columns the shift rotates over). Sizes bracket each kind's default threshold.
SCENARIOS: list[tuple[str, list[float], list[str]]] = [
    ("mean_shift", [0.1, 0.25, 0.5, 1.0], ["monthly_charges", "age", "tenure_months", "data_usage_gb_30d"]),
    ("variance_change", [1.1, 1.25, 1.5, 2.0], ["monthly_charges", "credit_score", "logins_30d", "voice_minutes_30d"]),
    ("new_category", [0.0005, 0.002, 0.01, 0.05], ["plan", "region", "payment_method", "plan"]),
    # 0.053 of the rows nulled adds >= 5 points of missing values on each of these columns (base share <= 5%).
    ("missing_spike", [0.02, 0.053, 0.1, 0.3], ["tenure_months", "credit_score", "region", "estimated_income_k"]),
]
#: The check that should catch each kind (besides the night's verdict).
TARGET = {
    "mean_shift": "drift",
    "variance_change": "drift",
    "new_category": "new_category",
    "missing_spike": "missing_share",
}


def log(msg: str) -> None:
    print(f"[monitor_bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def peak_rss_mib() -> float:
    """This process's peak resident set: VmHWM (getrusage's ru_maxrss survives exec and shows the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- data and project ------------------------------------------------------------------------


def _generate_day(root: Path, day: date, rows: int, files: int, drift: list[Any], season: Any = None) -> None:
    from nightshift.demo import generate

    marker = root / "features" / f"ds={day.isoformat()}" / "_SUCCESS"
    stamp = root / "features" / f"ds={day.isoformat()}" / ".params"
    params = json.dumps(
        {"rows": rows, "files": files, "drift": [str(d) for d in drift], "seed": SEED, "season": repr(season)}
    )
    if marker.exists() and stamp.exists() and stamp.read_text() == params:
        return
    generate(
        root / "features",
        root / "labels",
        start=day,
        days=1,
        rows_per_day=rows,
        files_per_day=files,
        seed=SEED,
        drift=drift,
        seasonality=season,
    )
    stamp.write_text(params)


def write_project(work: Path, data: Path, max_missing_increase: float = 0.03) -> Path:
    from nightshift.demo import demo_contract

    cols = ",\n".join(
        "  {"
        + ", ".join(f"{k} = {json.dumps(v)}" for k, v in c.model_dump(mode="json", exclude_none=True).items())
        + "}"
        for c in demo_contract().columns
    )
    text = f"""
state_dir = {json.dumps(str(work / "state"))}

[dask]
threads_per_worker = 1

[[models]]
name = "churn"
dataset = {json.dumps(str(data / "features"))}
labels = {json.dumps(str(data / "labels"))}
label_column = "churned"

[models.estimator]
kind = "logistic_regression"
params = {{ C = 1.0, max_iter = 300 }}

[models.training]
window_days = 2
max_rows = 50000

[models.monitoring]
report = false
max_missing_increase = {max_missing_increase}

[models.contract]
entity_id = "customer_id"
entity_id_type = "int64"
columns = [
{cols}
]
"""
    path = work / "nightshift.toml"
    path.write_text(text)
    return path


@dataclass
class Night:
    day: date
    kind: str  # "clean" or a drift kind
    size: float
    column: str | None


def plan_nights(clean: int, per_size: int) -> list[Night]:
    nights: list[Night] = []
    day = FIRST_NIGHT
    for i in range(clean):
        nights.append(Night(day, "clean", 0.0, None))
        day += timedelta(days=1)
        _ = i
    for kind, sizes, columns in SCENARIOS:
        for size in sizes:
            for k in range(per_size):
                nights.append(Night(day, kind, size, columns[k % len(columns)]))
                day += timedelta(days=1)
    return nights


# -- part 1: detection -----------------------------------------------------------------------


def train_detection_model(settings: Any, days: list[date]) -> bytes:
    """The model that scores the nights' samples: trained on the last two reference days."""
    from nightshift.training import train
    from nightshift.training.dataset import build_training_set

    cfg = settings.model("churn")
    cached = Path(cfg.dataset_uri(settings)).parent / f"model-{cfg.training.max_rows}-{days[-1]}.onnx"
    if cached.exists():
        return cached.read_bytes()
    tset = build_training_set(settings, cfg, days[-1])
    trained = train(tset.table, tset.labels, cfg.contract, cfg.estimator, cfg.training, cfg.decision_threshold)
    cached.write_bytes(trained.onnx_bytes)
    return trained.onnx_bytes


def _summarise(rows: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The detection table (kind → size → rates) and the clean nights' false alarms of one mode."""
    from nightshift.monitoring.checks import FAIL

    table: dict[str, dict[str, Any]] = defaultdict(dict)
    for kind, sizes, _ in SCENARIOS:
        for size in sizes:
            hit = [r for r in rows if r["kind"] == kind and r["size"] == size]
            if not hit:
                continue
            also = sorted({f.split("[")[0] for r in hit for f in r["failed"]} - {TARGET[kind]})
            table[kind][str(size)] = {
                "nights": len(hit),
                "night_failed": sum(r["status"] == FAIL for r in hit) / len(hit),
                "target_check_failed": sum(bool(r["target_failed"]) for r in hit) / len(hit),
                "median_value": statistics.median(r["target_value"] for r in hit if r["target_value"] is not None),
                "median_ratio": statistics.median(
                    r["target_value"] / r["target_threshold"]
                    for r in hit
                    if r["target_value"] is not None and r["target_threshold"]
                ),
                "median_points": statistics.median(r["points"] for r in hit) if kind == "missing_spike" else None,
                "also_failed": also,
            }
    clean = [r for r in rows if r["kind"] == "clean"]
    clean_checks = sum(r["checks"] for r in clean)
    false_alarm = {
        "nights": len(clean),
        "false_alarm_nights": sum(r["status"] == FAIL for r in clean),
        "night_false_alarm_rate": sum(r["status"] == FAIL for r in clean) / len(clean) if clean else 0.0,
        "check_false_alarm_rate": sum(r["failed_checks"] for r in clean) / clean_checks if clean_checks else 0.0,
        "checks_per_night": clean_checks / len(clean) if clean else 0,
        "false_alarms": [f"{r['day']}: {', '.join(r['failed'])}" for r in clean if r["failed"]],
        "max_ratio_by_check": {
            kind: round(max(r["max_ratio"].get(kind, 0.0) for r in clean), 3)
            for kind in sorted({k for r in clean for k in r["max_ratio"]})
        },
    }
    return dict(table), false_alarm


def detection(args: argparse.Namespace, settings: Any, data: Path) -> dict[str, Any]:
    from nightshift.demo import DriftSpec, Seasonality
    from nightshift.monitoring.checks import FAIL, run_checks, verdict
    from nightshift.monitoring.profile import profile_files
    from nightshift.monitoring.reference import model_session, reference_from_files, score_sample
    from nightshift.monitoring.seasonal import same_weekday

    cfg = settings.model("churn")
    mon = cfg.monitoring
    season = Seasonality(args.weekly, args.trend) if (args.weekly or args.trend) else None
    ref_days = [REF_START + timedelta(days=i) for i in range(args.ref_days)]
    nights = plan_nights(args.clean_nights, args.nights_per_size)
    log(
        f"detection: generating {len(ref_days)} reference days of {args.ref_rows:,} rows and {len(nights)} nights "
        f"of {args.night_rows:,} rows (seasonality: {season})"
    )
    for day in ref_days:
        _generate_day(data, day, args.ref_rows, 2, [], season)
    for n in nights:
        drift = [] if n.kind == "clean" else [DriftSpec(n.kind, str(n.column), n.size, n.day)]
        _generate_day(data, n.day, args.night_rows, 2, drift, season)
    onnx = train_detection_model(settings, ref_days)
    session = model_session(onnx)

    def files(day: date) -> list[str]:
        return sorted(str(p) for p in (data / "features" / f"ds={day.isoformat()}").glob("*.parquet"))

    def reference(days: list[date]) -> Any:
        return reference_from_files(
            [f for d in days for f in files(d)],
            cfg.contract,
            onnx,
            model="churn",
            version=1,
            uri="memory://bench",
            cap=mon.reference_rows,
            seed=mon.sample_seed,
        )

    whole = reference(ref_days)
    by_weekday: dict[int, Any] = {}
    rows: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    t0 = time.perf_counter()
    for n in nights:
        profile = profile_files(files(n.day), cfg.contract, cap=mon.sample_rows, seed=mon.sample_seed)
        scores = score_sample(session, profile.sample, cfg.contract)
        same = same_weekday(ref_days, n.day)
        if n.day.weekday() not in by_weekday:
            by_weekday[n.day.weekday()] = reference(same) if same else whole
        for mode, ref in zip(MODES, (whole, by_weekday[n.day.weekday()]), strict=True):
            checks = run_checks(profile, ref, cfg, current_scores=scores, volume_history=[profile.rows] * 7)
            failing = [c for c in checks if c.failing]
            margins: dict[str, float] = {}
            for c in checks:
                if c.value is not None and c.threshold:
                    margins[c.kind] = max(margins.get(c.kind, 0.0), c.value / c.threshold)
            target = None
            if n.column is not None:
                target = next((c for c in checks if c.kind == TARGET[n.kind] and c.column == n.column), None)
            points = 0.0
            if n.kind == "missing_spike" and target is not None and target.value is not None:
                points = 100 * (target.value - ref.missing_share(str(n.column)))
            rows[mode].append(
                {
                    "day": n.day.isoformat(),
                    "weekday": n.day.strftime("%a"),
                    "kind": n.kind,
                    "size": n.size,
                    "column": n.column,
                    "status": verdict(checks),
                    "failed": [f"{c.kind}[{c.column}]" if c.column else c.kind for c in failing],
                    "target_value": None if target is None else target.value,
                    "target_threshold": None if target is None else target.threshold,
                    "target_failed": None if target is None else target.status == FAIL,
                    "points": points,
                    "checks": len(checks),
                    "failed_checks": len(failing),
                    "sampled_rows": profile.sampled_rows,
                    "max_ratio": margins,
                }
            )
    seconds = time.perf_counter() - t0
    log(f"detection: {len(nights)} nights checked ({len(MODES)} references each) in {seconds:.1f}s")
    modes = {}
    for mode in MODES:
        table, clean = _summarise(rows[mode])
        modes[mode] = {"table": table, "clean": clean, "rows": rows[mode]}
        log(
            f"  {mode}: {clean['false_alarm_nights']} false alarm(s) on {clean['nights']} clean nights "
            f"({clean['night_false_alarm_rate']:.1%})"
        )
    return {
        "night_rows": args.night_rows,
        "reference_days": len(ref_days),
        "reference_rows": whole.stats["rows"],
        "reference_sampled": whole.sample.num_rows,
        "sample_cap": mon.sample_rows,
        "seasonality": {"weekly": args.weekly, "trend_per_year": args.trend},
        "max_missing_increase": mon.max_missing_increase,
        "nights": len(nights),
        "seconds": round(seconds, 2),
        "per_night_s": round(seconds / len(nights), 3),
        "modes": modes,
        # The detector as nightshift recommends it for seasonal data: `monitoring.seasonality = "weekly"`.
        "table": modes["same weekday"]["table"],
        "clean": modes["same weekday"]["clean"],
    }


# -- part 2: 1M-row timing -------------------------------------------------------------------


def prepare_big(args: argparse.Namespace, config: Path, data: Path) -> dict[str, Any]:
    """A registered model (trained on the reference days), a committed 1M-row night, its stored reference."""
    from nightshift.config import load_settings
    from nightshift.db import open_store
    from nightshift.models import open_registry
    from nightshift.monitoring import ensure_reference
    from nightshift.scoring import score_partition
    from nightshift.training import train_and_register

    for day in REF_DAYS:
        _generate_day(data, day, args.ref_rows, 2, [])
    _generate_day(data, BIG_NIGHT, args.big_rows, BIG_FILES, [])
    settings = load_settings(config)
    store = open_store(settings, check=False)
    store.upgrade()
    registry = open_registry(settings, store)
    if not registry.versions("churn"):
        log("training and registering the model on the reference days")
        train_and_register(settings, "churn", REF_DAYS[-1])
    mv = registry.resolve("churn")
    if store.partition("churn", mv.version, BIG_NIGHT) is None:
        log(f"scoring the {args.big_rows:,}-row night into SQLite")
        score_partition(settings, "churn", BIG_NIGHT)
    part = store.partition("churn", mv.version, BIG_NIGHT)
    assert part is not None
    ref = ensure_reference(settings, mv)
    return {"run_id": part.run_id, "rows": part.row_count, "reference": ref.uri, "store": store.url}


def child_ours(config: str, report: bool) -> dict[str, Any]:
    import_s = 0.0
    if report:  # Evidently's import is timed apart: once per process, whatever the partition
        t = time.perf_counter()
        import evidently  # noqa: F401

        import_s = time.perf_counter() - t
    from nightshift.config import load_settings
    from nightshift.monitoring import monitor_partition

    settings = load_settings(config)
    t = time.perf_counter()
    result = monitor_partition(settings, "churn", BIG_NIGHT, report=report, alert=False)
    seconds = time.perf_counter() - t
    return {
        "seconds": seconds,
        "evidently_import_s": import_s,
        "peak_rss_mib": peak_rss_mib(),
        "status": result.status,
        "sampled_rows": result.sampled_rows,
        "rows": result.rows,
        "timings": result.summary["timings"],
        "failed": result.summary["failed"],
    }


def child_scipy(config: str, run_id: int, reference: str) -> dict[str, Any]:
    """The same tests written directly with pandas + scipy on every row: no sampling, no streaming."""
    import sqlite3

    import numpy as np
    import pandas as pd
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    from nightshift.config import load_settings

    settings = load_settings(config)
    cfg = settings.model("churn")
    t = time.perf_counter()
    files = sorted((Path(cfg.dataset_uri(settings)) / f"ds={BIG_NIGHT.isoformat()}").glob("*.parquet"))
    cur = pd.concat([pd.read_parquet(f, columns=cfg.contract.feature_names) for f in files], ignore_index=True)
    ref = pd.read_parquet(Path(reference) / "reference.parquet")
    stats = json.loads((Path(reference) / "reference.json").read_text())["columns"]
    out: dict[str, float] = {}
    for spec in cfg.contract.columns:
        c = cur[spec.name]
        out[f"missing:{spec.name}"] = float(c.isna().mean())
        if spec.type.is_categorical:
            present = c.dropna()
            out[f"new:{spec.name}"] = float((~present.isin(list(stats[spec.name]["categories"]))).mean())
            r = ref[spec.name].dropna()
            keys = sorted(set(r.unique()) | set(present.unique()))
            p = r.value_counts(normalize=True).reindex(keys, fill_value=0).to_numpy()
            q = present.value_counts(normalize=True).reindex(keys, fill_value=0).to_numpy()
            out[f"js:{spec.name}"] = float(jensenshannon(p, q))
        else:
            present = c.dropna()
            lo = spec.min if spec.min is not None else -np.inf
            hi = spec.max if spec.max is not None else np.inf
            out[f"oor:{spec.name}"] = float(((present < lo) | (present > hi)).mean())
            r = ref[spec.name].dropna()
            out[f"w:{spec.name}"] = float(wasserstein_distance(r, present) / max(float(np.std(r)), 0.001))
    db = sqlite3.connect(settings.resolved_store_url.removeprefix("sqlite:///"))
    scores = pd.read_sql_query("SELECT score FROM predictions WHERE run_id = ?", db, params=(run_id,))["score"]
    r = ref["__score__"]
    out["w:score"] = float(wasserstein_distance(r, scores) / max(float(np.std(r)), 0.001))
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "rows": len(cur), "tests": len(out)}


def child_evidently_full(config: str, reference: str) -> dict[str, Any]:
    """Evidently's DataDriftPreset on every row of the night against the 100k reference sample."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from nightshift.config import load_settings

    settings = load_settings(config)
    cfg = settings.model("churn")
    t = time.perf_counter()
    files = sorted((Path(cfg.dataset_uri(settings)) / f"ds={BIG_NIGHT.isoformat()}").glob("*.parquet"))
    cur = pd.concat([pd.read_parquet(f, columns=cfg.contract.feature_names) for f in files], ignore_index=True)
    ref = pd.read_parquet(Path(reference) / "reference.parquet", columns=cfg.contract.feature_names)
    definition = DataDefinition(
        numerical_columns=[c.name for c in cfg.contract.numeric],
        categorical_columns=[c.name for c in cfg.contract.categorical],
    )
    Report([DataDriftPreset(num_method="wasserstein", cat_method="jensenshannon")]).run(
        Dataset.from_pandas(cur, data_definition=definition), Dataset.from_pandas(ref, data_definition=definition)
    )
    return {"seconds": time.perf_counter() - t, "peak_rss_mib": peak_rss_mib(), "rows": len(cur)}


#: Bytecode cache for the child processes, outside the source tree: this environment sets
#: PYTHONDONTWRITEBYTECODE, which would make every fresh process recompile pandas, scipy and
#: Evidently from source (seconds) and swamp what is measured; a deployment has its .pyc files.
PYCACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "nightshift-bench-pycache"


def run_child(*argv: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.monitor_bench", "--child", *argv]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[1], env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def timing(args: argparse.Namespace, config: Path, data: Path) -> dict[str, Any]:
    info = prepare_big(args, config, data)
    log(f"timing: {info['rows']:,} committed rows; {args.runs} fresh-process run(s) per contender")
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    contenders = {
        "nightshift monitor_partition (checks, stored verdict)": ("ours", str(config), "0"),
        "direct pandas + scipy, same tests on every row": (
            "scipy",
            str(config),
            str(info["run_id"]),
            info["reference"],
        ),
        "nightshift monitor_partition + Evidently HTML report": ("ours", str(config), "1"),
    }
    for argv in contenders.values():  # warm-up, untimed: fills the bytecode cache
        run_child(*argv)
    for i in range(args.runs):  # round-robin, so machine drift hits every contender alike
        for name, argv in contenders.items():
            res = run_child(*argv)
            runs[name].append(res)
            log(f"  run {i + 1}: {name}: {res['seconds']:.2f}s, peak RSS {res['peak_rss_mib']:.0f} MiB")
    if args.evidently_full:
        name = "Evidently DataDriftPreset on every row (reference only)"
        res = run_child("evidently_full", str(config), info["reference"])
        runs[name].append(res)
        log(f"  {name}: {res['seconds']:.1f}s, peak RSS {res['peak_rss_mib']:.0f} MiB")
    summary: dict[str, Any] = {}
    for name, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        summary[name] = {
            "median_s": round(statistics.median(secs), 3),
            "min_s": round(min(secs), 3),
            "max_s": round(max(secs), 3),
            "peak_rss_mib": round(max(r["peak_rss_mib"] for r in rs), 1),
            "runs": [{k: v for k, v in r.items() if k != "failed"} for r in rs],
        }
    base = summary["direct pandas + scipy, same tests on every row"]["median_s"]
    for s in summary.values():
        s["ratio_to_scipy"] = round(s["median_s"] / base, 3)
    return {"rows": info["rows"], "contenders": summary}


# -- part 3: the rate on a large night (issue 18's target) -------------------------------------

#: Monitoring a 10M-row partition at >= 2M rows/s within 1 GiB (issue 18).
RATE_GOAL_ROWS_S = 2_000_000
RATE_GOAL_RSS_MIB = 1024


def rate(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """`monitor_partition` alone (every row profiled, the sample's committed scores, the checks, the stored
    verdict; the report is the report task's) on a `--rate-rows` night in 4 files, each run a fresh process:
    rows/s and the process's peak RSS, imports included. Its own folder, so the 1M-row night stays cached."""
    rwork = work.parent / f"{work.name}-rate-{args.rate_rows}"
    rwork.mkdir(parents=True, exist_ok=True)
    data = rwork / "data"
    config = write_project(rwork, data, args.max_missing_increase)
    info = prepare_big(argparse.Namespace(**{**vars(args), "big_rows": args.rate_rows}), config, data)
    log(f"rate: {info['rows']:,} committed rows; {args.runs} fresh-process run(s)")
    run_child("ours", str(config), "0")  # warm-up, untimed: the bytecode and page caches
    runs = []
    for i in range(args.runs):
        res = run_child("ours", str(config), "0")
        runs.append(res)
        log(
            f"  run {i + 1}: {res['seconds']:.2f}s ({info['rows'] / res['seconds'] / 1e6:.2f}M rows/s), "
            f"peak RSS {res['peak_rss_mib']:.0f} MiB, profile {res['timings']['profile_s']:.2f}s"
        )
    rates = [info["rows"] / r["seconds"] for r in runs]
    peak = max(r["peak_rss_mib"] for r in runs)
    return {
        "rows": info["rows"],
        "files": BIG_FILES,
        "rows_per_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
        "peak_rss_mib": peak,
        "goal_rows_per_s": RATE_GOAL_ROWS_S,
        "goal_rss_mib": RATE_GOAL_RSS_MIB,
        "passed": min(rates) >= RATE_GOAL_ROWS_S and peak <= RATE_GOAL_RSS_MIB,
        "runs": [{k: v for k, v in r.items() if k != "failed"} for r in runs],
    }


# -- output ---------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Monitoring benchmark", "", f"Run at {result['at']} on {result['machine']}.", ""]
    det = result.get("detection")
    if det:
        season = det["seasonality"]
        lines += [
            "## Detector quality",
            "",
            f"{det['nights']} simulated nights of {det['night_rows']:,} demo rows, with a weekly cycle of the usage "
            f"features (amplitude {season['weekly']:g}) and a slow trend of prices and usage "
            f"({season['trend_per_year']:+g} a year); the reference: {det['reference_days']} days "
            f"({det['reference_rows']:,} rows, {det['reference_sampled']:,} sampled); sample cap "
            f"{det['sample_cap']:,}; one injected shift per shifted night, rotating over columns; default thresholds "
            f"but `max_missing_increase = {det['max_missing_increase']:g}`. Each night is checked against the whole "
            'reference and against the reference days of its own weekday (`monitoring.seasonality = "weekly"`).',
            "",
            "| reference | clean nights | false alarms | detected: mean 0.25σ | variance ×1.25 | new category 1% "
            "| missing +5 points |",
            "|---|---|---|---|---|---|---|",
        ]
        for mode, m in det["modes"].items():
            t, c = m["table"], m["clean"]

            def shown_rate(kind: str, size: str, t: dict[str, Any] = t) -> str:
                row = t.get(kind, {}).get(size)
                return f"{row['night_failed']:.0%} of {row['nights']}" if row else "—"

            lines.append(
                f"| {mode} | {c['nights']} | {c['false_alarm_nights']} ({c['night_false_alarm_rate']:.1%}) "
                f"| {shown_rate('mean_shift', '0.25')} | {shown_rate('variance_change', '1.25')} "
                f"| {shown_rate('new_category', '0.01')} | {shown_rate('missing_spike', '0.053')} |"
            )
        for mode, m in det["modes"].items():
            lines += [
                "",
                f"### Against {mode}",
                "",
                "| kind | size | nights | night failed | check failed | median value | value / threshold "
                "| other failing checks |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for kind, sizes in m["table"].items():
                for size, row in sizes.items():
                    shown = size + (f" ({row['median_points']:.1f} points)" if row.get("median_points") else "")
                    lines.append(
                        f"| {kind} | {shown} | {row['nights']} | {row['night_failed']:.0%} "
                        f"| {row['target_check_failed']:.0%} | {row['median_value']:.4g} | {row['median_ratio']:.2f} "
                        f"| {', '.join(row['also_failed']) or '—'} |"
                    )
            clean = m["clean"]
            lines += [
                "",
                f"Clean nights: {clean['nights']}; nights with a false alarm: {clean['night_false_alarm_rate']:.1%}; "
                f"failing checks: {clean['check_false_alarm_rate']:.2%} of {clean['checks_per_night']:.0f} checks "
                "per night. Largest value / threshold on the clean nights, per check (1 would be an alarm): "
                + ", ".join(f"{k} {v:.2f}" for k, v in clean["max_ratio_by_check"].items())
                + ".",
            ]
            if clean["false_alarms"]:
                shown_alarms = clean["false_alarms"][:10]
                more = len(clean["false_alarms"]) - len(shown_alarms)
                lines += ["", "False alarms:", *[f"- {x}" for x in shown_alarms]]
                if more:
                    lines.append(f"- … and {more} more")
        lines += ["", f"Checking took {det['per_night_s']:.2f}s per night (profile + sample scoring + checks).", ""]
    tim = result.get("timing")
    if tim:
        lines += [
            f"## Monitoring one {tim['rows']:,}-row partition",
            "",
            "Each run in a fresh process; peak RSS is the process's maximum resident set (imports included).",
            "",
            "| contender | median s | min–max s | × scipy | peak RSS MiB |",
            "|---|---|---|---|---|",
        ]
        for name, s in tim["contenders"].items():
            lines.append(
                f"| {name} | {s['median_s']:.2f} | {s['min_s']:.2f}–{s['max_s']:.2f} | {s['ratio_to_scipy']:.2f} "
                f"| {s['peak_rss_mib']:.0f} |"
            )
        ours = tim["contenders"]["nightshift monitor_partition + Evidently HTML report"]["runs"]
        imp = statistics.median(r["evidently_import_s"] for r in ours)
        lines += ["", f"Importing Evidently (once per process, not in the times above): {imp:.1f}s.", ""]
    rt = result.get("rate")
    if rt:
        r = rt["rows_per_s"]
        phases = ("profile_s", "scores_s", "checks_s")
        med = {k: statistics.median(x["timings"][k] for x in rt["runs"]) for k in phases}
        lines += [
            f"## Monitoring a {rt['rows']:,}-row partition: the rate",
            "",
            f"`monitor_partition` without the report, {len(rt['runs'])} fresh processes after a warm-up: "
            f"**{r['median'] / 1e6:.2f}M rows/s** [{r['min'] / 1e6:.2f}–{r['max'] / 1e6:.2f}], peak RSS "
            f"**{rt['peak_rss_mib']:.0f} MiB** (goal ≥ {rt['goal_rows_per_s'] / 1e6:g}M rows/s in every run, ≤ "
            f"{rt['goal_rss_mib']} MiB: **{'pass' if rt['passed'] else 'FAIL'}**). Medians per phase: "
            + ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" for k, v in med.items())
            + ".",
            "",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--night-rows", type=int, default=50_000)
    parser.add_argument("--ref-rows", type=int, default=50_000, help="rows per reference day")
    parser.add_argument("--ref-days", type=int, default=14, help="reference days (14: two whole weeks)")
    parser.add_argument("--clean-nights", type=int, default=120)
    parser.add_argument("--nights-per-size", type=int, default=8)
    parser.add_argument("--weekly", type=float, default=0.15, help="weekly cycle amplitude of the usage features")
    parser.add_argument("--trend", type=float, default=0.05, help="slow trend of prices and usage, share per year")
    parser.add_argument(
        "--max-missing-increase", type=float, default=0.03, help="monitoring.max_missing_increase of the bench"
    )
    parser.add_argument("--big-rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--rate-rows", type=int, default=10_000_000, help="rows of the night whose monitoring rate is timed (0 skips)"
    )
    parser.add_argument("--skip-detection", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--evidently-full", action="store_true", help="also time DataDriftPreset on every row")
    parser.add_argument("--fresh", action="store_true", help="delete the cached data and store first")
    parser.add_argument("--work", default="default", help="cache folder under bench/results/monitor/")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for monitor_bench.json and .md")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, *rest = args.child
        if mode == "ours":
            out = child_ours(rest[0], rest[1] == "1")
        elif mode == "scipy":
            out = child_scipy(rest[0], int(rest[1]), rest[2])
        else:
            out = child_evidently_full(rest[0], rest[1])
        print(json.dumps(out, default=str))
        return 0
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    work = WORK / args.work
    if args.fresh:
        for folder in (work, *WORK.glob(f"{args.work}-rate-*")):
            if folder.exists():
                shutil.rmtree(folder)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    config = write_project(work, data, args.max_missing_increase)
    from nightshift.config import load_settings

    settings = load_settings(config)
    result: dict[str, Any] = {
        "at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start",
        "command": "uv run python -m bench.monitor_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if not args.skip_detection:
        result["detection"] = detection(args, settings, data)
    if not args.skip_timing:
        result["timing"] = timing(args, config, data)
    if args.rate_rows:
        result["rate"] = rate(args, work)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "monitor_bench" if args.work == "default" else f"monitor_bench-{args.work}"
    if args.skip_detection and args.skip_timing:  # the rate alone: never over a whole run's results
        name += "-rate"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    md = markdown(result)
    (args.out / f"{name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
