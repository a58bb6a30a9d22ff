"""notify(): logs every alert, POSTs JSON to a real local webhook, and never raises when the webhook fails."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nightshift.config import Settings, load_settings
from nightshift.notify import notify


class _Hook:
    """A webhook on 127.0.0.1 (ephemeral port) answering `status` after `delay_s`; records the bodies."""

    def __init__(self, status: int = 200, delay_s: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.bodies.append(json.loads(body))
                hook.headers.append(dict(self.headers))
                time.sleep(delay_s)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_factory() -> Iterator[Any]:
    hooks: list[_Hook] = []

    def make(**kwargs: Any) -> _Hook:
        hooks.append(_Hook(**kwargs))
        return hooks[-1]

    yield make
    for h in hooks:
        h.close()


def _settings(tmp_path: Path, webhook_url: str | None, timeout_s: float = 2.0) -> Settings:
    path = tmp_path / "nightshift.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    return load_settings(path, notify={"webhook_url": webhook_url, "timeout_s": timeout_s})


def test_posts_the_alert_as_json(tmp_path: Path, hook_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    hook = hook_factory()
    with caplog.at_level(logging.INFO, logger="nightshift.notify"):
        notify(_settings(tmp_path, hook.url), "score_failed", "score_churn failed for ds=2026-11-18", ds="2026-11-18")

    [body] = hook.bodies
    assert body["source"] == "nightshift"
    assert body["event"] == "score_failed"
    assert body["message"] == "score_churn failed for ds=2026-11-18"
    assert body["details"] == {"ds": "2026-11-18"}
    assert body["at"].endswith("+00:00")
    assert hook.headers[0]["Content-Type"] == "application/json"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["nightshift alert [score_failed]: score_churn failed for ds=2026-11-18"]


def test_without_a_webhook_it_only_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="nightshift.notify"):
        notify(_settings(tmp_path, None), "drift_detected", "churn drifted")

    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "nightshift alert [drift_detected]: churn drifted")
    ]


def test_a_webhook_error_is_logged_not_raised(
    tmp_path: Path, hook_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hook = hook_factory(status=500)
    notify(_settings(tmp_path, hook.url), "score_failed", "boom")

    assert len(hook.bodies) == 1
    assert any("answered HTTP 500" in r.getMessage() for r in caplog.records)


def test_an_unreachable_webhook_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hook = _Hook()
    url = hook.url
    hook.close()  # nothing listens on that port any more

    notify(_settings(tmp_path, url), "score_failed", "boom")

    assert any("unreachable" in r.getMessage() for r in caplog.records)


def test_a_slow_webhook_is_cut_off_at_the_timeout(
    tmp_path: Path, hook_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hook = hook_factory(delay_s=3.0)
    t0 = time.monotonic()

    notify(_settings(tmp_path, hook.url, timeout_s=0.5), "score_failed", "boom")

    assert time.monotonic() - t0 < 2.5
    assert any("unreachable" in r.getMessage() and "timed out" in r.getMessage() for r in caplog.records)


def test_a_password_in_the_webhook_url_never_reaches_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notify(_settings(tmp_path, "http://user:s3cret@127.0.0.1:9/hook", timeout_s=0.5), "score_failed", "boom")

    assert caplog.records
    assert all("s3cret" not in r.getMessage() for r in caplog.records)
