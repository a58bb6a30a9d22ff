"""The plugin's monitoring history view: the listing, a stored HTML report, strict path checks, login required."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest


def _no_login() -> None:
    """Stands in for Airflow's login dependency in tests that are not about authentication."""


@pytest.fixture
def stored(project: Callable[..., Path], sqlite_url: str) -> Any:
    """A project whose store holds one monitored night of churn v1 (ds 2026-11-16) with its HTML report."""
    from nightshift.config import load_settings
    from nightshift.db import open_store
    from nightshift.monitoring.report import report_uri
    from nightshift.monitoring.results import MonitorResult, save_result

    settings = load_settings(project(sqlite_url))
    day = date(2026, 11, 16)
    uri = report_uri(settings, "churn", 1, day)
    Path(uri).parent.mkdir(parents=True)
    Path(uri).write_text("<html><body>evidently report of churn 2026-11-16</body></html>")
    store = open_store(settings)
    result = MonitorResult("churn", 1, day, "data", "fail", [], 1000, 1000, {"drifted_columns": ["age"]}, uri)
    save_result(store, result)
    store.dispose()
    return settings


def _client(settings: Any, auth: Any = _no_login) -> Any:
    from fastapi.testclient import TestClient

    from nightshift_airflow.reports import build_reports_app

    return TestClient(build_reports_app(settings, auth=auth))


def test_history_lists_monitored_nights_with_links(stored: Any) -> None:
    client = _client(stored)

    page = client.get("/")
    assert page.status_code == 200
    assert "<h2>churn</h2>" in page.text
    assert "2026-11-16" in page.text
    assert "href='churn/2026-11-16?version=1'" in page.text
    [row] = client.get("/history.json").json()["churn"]
    assert (row["ds"], row["version"], row["status"], row["drifted_columns"]) == ("2026-11-16", 1, "fail", ["age"])
    assert client.get("/history.json?model=nope").status_code == 404


def test_serves_the_stored_report_and_refuses_anything_else(stored: Any) -> None:
    client = _client(stored)

    got = client.get("/churn/2026-11-16")
    assert got.status_code == 200
    assert "evidently report of churn 2026-11-16" in got.text
    assert client.get("/churn/2026-11-16?version=1").status_code == 200
    assert client.get("/churn/2026-11-17").status_code == 404  # not monitored
    assert client.get("/churn/2026-11-16?version=2").status_code == 404
    for bad in ("/upsell/2026-11-16", "/churn/2026-13-40", "/churn/..%2F..%2Fetc", "/Churn/2026-11-16", "/churn/16"):
        assert client.get(bad).status_code == 404, bad
    assert client.get("/churn/2026-11-16?version=0").status_code == 422


def test_every_route_needs_an_airflow_login(stored: Any) -> None:
    from nightshift_airflow.reports import airflow_user_dependency

    client = _client(stored, auth=airflow_user_dependency())
    for path in ("/", "/history.json", "/churn/2026-11-16"):
        assert client.get(path).status_code == 401, path


def test_the_plugin_mounts_the_view_before_the_lookup_api_and_links_it_in_the_ui() -> None:
    from nightshift_airflow.plugin import NightshiftPlugin

    prefixes = [a["url_prefix"] for a in NightshiftPlugin.fastapi_apps]
    assert prefixes == ["/nightshift/reports", "/nightshift"]  # the first matching mount wins
    [view] = NightshiftPlugin.external_views
    assert view["href"] == "/nightshift/reports/"
    assert view["url_route"] == "nightshift_reports"
