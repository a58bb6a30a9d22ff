"""`nightshift models | retrain | promote | rollback | approve | compare`: the model lifecycle from the command line."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from nightshift.cli.common import ConfigOpt, JsonOpt, ModelOpt, parse_day, print_json, settings_from

out = Console()

_settings = settings_from
_day = parse_day


def _rollouts(config: Path | None) -> Any:
    from nightshift.db import open_store
    from nightshift.rollout import Rollouts

    settings = _settings(config)
    return Rollouts(settings, open_store(settings))


def _json(data: Any) -> None:
    print_json(out, data)


def register(app: typer.Typer) -> None:
    """Add the model-lifecycle commands to the `nightshift` app."""
    models_app = typer.Typer(
        help="Registered model versions: `nightshift models` lists them, `models show` prints a model card.",
        invoke_without_command=True,
    )
    app.add_typer(models_app, name="models")

    @models_app.callback()
    def models_list(
        ctx: typer.Context,
        model: str | None = typer.Option(None, "--model", "-m"),
        config: ConfigOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """List registered model versions and their aliases."""
        if ctx.invoked_subcommand is not None:
            return
        from nightshift.models import open_registry

        registry = open_registry(_settings(config))
        versions = registry.versions(model)
        aliases: dict[str, dict[str, int]] = {}
        for v in versions:
            aliases.setdefault(v.model, registry.aliases(v.model))
        if as_json:
            _json(
                [{**v.card(), "aliases": [a for a, n in aliases[v.model].items() if n == v.version]} for v in versions]
            )
            return
        table = Table(title="model versions")
        for col in ("model", "version", "aliases", "algorithm", "roc_auc", "rows", "created", "sha256"):
            table.add_column(col)
        for v in versions:
            table.add_row(
                v.model,
                str(v.version),
                ",".join(a for a, n in aliases[v.model].items() if n == v.version),
                v.algorithm.rsplit(".", 1)[-1],
                f"{v.metrics.get('roc_auc', 0):.4f}",
                f"{v.training_data.get('rows', 0):,}",
                f"{v.created_at:%F %T}",
                v.sha256[:12],
            )
        out.print(table)

    @models_app.command("show")
    def models_show(
        model: ModelOpt,
        version: int | None = typer.Option(None, help="default: the champion"),
        config: ConfigOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """The model card: metadata, metrics, feature importance, aliases and the candidate's audit trail."""
        r = _rollouts(config)
        mv = r.registry.resolve(model, version=version)
        aliases = [a for a, n in r.registry.aliases(model).items() if n == mv.version]
        cand = r._candidate_for_version(model, mv.version)
        trail = r.history(model, cand["candidate_id"]) if cand else []
        if as_json:
            _json({**mv.card(), "aliases": aliases, "candidate": cand, "audit": trail})
            return
        out.print(f"[bold]{mv.model} v{mv.version}[/]  aliases: {', '.join(aliases) or '-'}")
        out.print(f"{mv.algorithm}  created {mv.created_at:%F %T} by {mv.created_by}")
        out.print(f"artifact {mv.artifact_uri}  sha256 {mv.sha256}")
        out.print(
            f"training rows {mv.training_data.get('rows', 0):,}  content sha256 "
            f"{str(mv.training_data.get('content_sha256', ''))[:16]}…  partitions "
            f"{', '.join(p['ds'] for p in mv.training_data.get('partitions', []))}"
        )
        out.print("metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in mv.metrics.items() if isinstance(v, float)))
        out.print(
            f"ONNX parity: max |Δ| {mv.parity.get('max_abs_diff', float('nan')):.2e} on "
            f"{mv.parity.get('rows', '?')} rows"
        )
        top = sorted(mv.feature_importance.items(), key=lambda kv: kv[1], reverse=True)[:10]
        table = Table(title="global feature importance (top 10)")
        table.add_column("feature")
        table.add_column("importance", justify="right")
        for name, value in top:
            table.add_row(name, f"{value:.4f}")
        out.print(table)
        if cand:
            out.print(f"candidate {cand['candidate_id']}: {cand['status']} — {cand['reason'] or ''}")
            for g in cand.get("gates") or []:
                out.print(f"  gate {g['name']}: {'pass' if g['passed'] else 'FAIL'} — {g['detail']}")
            for e in trail:
                out.print(f"  {e['at']:%F %T} {e['event']} by {e['by']}")

    @app.command("retrain")
    def retrain_cmd(
        model: ModelOpt,
        ds: str = typer.Option(..., help="retrain with labelled data up to this day (YYYY-MM-DD)"),
        reason: str = typer.Option("manual", help="what triggered it, recorded in the audit trail"),
        config: ConfigOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Retrain a candidate, run its gates, and roll it out by the model's strategy."""
        outcome = _rollouts(config).retrain(model, _day(ds), trigger={"kind": reason, "source": "cli"})
        if as_json:
            _json(outcome.as_dict())
            return
        out.print(
            f"candidate {outcome.candidate_id} (v{outcome.version}): [bold]{outcome.status}[/] — {outcome.reason}"
        )
        for g in outcome.gates:
            out.print(f"  {g['name']}: {'pass' if g['passed'] else 'FAIL'} — {g['detail']}")
        if outcome.status == "rejected":
            raise typer.Exit(1)

    @app.command("promote")
    def promote_cmd(
        model: ModelOpt,
        version: int = typer.Option(..., help="the version to make champion"),
        reason: str = typer.Option("promoted by hand"),
        config: ConfigOpt = None,
    ) -> None:
        """Make a version the champion (the old one stays as `previous` for rollback)."""
        _rollouts(config).promote(model, version, reason=reason)
        out.print(f"{model}: champion → v{version}")

    @app.command("rollback")
    def rollback_cmd(
        model: ModelOpt, reason: str = typer.Option("rolled back by hand"), config: ConfigOpt = None
    ) -> None:
        """Return the champion to the previous version, at once."""
        live = _rollouts(config).rollback(model, reason=reason)
        out.print(f"{model}: champion → v{live}")

    @app.command("approve")
    def approve_cmd(
        model: ModelOpt,
        version: int = typer.Option(..., help="the candidate version waiting for approval"),
        note: str = typer.Option("", help="recorded in the audit trail"),
        config: ConfigOpt = None,
    ) -> None:
        """Approve a candidate that passed its gates; it then rolls out by the model's strategy."""
        status = _rollouts(config).approve(model, version, note=note)
        out.print(f"{model} v{version}: approved, {status}")

    @app.command("demo-loop")
    def demo_loop_cmd(
        config: ConfigOpt = None,
        model: str = typer.Option("churn", "--model", "-m"),
        start: str = typer.Option("", help="first day (default: 6 days ago, so the last of the 6 days is yesterday)"),
        rows_per_day: int = typer.Option(50_000, min=5_000),
        drift: str = typer.Option("mean_shift:monthly_charges:1.5", help="kind:column:magnitude"),
    ) -> None:
        """One full loop on fresh demo data: drift → monitoring fails → retrain → gates → rollout."""
        from nightshift.demo.loop import run_loop

        first = _day(start) if start else date.today() - timedelta(days=6)
        run_loop(_settings(config), model, start=first, rows_per_day=rows_per_day, drift=drift, say=out.print)

    @app.command("compare")
    def compare_cmd(
        model: ModelOpt,
        ds: str = typer.Option(..., help="last day of the comparison (YYYY-MM-DD)"),
        days: int = typer.Option(7, min=1, help="number of days up to --ds"),
        champion: int | None = typer.Option(None),
        challenger: int | None = typer.Option(None),
        config: ConfigOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Champion vs challenger on labelled outcomes, with a significance test and its sample size."""
        from nightshift.rollout import compare_versions

        end = _day(ds)
        report = compare_versions(
            _settings(config),
            model,
            [end - timedelta(days=i) for i in range(days - 1, -1, -1)],
            champion=champion,
            challenger=challenger,
        )
        if as_json:
            _json(report)
            return
        table = Table(
            title=f"{model}: v{report['champion']} (champion) vs v{report['challenger']} "
            f"on {report['n']:,} labelled entities, days {', '.join(report['days'])}"
        )
        table.add_column("metric")
        for v in report["metrics"]:
            table.add_column(v, justify="right")
        for metric in ("roc_auc", "log_loss", "brier", "precision", "recall"):
            table.add_row(metric, *(f"{m[metric]:.4f}" for m in report["metrics"].values()))
        out.print(table)
        t = report["paired_test"]
        out.print(
            f"{t['test']}: n={t['n']:,}, mean Δ={t['mean_difference']:+.5f}, t={t['statistic']:.3f}, "
            f"p={t['p_value']:.4g} → {t['verdict']}; label agreement {report['agreement']:.2%}"
        )
        if "split_test" in report:
            s = report["split_test"]
            out.print(f"{s['test']}: n={s['n_challenger']:,}/{s['n_champion']:,}, p={s['p_value']:.4g}")
