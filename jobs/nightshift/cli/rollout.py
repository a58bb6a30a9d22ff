"""`nightshift retrain | approve | reject | promote | rollback | compare | outcomes | bandit | demo-loop`."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

import typer
from rich.table import Table

from nightshift.cli.app import app, out
from nightshift.cli.common import ConfigOpt, JsonOpt, ModelOpt, parse_day, print_json, settings_from
from nightshift.cli.models import rollouts


@app.command("retrain")
def retrain_cmd(
    model: ModelOpt,
    ds: str = typer.Option(..., help="retrain with labelled data up to this day (YYYY-MM-DD)"),
    reason: str = typer.Option("manual", help="what triggered it, recorded in the audit trail"),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retrain a candidate, run its gates, and roll it out by the model's strategy. Exits 1 if it is rejected."""
    outcome = rollouts(config).retrain(model, parse_day(ds, "--ds"), trigger={"kind": reason, "source": "cli"})
    if as_json:
        print_json(outcome.as_dict())
        if outcome.status == "rejected":
            raise typer.Exit(1)
        return
    out.print(f"candidate {outcome.candidate_id} (v{outcome.version}): [bold]{outcome.status}[/] — {outcome.reason}")
    for g in outcome.gates:
        out.print(f"  {g['name']}: {'pass' if g['passed'] else 'FAIL'} — {g['detail']}")
    if outcome.status == "rejected":
        raise typer.Exit(1)


@app.command("approve")
def approve_cmd(
    model: ModelOpt,
    version: int = typer.Option(..., help="the candidate version waiting for approval"),
    note: str = typer.Option("", help="recorded in the audit trail"),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve a candidate that passed its gates; it then rolls out by the model's strategy."""
    status = rollouts(config).approve(model, version, note=note)
    if as_json:
        print_json({"model": model, "version": version, "approved": True, "status": status})
        return
    out.print(f"{model} v{version}: approved, {status}")


@app.command("reject")
def reject_cmd(
    model: ModelOpt,
    version: int = typer.Option(..., help="the candidate version waiting for approval"),
    reason: str = typer.Option(..., help="why it must not roll out (recorded in the audit trail)"),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Reject a candidate waiting for approval: it never rolls out; who and why land in the audit trail."""
    rollouts(config).reject(model, version, reason=reason)
    if as_json:
        print_json({"model": model, "version": version, "rejected": True, "reason": reason})
        return
    out.print(f"{model} v{version}: rejected ({reason})")


@app.command("promote")
def promote_cmd(
    model: ModelOpt,
    version: int = typer.Option(..., help="the version to make champion"),
    reason: str = typer.Option("promoted by hand", help="recorded in the audit trail"),
    config: ConfigOpt = None,
) -> None:
    """Make a version the champion (the old one stays as `previous` for rollback)."""
    rollouts(config).promote(model, version, reason=reason)
    out.print(f"{model}: champion → v{version}")


@app.command("rollback")
def rollback_cmd(
    model: ModelOpt,
    reason: str = typer.Option("rolled back by hand", help="recorded in the audit trail"),
    config: ConfigOpt = None,
) -> None:
    """Return the champion to the previous version, at once."""
    live = rollouts(config).rollback(model, reason=reason)
    out.print(f"{model}: champion → v{live}")


@app.command("compare")
def compare_cmd(
    model: ModelOpt,
    ds: str = typer.Option(..., help="last day of the comparison (YYYY-MM-DD)"),
    days: int = typer.Option(7, min=1, help="number of days up to --ds"),
    champion: int | None = typer.Option(None, help="the champion's version (default: the champion alias)"),
    challenger: int | None = typer.Option(None, help="the challenger's version (default: the challenger alias)"),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Champion vs challenger on labelled outcomes, with a significance test and its sample size."""
    from nightshift.rollout import compare_versions

    end = parse_day(ds, "--ds")
    report = compare_versions(
        settings_from(config),
        model,
        [end - timedelta(days=i) for i in range(days - 1, -1, -1)],
        champion=champion,
        challenger=challenger,
    )
    if as_json:
        print_json(report)
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


@app.command("outcomes")
def outcomes_cmd(
    model: ModelOpt,
    ds: str = typer.Option(..., help="the labelled day (YYYY-MM-DD)"),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Quality of every version that served a labelled day (stored), its estimate before the labels, and the
    outcome tests the night of that day decides on (read only). Exits 1 when a serving version fails."""
    from nightshift.db import open_store
    from nightshift.monitoring import quality_of_day
    from nightshift.rollout import Rollouts
    from nightshift.rollout.outcomes import judge_night

    settings = settings_from(config)
    day = parse_day(ds, "--ds")
    store = open_store(settings)
    try:
        quality = quality_of_day(settings, model, day, store=store)
        rollouts = Rollouts(settings, store)
        evidence = judge_night(
            settings, store, model, day, aliases=rollouts.registry.aliases(model), active=rollouts.active(model)
        )
    finally:
        store.dispose()
    if as_json:
        print_json({"quality": quality.as_dict(), "outcomes": evidence.as_dict()})
    else:
        table = Table(title=f"{model} ds={day}: quality of every version that served it ({quality.source})")
        for col in ("role", "version", "share", "status", "n", "metric", "estimated", "realized", "error"):
            table.add_column(col)
        for role, result in quality.results.items():
            metrics = result.summary.get("metrics") or {}
            estimate = result.summary.get("estimate") or {}
            name = next((m for m in ("roc_auc", "macro_f1", "rmse", "accuracy") if m in metrics), None)
            est = (estimate.get(name) or {}) if name else {}
            table.add_row(
                role,
                f"v{result.version}",
                f"{quality.shares.get(role, 0.0):.0%}" if quality.shares else "—",
                result.status,
                f"{result.sampled_rows:,}",
                name or "—",
                f"{est['estimated']:.4f}" if est else "—",
                f"{metrics[name]:.4f}" if name and isinstance(metrics.get(name), float) else "—",
                f"{est['error']:+.4f}" if est else "—",
            )
        out.print(table)
        for title, comparison in (
            ("champion vs previous", evidence.champion),
            ("challenger vs champion", evidence.challenger),
        ):
            if comparison is None:
                continue
            out.print(
                f"[bold]{title}[/] ({comparison.design}, days {', '.join(comparison.days)}): {comparison.message}"
            )
            for t in comparison.tests:
                out.print(
                    f"  {t.metric} {t.kind}: {t.test}, n={t.n_a:,}/{t.n_b:,}, difference {t.difference:+.4g}, "
                    f"statistic {t.statistic:.3f}, p={t.p_value:.3g}, Holm p={t.p_adjusted:.3g}"
                )
        if evidence.champion_range:
            r = evidence.champion_range
            out.print(
                f"champion v{r['version']} {r['metric']} on its window: {r['value']:.4f} "
                f"(range {r['min']}..{r['max']}; breached: {r['breached']})"
            )
        for note in evidence.notes:
            out.print(f"[dim]{note}[/]")
    if quality.status == "fail":
        raise typer.Exit(1)


@app.command("bandit")
def bandit_cmd(model: ModelOpt, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The bandit allocations of a model, night by night: each arm's share, P(best), labelled rewards."""
    allocations = rollouts(config).bandit_allocations(model)
    if as_json:
        print_json(allocations)
        return
    table = Table(title=f"{model}: bandit allocations (Thompson sampling)")
    for col in ("night", "version", "share", "P(best)", "rewards", "mean reward", "decided by ds"):
        table.add_column(col)
    for a in allocations:
        table.add_row(
            a["ds"].isoformat(),
            f"v{a['version']}",
            f"{a['share']:.1%}",
            f"{a['p_best']:.3f}" if a["p_best"] is not None else "—",
            f"{a['rewards']:,}",
            f"{a['mean_reward']:.4f}" if a["mean_reward"] is not None else "—",
            a["decided_ds"].isoformat() if a["decided_ds"] else "—",
        )
    out.print(table)


@app.command("bandit-sim")
def bandit_sim_cmd(
    means: str = typer.Option("0.76,0.78", help="each arm's true mean reward (correct-decision rate), comma-separated"),
    nights: int = typer.Option(14, min=2, help="nights to simulate"),
    entities: int = typer.Option(5_000, min=100, help="entities per night"),
    delay: int = typer.Option(1, min=0, help="nights until a night's labels land"),
    floor: float = typer.Option(0.05, min=0.0, max=0.49, help="the smallest share of an arm"),
    seed: int = typer.Option(7, help="random seed (the same seed gives the same run)"),
    as_json: JsonOpt = False,
) -> None:
    """Thompson sampling on simulated rewards: shares night by night, nights until the better arm serves 80%,
    and the cumulative regret against a fixed equal split."""
    from nightshift.rollout.bandit import simulate

    try:
        values = [float(x) for x in means.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{means!r}: expected numbers separated by commas", param_hint="--means") from None
    sim = simulate(
        {i + 1: v for i, v in enumerate(values)},
        nights=nights,
        entities_per_night=entities,
        label_delay=delay,
        floor=floor,
        seed=seed,
    )
    if as_json:
        print_json(sim.as_dict())
        return
    out.print(sim.table())
    out.print(
        f"the better arm serves >= 80% from night {sim.nights_to_80}; cumulative regret after {nights} nights: "
        f"{sim.regret[-1]:,.0f} (bandit) vs {sim.regret_fixed[-1]:,.0f} (fixed equal split)"
    )


@app.command("demo-loop")
def demo_loop_cmd(
    config: ConfigOpt = None,
    model: Annotated[str, typer.Option("--model", "-m", help="the model of the project file to loop")] = "churn",
    start: Annotated[
        str, typer.Option(help="first day (default: 9 days ago, so the last of the 9 days is yesterday)")
    ] = "",
    rows_per_day: Annotated[int, typer.Option(min=5_000, help="customers per day")] = 50_000,
    drift: Annotated[
        str, typer.Option(help="the shift that arrives after 3 clean days, KIND:COLUMN:MAGNITUDE")
    ] = "mean_shift:monthly_charges:1.5",
    bad_candidate: Annotated[
        bool,
        typer.Option(
            "--bad-candidate/--no-bad-candidate",
            help="after the loop settles, let a candidate trained on shuffled labels through by hand",
        ),
    ] = True,
) -> None:
    """One full loop on fresh demo data that settles: shift → monitoring fails → retrain on the days since the
    onset → monitoring passes again; then a bad candidate let through by hand is caught by its labelled outcomes
    and rolled back. It runs on its own state under <state_dir>/demo-loop (store, models, reports, data):
    `make demo`'s are left alone."""
    from nightshift.demo import parse_drift
    from nightshift.demo.loop import SHIFT_NIGHTS, loop_settings, run_loop

    first = parse_day(start, "--start") if start else date.today() - timedelta(days=3 + SHIFT_NIGHTS)
    try:
        parse_drift(f"{drift}@{first.isoformat()}")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--drift") from None
    settings = loop_settings(settings_from(config), model)
    state = settings.state_path
    out.print(f"demo-loop state and data: {state} (its own SQLite store, models, reports and data)")
    run_loop(
        settings, model, start=first, rows_per_day=rows_per_day, drift=drift, bad_candidate=bad_candidate, say=out.print
    )
    out.print(
        f"look around: NIGHTSHIFT_STATE_DIR={state} NIGHTSHIFT_STORE_URL=sqlite:///{state / 'store.db'} "
        f"nightshift models show -m {model}   (or reports --plot, outcomes --ds D, runs, ...)"
    )
