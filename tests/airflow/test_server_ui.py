"""In a real browser: log into the Airflow UI, backfill two dates of score_churn, watch them succeed; the plugin API."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tests.airflow.conftest import AF_ROWS
from tests.airflow.harness import ADMIN_USER, ARTIFACTS, PASSWORD, REPO, AirflowServer, store_connection, wait_until

pytestmark = pytest.mark.slow

BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_DAYS = [date(2026, 11, 17), date(2026, 11, 18)]


def _settled(page: Any, fields: Any, timeout_s: float = 60) -> None:
    """Wait until the date fields are in a resting state: none (no popover open) or the dialog's two."""
    deadline = time.monotonic() + timeout_s
    while (n := fields.count()) not in (0, 2):
        if time.monotonic() > deadline:
            raise AssertionError(f"the backfill dialog's date fields never settled ({n} shown)")
        page.wait_for_timeout(100)


@pytest.mark.timeout(420)
def test_backfill_two_dates_from_the_ui(
    airflow_server: AirflowServer,
    server_project: Path,
    registered: Callable[[Any], Any],
    chromium: str,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    from nightshift.config import load_settings
    from nightshift.db import open_store

    settings = load_settings(server_project)  # no Connection: the project file's store
    mv = registered(settings)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "airflow-ui-backfill.png"
    url = airflow_server.url

    with store_connection(airflow_server, None), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(60_000)  # two busy cores: the UI can take a while to render
            expect.set_options(timeout=60_000)
            page.goto(f"{url}/")
            page.get_by_label("Username").fill(ADMIN_USER)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{url}/")

            page.goto(f"{url}/dags/score_churn")
            page.get_by_role("button", name="Trigger Dag").click()
            dialog = page.get_by_role("dialog").first
            dialog.get_by_text("Run this Dag for a range of dates").click()
            dates, times = page.get_by_placeholder("YYYY/MM/DD"), page.get_by_placeholder("HH:mm")
            for i, day in enumerate(UI_DAYS):
                # Depending on the UI's render, the placeholder belongs to a picker popover (one match
                # while it is open) or to the From/To fields themselves (always two). A count read while
                # the previous field's popover is still closing sees both popovers (two matches) and picks
                # a field that then vanishes: first wait until no popover is half-open.
                _settled(page, dates)
                page.get_by_test_id("datetime-input").nth(i).click()
                (dates.nth(i) if dates.count() > 1 else dates.first).fill(day.strftime("%Y/%m/%d"))
                (times.nth(i) if times.count() > 1 else times.first).fill("00:00")
                page.keyboard.press("Escape")  # closes the date picker, not the dialog
            expect(dialog.get_by_text("2 runs will be triggered.")).to_be_visible()
            page.locator("input[name=max_active_runs]").fill("2")
            dialog.get_by_role("button", name="Run Backfill").click()
            expect(page.get_by_text("Backfill in progress")).to_be_visible()

            backfill = max(
                airflow_server.api("GET", "/backfills?dag_id=score_churn&limit=100")["backfills"],
                key=lambda b: b["id"],
            )
            assert backfill["from_date"].startswith("2026-11-17")
            assert backfill["to_date"].startswith("2026-11-18")
            assert backfill["max_active_runs"] == 2
            wait_until(
                lambda: airflow_server.api("GET", f"/backfills/{backfill['id']}").get("completed_at"),
                300,
                "the UI backfill to complete",
                2,
            )

            # What a person sees afterwards: both runs green in the Runs tab.
            page.goto(f"{url}/dags/score_churn/runs")
            expect(page.get_by_text("backfill__2026-11-19T00:00:00+00:00")).to_be_visible()
            expect(page.get_by_text("Backfill in progress")).to_have_count(0)
            page.screenshot(path=str(shot), full_page=False)
            if os.environ.get("NIGHTSHIFT_UPDATE_DOCS_SCREENSHOT"):
                shutil.copy(shot, REPO / "docs" / "img" / "airflow-backfill.png")
        finally:
            browser.close()

    runs = {r["logical_date"][:10]: r for r in airflow_server.dag_runs("score_churn") if r["run_type"] == "backfill"}
    assert {d.isoformat(): runs[d.isoformat()]["state"] for d in UI_DAYS} == dict.fromkeys(
        (d.isoformat() for d in UI_DAYS), "success"
    )
    store = open_store(settings)
    committed = {p.ds: p.row_count for p in store.list_partitions("churn") if p.version == mv.version}
    assert {d: committed.get(d) for d in UI_DAYS} == dict.fromkeys(UI_DAYS, AF_ROWS)

    # The plugin's lookup API, mounted in the same API server, serves what was just committed:
    # nightshift's own API, with an API key (there is no keyless fallback).
    from nightshift.api.keys import KeyManager

    _key, token = KeyManager(store).create("airflow-plugin-test", "churn", created_by="test")
    request = urllib.request.Request(
        f"{url}/nightshift/v1/models/churn/predictions/42?ds=2026-11-18", headers={"X-API-Key": token}
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        body = json.load(r)
    [expected] = store.lookup("churn", mv.version, date(2026, 11, 18), ["42"])
    assert body["model"] == "churn"
    assert body["version"] == mv.version
    assert body["ds"] == "2026-11-18"
    assert body["entity_id"] == "42"
    assert body["score"] == pytest.approx(expected.score)
