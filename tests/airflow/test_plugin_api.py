"""The plugin's lookup mount serves nightshift's own API (API keys and all) or answers 503: never a keyless fallback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def plugin_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    from nightshift.config import Settings
    from nightshift_airflow import api

    settings = Settings(state_dir=str(tmp_path / "state"), store_url=f"sqlite:///{tmp_path / 'store.db'}")
    monkeypatch.setattr(api, "plugin_settings", lambda: settings)
    return api


def test_the_plugin_has_no_fallback_app(plugin_api: Any) -> None:
    assert not [name for name in vars(plugin_api) if "minimal" in name]
    app = plugin_api.build_app()
    assert app.title == "nightshift lookup API"  # nightshift.api.app.create_app's app


def test_without_the_lookup_api_the_mount_answers_503_saying_so(
    plugin_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    monkeypatch.setitem(sys.modules, "nightshift.api.app", None)  # `import nightshift.api.app` fails
    server = FastAPI()  # mounted as Airflow's API server mounts the plugin's app
    server.mount("/nightshift", plugin_api.LazyApp(plugin_api.build_app))
    with TestClient(server) as client:
        for path in ("/v1/models/churn/predictions/1", "/models/churn/predictions/1", "/health"):
            r = client.get(f"/nightshift{path}")
            assert r.status_code == 503, (path, r.text)
            assert "nightshift.api" in r.json()["detail"]
