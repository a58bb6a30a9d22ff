"""The report of one suite run: summary.md (targets, throughput, parts, scaling, profile) and PNG charts."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import LIMIT_PK_AGAIN, SQLITE_BULK_CHUNKS
from bench.profiling import read_raw, stage_breakdown

GIB = 2**30
MEMORY_LIMIT_GIB = 1.5
MODELS = ("linear", "forest")
MODEL_TITLES = {"linear": "linear pipeline (logistic regression)", "forest": "random forest (100 trees, depth 10)"}

NS_PG = "nightshift, fresh cluster"
NS_PG_WARM = "nightshift, pre-started cluster"
NS_SQLITE = "nightshift -> SQLite, fresh cluster"


def load(folder: Path) -> list[dict[str, Any]]:
    path = folder / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class Results:
    """The measurements of a run, by (group, model, name)."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self.m = {(r["group"], r["model"], r["name"]): r for r in records if r.get("kind") == "measurement"}

    def get(self, group: str, model: str | None, name: str) -> dict[str, Any] | None:
        return self.m.get((group, model, name))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") == kind]


@dataclass
class Ratio:
    """How many times faster `a` is than `b` (rate over rate): median, min and max."""

    median: float
    low: float
    high: float
    paired: bool

    def __str__(self) -> str:
        return f"{_num(self.median)} [{_num(self.low)}–{_num(self.high)}]"


def _num(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:,.0f}"


def rate_ratio(a: dict[str, Any], b: dict[str, Any]) -> Ratio:
    """Rate of `a` over rate of `b`. Runs timed round-robin together pair by round (min/max over the
    rounds); otherwise the ratio of medians, with the extremes of the two ranges."""
    ra = [a["rows"] / s for s in a["seconds"]]
    rb = [b["rows"] / s for s in b["seconds"]]
    if a.get("block") and a.get("block") == b.get("block") and len(ra) == len(rb):
        pairs = [x / y for x, y in zip(ra, rb, strict=True)]
        return Ratio(statistics.median(pairs), min(pairs), max(pairs), True)
    return Ratio(statistics.median(ra) / statistics.median(rb), min(ra) / max(rb), max(ra) / min(rb), False)


def time_ratio(a: dict[str, Any], b: dict[str, Any]) -> Ratio:
    """Time of `a` over time of `b` (paired by round when timed together)."""
    if a.get("block") and a.get("block") == b.get("block") and len(a["seconds"]) == len(b["seconds"]):
        pairs = [x / y for x, y in zip(a["seconds"], b["seconds"], strict=True)]
        return Ratio(statistics.median(pairs), min(pairs), max(pairs), True)
    return Ratio(a["median_s"] / b["median_s"], a["min_s"] / b["max_s"], a["max_s"] / b["min_s"], False)


def _rate(r: dict[str, Any]) -> str:
    q = r["rows_per_s"]
    return f"{q['median'] / 1e3:,.0f} k [{q['min'] / 1e3:,.0f}–{q['max'] / 1e3:,.0f}]"


def _secs(r: dict[str, Any]) -> str:
    return f"{r['median_s']:.2f} [{r['min_s']:.2f}–{r['max_s']:.2f}]"


def _peak_gib(r: dict[str, Any]) -> float | None:
    peaks = [e.get("peak_worker_rss_bytes") for e in r.get("extras", []) if e.get("peak_worker_rss_bytes")]
    return max(peaks) / GIB if peaks else None


# -- targets -------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    model: str
    measured: str
    ratio: Ratio | None
    goal: str
    passed: bool | None
    note: str = ""


def targets(res: Results) -> list[Target]:
    out: list[Target] = []

    def at_least(
        name: str, model: str, a: Any, b: Any, goal: float | None, what: str, note: str = "", info: bool = False
    ) -> None:
        """A ratio of rates a ÷ b judged against `goal` (None: measured only, no goal; `info`: shown, not judged)."""
        wanted = "—" if goal is None else f"≥ {goal}×"
        if a is None or b is None:
            out.append(Target(name, model, "not measured", None, wanted, None, note or "skipped"))
            return
        r = rate_ratio(a, b)
        measured = f"{a['rows_per_s']['median'] / 1e3:,.0f} k vs {b['rows_per_s']['median'] / 1e3:,.0f} k rows/s {what}"
        verdict = None if info or goal is None else r.median >= goal
        out.append(Target(name, model, measured, r, wanted, verdict, note))

    for model in MODELS:
        ns = res.get("postgres", model, NS_PG)
        warm = res.get("postgres", model, NS_PG_WARM)
        limit = res.get("postgres", model, "pipelined limit")
        at_least("PostgreSQL: nightshift ≥ 0.9× pipelined limit", model, ns, limit, 0.9, "")
        at_least(
            "  same, cluster pre-started (client=)", model, warm, limit, 0.9, "", "info: not interleaved with the limit"
        )
        at_least(
            "  vs the limit + a primary key (rows servable by id)",
            model,
            ns,
            res.get("postgres", model, "pipelined limit + primary key"),
            0.9,
            "",
            "info: the index nightshift must build",
        )
        if model == "linear":
            at_least(
                "  noise floor: the limit + primary key against itself, same round",
                model,
                res.get("postgres", model, LIMIT_PK_AGAIN),
                res.get("postgres", model, "pipelined limit + primary key"),
                None,
                "",
                "info: one program twice; its worst round is what a paired ratio's worst round can mean here",
            )
        # The brief sets these with the linear pipeline in mind. A 100-tree forest is bound by
        # inference, which every path runs alike (the peers' scikit-learn trees are as fast as ONNX
        # Runtime's), and it scores far below SQLite's insert rate: reported, not judged.
        bound = model == "forest"
        why = "info: bound by inference, which every path runs" if bound else ""
        naive, dask_ml = res.get("postgres", model, "naive peer"), res.get("postgres", model, "dask-ml peer")
        at_least("PostgreSQL: nightshift ≥ 25× naive peer", model, ns, naive, 25, "", why, bound)
        at_least("PostgreSQL: nightshift ≥ 2.5× dask-ml", model, ns, dask_ml, 2.5, "", why, bound)
        at_least(
            "SQLite: nightshift ≥ 0.85× SQLite bulk insert",
            model,
            res.get("sqlite", model, NS_SQLITE),
            res.get("sqlite", model, "SQLite bulk insert"),
            0.85,
            "",
            why,
            bound,
        )
        at_least(
            "  vs the same insert in nightshift's order (a chunk per file)",
            model,
            res.get("sqlite", model, NS_SQLITE),
            res.get("sqlite", model, SQLITE_BULK_CHUNKS),
            0.85,
            "",
            "info: the baseline's rows all in key order, nightshift's in the files' chunks",
            True,
        )
    peaks = [
        (r["name"], p)
        for r in res.m.values()
        if r["name"].startswith("nightshift") or r["group"] in ("scaling", "memory", "scale", "multiclass")
        if (p := _peak_gib(r)) is not None
    ]
    if peaks:
        name, worst = max(peaks, key=lambda x: x[1])
        mem = [r for r in res.m.values() if r["group"] == "memory"]
        by_layout = ", ".join(f"{r['name'].split(',')[0]}: {_peak_gib(r) or 0:.2f}" for r in mem)
        out.append(
            Target(
                "peak RSS per worker ≤ 1.5 GiB, any number of files",
                "linear+forest",
                f"worst {worst:.2f} GiB ({name}); fresh cluster by layout: {by_layout or 'n/a'}",
                Ratio(worst / MEMORY_LIMIT_GIB, worst / MEMORY_LIMIT_GIB, worst / MEMORY_LIMIT_GIB, False),
                "≤ 1.0 of 1.5 GiB",
                worst <= MEMORY_LIMIT_GIB,
            )
        )
    big, small = _scaling_pair(res)
    if big and small:
        r = time_ratio(big, small)
        out.append(
            Target(
                f"t({big['rows'] / 1e6:g}M) ≤ 4.4× t({small['rows'] / 1e6:g}M rows)",
                "linear",
                f"{big['median_s']:.2f} s vs {small['median_s']:.2f} s (pre-started cluster, same rows per file)",
                r,
                "≤ 4.4×",
                r.median <= 4.4,
            )
        )
    out += more_targets(res)
    return out


# -- several models, brought models, multiclass, scale (issues 16 and 18) -----------------------------

#: `scale`'s reference layout and its linear-cost allowance: t(64M)/t(4M) ≤ 16.5 is 3.1 % over 16.
SCALE_REF_ROWS = 4_000_000
SCALE_ALLOWANCE = 16.5 / 16
FILES_GOAL = 1.1
MANY_MODELS_GOAL = 1.5
BROUGHT_GOAL = 0.9
MULTICLASS_GOAL = 1.3
#: `explain-linear`: scoring with top-3 reasons vs without (issue 19 §2).
EXPLAIN_GOAL = 1.5


def _group(res: Results, group: str) -> list[dict[str, Any]]:
    return [r for r in res.m.values() if r["group"] == group]


def _one(rows: list[dict[str, Any]], predicate: Any) -> dict[str, Any] | None:
    return next((r for r in rows if predicate(r["name"])), None)


def _at_most(name: str, model: str, r: Ratio | None, goal: float, measured: str, info: bool = False) -> Target:
    if r is None:
        return Target(name, model, "not measured", None, f"≤ {goal:.3g}×", None, "skipped")
    return Target(
        name, model, measured, r, f"≤ {goal:.3g}×", None if info else r.median <= goal, "info" if info else ""
    )


def many_models_pair(res: Results) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
    """(1 model, N models in one pass, N models one after another) of `many-models`."""
    rows = _group(res, "many-models")
    return (
        _one(rows, lambda n: n.endswith("1 model")),
        _one(rows, lambda n: n.endswith("in one pass")),
        _one(rows, lambda n: n.endswith("one after another")),
    )


def _models_in(r: dict[str, Any]) -> int:
    return int(r["name"].split(", ")[1].split()[0])


def _write_commit(extra: dict[str, Any]) -> float:
    t = extra.get("timings", {})
    return float(t.get("tasks_write_s", 0.0)) + float(t.get("commit_s", 0.0))


def multiclass_ratios(res: Results) -> dict[str, Ratio] | None:
    """multiclass over binary, paired by round: (write + commit) s, write s, commit s, wall s, bytes stored per row."""
    rows = _group(res, "multiclass")
    binary = _one(rows, lambda n: n.startswith("binary"))
    multi = _one(rows, lambda n: n.startswith("multiclass"))
    if not (binary and multi):
        return None

    def paired(f: Any) -> Ratio:
        pairs = [f(m) / f(b) if f(b) else float("nan") for m, b in zip(multi["extras"], binary["extras"], strict=False)]
        pairs = [x for x in pairs if x == x] or [float("nan")]
        return Ratio(statistics.median(pairs), min(pairs), max(pairs), True)

    return {
        "write+commit": paired(_write_commit),
        "write": paired(lambda e: e.get("timings", {}).get("tasks_write_s", 0.0)),
        "commit": paired(lambda e: e.get("timings", {}).get("commit_s", 0.0)),
        "end to end": time_ratio(multi, binary),
        "bytes/row": paired(lambda e: e.get("store_bytes", 0)),
    }


def explain_pair(res: Results) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(explain off, explain on) of `explain-linear`."""
    rows = _group(res, "explain")
    return _one(rows, lambda n: n.startswith("explain off")), _one(rows, lambda n: n.startswith("explain on"))


def explain_ratios(res: Results) -> dict[str, Ratio] | None:
    """explain on over off, paired by round: wall s, write s (tasks), bytes stored per row."""
    off, on = explain_pair(res)
    if not (off and on):
        return None

    def paired(f: Any) -> Ratio:
        pairs = [f(a) / f(b) if f(b) else float("nan") for a, b in zip(on["extras"], off["extras"], strict=False)]
        pairs = [x for x in pairs if x == x] or [float("nan")]
        return Ratio(statistics.median(pairs), min(pairs), max(pairs), True)

    return {
        "end to end": time_ratio(on, off),
        "write": paired(lambda e: e.get("timings", {}).get("tasks_write_s", 0.0)),
        "commit": paired(lambda e: e.get("timings", {}).get("commit_s", 0.0)),
        "bytes/row": paired(lambda e: e.get("store_bytes", 0)),
    }


def _scale_rows(res: Results) -> list[dict[str, Any]]:
    return sorted(_group(res, "scale"), key=lambda r: (r["rows"], _files(r)))


def scale_pairs(res: Results) -> tuple[dict[str, Any] | None, list[dict[str, Any]], tuple[Any, Any]]:
    """(reference layout, the layouts at its rows per file, (16-file, many-file) layouts of the same rows)."""
    rows = _scale_rows(res)
    if not rows:
        return None, [], (None, None)
    density = {r["name"]: r["rows"] / _files(r) for r in rows}
    by_rows: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_rows.setdefault(r["rows"], []).append(r)
    # The layouts at the most common rows-per-file: rows scale, the files grow with them.
    common = statistics.mode(density.values())
    dense = [r for r in rows if density[r["name"]] == common]
    # 4M rows when there is more to compare it with (t(64M)/t(4M) is the target); else the smallest.
    ref = next((r for r in dense if r["rows"] == SCALE_REF_ROWS and r is not dense[-1]), dense[0] if dense else None)
    few = many = None
    for same in by_rows.values():
        if len(same) >= 2:
            many = max(same, key=_files)
            few = next((r for r in same if _files(r) == 16), min(same, key=_files))
    return ref, dense, (few, many)


def more_targets(res: Results) -> list[Target]:
    out: list[Target] = []
    one, one_pass, each = many_models_pair(res)
    if one or one_pass:
        r, measured, n = None, "", 5
        if one and one_pass:
            r, n = time_ratio(one_pass, one), _models_in(one_pass)
            measured = f"{one_pass['median_s']:.2f} s vs {one['median_s']:.2f} s (pre-started clusters)"
        out.append(
            _at_most(
                f"{n} models in one pass ≤ {MANY_MODELS_GOAL}× one model's time",
                "linear",
                r,
                MANY_MODELS_GOAL,
                measured,
            )
        )
        if one and each:
            r2 = time_ratio(each, one)
            out.append(
                _at_most(
                    f"  {n} models one after another (for contrast)",
                    "linear",
                    r2,
                    n,
                    f"{each['median_s']:.2f} s",
                    info=True,
                )
            )
    brought = _group(res, "brought")
    for model in sorted({r["model"] for r in brought}):
        ns = res.get("brought", model, NS_PG)
        warm = res.get("brought", model, NS_PG_WARM)
        limit_pk = res.get("brought", model, "pipelined limit + primary key")
        for name, a, info in (
            (f"brought {model} ≥ {BROUGHT_GOAL}× the limit + primary key, same ONNX graph", ns, False),
            ("  same, cluster pre-started (client=)", warm, True),
        ):
            if a and limit_pk:
                r = rate_ratio(a, limit_pk)
                measured = (
                    f"{a['rows_per_s']['median'] / 1e3:,.0f} k vs "
                    f"{limit_pk['rows_per_s']['median'] / 1e3:,.0f} k rows/s"
                )
                out.append(
                    Target(
                        name,
                        model,
                        measured,
                        r,
                        f"≥ {BROUGHT_GOAL}×",
                        None if info else r.median >= BROUGHT_GOAL,
                        "info" if info else "",
                    )
                )
    mc = multiclass_ratios(res)
    if mc:
        out.append(
            _at_most(
                f"multiclass (4 classes): write + commit per row ≤ {MULTICLASS_GOAL}× binary",
                "linear",
                mc["write+commit"],
                MULTICLASS_GOAL,
                f"write {mc['write'].median:.2f}×, commit {mc['commit'].median:.2f}×, "
                f"{mc['bytes/row'].median:.2f}× the bytes stored",
            )
        )
        out.append(
            _at_most(
                "  multiclass end to end vs binary", "linear", mc["end to end"], MULTICLASS_GOAL, "wall time", info=True
            )
        )
    ex = explain_ratios(res)
    if ex:
        out.append(
            _at_most(
                f"explain on (top 3 reasons) ≤ {EXPLAIN_GOAL}× explain off, end to end",
                "linear",
                ex["end to end"],
                EXPLAIN_GOAL,
                f"write {ex['write'].median:.2f}×, commit {ex['commit'].median:.2f}×, "
                f"{ex['bytes/row'].median:.2f}× the bytes stored",
            )
        )
    ref, dense, (few, many) = scale_pairs(res)
    if ref:
        for big in dense:
            if big["rows"] <= ref["rows"]:
                continue
            k = big["rows"] / ref["rows"]
            goal = k * SCALE_ALLOWANCE
            out.append(
                _at_most(
                    f"cost linear: t({_mrows(big)}) ≤ {goal:.3g}× t({_mrows(ref)})",
                    "linear",
                    time_ratio(big, ref),
                    goal,
                    f"{big['median_s']:.1f} s vs {ref['median_s']:.2f} s ({k:g}× the rows)",
                )
            )
    if few and many:
        out.append(
            _at_most(
                f"{_files(many)} files ≤ {FILES_GOAL}× the time of {_files(few)} ({_mrows(few)} rows)",
                "linear",
                time_ratio(many, few),
                FILES_GOAL,
                f"{many['median_s']:.2f} s vs {few['median_s']:.2f} s",
            )
        )
    return out


def _mrows(r: dict[str, Any]) -> str:
    return f"{r['rows'] / 1e6:g}M"


def _gib(r: dict[str, Any]) -> str:
    p = _peak_gib(r)
    return f"{p:.2f}" if p else "—"


def more_sections(res: Results) -> list[str]:
    """The summary's sections for many-models, brought, multiclass and scale (empty when none ran)."""
    md: list[str] = []
    one = many_models_pair(res)[0]
    rows = _group(res, "many-models")
    if rows:
        md += ["## Several models of one dataset (many-models)", ""]
        md += _table(
            ["path", "rows read", "seconds, median [min–max]", "÷ 1 model (time)", "peak RSS/worker GiB"],
            [[r["name"], f"{r['rows']:,}", _secs(r), str(time_ratio(r, one)) if one else "—", _gib(r)] for r in rows],
        )
        md += [""]
    brought = _group(res, "brought")
    if brought:
        md += ["## A model brought by its user (brought-lightgbm)", ""]
        for b in res.of_kind("brought"):
            md.append(
                f"- {b['model']} ({b['library']}, {b['n_estimators']} trees): registered with register_brought in "
                f"{b['register_s']} s (convert + parity + register); ONNX graph {b['onnx_bytes'] / 1024:,.0f} KiB, fed "
                f"{b['feed']['matrix']!r} [N, {b['feed']['features']}]; "
                f"parity {(b.get('parity') or {}).get('status', '?')}"
            )
        for model in sorted({r["model"] for r in brought}):
            ns = res.get("brought", model, NS_PG)
            md += [""]
            md += _table(
                ["path", "rows", "seconds, median [min–max]", "rows/s, median [min–max]", "nightshift ÷ this"],
                [
                    [
                        r["name"],
                        f"{r['rows']:,}",
                        _secs(r),
                        _rate(r),
                        str(rate_ratio(ns, r)) if ns and r is not ns else "1",
                    ]
                    for r in brought
                    if r["model"] == model
                ],
            )
        md += [""]
    multi = _group(res, "multiclass")
    if multi:
        md += ["## Multiclass rows vs binary rows (multiclass-commit)", ""]
        table = []
        for r in multi:
            med = {
                k: statistics.median(e.get("timings", {}).get(k, 0.0) for e in r["extras"])
                for k in ("tasks_write_s", "commit_s", "tasks_infer_s")
            }
            wc = statistics.median(_write_commit(e) for e in r["extras"])
            size = statistics.median(e.get("store_bytes", 0) for e in r["extras"])
            table.append(
                [
                    r["name"],
                    _secs(r),
                    f"{med['tasks_write_s']:.2f}",
                    f"{med['commit_s']:.2f}",
                    f"{wc / r['rows'] * 1e6:.2f}",
                    f"{med['tasks_infer_s']:.2f}",
                    f"{size / r['rows']:.0f}" if size else "—",
                ]
            )
        md += _table(
            [
                "model",
                "wall s",
                "write s (tasks)",
                "commit s",
                "write+commit s per M rows",
                "infer s (tasks)",
                "bytes/row stored",
            ],
            table,
        )
        mc = multiclass_ratios(res)
        if mc:
            md += ["", "Multiclass ÷ binary, paired by round: " + "; ".join(f"{k} {v}" for k, v in mc.items())]
        md += [""]
    explained = _group(res, "explain")
    if explained:
        md += ["## Reasons for each score (explain-linear)", ""]
        table = []
        for r in explained:
            med = {
                k: statistics.median(e.get("timings", {}).get(k, 0.0) for e in r["extras"])
                for k in ("tasks_infer_s", "tasks_explain_s", "tasks_write_s", "commit_s")
            }
            size = statistics.median(e.get("store_bytes", 0) for e in r["extras"])
            table.append(
                [
                    r["name"],
                    _secs(r),
                    _rate(r),
                    f"{med['tasks_infer_s']:.2f}",
                    f"{med['tasks_explain_s']:.2f}",
                    f"{med['tasks_write_s']:.2f}",
                    f"{med['commit_s']:.2f}",
                    f"{size / r['rows']:.0f}" if size else "—",
                ]
            )
        md += _table(
            [
                "linear, PostgreSQL",
                "wall s",
                "rows/s",
                "infer s (tasks)",
                "reasons s (tasks)",
                "write s (tasks)",
                "commit s",
                "bytes/row stored",
            ],
            table,
        )
        ex = explain_ratios(res)
        if ex:
            md += ["", "On ÷ off, paired by round: " + "; ".join(f"{k} {v}" for k, v in ex.items())]
        md += [""]
    scale = _scale_rows(res)
    if scale:
        ref, _dense, _ = scale_pairs(res)
        md += ["## Cost against rows and files (scale)", ""]
        table = []
        for r in scale:
            sizes = [e.get("store_bytes", 0) for e in r["extras"] if e.get("store_bytes")]
            per_m = statistics.median(sizes) / r["rows"] * 1e6 / 2**20 if sizes else None
            table.append(
                [
                    r["name"],
                    str(r["runs"]),
                    _secs(r),
                    _rate(r),
                    str(time_ratio(r, ref)) if ref else "—",
                    f"{r['rows'] / ref['rows']:g}" if ref else "—",
                    _gib(r),
                    f"{per_m:.1f}" if per_m else "—",
                ]
            )
        md += _table(
            [
                "layout (linear, PostgreSQL)",
                "runs",
                "seconds",
                "rows/s",
                f"t ÷ t({_mrows(ref) if ref else '?'})",
                "rows ×",
                "peak RSS/worker GiB",
                "store MiB per M rows",
            ],
            table,
        )
        md += [""]
    return md


def _scaling_pair(res: Results) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    rows = [r for r in res.m.values() if r["group"] == "scaling" and r["name"].endswith(", 2 workers")]
    if not rows:
        return None, None
    big_rows = max(r["rows"] for r in rows)
    small = min(rows, key=lambda r: r["rows"])
    same_density = [
        r
        for r in rows
        if r["rows"] == big_rows and _files(r) * small["rows"] == _files(small) * big_rows  # same rows per file
    ]
    return (same_density[0] if same_density else None), small


def _files(r: dict[str, Any]) -> int:
    return int(r["name"].split("/")[1].split("files")[0])


# -- markdown ------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def monitor_targets(folder: Path) -> list[Target]:
    """The monitoring rate's target, from `monitor_bench*.json` (the `monitor` case writes it beside the rest)."""
    out = []
    for path in sorted(folder.glob("monitor_bench*.json")):
        rate = json.loads(path.read_text()).get("rate")
        if not rate:
            continue
        r = rate["rows_per_s"]
        out.append(
            Target(
                f"monitoring a {rate['rows'] / 1e6:g}M-row partition ≥ {rate['goal_rows_per_s'] / 1e6:g}M rows/s "
                f"within {rate['goal_rss_mib'] / 1024:g} GiB",
                "linear",
                f"{r['median'] / 1e6:.2f}M [{r['min'] / 1e6:.2f}–{r['max'] / 1e6:.2f}] rows/s, peak "
                f"{rate['peak_rss_mib']:.0f} MiB",
                None,
                "every run",
                bool(rate["passed"]),
            )
        )
    return out


def targets_table(res: Results, extra: list[Target] | None = None) -> list[str]:
    rows = []
    for t in [*targets(res), *(extra or [])]:
        verdict = "—" if t.passed is None else ("**pass**" if t.passed else "**FAIL**")
        if t.note.startswith("info"):
            verdict = f"({t.note})" if t.note.startswith("info: bound") else "(info)"
        rows.append([t.name, t.model, t.measured, str(t.ratio) if t.ratio else "—", t.goal, verdict])
    return _table(["target", "model", "measured", "ratio, median [min–max]", "goal", "result"], rows)


def throughput_table(res: Results, model: str) -> list[str]:
    ns = res.get("postgres", model, NS_PG)
    ns_sqlite = res.get("sqlite", model, NS_SQLITE)
    rows = []
    for group in ("postgres", "sqlite"):
        ref = ns if group == "postgres" else ns_sqlite
        for r in (r for r in res.m.values() if r["group"] == group and r["model"] == model):
            vs = str(rate_ratio(ref, r)) if ref and r is not ref else "1"
            rows.append([group, r["name"], f"{r['rows']:,}", _secs(r), _rate(r), vs])
    return _table(
        ["store", "path", "rows", "seconds, median [min–max]", "rows/s, median [min–max]", "nightshift ÷ this"], rows
    )


def parts_table(res: Results) -> list[str]:
    rows = []
    for r in res.m.values():
        if r["group"] == "parts" or r["name"] in (
            "SQLite bulk insert",
            SQLITE_BULK_CHUNKS,
            "pipelined limit, no write",
        ):
            rows.append([r["name"], r["model"] or "—", f"{r['rows']:,}", _rate(r)])
    return _table(["stage", "model", "rows", "rows/s, median [min–max]"], rows)


def scaling_table(res: Results) -> list[str]:
    rows = []
    for r in res.m.values():
        if r["group"] in ("scaling", "memory"):
            peak = _peak_gib(r)
            ru = max((e.get("ru_maxrss_worker_bytes") or 0 for e in r["extras"]), default=0) / GIB
            rows.append([r["name"], str(r["runs"]), _secs(r), _rate(r), f"{peak:.2f}" if peak else "—", f"{ru:.2f}"])
    lines = _table(
        ["layout (linear, PostgreSQL)", "runs", "seconds", "rows/s", "peak RSS/worker GiB (psutil)", "ru_maxrss GiB"],
        rows,
    )
    derived = []
    scal = {r["name"]: r for r in res.m.values() if r["group"] == "scaling"}
    one = next((r for n, r in scal.items() if n.endswith("1 worker")), None)
    two = next((r for n, r in scal.items() if one and n == one["name"].replace("1 worker", "2 workers")), None)
    if one and two:
        derived.append(f"- nightshift, 2 workers vs 1: {time_ratio(one, two)}× faster (t1/t2; ideal 2 on 2 idle cores)")
    lim1 = next((r for n, r in scal.items() if n.startswith("pipelined limit") and n.endswith("1 process")), None)
    lim2 = next((r for n, r in scal.items() if n.startswith("pipelined limit") and n.endswith("2 processes")), None)
    if lim1 and lim2:
        derived.append(f"- the machine (pipelined limit, no write), 2 processes vs 1: {time_ratio(lim1, lim2)}× faster")
    big, small = _scaling_pair(res)
    if big and small:
        derived.append(f"- t({big['name'].split(',')[0]}) / t({small['name'].split(',')[0]}): {time_ratio(big, small)}")
    many = [r for r in scal.values() if r["name"].endswith("2 workers") and big and r["rows"] == big["rows"]]
    if len(many) >= 2:
        lo, hi = min(many, key=_files), max(many, key=_files)
        derived.append(
            f"- {_files(hi)} vs {_files(lo)} files, same rows: t{_files(hi)}/t{_files(lo)} = {time_ratio(hi, lo)} "
            f"(per-task overhead ≈ {(hi['median_s'] - lo['median_s']) / max(1, _files(hi) - _files(lo)) * 1e3:.0f} ms "
            "per extra file)"
        )
    return lines + (["", *derived] if derived else [])


TIMING_KEYS = (
    "model_check_s",
    "contract_check_s",
    "cluster_start_s",
    "score_s",
    "commit_s",
    "tasks_read_s",
    "tasks_infer_s",
    "tasks_write_s",
)


def timings_table(res: Results) -> list[str]:
    rows = []
    for group, name in (("postgres", NS_PG), ("postgres", NS_PG_WARM), ("sqlite", NS_SQLITE)):
        for model in MODELS:
            r = res.get(group, model, name)
            if not r:
                continue
            med = {k: statistics.median(e.get("timings", {}).get(k, 0.0) for e in r["extras"]) for k in TIMING_KEYS}
            rest = r["median_s"] - sum(med[k] for k in TIMING_KEYS[:5])
            rows.append(
                [f"{name} ({model})", f"{r['median_s']:.2f}"]
                + [f"{med[k]:.2f}" for k in TIMING_KEYS]
                + [f"{max(rest, 0):.2f}"]
            )
    header = ["call", "wall s", *[k.removesuffix("_s") for k in TIMING_KEYS], "other s"]
    return _table(header, rows)


def profile_section(res: Results) -> list[str]:
    lines: list[str] = []
    for p in res.of_kind("profile"):
        files = [Path(f) for f in p.get("files", [])]
        if files and all(f.exists() for f in files):  # re-read: the stage rules may have changed since
            p = {**p, **stage_breakdown(read_raw(files))}
        stages = ", ".join(f"{k} {v:.0%}" for k, v in p["stages"].items() if v >= 0.01)
        where = f"{p['store']} / {p['model']} / {p['where']}"
        busy = f"busy {p.get('busy', 1):.0%} of samples"
        lines.append(f"- **{where}** ({p['seconds']} s, {p['samples']} busy samples, {busy}): {stages}")
    return lines


def _demoted(markdown: str) -> list[str]:
    """A sub-benchmark's markdown under a section of the summary: its title dropped, headings one level down."""
    lines = markdown.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return [("#" + line) if line.startswith("#") else line for line in lines]


def write(folder: Path) -> str:
    """Write summary.md and the charts for the results in `folder`; returns the markdown."""
    records = load(folder)
    res = Results(records)
    env = next(iter(res.of_kind("environment")), {})
    plan = next(iter(res.of_kind("plan")), {})
    done = next(iter(res.of_kind("finished")), {})
    md = [
        f"# nightshift benchmark — {env.get('size', {}).get('name', '?')} ({env.get('started', '?')})",
        "",
        f"`{env.get('command', 'python -m bench')}` on {env.get('cpus', '?')} cores, {env.get('memory_gib', '?')} GiB; "
        f"load average at start {_load(env.get('load_avg'))}, at end {_load(done.get('load_avg'))}; "
        f"total {done.get('seconds', '?')} s. Each figure: median of {env.get('size', {}).get('repeats', '?')} runs "
        "[min–max]; contenders of one comparison ran round-robin in the same process; ratios of rates.",
        "",
        "## Targets",
        "",
        *targets_table(res, monitor_targets(folder)),
        "",
    ]
    for model in MODELS:
        if any(r["model"] == model and r["group"] in ("postgres", "sqlite") for r in res.m.values()):
            md += [f"## End to end — {MODEL_TITLES[model]}", "", *throughput_table(res, model), ""]
    md += ["## The machine's limits, stage by stage", "", *parts_table(res), ""]
    md += ["## Scaling and memory", "", *scaling_table(res), ""]
    md += ["## Where nightshift's time goes (runs.timings, medians)", "", *timings_table(res), ""]
    md += [
        "`tasks_*` are sums over all tasks (both workers); `other` = wall − the first five.",
        "",
    ]
    md += more_sections(res)
    prof = profile_section(res)
    if prof:
        md += ["## Profile (py-spy, share of samples per stage)", "", *prof, ""]
    for pattern, title in (
        ("api_bench*.md", "Lookup API"),
        ("monitor_bench*.md", "Monitoring"),
        ("report_bench*.md", "The nightly report"),
    ):
        for path in sorted(folder.glob(pattern)):
            md += [f"## {title} (`{path.name}`)", "", *_demoted(path.read_text()), ""]
    peers_shown = any(r["group"] == "peers" for r in res.m.values()) or bool(res.of_kind("peers-lookup"))
    if peers_shown:
        from bench.ray_feast import write_report as peers_report

        md += [
            "## The peers users would pick instead: Ray Data, Feast (`peers.md`)",
            "",
            # Its own list of contenders is left out: the suite's list below names them all.
            *_demoted(peers_report(folder).split("Each contender in words:")[0].rstrip()),
        ]
        md.append("")
    notes = [f"- {v}" for v in plan.get("skipped", {}).values()]
    notes += [
        f"- case **{e['case']}** failed: {e['error']}"
        for e in res.of_kind("error")
        if not (peers_shown and str(e["case"]).removeprefix("peers-") in ("ray", "feast"))  # in the peers' notes
    ]
    if notes:
        md += ["## Notes", "", *notes, ""]
    md += [
        "Charts: ![throughput](throughput.png) ![scaling](scaling.png)"
        + (" ![scale](scale.png)" if _scale_rows(res) else ""),
        "",
        "Each contender in words:",
        "",
        *sorted({f"- **{r['name']}**: {r['what']}" for r in res.m.values() if r.get("what")}),
        "",
    ]
    text = "\n".join(md)
    (folder / "summary.md").write_text(text)
    try:
        charts(res, folder)
    except Exception as exc:  # a missing matplotlib must not lose the numbers
        (folder / "charts-error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
    return text


def _load(v: Any) -> str:
    return "/".join(f"{x:.1f}" for x in v) if v else "?"


# -- charts --------------------------------------------------------------------------------------


def charts(res: Results, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written = []
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, model in zip(axes, MODELS, strict=True):
        bars = [
            r
            for r in res.m.values()
            if r["model"] == model and r["group"] in ("postgres", "sqlite") and r["rows_per_s"]["median"] > 0
        ]
        bars.sort(key=lambda r: r["rows_per_s"]["median"])
        names = [("SQLite: " if r["group"] == "sqlite" else "") + r["name"].replace(" -> SQLite", "") for r in bars]
        med = [r["rows_per_s"]["median"] / 1e3 for r in bars]
        err = [
            [m - r["rows_per_s"]["min"] / 1e3 for m, r in zip(med, bars, strict=True)],
            [r["rows_per_s"]["max"] / 1e3 - m for m, r in zip(med, bars, strict=True)],
        ]
        colors = [
            "tab:orange" if "nightshift" in n else ("tab:green" if "limit" in n or "bulk" in n else "tab:gray")
            for n in names
        ]
        ax.barh(names, med, xerr=err, color=colors, capsize=3)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on a short range
        ax.set_xlabel("k rows/s (log scale; median, min–max)")
        ax.set_title(MODEL_TITLES[model], fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle("Parquet → scores → committed rows: nightshift (orange), limits (green), peers (gray)")
    fig.tight_layout()
    path = folder / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    rows = [r for r in res.m.values() if r["group"] in ("scaling", "memory")]
    if rows:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
        scal = [r for r in rows if r["group"] == "scaling"]
        left.barh(
            [r["name"] for r in scal],
            [r["median_s"] for r in scal],
            xerr=[[r["median_s"] - r["min_s"] for r in scal], [r["max_s"] - r["median_s"] for r in scal]],
            color="tab:blue",
            capsize=3,
        )
        left.set_xlabel("seconds (pre-started cluster)")
        left.tick_params(axis="y", labelsize=8)
        mem = [r for r in rows if _peak_gib(r)]
        right.barh([r["name"] for r in mem], [_peak_gib(r) for r in mem], color="tab:purple")
        right.axvline(MEMORY_LIMIT_GIB, color="red", linestyle="--", label="1.5 GiB target")
        right.set_xlabel("peak RSS per worker, GiB")
        right.tick_params(axis="y", labelsize=8)
        right.legend(fontsize=8)
        fig.suptitle("nightshift scaling (linear model, PostgreSQL)")
        fig.tight_layout()
        path = folder / "scaling.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    scale = _scale_rows(res)
    if scale:
        ref, dense, (few, many) = scale_pairs(res)
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
        xs = [r["rows"] / 1e6 for r in dense]
        left.errorbar(
            xs,
            [r["median_s"] for r in dense],
            yerr=[[r["median_s"] - r["min_s"] for r in dense], [r["max_s"] - r["median_s"] for r in dense]],
            marker="o",
            capsize=3,
            label="nightshift (median, min–max)",
        )
        if ref:
            left.plot(xs, [ref["median_s"] * x * 1e6 / ref["rows"] for x in xs], "--", color="gray", label="linear")
        for r in (few, many):
            if r is not None and r not in dense:
                left.plot([r["rows"] / 1e6], [r["median_s"]], "s", label=r["name"])
        left.set_xscale("log")
        left.set_yscale("log")
        left.set_xlabel("million rows")
        left.set_ylabel("seconds (pre-started cluster)")
        left.legend(fontsize=8)
        right.barh([r["name"] for r in scale], [_peak_gib(r) or 0 for r in scale], color="tab:purple")
        right.axvline(MEMORY_LIMIT_GIB, color="red", linestyle="--", label="1.5 GiB target")
        right.set_xlabel("peak RSS per worker, GiB")
        right.tick_params(axis="y", labelsize=8)
        right.legend(fontsize=8)
        fig.suptitle("nightshift at scale (linear model, PostgreSQL)")
        fig.tight_layout()
        path = folder / "scale.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
