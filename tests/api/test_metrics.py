"""/metrics counts what happened: a client that hangs up is not a server error, a 413 belongs to its route."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import Seeded, make_key, seed

BATCH = "/v1/models/{model}/predictions/batch"


@pytest.fixture
def lite(sqlite_url: str, tmp_path: Path) -> Iterator[Seeded]:
    """The seeded store on SQLite only: what is counted does not depend on the database."""
    s = seed(sqlite_url, tmp_path / "models")
    yield s
    s.store.dispose()


def _requests(api: Any) -> dict[tuple[str, str, str], float]:
    with api.client() as c:
        text = c.get("/metrics").text
    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "nightshift_api_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    out[(labels["route"], labels["method"], labels["status"])] = sample.value
    return out


def _wait_for(api: Any, key: tuple[str, str, str], timeout_s: float = 10) -> dict[tuple[str, str, str], float]:
    deadline = time.monotonic() + timeout_s
    while True:
        counts = _requests(api)
        if key in counts or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def test_a_client_that_disconnects_mid_upload_is_counted_apart_under_its_route(lite: Seeded, serve: Any) -> None:
    api = serve(lite.url, max_body_bytes=4096)
    key = make_key(lite.store, "*")
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/models/churn/predictions/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2000\r\nX-API-Key: " + key.encode() + b"\r\n\r\n" + b'{"ids": ["' + b"1" * 500
        )
        time.sleep(0.3)  # the server has read the first half and waits for the rest; then the client hangs up
    counts = _wait_for(api, (BATCH, "POST", "499"))
    assert counts.get((BATCH, "POST", "499")) == 1, counts
    assert not [k for k in counts if k[2] == "500"], counts  # not a server error
    assert not [k for k in counts if k[0] == "unmatched"], counts


def test_a_413_is_counted_under_the_route_it_was_sent_to(lite: Seeded, serve: Any) -> None:
    api = serve(lite.url, max_body_bytes=4096)
    key = make_key(lite.store, "*")
    big = b'{"ids": ["' + b"1" * 5000 + b'"]}'
    with api.client(key) as c:
        declared = c.post(
            "/v1/models/churn/predictions/batch", content=big, headers={"content-type": "application/json"}
        )
        assert declared.status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is hit while streaming
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        streamed = c.post("/v1/models/churn/predictions/batch", content=chunks(), headers={"content-type": "x"})
        assert streamed.status_code == 413
        assert c.get("/no/such/route").status_code == 404
    counts = _requests(api)
    assert counts.get((BATCH, "POST", "413")) == 2, counts
    assert counts.get(("unmatched", "GET", "404")) == 1, counts  # a path no route matches stays one label
    assert not [k for k in counts if k[2] in ("413", "500") and k[0] == "unmatched"], counts
