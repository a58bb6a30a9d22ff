"""`nightshift lineage`: where a prediction came from: run, input files, model version, training data, approval."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from nightshift.cli.app import app, out
from nightshift.cli.common import ConfigOpt, DsOpt, JsonOpt, ModelOpt, parse_day, print_json, settings_from, utc_iso

#: How each step is titled in the text answer.
_TITLES = {
    "served": "served",
    "prediction": "prediction",
    "run": "run",
    "inputs": "input files",
    "model": "model version",
    "training": "training data",
    "approval": "approval",
}


@app.command("lineage")
def lineage_cmd(
    model: ModelOpt,
    ds: DsOpt,
    entity: str | None = typer.Option(None, "--entity", "-e", help="the entity id whose prediction to explain"),
    version: int | None = typer.Option(
        None, "--version", help="explain this version (default: the one that served the day, or the entity)"
    ),
    verify: bool = typer.Option(
        False, "--verify", help="fingerprint the recorded input files again and say which changed since the run"
    ),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Where a prediction came from: which version served the day, the entity's committed row, the run that wrote
    it (run key, host, start and end), its input files (URI, bytes, rows, SHA-256 fingerprint), the model
    version (artifact SHA-256, algorithm, who registered it), the days it was trained on and the training set's
    hash, and who approved and promoted it. A step that cannot be answered says why."""
    from nightshift.lineage import trace

    settings = settings_from(config)
    answer = trace(settings, model, parse_day(ds, "--ds"), entity=entity, version=version, verify=verify)
    if as_json:
        print_json(answer.as_dict())
        return
    print_lineage(answer)


def _when(v: Any) -> str:
    if v is None:
        return "?"
    if isinstance(v, str):
        return v
    return utc_iso(v)[:19].replace("T", " ") + " UTC"


def _size(n: Any) -> str:
    if not isinstance(n, int):
        return "?"
    if n < 1024:
        return f"{n:,} B"
    x, unit = float(n), "B"
    for unit in ("KiB", "MiB", "GiB"):  # noqa: B007 - the unit the loop stopped at is the answer
        x /= 1024
        if x < 1024:
            break
    return f"{x:,.1f} {unit}"


def _lines(name: str, f: dict[str, Any]) -> list[str]:
    """The facts of one step as lines of text."""
    if name == "served":
        lines = [str(f.get("reason") or "")]
        for s in f.get("served") or []:
            lines.append(
                f"{s['role']} v{s['version']}: {s['share']:.0%} of entities, run {s['run_id'] or '?'} "
                f"(recorded {_when(s['recorded_at'])})"
            )
        return lines
    if name == "prediction":
        what = f"score {f['score']:.6g}"
        if f.get("label") is not None:
            what += f", label {f['label']}"
        if f.get("value") is not None:
            what += f", value {f['value']:.6g}"
        if f.get("probs"):
            what += ", probabilities " + ", ".join(f"{p:.4g}" for p in f["probs"])
        lines = [
            f"entity {f['entity_id']}: {what} (v{f['version']}, run {f['run_id']}, "
            f"committed {_when(f['committed_at'])})"
        ]
        if f.get("reasons"):
            lines.append("reasons: " + ", ".join(f"{r['feature']} {r['contribution']:+.4f}" for r in f["reasons"]))
        return lines
    if name == "run":
        lines = [
            f"run {f['run_id']}: {f['status']}, run key {f.get('run_key') or '-'}",
            f"started {_when(f.get('started_at'))}, finished {_when(f.get('finished_at'))}, "
            f"on {f.get('host') or '?'} (pid {f.get('pid') or '?'})",
            f"{f.get('input_rows') or 0:,} input rows from {f.get('files') or 0} file(s), "
            f"{f.get('rows') or 0:,} stored",
        ]
        if f.get("served_run_id"):
            lines.append(f"the night was served by run {f['served_run_id']}")
        return lines
    if name == "inputs":
        if not f.get("partition"):
            return []
        lines = [
            f"{f['partition']}: {f.get('rows') or 0:,} rows, {_size(f.get('size_bytes'))}, fingerprints "
            f"{f.get('fingerprint')}, partition digest {str(f.get('digest') or '?')[:16]}…"
        ]
        if f.get("verified"):
            lines.append(f"verified now: {f['verified']}")
        for x in f.get("files") or []:
            now = x.get("now") or {}
            tail = f"  [{now['status']}]" if now else ""
            lines.append(
                f"  {x['uri']}  {_size(x.get('size_bytes'))}  {x.get('rows', 0):,} rows  "
                f"sha256 {str(x.get('sha256') or '?')[:16]}…{tail}"
            )
        return lines
    if name == "model":
        lines = [
            f"v{f['version']} {f['algorithm']} ({f['task']}), registered by {f['registered_by']} at "
            f"{_when(f['registered_at'])}",
            f"artifact {f['artifact_uri']} ({_size(f.get('size_bytes'))}), sha256 {f['sha256']}",
        ]
        if f.get("run_sha256"):
            same = "the same" if f["run_sha256"] == f["sha256"] else f"NOT the same: {f['run_sha256']}"
            lines.append(f"the run recorded {same} SHA-256")
        if f.get("source"):
            src = f["source"]
            lines.append(
                "brought from outside: "
                + ", ".join(
                    f"{k} {src[k]}" for k in ("flavour", "library", "library_version", "uri", "sha256") if src.get(k)
                )
            )
        return lines
    if name == "training":
        lines = []
        if f.get("partitions"):
            days = ", ".join(f"{p['ds']} ({p.get('rows') or 0:,} rows)" for p in f["partitions"])
            lines.append(f"trained on {days}; {f.get('rows') or 0:,} rows up to {f.get('until') or '?'}")
        if f.get("content_sha256"):
            lines.append(f"training set sha256 {f['content_sha256']}")
        test = f.get("confidence_test")
        if test:
            lines.append(f"confidence test: {', '.join(test['days'] or [])} ({test.get('rows') or 0:,} rows)")
        return lines
    if name == "approval":
        lines = []
        for c in f.get("candidates") or []:
            trigger = c["trigger"] or {}
            why = trigger.get("reason") or trigger.get("kind") or trigger.get("source") or "?"
            gates = ", ".join(f"{g['name']} {'ok' if g['passed'] else 'FAILED'}" for g in c["gates"]) or "no gates"
            lines.append(
                f"candidate {c['candidate_id']} by {c['created_by']} at {_when(c['created_at'])} "
                f"(trigger {why}): "
                f"{c['status']}; {gates}"
            )
            if c.get("approved_by"):
                lines.append(f"approved by {c['approved_by']} at {_when(c['approved_at'])}")
        for m in f.get("alias_moves") or []:
            move = f"v{m['from_version']} → v{m['to_version']}" if m["from_version"] else f"→ v{m['to_version']}"
            if m["to_version"] is None:
                move = f"v{m['from_version']} removed"
            effective = f", from ds={m['effective_ds']}" if m.get("effective_ds") else ""
            lines.append(f"{m['alias']} {move} by {m['by']} at {_when(m['at'])}{effective}: {m['reason']}")
        return lines
    return []  # pragma: no cover


def print_lineage(answer: Any) -> None:
    """The lineage as people read it: one block per step, and why for what cannot be answered."""
    head = f"[bold]{answer.model} ds={answer.ds}[/]"
    if answer.entity is not None:
        head += f" entity {escape(answer.entity)}"
    head += f": v{answer.version}" if answer.version is not None else ": no version"
    out.print(head)
    width = max(len(t) for t in _TITLES.values())
    for name, step in answer.steps.items():
        title = _TITLES.get(name, name)
        lines = _lines(name, step.facts) if step.answered else []
        mark = "" if step.answered else "[yellow]unanswered:[/] "
        first = lines[0] if lines else ""
        if not step.answered:
            first = step.why or "unknown"
        out.print(f"  [bold]{title:<{width}}[/]  {mark}{escape(first)}", highlight=False, soft_wrap=True)
        for line in lines[1:]:
            out.print(f"  {'':<{width}}  {escape(line)}", highlight=False, soft_wrap=True)
        if step.answered and step.why:
            out.print(f"  {'':<{width}}  [yellow]note:[/] {escape(step.why)}", highlight=False, soft_wrap=True)
