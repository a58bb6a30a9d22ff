"""Fixtures for the lookup API: seeded stores, API keys, and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from nightshift.config import ApiSettings, Settings
from nightshift.db.staging import stage_chunk
from nightshift.db.store import Store
from nightshift.models.registry import Registry

DS1 = date(2026, 11, 17)
DS2 = date(2026, 11, 18)
ROWS = 500


def score_of(run_salt: int, i: int) -> float:
    """A deterministic score that tells which run wrote it (the salt) and for which entity."""
    return round((run_salt * 1000 + i % 1000) / 1_000_000, 6)


def commit_partition(store: Store, model: str, version: int, ds: date, *, rows: int = ROWS, salt: int = 1) -> int:
    """Stage and commit a synthetic partition through the store's real path; returns its run_id."""
    ids = pa.array([str(i) for i in range(1, rows + 1)], pa.string())
    scores = np.array([score_of(salt, i) for i in range(1, rows + 1)], dtype=np.float32)
    labels = (np.arange(1, rows + 1) % 2).astype(np.int16)
    with store.run_lock(model, ds, 60):
        run_id = store.start_run(model, version, ds, input_rows=rows)
        stage_chunk(store.url, run_id, "synthetic", ids, scores, labels)
        store.commit_run(run_id, rows)
    return run_id


def register_version(registry: Registry, model: str) -> int:
    """A registered version with placeholder metadata (the API never loads artifacts)."""
    mv = registry.register(
        model,
        b"not-an-onnx-model",
        algorithm="test.Placeholder",
        hyperparameters={},
        libraries={},
        features=[],
        input_schema=[],
        output_schema=[],
        training_data={"rows": 0},
        metrics={},
        parity={},
        feature_importance={},
        decision_threshold=0.5,
        created_by="tests",
    )
    return mv.version


@dataclass
class Seeded:
    """A store with models churn (v1 champion with DS1 and DS2, v2 challenger with DS2) and fraud (v1, DS2)."""

    url: str
    store: Store
    registry: Registry
    runs: dict[tuple[str, int, date], int]


def seed(url: str, artifacts: Path) -> Seeded:
    store = Store(url)
    registry = Registry(store, str(artifacts))
    runs: dict[tuple[str, int, date], int] = {}
    for model in ("churn", "fraud"):
        register_version(registry, model)
        registry.set_alias(model, "champion", 1, reason="tests", by="tests")
    register_version(registry, "churn")
    registry.set_alias("churn", "challenger", 2, reason="tests", by="tests")
    runs[("churn", 1, DS1)] = commit_partition(store, "churn", 1, DS1, salt=11)
    runs[("churn", 1, DS2)] = commit_partition(store, "churn", 1, DS2, salt=12)
    runs[("churn", 2, DS2)] = commit_partition(store, "churn", 2, DS2, salt=22)
    runs[("fraud", 1, DS2)] = commit_partition(store, "fraud", 1, DS2, salt=31)
    return Seeded(url=url, store=store, registry=registry, runs=runs)


@pytest.fixture
def seeded(store_url: str, tmp_path: Path) -> Iterator[Seeded]:
    s = seed(store_url, tmp_path / "models")
    yield s
    s.store.dispose()


def make_key(store: Store, models: str, name: str = "test-app") -> str:
    from nightshift.api.keys import KeyManager

    return KeyManager(store).create(name, models, created_by="tests")[1]


def api_settings(url: str, tmp_path: Path, **api: Any) -> Settings:
    defaults: dict[str, Any] = {"rate_limit_per_minute": 1_000_000, "rate_limit_burst": 100_000}
    return Settings(state_dir=str(tmp_path / "state"), store_url=url, api=ApiSettings(**{**defaults, **api}))


class LiveServer:
    """The app under a real uvicorn server in a thread, on a free loopback port."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from nightshift.api.app import create_app

        self.app = create_app(settings)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with contextlib.suppress(SystemExit):  # uvicorn exits when the app's startup fails
            self.server.run(sockets=[self.sock])

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the API server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start the API for a store URL (and ApiSettings overrides); stopped after the test."""
    servers: list[LiveServer] = []

    def _serve(url: str, **api: Any) -> LiveServer:
        server = LiveServer(api_settings(url, tmp_path, **api)).start()
        servers.append(server)
        return server

    yield _serve
    for server in servers:
        server.stop()
