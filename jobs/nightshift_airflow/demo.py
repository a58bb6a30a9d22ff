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
from nightshift_airflow.runtime import project_file


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nightshift_airflow.demo", description=__doc__)
    parser.add_argument("--days", type=int, default=4, help="days of data; the newest is scored by Airflow")
    parser.add_argument("--rows-per-day", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="AIRFLOW_HOME (SQLite metadata)")
    args = parser.parse_args(argv)

    from nightshift.config import load_settings

    config = project_file()
    settings = load_settings(config)
    model = settings.models[0].name
    newest = date.today() - timedelta(days=1)
    first = newest - timedelta(days=args.days - 1)
    nightshift = [_tool("nightshift")]
    t0 = time.monotonic()

    _step(1, 5, "store schema and demo data")
    _run([*nightshift, "db", "upgrade", "-c", str(config)])
    _run(
        [*nightshift, "demo-data", "-c", str(config), "-m", model, "--start", first.isoformat(),
         "--days", str(args.days), "--rows-per-day", str(args.rows_per_day), "--seed", str(args.seed)]
    )  # fmt: skip

    _step(2, 5, f"train {model} on the days before {newest}, export to ONNX, register")
    _run([*nightshift, "train", "-c", str(config), "-m", model, "--ds", (newest - timedelta(days=1)).isoformat()])

    env = airflow_env(args.home, project=config)
    _step(3, 5, f"Airflow metadata DB in {env['AIRFLOW_HOME']}")
    _run([_tool("airflow"), "db", "migrate"], env, log=args.home / "demo-airflow.log")

    # The run at logical date D covers the interval [D-1, D): the night after `newest` scores `newest`.
    night = newest + timedelta(days=1)
    _step(4, 5, f"airflow dags test score_{model} {night}  →  scores ds={newest}")
    started = time.monotonic()
    log_path = args.home / "demo-dags-test.log"
    logical_date = datetime(night.year, night.month, night.day).isoformat()
    rc = _run([_tool("airflow"), "dags", "test", f"score_{model}", logical_date], env, log=log_path, check=False)
    lines = log_path.read_text(errors="replace").splitlines()
    for line in lines:
        if "[DAG TEST] end task" in line and (task := re.search(r"task_id=(\w+)", line)):
            print(f"  task {task.group(1)} done")
        elif "DagRun Finished" in line and (state := re.search(r"state=(\w+)", line)):
            interval = re.search(r"data_interval_start=([\d-]+)", line)
            print(f"  run {state.group(1)}: data interval starts {interval.group(1) if interval else '?'}")
    if rc != 0 or not any("state=success" in line and "DagRun Finished" in line for line in lines):
        print("\n".join(lines[-60:]))
        sys.exit(f"the Airflow run failed (exit {rc}); full log: {log_path}")
    print(f"  Airflow run succeeded in {time.monotonic() - started:.0f}s (log: {log_path})")

    _step(5, 5, "read back the committed predictions")
    sample = sorted(random.Random(args.seed).sample(range(1, args.rows_per_day + 1), 5))
    _run([*nightshift, "partitions", "-c", str(config), "-m", model])
    _run([*nightshift, "predictions", "-c", str(config), "-m", model, *[a for i in sample for a in ("-e", str(i))]])
    print(
        f"\ndemo done in {time.monotonic() - t0:.0f}s. `make airflow` opens this run in the Airflow UI "
        f"(DAG score_{model}); `uv run nightshift predictions -m {model} -e 42` reads from the store."
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
