"""The nightshift Airflow plugin: the prediction lookup API under /nightshift, monitoring reports in the UI."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from nightshift_airflow import run_notes
from nightshift_airflow.api import ASGIApp, LazyApp, build_app

URL_PREFIX = "/nightshift"
#: Mounted before URL_PREFIX: Starlette routes a request to the first mount whose prefix matches.
REPORTS_PREFIX = "/nightshift/reports"


def _build_reports_app() -> ASGIApp:
    from nightshift_airflow.reports import build_reports_app

    app: ASGIApp = build_reports_app()
    return app


class NightshiftPlugin(AirflowPlugin):
    """Lookups at /nightshift/models/<model>/predictions/<entity_id>; monitoring history at /nightshift/reports/.

    Both apps are built on their first request, so importing the plugin stays cheap and touches no database.
    A listener writes each scoring run's facts (ds, versions, rows, decision) as the run's note.
    """

    name = "nightshift"
    fastapi_apps = [  # noqa: RUF012 - the plugin interface is a class attribute
        {"app": LazyApp(_build_reports_app), "url_prefix": REPORTS_PREFIX, "name": "nightshift monitoring reports"},
        {"app": LazyApp(build_app), "url_prefix": URL_PREFIX, "name": "nightshift predictions"},
    ]
    listeners = [run_notes]  # noqa: RUF012
    external_views = [  # noqa: RUF012
        {
            "name": "Monitoring reports",
            "href": f"{REPORTS_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "nightshift_reports",
        },
    ]
