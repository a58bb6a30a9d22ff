"""Monitoring results in the store: one row per monitored partition, one per check; history queries."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nightshift.db.engine import as_date, as_utc, utcnow
from nightshift.db.schema import monitor_checks, monitor_runs
from nightshift.db.store import Store
from nightshift.jsonsafe import json_safe as _json_safe
from nightshift.monitoring.checks import FAIL, INSUFFICIENT, PASS, Check


@dataclass
class MonitorResult:
    """The verdict on one (model, version, ds) and kind ('data' nightly, 'quality' once labels arrive)."""

    model: str
    version: int
    ds: date
    kind: str
    status: str
    checks: list[Check]
    rows: int
    sampled_rows: int
    summary: dict[str, Any]
    report_uri: str | None = None
    run_id: int | None = None
    seconds: float = 0.0
    monitor_id: int | None = None
    created_at: datetime = field(default_factory=utcnow)

    @property
    def ok(self) -> bool | None:
        """True (pass), False (fail), None (insufficient data): what `Rollouts.advance` takes."""
        return None if self.status == INSUFFICIENT else self.status == PASS

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.failing]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL and not c.failing]

    def as_dict(self, checks: bool = False) -> dict[str, Any]:
        """JSON-safe (an Airflow XCom): the verdict, counts, failed checks, report location."""
        out: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "ds": self.ds.isoformat(),
            "kind": self.kind,
            "status": self.status,
            "ok": self.ok,
            "rows": self.rows,
            "sampled_rows": self.sampled_rows,
            "failed": [_json_safe(c.as_dict()) for c in self.failed],
            "report_uri": self.report_uri,
            "monitor_id": self.monitor_id,
            "seconds": round(self.seconds, 3),
        }
        if checks:
            out["checks"] = [_json_safe(c.as_dict()) for c in self.checks]
        return out


def advisory_lock(conn: Connection, key: str) -> None:
    """Serialise writers of `key` for the rest of the transaction (PostgreSQL; SQLite's writes already are)."""
    if conn.dialect.name != "postgresql":
        return
    lock_id = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_id})


def _value(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def save_result(store: Store, result: MonitorResult) -> int:
    """Store a result, replacing an earlier one of the same (model, version, ds, kind), in one transaction."""
    r, c = monitor_runs, monitor_checks
    key = (r.c.model == result.model, r.c.version == result.version, r.c.ds == result.ds, r.c.kind == result.kind)
    with store.begin() as conn:
        advisory_lock(conn, f"nightshift-monitor:{result.model}:{result.version}:{result.ds}:{result.kind}")
        old = conn.execute(sa.select(r.c.monitor_id).where(*key)).scalars().all()
        if old:
            conn.execute(c.delete().where(c.c.monitor_id.in_(old)))
            conn.execute(r.delete().where(r.c.monitor_id.in_(old)))
        monitor_id = conn.execute(
            r.insert()
            .values(
                model=result.model,
                version=result.version,
                ds=result.ds,
                kind=result.kind,
                status=result.status,
                run_id=result.run_id,
                rows=result.rows,
                sampled_rows=result.sampled_rows,
                failed_checks=len(result.failed),
                summary=_json_safe(result.summary),
                report_uri=result.report_uri,
                seconds=float(result.seconds),
                created_at=result.created_at,
            )
            .returning(r.c.monitor_id)
        ).scalar_one()
        rows = [
            {
                "monitor_id": monitor_id,
                "kind": ch.kind,
                "column_name": ch.column,
                "statistic": ch.statistic,
                "value": _value(ch.value),
                "threshold": _value(ch.threshold),
                "passed": ch.passed,
                "status": ch.status,
                "severity": ch.severity,
                "rows": int(ch.rows),
                "sampled": bool(ch.sampled),
                "detail": _json_safe(ch.detail) or None,
            }
            for ch in result.checks
        ]
        if rows:
            conn.execute(c.insert(), rows)
    result.monitor_id = int(monitor_id)
    return int(monitor_id)


def set_report_uri(store: Store, model: str, version: int, ds: date, kind: str, uri: str) -> None:
    """Record where a stored result's HTML report is."""
    r = monitor_runs
    with store.begin() as conn:
        conn.execute(
            r.update()
            .where(r.c.model == model, r.c.version == version, r.c.ds == ds, r.c.kind == kind)
            .values(report_uri=uri)
        )


def _run_dict(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["ds"] = as_date(out["ds"])
    out["created_at"] = as_utc(out["created_at"])
    return out


def history(
    store: Store,
    model: str,
    *,
    kind: str | None = None,
    version: int | None = None,
    since: date | None = None,
    until: date | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Monitored partitions of a model, newest ds first: status, counts, summary, report."""
    r = monitor_runs
    q = sa.select(r).where(r.c.model == model)
    if kind:
        q = q.where(r.c.kind == kind)
    if version is not None:
        q = q.where(r.c.version == version)
    if since:
        q = q.where(r.c.ds >= since)
    if until:
        q = q.where(r.c.ds <= until)
    q = q.order_by(r.c.ds.desc(), r.c.version.desc(), r.c.kind).limit(limit)
    with store.connect() as conn:
        return [_run_dict(row) for row in conn.execute(q).mappings()]


def checks_of(store: Store, monitor_id: int) -> list[dict[str, Any]]:
    c = monitor_checks
    with store.connect() as conn:
        q = sa.select(c).where(c.c.monitor_id == monitor_id).order_by(c.c.check_id)
        return [dict(row) for row in conn.execute(q).mappings()]


def check_history(
    store: Store,
    model: str,
    *,
    kinds: tuple[str, ...] = ("drift", "score_drift", "dataset_drift"),
    version: int | None = None,
    since: date | None = None,
) -> list[dict[str, Any]]:
    """(ds, version, kind, column, value, threshold, status) of some check kinds over time, oldest first."""
    r, c = monitor_runs, monitor_checks
    q = (
        sa.select(
            r.c.ds,
            r.c.version,
            r.c.status.label("night_status"),
            c.c.kind,
            c.c.column_name,
            c.c.statistic,
            c.c.value,
            c.c.threshold,
            c.c.status,
        )
        .select_from(r.join(c, c.c.monitor_id == r.c.monitor_id))
        .where(r.c.model == model, c.c.kind.in_(kinds))
        .order_by(r.c.ds, c.c.kind, c.c.column_name)
    )
    if version is not None:
        q = q.where(r.c.version == version)
    if since:
        q = q.where(r.c.ds >= since)
    with store.connect() as conn:
        return [{**dict(row), "ds": as_date(row["ds"])} for row in conn.execute(q).mappings()]


def night_statuses(store: Store, model: str, version: int, first: date, last: date) -> dict[date, list[dict[str, Any]]]:
    """The monitor runs of each ds in [first, last] for one version."""
    r = monitor_runs
    q = sa.select(r).where(r.c.model == model, r.c.version == version, r.c.ds >= first, r.c.ds <= last)
    out: dict[date, list[dict[str, Any]]] = {}
    with store.connect() as conn:
        for row in conn.execute(q).mappings():
            d = _run_dict(row)
            out.setdefault(d["ds"], []).append(d)
    return out


def failing_checks(store: Store, monitor_ids: list[int]) -> list[dict[str, Any]]:
    """The failing (severity 'fail') checks of some monitor runs."""
    if not monitor_ids:
        return []
    c = monitor_checks
    q = (
        sa.select(c)
        .where(c.c.monitor_id.in_(monitor_ids), c.c.status == FAIL, c.c.severity == "fail")
        .order_by(c.c.monitor_id, c.c.check_id)
    )
    with store.connect() as conn:
        return [dict(row) for row in conn.execute(q).mappings()]
