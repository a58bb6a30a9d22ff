"""`nightshift ...`: every job runnable from the command line, without Airflow."""

from __future__ import annotations

import sys
from datetime import date, timedelta
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nightshift.cli.common import ConfigOpt, JsonOpt, ModelOpt, parse_day, print_json, settings_from
from nightshift.errors import ConfigError, NightshiftError

app = typer.Typer(
    name="nightshift",
    help="Nightly batch scoring: demo data, training, Dask + ONNX Runtime scoring, the prediction store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="The store's schema: migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")

out = Console()
err = Console(stderr=True)

_settings = settings_from
_parse_ds = parse_day


def _print_json(data: Any) -> None:
    print_json(out, data)


# -- db -------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None, revision: str = typer.Option("head", help="target revision")) -> None:
    """Apply the store's migrations (idempotent)."""
    from nightshift.db import open_store

    store = open_store(_settings(config), check=False)
    store.upgrade(revision)
    out.print(f"store {store!r} is at revision {store.current_revision()}")


@db_app.command("downgrade")
def db_downgrade(
    revision: str = typer.Argument(..., help="target revision, e.g. 0003, or -1 for one step back"),
    config: ConfigOpt = None,
) -> None:
    """Undo migrations down to `revision` (back up the store first: dropped tables lose their rows)."""
    from nightshift.db import open_store

    store = open_store(_settings(config), check=False)
    store.downgrade(revision)
    out.print(f"store {store!r} is at revision {store.current_revision() or 'none'}")


@db_app.command("current")
def db_current(config: ConfigOpt = None) -> None:
    """Show the store's schema revision and the code's."""
    from nightshift.db import open_store

    store = open_store(_settings(config), check=False)
    out.print(f"store {store!r}: revision {store.current_revision() or 'none'} (code: {store.head_revision()})")


# -- data and models ------------------------------------------------------------------------


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
        [], help="inject drift, e.g. mean_shift:monthly_charges:1.5@2026-11-19 (repeatable)"
    ),
) -> None:
    """Write a realistic churn dataset: Hive-style daily partitions of features, and labels apart."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from nightshift.demo import generate, parse_drift

    settings = _settings(config)
    cfg = settings.model(model)
    labels = cfg.labels_uri(settings)
    if labels is None:
        raise ConfigError(f"model {model!r} declares no labels location")
    first = _parse_ds(start) if start else date.today() - timedelta(days=days)
    try:
        specs = [parse_drift(d) for d in drift]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--drift") from None
    with Progress(
        TextColumn("demo data"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err
    ) as bar:
        task = bar.add_task("rows", total=days * rows_per_day)
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
    out.print(
        f"wrote {summary.rows:,} rows in {summary.files} files for {len(summary.days)} day(s) "
        f"{summary.days[0]}..{summary.days[-1]} in {summary.seconds:.1f}s → {summary.features_root}"
    )


class Promote(StrEnum):
    if_first = "if-first"
    always = "always"
    never = "never"


@app.command("train")
def train_cmd(
    model: ModelOpt,
    ds: str = typer.Option(..., help="train on the labelled window of days ending on this day (YYYY-MM-DD)"),
    promote: Promote = typer.Option(
        Promote.if_first, help="make the new version champion: if-first (only when the model has none), always, never"
    ),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train, export to ONNX, check ONNX-vs-scikit-learn parity, and register a new version."""
    from nightshift.training import train_and_register

    result = train_and_register(_settings(config), model, _parse_ds(ds), promote=promote.value)
    if as_json:
        _print_json(result.as_dict())
        return
    mv = result.version
    m = mv.metrics
    out.print(
        f"registered [bold]{mv.model} v{mv.version}[/] ({mv.algorithm}) on {mv.training_data['rows']:,} rows: "
        f"ROC AUC {m.get('roc_auc', float('nan')):.4f}, log loss {m.get('log_loss', float('nan')):.4f}; "
        f"ONNX parity max |Δ| {mv.parity.get('max_abs_diff', float('nan')):.2e}"
    )
    out.print(f"champion → v{mv.version}" if result.promoted else f"champion stays v{result.previous_champion}")


@app.command("score")
def score_cmd(
    model: ModelOpt,
    ds: str = typer.Option(..., help="the partition to score (YYYY-MM-DD)"),
    version: int | None = typer.Option(None, help="model version (default: the champion)"),
    alias: str | None = typer.Option(None, help="score with the version behind this alias"),
    run_key: str | None = typer.Option(None, help="caller's run id recorded with the run (e.g. Airflow's)"),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score one partition on Dask with ONNX Runtime and commit it atomically."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from nightshift.scoring import score_partition

    settings = _settings(config)
    day = _parse_ds(ds)
    with Progress(TextColumn(f"scoring {model} ds={day}"), BarColumn(), MofNCompleteColumn(), console=err) as bar:
        task = bar.add_task("rows", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        summary = score_partition(
            settings, model, day, version=version, alias=alias, run_key=run_key, progress=progress
        )
    if as_json:
        _print_json(summary.as_dict())
        return
    out.print(
        f"committed {summary.model} v{summary.version} ds={summary.ds}: {summary.rows:,} rows from "
        f"{summary.files} file(s) in {summary.seconds:.2f}s = [bold]{summary.rows_per_s:,.0f} rows/s[/] "
        f"(run {summary.run_id}, {summary.store}, peak worker RSS {summary.peak_worker_rss_bytes / 2**20:.0f} MiB)"
        + (f"; replaced run {summary.replaced_run_id}" if summary.replaced_run_id else "")
    )


def _print_night(report: Any) -> None:
    plan, decision = report.plan, report.decision
    out.print(f"[bold]{plan.model} ds={plan.ds}[/]: {plan.mode} ({plan.why})")
    for role, s in report.scored.items():
        out.print(
            f"  scored {role} v{s['version']}: {s['rows']:,} rows from {s['files']} file(s) in {s['seconds']:.2f}s "
            f"({s['rows_per_s']:,.0f} rows/s), store run {s['store_run_id']}"
            + (f", replaced run {s['replaced_run_id']}" if s["replaced_run_id"] else "")
        )
    for role, m in report.monitored.items():
        if m is None:
            out.print(f"  monitoring {role}: not judged (no reference)")
            continue
        failed = ", ".join(f"{c['kind']}[{c.get('column') or '*'}]" for c in m.get("failed", [])[:6])
        out.print(f"  monitoring {role} v{m['version']}: {m['status']}" + (f" ({failed})" if failed else ""))
    retrain = decision.retrain or {}
    out.print(
        f"  decision: rollout {decision.rollout}"
        + ("" if plan.backfill else f"; retraining {'TRIGGER' if decision.trigger_retrain else 'no'}")
        + (f" ({retrain.get('reason')})" if retrain.get("reason") else "")
        + (" [replayed: this night was already decided]" if decision.replayed else "")
    )
    if report.retrain:
        r = report.retrain
        out.print(f"  retrained candidate {r['candidate_id']} → v{r['version']}: {r['status']} ({r['reason']})")


@app.command("night")
def night_cmd(
    model: ModelOpt,
    ds: str = typer.Option(..., help="the night to run (YYYY-MM-DD): the day whose partition is scored"),
    backfill: bool = typer.Option(
        False, "--backfill", help="run it as a backfill: score and monitor the versions that served it, decide nothing"
    ),
    retrain: bool = typer.Option(
        False, "--retrain", help="when the night asks for retraining, train, gate and roll out a candidate now"
    ),
    report: bool = typer.Option(False, "--report", help="also write the Evidently HTML report of each version"),
    run_key: str | None = typer.Option(None, help="caller's run id recorded with the runs (e.g. a cron job's)"),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One night of a model, as the score_<model> DAG runs it: score every version the night needs, monitor
    each, then roll back, abort or promote and decide on retraining (a backfill decides nothing)."""
    from nightshift.nightly import run_night

    report_ = run_night(
        _settings(config),
        model,
        _parse_ds(ds),
        backfill=True if backfill else None,
        retrain=retrain,
        report=report,
        run_key=run_key or "cli:night",
    )
    if as_json:
        _print_json(report_.as_dict())
        return
    _print_night(report_)


@app.command("backfill")
def backfill_cmd(
    model: ModelOpt,
    first: str = typer.Option(..., "--from", help="first day to backfill (YYYY-MM-DD)"),
    last: str = typer.Option(..., "--to", help="last day to backfill, inclusive (YYYY-MM-DD)"),
    parallel: int = typer.Option(1, min=1, max=16, help="nights at once, on one Dask cluster"),
    run_key: str | None = typer.Option(None, help="caller's run id recorded with the runs"),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-score a range of days: each is scored (with the versions that served it) and monitored, atomically
    replacing its predictions; a backfill never moves an alias or a rollout. Exits 1 if any night failed."""
    from nightshift.nightly import backfill

    def said(ds: date, report: Any, exc: BaseException | None) -> None:
        if as_json:
            return
        if exc is not None:
            err.print(f"[bold red]{ds}: failed[/]: {type(exc).__name__}: {escape(str(exc))}", highlight=False)
        else:
            _print_night(report)

    results = backfill(
        _settings(config),
        model,
        _parse_ds(first),
        _parse_ds(last),
        parallel=parallel,
        run_key=run_key or "cli:backfill",
        on_night=said,
    )
    failed = {ds: r for ds, r in results.items() if isinstance(r, BaseException)}
    if as_json:
        _print_json(
            {
                ds.isoformat(): ({"error": f"{type(r).__name__}: {r}"} if isinstance(r, BaseException) else r.as_dict())
                for ds, r in results.items()
            }
        )
    else:
        out.print(
            f"backfilled {len(results) - len(failed)} of {len(results)} night(s)"
            + (f"; failed: {', '.join(d.isoformat() for d in failed)}" if failed else "")
        )
    if failed:
        raise typer.Exit(1)


@app.command("predictions")
def predictions_cmd(
    model: ModelOpt,
    entity: list[str] = typer.Option(..., "--entity", "-e", help="entity id (repeatable)"),
    ds: str | None = typer.Option(None, help="as of this partition (default: newest committed)"),
    version: int | None = typer.Option(None, help="model version (default: the champion)"),
    alias: str | None = typer.Option(None, help="read the version behind this alias"),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Read committed predictions back for some entities."""
    from nightshift.db import open_store
    from nightshift.models import open_registry

    settings = _settings(config)
    settings.model(model)
    store = open_store(settings)
    mv = open_registry(settings, store).resolve(model, version=version, alias=alias)
    part = store.partition(model, mv.version, _parse_ds(ds)) if ds else store.latest_partition(model, mv.version)
    if part is None:
        raise NightshiftError(
            f"model {model!r} v{mv.version} has no committed partition" + (f" for ds={ds}" if ds else "")
        )
    rows = store.lookup(model, mv.version, part.ds, entity)
    found = {r.entity_id for r in rows}
    missing = [e for e in entity if e not in found]
    if as_json:
        _print_json(
            {
                "model": model,
                "version": mv.version,
                "ds": part.ds,
                "predictions": [r.__dict__ for r in rows],
                "not_found": missing,
            }
        )
        return
    table = Table(title=f"{model} v{mv.version} ds={part.ds} (committed {part.committed_at:%Y-%m-%d %H:%M:%S}Z)")
    for col in ("entity_id", "score", "label"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.entity_id, f"{r.score:.6f}", str(r.label))
    out.print(table)
    if missing:
        err.print(f"not found: {', '.join(missing)}")


@app.command("partitions")
def partitions_cmd(
    model: str | None = typer.Option(None, "--model", "-m"), config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """List committed partitions (the catalog)."""
    from nightshift.db import open_store

    parts = open_store(_settings(config)).list_partitions(model)
    if as_json:
        _print_json([p.__dict__ for p in parts])
        return
    table = Table(title="committed partitions")
    for col in ("model", "version", "ds", "rows", "run", "committed_at"):
        table.add_column(col)
    for p in parts:
        table.add_row(p.model, str(p.version), str(p.ds), f"{p.row_count:,}", str(p.run_id), f"{p.committed_at:%F %T}")
    out.print(table)


@app.command("runs")
def runs_cmd(
    model: str | None = typer.Option(None, "--model", "-m"),
    limit: int = typer.Option(20, min=1),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List scoring runs, newest first, with status and errors."""
    from nightshift.db import open_store

    runs = open_store(_settings(config)).runs(model, limit)
    if as_json:
        _print_json(runs)
        return
    table = Table(title="runs")
    for col in ("run", "model", "version", "ds", "status", "rows", "started", "error"):
        table.add_column(col)
    for r in runs:
        table.add_row(
            str(r["run_id"]),
            r["model"],
            str(r["version"]),
            str(r["ds"]),
            r["status"],
            f"{r['rows']:,}" if r["rows"] is not None else "",
            f"{r['started_at']:%F %T}",
            (r["error"] or "")[:80],
        )
    out.print(table)


@app.command("gc")
def gc_cmd(
    model: str | None = typer.Option(None, "--model", "-m", help="one model (default: all)"),
    today: str | None = typer.Option(None, help="reference day for retention (default: today)"),
    config: ConfigOpt = None,
) -> None:
    """Apply each model's retention_days, and remove what replaced, failed and crashed runs left."""
    from nightshift.db import open_store

    settings = _settings(config)
    store = open_store(settings)
    ref = _parse_ds(today) if today else date.today()
    models = [settings.model(model)] if model else settings.models
    for cfg in models:
        if cfg.retention_days is None:
            continue
        gone = store.expire(cfg.name, ref - timedelta(days=cfg.retention_days))
        if gone:
            out.print(f"{cfg.name}: expired {len(gone)} partition(s) older than {cfg.retention_days} days")
    removed = store.gc(model)
    out.print(f"removed {removed:,} row(s) left by replaced, failed, crashed or expired runs")


@app.command("demo")
def demo_cmd(
    config: ConfigOpt = None,
    days: int = typer.Option(4, min=2, help="days of data; the model trains on all but the newest, which is scored"),
    rows_per_day: int = typer.Option(200_000, min=1_000, help="customers per day"),
    seed: int = typer.Option(42),
) -> None:
    """The whole demo on embedded defaults: data, train + register, score the newest day, read back."""
    import random

    from nightshift.db import open_store

    settings = _settings(config)
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
    out.print(f"store: {store!r}; try `uv run nightshift predictions -m {model} -e 42`")


from nightshift.cli.api import register as _register_api  # noqa: E402

_register_api(app)


from nightshift.cli.rollout import register as _register_rollout  # noqa: E402

_register_rollout(app)


from nightshift.cli.monitor import register as _register_monitoring  # noqa: E402

_register_monitoring(app)


def main() -> None:
    """Console entry point: expected failures print one clear message, not a traceback."""
    try:
        app()
    except ConfigError as exc:
        err.print(f"[bold red]config error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except NightshiftError as exc:
        err.print(f"[bold red]error:[/] {type(exc).__name__}: {escape(str(exc))}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
