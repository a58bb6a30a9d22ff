"""`nightshift monitor`, `reports`, `labels-quality`, `retrain-decision`, ...: the monitoring commands."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from nightshift.cli.app import app, err, out
from nightshift.cli.common import (
    AnyModelOpt,
    ConfigOpt,
    DsOpt,
    JsonOpt,
    ModelOpt,
    VersionOpt,
    parse_day,
    print_json,
    settings_from,
)

_STYLE = {"pass": "green", "fail": "bold red", "insufficient_data": "yellow"}


def _status(status: str) -> str:
    return f"[{_STYLE.get(status, 'white')}]{status}[/]"


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _checks_table(title: str, checks: list[dict[str, Any]], only_problems: bool) -> Table:
    table = Table(title=title)
    for col in ("check", "column", "statistic", "value", "threshold", "status", "rows", "sampled"):
        table.add_column(col)
    order = {"fail": 0, "insufficient_data": 1, "pass": 2}
    for c in sorted(checks, key=lambda c: (order.get(c["status"], 3), c["kind"], c.get("column_name") or "")):
        if only_problems and c["status"] == "pass":
            continue
        status = c["status"] if c.get("severity", "fail") == "fail" or c["status"] != "fail" else "warn"
        table.add_row(
            c["kind"],
            c.get("column_name") or "",
            c["statistic"],
            _fmt(c.get("value")),
            _fmt(c.get("threshold")),
            _status(status),
            f"{int(c['rows']):,}",
            "yes" if c.get("sampled") else "no",
        )
    return table


def _check_rows(result: Any) -> list[dict[str, Any]]:
    return [{**c.as_dict(), "column_name": c.column} for c in result.checks]


def _show_result(result: Any, as_json: bool, all_checks: bool) -> None:
    if as_json:
        print_json(result.as_dict(checks=True))
        return
    title = f"{result.model} v{result.version} ds={result.ds} ({result.kind})"
    out.print(_checks_table(title, _check_rows(result), only_problems=not all_checks))
    out.print(
        f"{title}: {_status(result.status)} — {len(result.failed)} failed, {len(result.warnings)} warning(s); "
        f"{result.rows:,} rows, {result.sampled_rows:,} sampled; {result.seconds:.2f}s"
        + (f"; report {result.report_uri}" if result.report_uri else "")
    )


@app.command("monitor")
def monitor_cmd(
    model: ModelOpt,
    ds: DsOpt,
    version: VersionOpt = None,
    report: Annotated[
        bool | None, typer.Option("--report/--no-report", help="write the HTML report (default: the project file)")
    ] = None,
    all_checks: Annotated[bool, typer.Option("--all", help="list passing checks too")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Monitor a committed partition: data quality, drift of features and scores; store, report, alert.

    Exits 1 when the night fails, 0 otherwise (insufficient data included).
    """
    from nightshift.monitoring import monitor_partition

    result = monitor_partition(settings_from(config), model, parse_day(ds, "--ds"), version=version, report=report)
    _show_result(result, as_json, all_checks)
    if result.status == "fail":
        raise typer.Exit(1)


@app.command("monitor-report")
def report_cmd(model: ModelOpt, ds: DsOpt, version: VersionOpt = None, config: ConfigOpt = None) -> None:
    """Write the Evidently HTML report of a monitored partition (when monitoring ran with --no-report)."""
    from nightshift.monitoring import report_partition

    out.print(report_partition(settings_from(config), model, parse_day(ds, "--ds"), version=version))


@app.command("reports")
def reports_cmd(
    model: AnyModelOpt = None,
    ds: Annotated[str | None, typer.Option("--ds", help="show the checks of this night (YYYY-MM-DD)")] = None,
    version: Annotated[
        int | None,
        typer.Option("--version", help="only this model version (default: all; with --ds, the newest monitored)"),
    ] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="'data' or 'quality' (default: both)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="monitored nights per model, newest first")] = 30,
    plot: Annotated[
        bool, typer.Option("--plot", help="write the drift-history PNG per model (one line style per version)")
    ] = False,
    requests: Annotated[bool, typer.Option("--requests", help="list retraining requests instead")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Monitoring history per model: verdicts, failed checks, reports; --ds for one night's checks."""
    from nightshift.db import open_store
    from nightshift.monitoring import monitor_checks, monitor_history, plot_history, retrain_requests

    settings = settings_from(config)
    models = [model] if model else [m.name for m in settings.models]
    store = open_store(settings)
    if requests:
        rows = [r for m in models for r in retrain_requests(settings, m, store=store)]
        if as_json:
            print_json(rows)
            return
        table = Table(title="retraining requests")
        for col in ("request / run id", "model", "ds", "version", "source", "status", "reason"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["request_id"],
                r["model"],
                str(r["ds"]),
                _fmt(r["version"]),
                r["source"],
                r["status"],
                escape(r["reason"]),
            )
        out.print(table)
        return
    if ds:
        day = parse_day(ds, "--ds")
        kind_ = kind or "data"
        found: dict[str, list[dict[str, Any]]] = {}
        for m in models:
            # Which versions were monitored that night (newest first): the checks shown are of --version, or the newest.
            nights = monitor_history(settings, m, kind=kind_, version=version, since=day, until=day, store=store)
            shown = version if version is not None else (int(nights[0]["version"]) if nights else None)
            checks = monitor_checks(settings, m, day, version=shown, kind=kind_, store=store) if nights else []
            found[m] = [{**c, "version": shown} for c in checks]
            if not as_json:
                others = sorted({int(r["version"]) for r in nights} - {shown})
                title = f"{m} v{shown} ds={day} ({kind_})" if shown is not None else f"{m} ds={day} ({kind_})"
                out.print(_checks_table(title, checks, only_problems=False))
                if others:
                    out.print(f"{m} ds={day}: also monitored " + ", ".join(f"v{v} (--version {v})" for v in others))
        if as_json:
            print_json(found)
        return
    runs = {m: monitor_history(settings, m, kind=kind, version=version, limit=limit, store=store) for m in models}
    if as_json:
        print_json(runs)
    else:
        for m, rows in runs.items():
            table = Table(title=f"{m}: monitoring history")
            for col in ("ds", "v", "kind", "status", "rows", "sampled", "report", "failed checks"):
                table.add_column(col)
            for r in rows:
                failed = [str(f).split(":", 1)[0] for f in (r["summary"] or {}).get("failed") or []]
                table.add_row(
                    str(r["ds"]),
                    str(r["version"]),
                    r["kind"],
                    _status(r["status"]),
                    f"{int(r['rows']):,}",
                    f"{int(r['sampled_rows']):,}",
                    "yes" if r["report_uri"] else "",
                    escape(", ".join(failed[:4]) + (f" +{len(failed) - 4}" if len(failed) > 4 else "")),
                )
            out.print(table)
    if plot:
        for m in models:
            err.print(f"drift history of {m}: {plot_history(settings, m, version=version, store=store)}")


@app.command("labels-quality")
def labels_quality_cmd(
    model: ModelOpt, ds: DsOpt, version: VersionOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """The model's quality on a labelled day: ROC AUC, log loss, precision, recall, base rate; stored and checked."""
    from nightshift.monitoring import label_quality

    result = label_quality(settings_from(config), model, parse_day(ds, "--ds"), version=version)
    _show_result(result, as_json, all_checks=True)
    if result.status == "fail":
        raise typer.Exit(1)


@app.command("retrain-decision")
def retrain_decision_cmd(
    model: ModelOpt, ds: DsOpt, version: VersionOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """Decide (and record, exactly once) whether the monitored night asks for retraining."""
    from nightshift.monitoring import retrain_decision

    decision = retrain_decision(settings_from(config), model, parse_day(ds, "--ds"), version=version)
    if as_json:
        print_json(decision.as_dict())
        return
    verdict = "[bold red]TRIGGER[/]" if decision.trigger else "[green]no retraining[/]"
    again = " (already recorded: replayed)" if decision.replayed else ""
    out.print(f"{model} ds={decision.ds}: {verdict}{again} — {escape(decision.reason)}; run id {decision.run_id}")


@app.command("retrain-request")
def retrain_request_cmd(
    model: ModelOpt,
    ds: DsOpt,
    reason: Annotated[str, typer.Option("--reason", help="why (kept with the request)")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Record a retraining request by hand (idempotent per model and ds)."""
    from nightshift.monitoring import record_retrain_request

    request, created = record_retrain_request(
        settings_from(config), model, parse_day(ds, "--ds"), reason, source="manual"
    )
    if as_json:
        print_json({**request, "created": created})
        return
    out.print(f"{'recorded' if created else 'already recorded'}: {request['request_id']} — {escape(request['reason'])}")


@app.command("monitor-reference")
def reference_cmd(
    model: ModelOpt,
    version: VersionOpt = None,
    ds: Annotated[
        list[str] | None, typer.Option("--ds", help="build from these days (default: the training partitions)")
    ] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="rebuild even if stored")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show (building once if needed) the reference a version's monitoring compares against."""
    from nightshift.monitoring import reference_for

    ref = reference_for(
        settings_from(config),
        model,
        version=version,
        days=[parse_day(d, "--ds") for d in ds or []] or None,
        rebuild=rebuild,
    )
    info = {
        "model": ref.model,
        "version": ref.version,
        "uri": ref.uri,
        "rows": ref.stats.get("rows"),
        "sampled_rows": ref.sample.num_rows,
        "partitions": ref.partitions,
        "created_at": ref.stats.get("created_at"),
        "score": ref.stats.get("score"),
    }
    if as_json:
        print_json(info)
        return
    out.print(
        f"{model} v{ref.version} reference: {info['rows']:,} training rows, {info['sampled_rows']:,} sampled, "
        f"from {', '.join(str(p.get('ds')) for p in ref.partitions)}; stored at {ref.uri}"
    )
