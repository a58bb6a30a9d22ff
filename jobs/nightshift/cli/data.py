"""`nightshift demo-data` (a realistic churn dataset) and `nightshift demo` (the whole demo without Airflow)."""

from __future__ import annotations

from datetime import date, timedelta

import typer

from nightshift.cli.app import app, out
from nightshift.cli.common import ConfigOpt, parse_day, progress_bar, settings_from
from nightshift.cli.models import Promote, train_cmd
from nightshift.cli.scoring import predictions_cmd, score_cmd
from nightshift.errors import ConfigError


@app.command("demo-data")
def demo_data(
    config: ConfigOpt = None,
    model: str = typer.Option("churn", "--model", "-m", help="model whose dataset/labels locations to write"),
    start: str = typer.Option("", help="first day (YYYY-MM-DD); default: so the last day is yesterday"),
    days: int = typer.Option(4, min=1, help="number of daily partitions"),
    rows_per_day: int = typer.Option(200_000, min=1, help="rows (customers) per day"),
    files_per_day: int = typer.Option(4, min=1, help="Parquet files per day"),
    seed: int = typer.Option(42, help="random seed: same seed, same data"),
    drift: list[str] = typer.Option(
        [],
        help="inject drift from a day on, KIND:COLUMN:MAGNITUDE@YYYY-MM-DD, e.g. mean_shift:monthly_charges:1.5@<a "
        "generated day> (repeatable; the day must be one of the generated days)",
    ),
) -> None:
    """Write a realistic churn dataset: Hive-style daily partitions of features, and labels apart."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from nightshift.demo import check_drift, generate, parse_drift

    settings = settings_from(config)
    cfg = settings.model(model)
    labels = cfg.labels_uri(settings)
    if labels is None:
        raise ConfigError(f"model {model!r} declares no labels location")
    first = parse_day(start, "--start") if start else date.today() - timedelta(days=days)
    try:
        specs = [parse_drift(d) for d in drift]
        check_drift(specs, first, days)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--drift") from None
    with progress_bar(TextColumn("demo data"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("rows", total=days * rows_per_day)
        try:
            summary = generate(
                cfg.dataset_uri(settings),
                labels,
                start=first,
                days=days,
                rows_per_day=rows_per_day,
                files_per_day=files_per_day,
                seed=seed,
                drift=specs,
                progress=lambda done, _total: bar.update(task, completed=done),
            )
        except ValueError as exc:  # checked before anything is written
            hint = "--drift" if str(exc).startswith("drift") else None
            raise typer.BadParameter(str(exc), param_hint=hint) from None
    out.print(
        f"wrote {summary.rows:,} rows in {summary.files} files for {len(summary.days)} day(s) "
        f"{summary.days[0]}..{summary.days[-1]} in {summary.seconds:.1f}s → {summary.features_root}"
    )


@app.command("demo")
def demo_cmd(
    config: ConfigOpt = None,
    days: int = typer.Option(4, min=2, help="days of data; the model trains on all but the newest, which is scored"),
    rows_per_day: int = typer.Option(200_000, min=1_000, help="customers per day"),
    seed: int = typer.Option(42, help="random seed of the data (and of the customers read back)"),
) -> None:
    """The whole demo on embedded defaults, without Airflow: data, train + register, score the newest day (yesterday),
    read back."""
    import random

    from nightshift.db import open_store

    settings = settings_from(config)
    model = settings.models[0].name if settings.models else "churn"
    newest = date.today() - timedelta(days=1)
    first = newest - timedelta(days=days - 1)
    store = open_store(settings, check=False)
    store.upgrade()
    out.rule("1/4 demo data")
    demo_data(
        config=config,
        model=model,
        start=first.isoformat(),
        days=days,
        rows_per_day=rows_per_day,
        files_per_day=4,
        seed=seed,
        drift=[],
    )
    out.rule("2/4 train, export to ONNX, parity check, register")
    train_cmd(
        model=model, ds=(newest - timedelta(days=1)).isoformat(), promote=Promote.if_first, config=config, as_json=False
    )
    out.rule(f"3/4 score ds={newest} on Dask with ONNX Runtime, commit atomically")
    score_cmd(
        model=model, ds=newest.isoformat(), version=None, alias=None, run_key="demo", config=config, as_json=False
    )
    out.rule("4/4 read back")
    sample = sorted(random.Random(seed).sample(range(1, rows_per_day + 1), 5))
    predictions_cmd(
        model=model, entity=[str(i) for i in sample], ds=None, version=None, alias=None, config=config, as_json=False
    )
    out.print(
        f"store: {store!r}; the demo wrote {first}..{newest}. Next: `nightshift predictions -m {model} -e 42`, "
        f"`nightshift runs`, `nightshift monitor -m {model} --ds {newest}`"
    )
