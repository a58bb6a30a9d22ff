"""`nightshift config check | show`: is the project file (with the environment) valid, and what it amounts to."""

from __future__ import annotations

import json
import re
from typing import Any

from nightshift.cli.app import app, out
from nightshift.cli.common import ConfigOpt, JsonOpt, print_json

config_app = app.sub(
    "config", "The project file with its NIGHTSHIFT_* overrides: check it, show the effective settings."
)

#: Settings that may hold a password or a token: shown redacted.
_URL_KEYS = ("store_url",)
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _load(config: Any) -> tuple[Any, Any]:
    from nightshift.config import find_config, load_settings

    path = find_config(config)
    return path, load_settings(path)


def _redact_webhook(url: str | None) -> str | None:
    # A webhook URL's path often is its secret (Slack, Teams): keep scheme and host only.
    if not url:
        return url
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/@]*@?[^/]*)", url)
    host = m.group(1) if m else ""
    host = re.sub(r"//[^/@]*@", "//***@", host)
    return f"{host}/***" if host else "***"


def effective(settings: Any) -> dict[str, Any]:
    """The settings after environment overrides, with locations resolved and secrets redacted."""
    from nightshift.db import redact

    data: dict[str, Any] = settings.model_dump(mode="json")
    data["state_dir"] = str(settings.state_path)
    data["store_url"] = redact(settings.resolved_store_url)
    data["artifacts"] = settings.artifacts_uri
    data["reports"] = settings.reports_uri
    for key in ("store_url", "redis_url"):  # a Redis URL may carry a password too
        if data["api"].get(key):
            data["api"][key] = redact(data["api"][key])
    data["notify"]["webhook_url"] = _redact_webhook(data["notify"].get("webhook_url"))
    for m, model in zip(data["models"], settings.models, strict=True):
        m["dataset"] = model.dataset_uri(settings)
        if model.labels:
            m["labels"] = model.labels_uri(settings)
    return data


@config_app.command("check")
def config_check(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Load the project file and the NIGHTSHIFT_* environment: prints ok and one line per model, or the config
    error (exit 2) naming each bad key or misspelled variable."""
    path, settings = _load(config)
    models = [
        {
            "name": m.name,
            "dataset": m.dataset_uri(settings),
            "labels": m.labels_uri(settings),
            "features": len(m.contract.columns),
            "estimator": m.estimator.kind,
            "rollout": m.rollout.strategy,
            "schedule": m.schedule.cron,
            "retention_days": m.retention_days,
        }
        for m in settings.models
    ]
    from nightshift.cli.common import cluster_of
    from nightshift.db import redact

    store = redact(settings.resolved_store_url)
    cluster = cluster_of(settings).removeprefix("on ")
    if as_json:
        print_json({"ok": True, "config": str(path), "store": store, "cluster": cluster, "models": models})
        return
    out.print(f"ok: {path}; store {store}; Dask: {cluster}; {len(models)} model(s)", highlight=False)
    for m in models:
        out.print(
            f"  {m['name']}: {m['features']} features, {m['estimator']}, rollout {m['rollout']}, "
            f"cron {m['schedule']!r}, retention {m['retention_days'] or 'none'}; data {m['dataset']}"
            + (f", labels {m['labels']}" if m["labels"] else ", no labels"),
            highlight=False,
        )


@config_app.command("show")
def config_show(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The effective settings after NIGHTSHIFT_* overrides, as TOML (or --json): locations resolved, defaults
    filled in, passwords in URLs redacted."""
    path, settings = _load(config)
    data = effective(settings)
    if as_json:
        print_json(data)
        return
    lines = [f"# effective settings of {path} after NIGHTSHIFT_* overrides; passwords redacted"]
    lines += _toml_table([], data)
    print("\n".join(lines).rstrip() + "\n", end="")


# -- a small TOML writer (tomllib only reads) ---------------------------------------------------------


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)  # TOML spells inf, -inf and nan as Python does
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items() if x is not None) + " }"
    return json.dumps(str(v))


def _is_table(v: Any, top: bool) -> bool:
    """Whether a dict is written as a [table] (sections, and anything nested or long) or inline ({ a = 1 })."""
    if not isinstance(v, dict):
        return False
    nested = any(
        isinstance(x, dict) or (isinstance(x, list) and any(isinstance(y, dict) for y in x)) for x in v.values()
    )
    return top or nested or sum(x is not None for x in v.values()) > 4


def _toml_table(path: list[str], data: dict[str, Any]) -> list[str]:
    """`data` as TOML lines: its values first, then its [sub.tables], then (at the top) [[arrays.of.tables]].
    None means unset and is left out."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for k, v in data.items():
        if v is None:
            continue
        if _is_table(v, top=not path):
            tables.append((k, v))
        elif not path and isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        elif isinstance(v, list) and any(isinstance(x, dict) for x in v):  # one inline table a line
            lines += [f"{_key(k)} = [", *(f"  {_value(x)}," for x in v if x is not None), "]"]
        else:
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in tables:
        lines += ["", f"[{'.'.join(_key(p) for p in [*path, k])}]", *_toml_table([*path, k], v)]
    for k, items in arrays:
        for item in items:
            lines += ["", f"[[{'.'.join(_key(p) for p in [*path, k])}]]", *_toml_table([*path, k], item)]
    return lines
