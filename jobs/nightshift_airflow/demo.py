"""`make demo`: demo data and a trained model with nightshift, then the nightly scoring run through real Airflow."""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

from nightshift_airflow.local import DEFAULT_HOME, airflow_env
from nightshift_airflow.runtime import REPO_ROOT, project_file

#: Models of the demo's project file brought from outside nightshift: the file examples/train_outside.py writes.
BROUGHT = {"spend": "spend.txt", "plan": "plan.json"}
EXAMPLES = REPO_ROOT / "examples"


def _tool(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).with_name(name))


def _step(n: int, total: int, title: str) -> None:
    print(f"\n── {n}/{total} {title} " + "─" * max(0, 70 - len(title)), flush=True)


def _run(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None, check: bool = True) -> int:
    """Run one of our own commands (no shell), its output to the terminal or to `log`."""
    if log is None:
        return subprocess.run(cmd, env=env, check=check).returncode  # noqa: S603
    with open(log, "w") as out:
        return subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=check).returncode  # noqa: S603


def _uv() -> tuple[str, str | None]:
    """How to type `uv` after the demo, and a hint when it is not on PATH (make installs it to ~/.local/bin)."""
    if shutil.which("uv"):
        return "uv", None
    home_uv = Path.home() / ".local" / "bin" / "uv"
    found = os.environ.get("UV") or (str(home_uv) if home_uv.is_file() else None)
    if found is None:
        return "uv", "uv is not on your PATH: install it (python3 -m pip install --user uv) or run `make install`"
    shown = "~/.local/bin/uv" if Path(found) == home_uv else found
    return shown, (
        f"uv is not on your PATH, so the commands below call it as {shown}; or add it for this shell: "
        f'export PATH="{Path(found).parent}:$PATH" (or `. .venv/bin/activate` and drop the `uv run`)'
    )


def _run_summary(config: Path, model: str, ds: date) -> str:
    """The scoring run Airflow committed for (model, ds), read back from the store: rows, seconds, rows/s."""
    from nightshift.config import load_settings
    from nightshift.db import open_store

    store = open_store(load_settings(config))
    try:
        runs = [r for r in store.runs(model, 50) if str(r["ds"]) == ds.isoformat() and r["status"] == "committed"]
    finally:
        store.dispose()
    if not runs:
        return f"  no committed run of {model} ds={ds} in the store (see `nightshift runs`)"
    r = runs[0]
    seconds = (r["finished_at"] - r["started_at"]).total_seconds()
    rate = f" = {r['rows'] / seconds:,.0f} rows/s" if seconds > 0 else ""
    return (
        f"  scored {r['rows']:,} rows of {model} v{r['version']} ds={ds} from {r['files']} file(s) in {seconds:.1f}s"
        f"{rate} (store run {r['run_id']}, Airflow run {r['run_key']})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nightshift_airflow.demo", description=__doc__)
    parser.add_argument("--days", type=int, default=4, help="days of data, at least 4; the newest is scored by Airflow")
    parser.add_argument("--rows-per-day", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="AIRFLOW_HOME (SQLite metadata)")
    args = parser.parse_args(argv)
    if args.days < 4:
        parser.error(f"--days must be at least 4 (two to train on, one to register on, one to score), got {args.days}")

    from nightshift.config import load_settings

    config = project_file()
    settings = load_settings(config)
    model = settings.models[0].name
    newest = date.today() - timedelta(days=1)
    first = newest - timedelta(days=args.days - 1)
    nightshift = [_tool("nightshift")]
    t0 = time.monotonic()

    steps = 6
    _step(1, steps, "store schema and demo data")
    _run([*nightshift, "db", "upgrade", "-c", str(config)])
    _run(
        [*nightshift, "demo-data", "-c", str(config), "-m", model, "--start", first.isoformat(),
         "--days", str(args.days), "--rows-per-day", str(args.rows_per_day), "--seed", str(args.seed)]
    )  # fmt: skip

    before = (newest - timedelta(days=1)).isoformat()
    _step(2, steps, f"train {model} on the days before {newest}, export to ONNX, register")
    _run([*nightshift, "train", "-c", str(config), "-m", model, "--ds", before])

    brought = [m.name for m in settings.models if m.name in BROUGHT]
    if brought:
        _step(3, steps, "bring models trained elsewhere: LightGBM (spend), XGBoost (plan) → ONNX → parity → register")
        folder = Path(settings.state_path) / "brought"
        data = Path(settings.model(model).dataset_uri(settings)).parents[1]
        # Trained on the two days before `before`, registered on `before`: a day the models never saw, so
        # its parity rows, recorded metrics and monitoring reference are honest (a training day's are not).
        outside = (newest - timedelta(days=2)).isoformat()
        _run([sys.executable, str(EXAMPLES / "train_outside.py"), "--data", str(data), "--until", outside,
              "--days", "2", "--out", str(folder)])  # fmt: skip
        for name in brought:
            _run([*nightshift, "models", "register", "-c", str(config), "-m", name, "--from",
                  str(folder / BROUGHT[name]), "--ds", before])  # fmt: skip

    env = airflow_env(args.home, project=config)
    _step(4, steps, f"Airflow metadata DB in {env['AIRFLOW_HOME']}")
    _run([_tool("airflow"), "db", "migrate"], env, log=args.home / "demo-airflow.log")

    # The run at logical date D covers the interval [D-1, D): the night after `newest` scores `newest`.
    night = newest + timedelta(days=1)
    logical_date = datetime(night.year, night.month, night.day).isoformat()
    # One DAG per model, or per [models.schedule] group (its models scored in one read).
    dags: dict[str, list[str]] = {}
    for name in [model, *brought]:
        group = settings.model(name).schedule.group
        dags.setdefault(f"score_{group or name}", []).append(name)
    for dag_id, names in dags.items():
        _step(5, steps, f"airflow dags test {dag_id} {night}  →  scores {', '.join(names)} ds={newest}")
        started = time.monotonic()
        log_path = args.home / f"demo-dags-test-{dag_id}.log"
        rc = _run([_tool("airflow"), "dags", "test", dag_id, logical_date], env, log=log_path, check=False)
        lines = log_path.read_text(errors="replace").splitlines()
        for line in lines:
            if "[DAG TEST] end task" in line and (task := re.search(r"task_id=([\w.]+)", line)):
                print(f"  task {task.group(1)} done")
            elif "DagRun Finished" in line and (state := re.search(r"state=(\w+)", line)):
                interval = re.search(r"data_interval_start=([\d-]+)", line)
                print(f"  run {state.group(1)}: data interval starts {interval.group(1) if interval else '?'}")
        if rc != 0 or not any("state=success" in line and "DagRun Finished" in line for line in lines):
            print("\n".join(lines[-60:]))
            sys.exit(f"the Airflow run of {dag_id} failed (exit {rc}); full log: {log_path}")
        print(f"  Airflow run succeeded in {time.monotonic() - started:.0f}s (log: {log_path})")
        for name in names:
            print(_run_summary(config, name, newest))

    _step(6, steps, "read back the committed predictions")
    sample = sorted(random.Random(args.seed).sample(range(1, args.rows_per_day + 1), 5))
    _run([*nightshift, "partitions", "-c", str(config)])
    for name in [model, *brought]:
        _run([*nightshift, "predictions", "-c", str(config), "-m", name, *[a for i in sample for a in ("-e", str(i))]])
    uv, hint = _uv()
    ns = f"{uv} run nightshift"
    print(
        f"\ndemo done in {time.monotonic() - t0:.0f}s: it wrote the days {first}..{newest} and scored {newest} "
        f"through Airflow. `make airflow` opens this run in the Airflow UI (DAG score_{model})."
    )
    if hint:
        print(f"\nNote: {hint}")
    print(
        f"\nNext, with these dates (the newest day the demo wrote is {newest}):\n"
        f"  {ns} predictions -m {model} -e 42              # one customer's score\n"
        f"  {ns} runs                                      # every scoring run (the Airflow one included)\n"
        f"  {ns} monitor -m {model} --ds {newest}          # data quality and drift of that night\n"
        f"  {ns} score -m {model} --ds {newest}            # re-score the day: replaces it atomically\n"
        f"  {ns} demo-data --start {first} --days {args.days} --rows-per-day {args.rows_per_day} --seed {args.seed} "
        f"--drift mean_shift:monthly_charges:1.5@{newest}   # upstream re-delivers the days, {newest} drifted\n"
        f"  {ns} score -m {model} --ds {newest} && {ns} monitor -m {model} --ds {newest}   # now it fails\n"
        f"  {ns} --help"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
