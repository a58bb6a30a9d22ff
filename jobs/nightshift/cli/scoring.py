"""`nightshift score | night | backfill | predictions | partitions | runs [show] | gc`: scoring runs, what they left."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from nightshift.cli.app import app, err, out
from nightshift.cli.common import (
    AnyModelOpt,
    ConfigOpt,
    JsonOpt,
    ModelOpt,
    cluster_of,
    parse_day,
    print_json,
    progress_bar,
    settings_from,
    utc_iso,
)
from nightshift.errors import NightshiftError


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
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    from nightshift.scoring import score_partition

    settings = settings_from(config)
    day = parse_day(ds, "--ds")
    cluster = cluster_of(settings)
    with progress_bar(TextColumn(f"scoring {model} ds={day} {cluster}"), BarColumn(), MofNCompleteColumn()) as bar:
        task = bar.add_task("rows", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        summary = score_partition(
            settings, model, day, version=version, alias=alias, run_key=run_key, progress=progress
        )
    if as_json:
        print_json({**summary.as_dict(), "cluster": cluster})
        return
    out.print(
        f"committed {summary.model} v{summary.version} ds={summary.ds}: {summary.rows:,} rows from "
        f"{summary.files} file(s) in {summary.seconds:.2f}s = [bold]{summary.rows_per_s:,.0f} rows/s[/] {cluster} "
        f"(run {summary.run_id}, {summary.store}, peak worker RSS {summary.peak_worker_rss_bytes / 2**20:.0f} MiB)"
        + (f"; replaced run {summary.replaced_run_id}" if summary.replaced_run_id else "")
    )


def print_night(report: Any, cluster: str | None = None) -> None:
    """One night's report, as people read it."""
    plan, decision = report.plan, report.decision
    out.print(f"[bold]{plan.model} ds={plan.ds}[/]: {plan.mode} ({plan.why})" + (f", {cluster}" if cluster else ""))
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
    models: list[str] = typer.Option(
        [],
        "--model",
        "-m",
        help="model name; repeat it for several (models that read the same partition share one read of it)",
    ),
    group: str | None = typer.Option(
        None, "--group", help="every model of this [models.schedule] group (what the score_<group> DAG runs)"
    ),
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
    """One night, as the score_<model> DAG runs it: score every version the night needs, monitor each, then
    roll back, abort or promote and decide on retraining (a backfill decides nothing). With several models
    (-m repeated, or --group), each model's night is its own and fails alone; exits 1 if any failed.
    --json prints one model's report, or {model: report or error} for several."""
    from nightshift.nightly import run_nights

    settings = settings_from(config)
    names = list(models)
    if group is not None:
        members = settings.groups().get(group)
        if not members:
            known = ", ".join(settings.groups()) or "none"
            raise typer.BadParameter(
                f"no model has [models.schedule] group = {group!r} (groups: {known})", param_hint="--group"
            )
        names += [m.name for m in members]
    if not names:
        raise typer.BadParameter("name a model (-m MODEL, repeatable) or a group (--group NAME)", param_hint="--model")
    reports = run_nights(
        settings,
        names,
        parse_day(ds, "--ds"),
        backfill=True if backfill else None,
        retrain=retrain,
        report=report,
        run_key=run_key or "cli:night",
    )
    failed = {m: r for m, r in reports.items() if isinstance(r, BaseException)}
    if len(reports) == 1:
        [only] = reports.values()
        if isinstance(only, BaseException):
            raise only
        if as_json:
            print_json({**only.as_dict(), "cluster": cluster_of(settings)})
        else:
            print_night(only, cluster_of(settings))
        return
    if as_json:
        print_json(
            {
                m: {"error": type(r).__name__, "message": str(r)} if isinstance(r, BaseException) else r.as_dict()
                for m, r in reports.items()
            }
        )
    else:
        for m, r in reports.items():
            if isinstance(r, BaseException):
                err.print(f"[bold red]{m} ds={ds}: failed[/]: {type(r).__name__}: {escape(str(r))}", highlight=False)
            else:
                print_night(r, cluster_of(settings))
    if failed:
        raise typer.Exit(1)


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

    settings = settings_from(config)
    cluster = cluster_of(settings)

    def said(ds: date, report: Any, exc: BaseException | None) -> None:
        if as_json:
            return
        if exc is not None:
            err.print(f"[bold red]{ds}: failed[/]: {type(exc).__name__}: {escape(str(exc))}", highlight=False)
        else:
            print_night(report, cluster)

    results = backfill(
        settings,
        model,
        parse_day(first, "--from"),
        parse_day(last, "--to"),
        parallel=parallel,
        run_key=run_key or "cli:backfill",
        on_night=said,
    )
    failed = {ds: r for ds, r in results.items() if isinstance(r, BaseException)}
    if as_json:
        print_json(
            {
                ds.isoformat(): (
                    {"error": type(r).__name__, "message": str(r)} if isinstance(r, BaseException) else r.as_dict()
                )
                for ds, r in results.items()
            }
        )
    else:
        out.print(
            f"backfilled {len(results) - len(failed)} of {len(results)} night(s) {cluster}"
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
    explain: bool = typer.Option(
        False,
        "--explain",
        help="also show each score's reasons: its top-k feature contributions, stored when the day was scored "
        "with [models.explain] enabled = true (a day scored without them is an error)",
    ),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Read committed predictions back for some entities."""
    from dataclasses import asdict

    from nightshift.db import open_store
    from nightshift.models import open_registry
    from nightshift.models.explainers import feature_names, no_reasons_message, reason_name

    settings = settings_from(config)
    settings.model(model)
    store = open_store(settings)
    mv = open_registry(settings, store).resolve(model, version=version, alias=alias)
    day = parse_day(ds, "--ds") if ds else None
    part = store.partition(model, mv.version, day) if day else store.latest_partition(model, mv.version)
    if part is None:
        raise NightshiftError(
            f"model {model!r} v{mv.version} has no committed partition" + (f" for ds={ds}" if ds else "")
        )
    rows = store.lookup(model, mv.version, part.ds, entity)
    found = {r.entity_id for r in rows}
    missing = [e for e in entity if e not in found]
    classes = [str(c) for c in ((mv.signature or {}).get("outputs") or {}).get("classes") or []]
    names = feature_names(mv.features)
    reasons: dict[str, list[tuple[str, float]]] = {}
    if explain:
        for r in rows:
            if r.reasons is None:
                raise NightshiftError(no_reasons_message(model, mv.version, part.ds, part.run_id))
            reasons[r.entity_id] = [(reason_name(names, c), v) for c, v in r.reasons]
    if as_json:
        predictions = []
        for r in rows:
            item = {k: v for k, v in asdict(r).items() if k != "reasons"}
            if explain:
                item["reasons"] = [{"feature": f, "contribution": v} for f, v in reasons[r.entity_id]]
            predictions.append(item)
        print_json(
            {
                "model": model,
                "version": mv.version,
                "task": mv.task,
                "ds": part.ds,
                "classes": classes or None,
                "predictions": predictions,
                "not_found": missing,
            }
        )
        return
    title = f"{model} v{mv.version} ({mv.task}) ds={part.ds} (committed {part.committed_at:%Y-%m-%d %H:%M:%S}Z)"
    table = Table(title=title)
    columns: tuple[str, ...] = {
        "regression": ("entity_id", "value"),
        "multiclass": ("entity_id", "class", "probability", *classes),
    }.get(mv.task, ("entity_id", "score", "label"))
    for col in columns:
        table.add_column(col)
    if explain:
        table.add_column("reasons (top features, contribution)")
    for r in rows:
        if mv.task == "regression":
            cells = [r.entity_id, f"{r.value:,.4f}" if r.value is not None else ""]
        elif mv.task == "multiclass":
            name = classes[r.label] if r.label is not None and r.label < len(classes) else str(r.label)
            cells = [r.entity_id, name, f"{r.score:.4f}", *(f"{p:.4f}" for p in r.probs or [])]
        else:
            cells = [r.entity_id, f"{r.score:.6f}", "" if r.label is None else str(r.label)]
        if explain:
            cells.append(escape(", ".join(f"{f} {v:+.4f}" for f, v in reasons[r.entity_id])))
        table.add_row(*cells)
    out.print(table)
    if missing:
        err.print(f"not found: {', '.join(missing)}")


@app.command("partitions")
def partitions_cmd(model: AnyModelOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List committed partitions (the catalog): what the lookup API serves."""
    from nightshift.db import open_store

    parts = open_store(settings_from(config)).list_partitions(model)
    if as_json:
        print_json(parts)
        return
    table = Table(title="committed partitions")
    for col in ("model", "version", "ds", "rows", "run", "committed_at"):
        table.add_column(col)
    for p in parts:
        table.add_row(p.model, str(p.version), str(p.ds), f"{p.row_count:,}", str(p.run_id), f"{p.committed_at:%F %T}")
    out.print(table)


# -- runs -----------------------------------------------------------------------------------------

runs_app = app.sub(
    "runs",
    "Scoring runs: `nightshift runs` lists them, newest first; `runs show RUN_ID` tells everything about one.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _seconds(run: dict[str, Any]) -> float | None:
    started, finished = run.get("started_at"), run.get("finished_at")
    if started is None or finished is None:
        return None
    return (finished - started).total_seconds()


def _first_line(text: str | None, width: int = 100) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


@runs_app.callback()
def runs_cmd(
    ctx: typer.Context,
    model: AnyModelOpt = None,
    limit: int = typer.Option(20, min=1, help="how many runs, newest first"),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List scoring runs, newest first: status, the caller's run key (Airflow's run id), rows, time, error."""
    if ctx.invoked_subcommand is not None:
        return
    from nightshift.db import open_store

    runs = open_store(settings_from(config)).runs(model, limit)
    if as_json:
        print_json([{**r, "seconds": _seconds(r)} for r in runs])
        return
    table = Table(title="runs (newest first; `nightshift runs show RUN` for one run's details and full error)")
    for col in ("run", "model", "version", "ds", "status", "run_key", "rows", "started (UTC)", "seconds", "error"):
        table.add_column(col)
    for r in runs:
        seconds = _seconds(r)
        table.add_row(
            str(r["run_id"]),
            r["model"],
            str(r["version"]),
            str(r["ds"]),
            r["status"],
            escape(r.get("run_key") or ""),
            f"{r['rows']:,}" if r["rows"] is not None else "",
            f"{r['started_at']:%F %T}",
            f"{seconds:.1f}" if seconds is not None else "",
            escape(_first_line(r["error"])),
        )
    out.print(table)


def _run(store: Any, run_id: int) -> dict[str, Any] | None:
    """One row of the runs table (the store has no single-run read yet; `runs()` lists them)."""
    import sqlalchemy as sa

    from nightshift.db import schema

    r = schema.runs
    with store.connect() as conn:
        row = conn.execute(sa.select(r).where(r.c.run_id == run_id)).mappings().first()
    return dict(row) if row is not None else None


@runs_app.command("show")
def runs_show(
    run_id: Annotated[int, typer.Argument(help="the run's id (the `run` column of `nightshift runs`)")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Everything about one scoring run: model, version, ds, status, run key, rows, files, timings, host/pid,
    start and end, whether it serves, and its full error."""
    from nightshift.db import open_store

    store = open_store(settings_from(config))
    run = _run(store, run_id)
    if run is None:
        raise NightshiftError(f"no run {run_id} in the store {store!r} (`nightshift runs` lists them)")
    part = store.partition(run["model"], int(run["version"]), run["ds"])
    serving = part is not None and part.run_id == run_id
    seconds = _seconds(run)
    if as_json:
        print_json({**run, "seconds": seconds, "serving": serving})
        return

    def when(v: Any) -> str:
        return utc_iso(v)[:19].replace("T", " ") + " UTC" if v is not None else "—"

    out.print(f"[bold]run {run_id}[/]: {run['model']} v{run['version']} ds={run['ds']} — [bold]{run['status']}[/]")
    rows = [
        ("run_key", escape(run.get("run_key") or "—") + "  (the caller's run id: Airflow's, cli:night, demo, ...)"),
        ("serving", "yes: the catalog points at this run" if serving else "no"),
        ("input rows", f"{run['input_rows']:,}" if run.get("input_rows") is not None else "—"),
        ("files", str(run["files"]) if run.get("files") is not None else "—"),
        ("rows", f"{run['rows']:,}" if run.get("rows") is not None else "—"),
        ("started", when(run.get("started_at"))),
        ("finished", when(run.get("finished_at")) + (f"  ({seconds:.2f}s)" if seconds is not None else "")),
        ("host / pid", f"{run.get('host') or '—'} / {run.get('pid') or '—'}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.print(f"  {key:<{width}}  {value}", highlight=False)
    timings = run.get("timings") or {}
    if timings:
        out.print("  timings: " + ", ".join(f"{k} {v}" for k, v in timings.items()), highlight=False)
    if run.get("error"):
        out.print("  error:", highlight=False)
        out.print(escape(str(run["error"])), highlight=False, soft_wrap=True)


# -- gc -------------------------------------------------------------------------------------------


@app.command("gc")
def gc_cmd(
    model: AnyModelOpt = None,
    today: str | None = typer.Option(None, help="reference day for retention (YYYY-MM-DD; default: today)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be removed, remove nothing"),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Apply each model's retention_days, and remove the rows replaced, failed, crashed and expired runs left
    (runs whose process died are found first). Reports the real row counts, per run and in total."""
    from nightshift.db import open_store

    settings = settings_from(config)
    store = open_store(settings)
    ref = parse_day(today, "--today") if today else date.today()
    models = [settings.model(model)] if model else settings.models
    expired: list[dict[str, Any]] = []
    lines: list[str] = []
    for cfg in models:
        if cfg.retention_days is None:
            continue
        before = ref - timedelta(days=cfg.retention_days)
        gone: list[dict[str, Any]] = [
            {"model": p.model, "version": p.version, "ds": p.ds, "run_id": p.run_id, "rows": p.row_count}
            for p in store.expire(cfg.name, before, dry_run=dry_run)
        ]
        expired += gone
        if gone:
            lines.append(
                f"{cfg.name}: {'would expire' if dry_run else 'expired'} {len(gone)} partition(s) older than "
                f"{cfg.retention_days} days (before {before}), {sum(int(g['rows']) for g in gone):,} rows: "
                + ", ".join(f"v{g['version']} ds={g['ds']} ({int(g['rows']):,} rows, run {g['run_id']})" for g in gone)
            )
    report = store.gc(model, dry_run=dry_run, history_days={m.name: m.history_days for m in settings.models})
    runs = list(report.runs)
    abandoned = list(getattr(report, "abandoned", []))
    total = sum(int(e["rows"]) for e in expired) + int(report.rows)
    if as_json:
        print_json({"dry_run": dry_run, "expired": expired, "runs": runs, "abandoned": abandoned, "rows": total})
        return
    would = "would be " if dry_run else ""
    for line in lines:
        out.print(line, highlight=False)
    if abandoned:
        out.print(
            f"run(s) {', '.join(map(str, abandoned))}: still marked running but their process is gone; "
            + ("would be marked abandoned" if dry_run else "marked abandoned")
        )
    if runs:
        table = Table(title=f"rows of dead runs {would}removed")
        for col in ("run", "model", "version", "ds", "status", "rows"):
            table.add_column(col)
        for r in runs:
            table.add_row(
                str(r["run_id"]), r["model"], str(r["version"]), str(r["ds"]), r["status"], f"{int(r['rows']):,}"
            )
        out.print(table)
    out.print(
        f"{'dry run: ' if dry_run else ''}{total:,} row(s) {'would be ' if dry_run else ''}removed: "
        f"{len(expired)} expired partition(s), {len(runs)} dead run(s)" + (" (nothing changed)" if dry_run else "")
    )
