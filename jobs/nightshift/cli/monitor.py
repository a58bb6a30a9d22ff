"""`nightshift monitor`, `reports`, `labels-quality`, `retrain-decision`, ...: the monitoring commands."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nightshift.cli.common import ConfigOpt, JsonOpt, ModelOpt, parse_day, print_json, settings_from

out = Console()
err = Console(stderr=True)

_ConfigOpt = ConfigOpt
_ModelOpt = ModelOpt
_DsOpt = Annotated[str, typer.Option("--ds", help="the partition (YYYY-MM-DD)")]
_VersionOpt = Annotated[int | None, typer.Option("--version", help="model version (default: the champion)")]
_JsonOpt = JsonOpt

_STYLE = {"pass": "green", "fail": "bold red", "insufficient_data": "yellow"}


_settings = settings_from
_day = parse_day


def _print_json(data: Any) -> None:
    print_json(out, data)


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
        _print_json(result.as_dict(checks=True))
        return
    title = f"{result.model} v{result.version} ds={result.ds} ({result.kind})"
    out.print(_checks_table(title, _check_rows(result), only_problems=not all_checks))
    out.print(
        f"{title}: {_status(result.status)} — {len(result.failed)} failed, {len(result.warnings)} warning(s); "
        f"{result.rows:,} rows, {result.sampled_rows:,} sampled; {result.seconds:.2f}s"
        + (f"; report {result.report_uri}" if result.report_uri else "")
    )


def monitor_cmd(
    model: _ModelOpt,
    ds: _DsOpt,
    version: _VersionOpt = None,
    report: Annotated[
        bool | None, typer.Option("--report/--no-report", help="write the HTML report (default: the project file)")
    ] = None,
    all_checks: Annotated[bool, typer.Option("--all", help="list passing checks too")] = False,
    config: _ConfigOpt = None,
    as_json: _JsonOpt = False,
) -> None:
    """Monitor a committed partition: data quality, drift of features and scores; store, report, alert.

    Exits 1 when the night fails, 0 otherwise (insufficient data included).
    """
    from nightshift.monitoring import monitor_partition

    result = monitor_partition(_settings(config), model, _day(ds), version=version, report=report)
    _show_result(result, as_json, all_checks)
    if result.status == "fail":
        raise typer.Exit(1)


def report_cmd(model: _ModelOpt, ds: _DsOpt, version: _VersionOpt = None, config: _ConfigOpt = None) -> None:
    """Write the Evidently HTML report of a monitored partition (when monitoring ran with --no-report)."""
    from nightshift.monitoring import report_partition

    out.print(report_partition(_settings(config), model, _day(ds), version=version))


def reports_cmd(
    model: Annotated[str | None, typer.Option("--model", "-m", help="one model (default: all)")] = None,
    ds: Annotated[str | None, typer.Option("--ds", help="show the checks of this night")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="'data' or 'quality' (default: both)")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 30,
    plot: Annotated[bool, typer.Option("--plot", help="write the drift-history PNG per model")] = False,
    requests: Annotated[bool, typer.Option("--requests", help="list retraining requests instead")] = False,
    config: _ConfigOpt = None,
    as_json: _JsonOpt = False,
) -> None:
    """Monitoring history per model: verdicts, failed checks, reports; --ds for one night's checks."""
    from nightshift.db import open_store
    from nightshift.monitoring import monitor_checks, monitor_history, plot_history, retrain_requests

    settings = _settings(config)
    models = [model] if model else [m.name for m in settings.models]
    store = open_store(settings)
    if requests:
        rows = [r for m in models for r in retrain_requests(settings, m, store=store)]
        if as_json:
            _print_json(rows)
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
        day = _day(ds)
        found = {m: monitor_checks(settings, m, day, kind=kind or "data", store=store) for m in models}
        if as_json:
            _print_json(found)
            return
        for m, checks in found.items():
            out.print(_checks_table(f"{m} ds={day} ({kind or 'data'})", checks, only_problems=False))
        return
    runs = {m: monitor_history(settings, m, kind=kind, limit=limit, store=store) for m in models}
    if as_json:
        _print_json(runs)
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
            err.print(f"drift history of {m}: {plot_history(settings, m, store=store)}")


def labels_quality_cmd(
    model: _ModelOpt, ds: _DsOpt, version: _VersionOpt = None, config: _ConfigOpt = None, as_json: _JsonOpt = False
) -> None:
    """The model's quality on a labelled day: ROC AUC, log loss, precision, recall, base rate; stored and checked."""
    from nightshift.monitoring import label_quality

    result = label_quality(_settings(config), model, _day(ds), version=version)
    _show_result(result, as_json, all_checks=True)
    if result.status == "fail":
        raise typer.Exit(1)


def retrain_decision_cmd(
    model: _ModelOpt, ds: _DsOpt, version: _VersionOpt = None, config: _ConfigOpt = None, as_json: _JsonOpt = False
) -> None:
    """Decide (and record, exactly once) whether the monitored night asks for retraining."""
    from nightshift.monitoring import retrain_decision

    decision = retrain_decision(_settings(config), model, _day(ds), version=version)
    if as_json:
        _print_json(decision.as_dict())
        return
    verdict = "[bold red]TRIGGER[/]" if decision.trigger else "[green]no retraining[/]"
    again = " (already recorded: replayed)" if decision.replayed else ""
    out.print(f"{model} ds={decision.ds}: {verdict}{again} — {escape(decision.reason)}; run id {decision.run_id}")


def retrain_request_cmd(
    model: _ModelOpt,
    ds: _DsOpt,
    reason: Annotated[str, typer.Option("--reason", help="why (kept with the request)")],
    config: _ConfigOpt = None,
    as_json: _JsonOpt = False,
) -> None:
    """Record a retraining request by hand (idempotent per model and ds)."""
    from nightshift.monitoring import record_retrain_request

    request, created = record_retrain_request(_settings(config), model, _day(ds), reason, source="manual")
    if as_json:
        _print_json({**request, "created": created})
        return
    out.print(f"{'recorded' if created else 'already recorded'}: {request['request_id']} — {escape(request['reason'])}")


def reference_cmd(
    model: _ModelOpt,
    version: _VersionOpt = None,
    ds: Annotated[
        list[str] | None, typer.Option("--ds", help="build from these days (default: the training partitions)")
    ] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="rebuild even if stored")] = False,
    config: _ConfigOpt = None,
    as_json: _JsonOpt = False,
) -> None:
    """Show (building once if needed) the reference a version's monitoring compares against."""
    from nightshift.monitoring import reference_for

    ref = reference_for(
        _settings(config), model, version=version, days=[_day(d) for d in ds or []] or None, rebuild=rebuild
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
        _print_json(info)
        return
    out.print(
        f"{model} v{ref.version} reference: {info['rows']:,} training rows, {info['sampled_rows']:,} sampled, "
        f"from {', '.join(str(p.get('ds')) for p in ref.partitions)}; stored at {ref.uri}"
    )


def register(app: typer.Typer) -> None:
    """Add the monitoring commands to the `nightshift` app."""
    app.command("monitor")(monitor_cmd)
    app.command("monitor-report")(report_cmd)
    app.command("monitor-reference")(reference_cmd)
    app.command("reports")(reports_cmd)
    app.command("labels-quality")(labels_quality_cmd)
    app.command("retrain-decision")(retrain_decision_cmd)
    app.command("retrain-request")(retrain_request_cmd)
