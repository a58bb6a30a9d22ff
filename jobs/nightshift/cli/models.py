"""`nightshift train` and `nightshift models [show]`: registered model versions."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import typer
from rich.table import Table

from nightshift.cli.app import app, out
from nightshift.cli.common import AnyModelOpt, ConfigOpt, JsonOpt, ModelOpt, parse_day, print_json, settings_from


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

    result = train_and_register(settings_from(config), model, parse_day(ds, "--ds"), promote=promote.value)
    if as_json:
        print_json(result.as_dict())
        return
    mv = result.version
    m = mv.metrics
    out.print(
        f"registered [bold]{mv.model} v{mv.version}[/] ({mv.algorithm}) on {mv.training_data['rows']:,} rows: "
        f"ROC AUC {m.get('roc_auc', float('nan')):.4f}, log loss {m.get('log_loss', float('nan')):.4f}; "
        f"ONNX parity max |Δ| {mv.parity.get('max_abs_diff', float('nan')):.2e}"
    )
    out.print(f"champion → v{mv.version}" if result.promoted else f"champion stays v{result.previous_champion}")


models_app = app.sub(
    "models",
    "Registered model versions: `nightshift models` lists them, `models show` prints a model card.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def rollouts(config: Any) -> Any:
    """The model lifecycle (registry, candidates, rollouts) on the configured store."""
    from nightshift.db import open_store
    from nightshift.rollout import Rollouts

    settings = settings_from(config)
    return Rollouts(settings, open_store(settings))


@models_app.callback()
def models_list(
    ctx: typer.Context,
    model: AnyModelOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List registered model versions and their aliases."""
    if ctx.invoked_subcommand is not None:
        return
    from nightshift.models import open_registry

    registry = open_registry(settings_from(config))
    versions = registry.versions(model)
    aliases: dict[str, dict[str, int]] = {}
    for v in versions:
        aliases.setdefault(v.model, registry.aliases(v.model))
    if as_json:
        print_json(
            [{**v.card(), "aliases": [a for a, n in aliases[v.model].items() if n == v.version]} for v in versions]
        )
        return
    from nightshift.metrics import default_metric

    table = Table(title="model versions")
    for col in ("model", "version", "aliases", "task", "algorithm", "metric", "source", "created", "sha256"):
        table.add_column(col)
    for v in versions:
        metric = default_metric(v.task)
        value = v.metrics.get(metric)
        table.add_row(
            v.model,
            str(v.version),
            ",".join(a for a, n in aliases[v.model].items() if n == v.version),
            v.task,
            v.algorithm.rsplit(".", 1)[-1],
            f"{metric} {value:.4f}" if isinstance(value, float) else "-",
            f"{v.source['library']} {v.source['library_version']}" if v.source else "trained here",
            f"{v.created_at:%F %T}",
            v.sha256[:12],
        )
    out.print(table)


@models_app.command("show")
def models_show(
    model: ModelOpt,
    version: int | None = typer.Option(None, help="the version to show (default: the champion)"),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The model card: metadata, metrics, feature importance, aliases and the candidate's audit trail."""
    r = rollouts(config)
    mv = r.registry.resolve(model, version=version)
    aliases = [a for a, n in r.registry.aliases(model).items() if n == mv.version]
    cand = r._candidate_for_version(model, mv.version)
    trail = r.history(model, cand["candidate_id"]) if cand else []
    if as_json:
        print_json({**mv.card(), "aliases": aliases, "candidate": cand, "audit": trail})
        return
    out.print(f"[bold]{mv.model} v{mv.version}[/]  aliases: {', '.join(aliases) or '-'}")
    out.print(f"{mv.algorithm}  created {mv.created_at:%F %T} by {mv.created_by}")
    out.print(f"task {mv.task}" + (f"  classes {', '.join(_classes(mv))}" if _classes(mv) else ""))
    out.print(f"artifact {mv.artifact_uri}  sha256 {mv.sha256}")
    if mv.source:
        src = mv.source
        out.print(
            f"brought from {src.get('uri')} ({src.get('flavour')}, {src.get('library')} {src.get('library_version')}, "
            f"converted by {src.get('converter')} {src.get('converter_version')}); original sha256 {src.get('sha256')}"
        )
    out.print(
        f"training rows {mv.training_data.get('rows', 0):,}  content sha256 "
        f"{str(mv.training_data.get('content_sha256', ''))[:16]}…  partitions "
        f"{', '.join(p['ds'] for p in mv.training_data.get('partitions', []))}"
    )
    out.print("metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in mv.metrics.items() if isinstance(v, float)))
    diff = mv.parity.get("max_abs_diff", mv.parity.get("max_diff"))
    out.print(
        f"ONNX parity: {mv.parity.get('status', 'passed' if mv.parity.get('passed') else '?')}, max |Δ| "
        + (f"{float(diff):.2e}" if isinstance(diff, int | float) else str(diff))
        + f" on {mv.parity.get('rows', '?')} rows"
    )
    if mv.feature_importance:
        top = sorted(mv.feature_importance.items(), key=lambda kv: kv[1], reverse=True)[:10]
        method = mv.training_data.get("feature_importance_method") or "measured"
        table = Table(title=f"global feature importance (top 10; {method})")
        table.add_column("feature")
        table.add_column("importance", justify="right")
        for name, value in top:
            table.add_row(name, f"{value:.4f}")
        out.print(table)
    else:
        out.print("global feature importance: not measured for this version")
    if cand:
        out.print(f"candidate {cand['candidate_id']}: {cand['status']} — {cand['reason'] or ''}")
        for g in cand.get("gates") or []:
            out.print(f"  gate {g['name']}: {'pass' if g['passed'] else 'FAIL'} — {g['detail']}")
        for e in trail:
            out.print(f"  {e['at']:%F %T} {e['event']} by {e['by']}")


def _classes(mv: Any) -> list[str]:
    return [str(c) for c in ((mv.signature or {}).get("outputs") or {}).get("classes") or []]


@models_app.command("register")
def models_register(
    model: ModelOpt,
    source: str = typer.Option(
        ...,
        "--from",
        help="the model file or URI: .onnx, a scikit-learn estimator or pipeline (.skops, or .pkl/.joblib with "
        "--trust-pickle), XGBoost (.json/.ubj), LightGBM (.txt), CatBoost (.cbm), an MLflow model directory or "
        "runs:/ / models:/ URI (mlflow extra)",
    ),
    ds: str = typer.Option(
        ..., help="the partition (YYYY-MM-DD) whose real rows prove the ONNX graph equals the original"
    ),
    trust_pickle: bool = typer.Option(
        False,
        "--trust-pickle",
        help="allow a pickle/joblib file: loading a pickle RUNS ITS CODE, only for files you trust",
    ),
    trust_type: list[str] = typer.Option(
        [], "--trust-type", help="a type a .skops file may rebuild (repeatable; the error lists what it needs)"
    ),
    feature: list[str] = typer.Option(
        [], "--feature", help="the model's feature names in order, when its file has none (repeatable)"
    ),
    classes: list[str] = typer.Option(
        [], "--class", help="the class names in the model's probability order, when its file has none (repeatable)"
    ),
    promote: Promote = typer.Option(
        Promote.if_first, help="make it champion: if-first (only when the model has none), always, never"
    ),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a model trained elsewhere: convert to ONNX, fit its inputs to the contract, prove parity with
    the original library on real rows of --ds, then register it with its task and origin."""
    from nightshift.models.bring import register_brought

    result = register_brought(
        settings_from(config),
        model,
        source,
        ds=parse_day(ds, "--ds"),
        trust_pickle=trust_pickle,
        trusted_types=tuple(trust_type),
        feature_names=list(feature) or None,
        class_names=list(classes) or None,
        promote=promote.value,
    )
    if as_json:
        print_json(result.as_dict())
        return
    mv, parity = result.version, result.parity
    src = mv.source or {}
    out.print(
        f"registered [bold]{mv.model} v{mv.version}[/] ({mv.task}, {src.get('library')} "
        f"{src.get('library_version')} → ONNX by {src.get('converter')}): parity {parity.status}, "
        f"{parity.metric} {parity.max_diff:.2e} on {parity.rows:,} rows of ds={ds}"
    )
    if mv.metrics:
        out.print("metrics on the day's labels: " + ", ".join(f"{k} {v:.4f}" for k, v in mv.metrics.items()))
    out.print(f"champion → v{mv.version}" if result.promoted else f"champion stays v{result.previous_champion}")


contract_app = app.sub("contract", "Feature contracts: propose one from a model and a partition.")


@contract_app.command("infer")
def contract_infer(
    model: ModelOpt,
    source: str = typer.Option(..., "--from", help="the model file or URI (as for `models register`)"),
    partition: str | None = typer.Option(
        None, help="a partition folder or file(s) to read types and nulls from (default: the model's dataset at --ds)"
    ),
    ds: str | None = typer.Option(None, help="the day of the model's dataset to read (YYYY-MM-DD)"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="allow a pickle/joblib file (it runs code)"),
    trust_type: list[str] = typer.Option(
        [], "--trust-type", help="a type a .skops file may rebuild (repeatable; the error lists what it needs)"
    ),
    feature: list[str] = typer.Option(
        [], "--feature", help="the model's feature names in order, when its file has none (repeatable)"
    ),
    entity_id: str | None = typer.Option(None, help="the entity id column (default: the one *_id column)"),
    config: ConfigOpt = None,
) -> None:
    """Propose the `\\[models.contract]` block for a model: names from its inputs, types and nullability from the
    data. Review it, then paste it into nightshift.toml."""
    from nightshift.data import inspect_partition, list_partition_files
    from nightshift.models.importing import contract_toml, load_model, propose_contract

    imported = load_model(
        source, trust_pickle=trust_pickle, feature_names=list(feature) or None, trusted_types=tuple(trust_type)
    )
    if partition:
        from pathlib import Path

        p = Path(partition)
        files = sorted(str(f) for f in p.glob("*.parquet")) if p.is_dir() else [str(p)]
    else:
        if not ds:
            raise typer.BadParameter("give --partition, or --ds to read the model's configured dataset")
        settings = settings_from(config)
        cfg = settings.model(model)
        day = parse_day(ds, "--ds")
        try:
            found = inspect_partition(cfg.dataset_uri(settings), cfg.partition_key, day, cfg.contract)
            files = [f.uri for f in found.files]
        except Exception:  # noqa: BLE001 - the configured contract may be what is being replaced
            files = list_partition_files(cfg.dataset_uri(settings), cfg.partition_key, day, cfg.success_marker)
    if not files:
        raise typer.BadParameter(f"no Parquet file in {partition or ds}")
    out.print(contract_toml(propose_contract(imported, files, entity_id=entity_id)), highlight=False, markup=False)
