"""A read-only monitoring history in Airflow's UI: the stored verdicts per model and each night's HTML report.

Mounted by the plugin at /nightshift/reports (before the lookup API at /nightshift). Routes:

- ``GET /``                       an HTML page: the newest monitored nights of every model, with links
- ``GET /history.json[?model=]``  the same rows as JSON
- ``GET /{model}/{ds}[?version=]`` the stored Evidently HTML report of that night (newest version monitored)

Every route needs an Airflow login (the UI's JWT cookie, or ``Authorization: Bearer``), like the UI itself.
"""

from __future__ import annotations

import html
import re
import threading
from datetime import date
from typing import Any

#: A model name as the project file allows it; a ds as YYYY-MM-DD. Anything else is refused before any lookup.
MODEL_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: Nights listed per model on the page.
PAGE_ROWS = 60


def airflow_user_dependency() -> Any:
    """Airflow's own authentication (JWT header or the UI's cookie), as a FastAPI dependency."""
    from airflow.api_fastapi.core_api.security import get_user

    return get_user


def build_reports_app(settings: Any = None, *, auth: Any = None) -> Any:
    """The FastAPI app; `settings` default to the plugin's (the `nightshift_store` Connection if defined)."""
    from fastapi import Depends, FastAPI, HTTPException, Query
    from fastapi.responses import HTMLResponse, JSONResponse

    if settings is None:
        from nightshift_airflow.api import plugin_settings

        settings = plugin_settings()
    models = [m.name for m in settings.models]
    dependency = auth if auth is not None else airflow_user_dependency()
    app = FastAPI(
        title="nightshift monitoring reports",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(dependency)],
    )
    state: dict[str, Any] = {}
    lock = threading.Lock()

    def store() -> Any:
        with lock:
            if "store" not in state:
                from nightshift.db import open_store

                state["store"] = open_store(settings)
            return state["store"]

    def history(model: str, **filters: Any) -> list[dict[str, Any]]:
        from nightshift.errors import NightshiftError
        from nightshift.monitoring.results import history as stored_history

        try:
            return stored_history(store(), model, **filters)
        except NightshiftError as exc:  # the store is unreachable or at another schema revision
            raise HTTPException(503, f"{type(exc).__name__}: {exc}") from None

    def checked_model(model: str) -> str:
        if not MODEL_RE.match(model) or model not in models:
            raise HTTPException(404, "unknown model")
        return model

    def row_json(row: dict[str, Any]) -> dict[str, Any]:
        summary = row.get("summary") or {}
        return {
            "model": row["model"],
            "version": row["version"],
            "ds": row["ds"].isoformat(),
            "kind": row["kind"],
            "status": row["status"],
            "rows": row["rows"],
            "sampled_rows": row["sampled_rows"],
            "failed_checks": row["failed_checks"],
            "drifted_columns": summary.get("drifted_columns", []) if isinstance(summary, dict) else [],
            "has_report": bool(row.get("report_uri")),
            "report": f"{row['model']}/{row['ds'].isoformat()}?version={row['version']}"
            if row.get("report_uri")
            else None,
            "created_at": row["created_at"].isoformat(),
        }

    @app.get("/history.json")
    def history_json(model: str | None = Query(None)) -> JSONResponse:
        wanted = [checked_model(model)] if model is not None else models
        return JSONResponse({m: [row_json(r) for r in history(m, limit=PAGE_ROWS)] for m in wanted})

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'><title>nightshift monitoring</title>",
            "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}.fail{color:#b00}"
            ".pass{color:#070}.insufficient_data{color:#a60}</style></head><body>",
            "<h1>nightshift monitoring history</h1>",
        ]
        for model in models:
            rows = [row_json(r) for r in history(model, limit=PAGE_ROWS)]
            parts.append(f"<h2>{html.escape(model)}</h2>")
            if not rows:
                parts.append("<p>No monitored night yet.</p>")
                continue
            parts.append(
                "<table><tr><th>ds</th><th>version</th><th>kind</th><th>status</th><th>rows</th>"
                "<th>failed checks</th><th>drifted columns</th><th>report</th></tr>"
            )
            for r in rows:
                link = f"<a href='{html.escape(r['report'], quote=True)}'>report</a>" if r["report"] else ""
                parts.append(
                    f"<tr><td>{r['ds']}</td><td>v{int(r['version'])}</td><td>{html.escape(r['kind'])}</td>"
                    f"<td class='{html.escape(r['status'], quote=True)}'>{html.escape(r['status'])}</td>"
                    f"<td>{int(r['rows'])}</td><td>{int(r['failed_checks'])}</td>"
                    f"<td>{html.escape(', '.join(map(str, r['drifted_columns'])))}</td><td>{link}</td></tr>"
                )
            parts.append("</table>")
        parts.append("</body></html>")
        return HTMLResponse("".join(parts))

    @app.get("/{model}/{ds}", response_class=HTMLResponse)
    def report(model: str, ds: str, version: int | None = Query(None, ge=1)) -> HTMLResponse:
        import fsspec

        from nightshift.monitoring.report import report_uri

        checked_model(model)
        if not DS_RE.match(ds):
            raise HTTPException(404, "ds must be YYYY-MM-DD")
        try:
            day = date.fromisoformat(ds)
        except ValueError:
            raise HTTPException(404, "ds must be a valid date") from None
        runs = history(model, kind="data", version=version, since=day, until=day, limit=1)
        if not runs or not runs[0].get("report_uri"):
            raise HTTPException(404, f"no stored report for {model} ds={day}")
        # The path is rebuilt from the validated parts (never taken from the request or the row as is).
        uri = report_uri(settings, model, int(runs[0]["version"]), day)
        try:
            with fsspec.open(uri, "rb") as f:
                body = f.read()
        except FileNotFoundError:
            raise HTTPException(404, f"the report of {model} ds={day} is recorded but its file is gone") from None
        return HTMLResponse(body.decode("utf-8", errors="replace"))

    return app
