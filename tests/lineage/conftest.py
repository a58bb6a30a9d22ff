"""Lineage fixtures: a real HTTP endpoint on 127.0.0.1 that records what is sent to it, and the OpenLineage
JSON schema to validate every recorded event (tests/lineage/olspec.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.lineage.olspec import CUSTOM_FACETS, SPEC_DIR, Recorder, Schema, serve

__all__ = ["CUSTOM_FACETS", "SPEC_DIR", "Recorder", "Schema"]


@pytest.fixture(autouse=True)
def _no_openlineage_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """openlineage-python's own configuration (OPENLINEAGE_URL, OPENLINEAGE_CONFIG, ...) of whoever runs the
    tests stays out of them: each test sets what it needs."""
    for key in [k for k in os.environ if k.startswith("OPENLINEAGE")]:
        monkeypatch.delenv(key)


@pytest.fixture
def endpoint() -> Iterator[Recorder]:
    """A real HTTP server on a free loopback port, recording every POST and PUT."""
    recorder = Recorder()
    server, thread = serve(recorder)
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port() -> str:
    """A loopback URL where nothing listens: a lineage endpoint that is down."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def ol_schema() -> Schema:
    return Schema()
