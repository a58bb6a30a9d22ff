"""The nightshift Airflow plugin: mounts the prediction lookup API under /nightshift in Airflow's API server."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from nightshift_airflow.api import LazyApp, build_app

URL_PREFIX = "/nightshift"


class NightshiftPlugin(AirflowPlugin):
    """Lookups at /nightshift/models/<model>/predictions/<entity_id>; the app is built on its first request."""

    name = "nightshift"
    fastapi_apps = [  # noqa: RUF012 - the plugin interface is a class attribute
        {"app": LazyApp(build_app), "url_prefix": URL_PREFIX, "name": "nightshift predictions"},
    ]
