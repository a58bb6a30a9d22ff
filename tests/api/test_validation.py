"""Hostile and malformed input: 422/413 with a reason, never a 500, and nothing but bound parameters reach SQL."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import quote

import pytest

from tests.api.conftest import Seeded, make_key

pytestmark = pytest.mark.timeout(120)

BAD_ENTITY_IDS = [
    "1' OR '1'='1",
    "1; DROP TABLE predictions; --",
    "1\x00",
    "\x00",
    "a b",
    "x" * 129,
    "café",
    "1\n",
    '"',
    "%",
    "1)--",
]
SQLI_MODELS = ["churn' OR 1=1 --", "churn;", "Churn", "1churn", "x" * 64]


def test_malformed_and_hostile_ids_are_422(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url)
    with api.client(make_key(seeded.store, "*")) as c:
        for bad in BAD_ENTITY_IDS:
            r = c.get(f"/v1/models/churn/predictions/{quote(bad, safe='')}")
            assert r.status_code == 422, (bad, r.status_code, r.text)
            (issue,) = r.json()["detail"]
            assert issue["loc"] == ["path", "entity_id"]
            r = c.post("/v1/models/churn/predictions/batch", json={"ids": ["1", bad]})
            assert r.status_code == 422, (bad, r.text)
        for bad in SQLI_MODELS:
            r = c.get(f"/v1/models/{quote(bad, safe='')}/predictions/1")
            assert r.status_code == 422, (bad, r.text)
        queries: list[dict[str, Any]] = [
            {"version": "1 OR 1=1"},
            {"version": "0"},
            {"version": "-1"},
            {"version": str(2**31)},
            {"version": "99999999999999999999999"},
            {"version": "1.5"},
            {"alias": "Champion"},
            {"alias": "x' OR '1'='1"},
            {"alias": "a" * 65},
            {"ds": "2026-13-01"},
            {"ds": "yesterday"},
            {"ds": "2026-11-18' OR '1'='1"},
            {"ds": "20261118"},
            {"version": "1", "alias": "champion"},
        ]
        for params in queries:
            r = c.get("/v1/models/churn/predictions/1", params=params)
            assert r.status_code == 422, (params, r.text)
            r = c.post("/v1/models/churn/predictions/batch", params=params, json={"ids": ["1"]})
            assert r.status_code == 422, (params, r.text)
        # The tables are intact and the valid read still works.
        assert c.get("/v1/models/churn/predictions/1").status_code == 200


def test_bad_batch_bodies_are_422(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url, max_batch_ids=50)
    url = "/v1/models/churn/predictions/batch"
    with api.client(make_key(seeded.store, "*")) as c:
        assert c.post(url, json={"ids": [str(i) for i in range(50)]}).status_code == 200
        too_many = c.post(url, json={"ids": [str(i) for i in range(51)]})
        assert too_many.status_code == 422
        assert too_many.json()["detail"][0]["type"] == "too_long"
        for body in ({"ids": []}, {"ids": "1"}, {"ids": [1]}, {"ids": [None]}, {}, [], {"ids": ["1"], "more": 1}):
            r = c.post(url, json=body)
            assert r.status_code == 422, (body, r.text)
        for raw in (b"{", b"not json", b"\xff\xfe", b'{"ids": ["1\\u0000"]}', b"\x00" * 10):
            r = c.post(url, content=raw, headers={"content-type": "application/json"})
            # Bytes that are not even text are FastAPI's 400; anything that parses is validated: 422.
            assert r.status_code in (400, 422), (raw, r.status_code, r.text)
            assert "detail" in r.json()
        schema = c.get("/openapi.json").json()
        batch = schema["components"]["schemas"]["BatchRequest"]["properties"]["ids"]
        assert batch["maxItems"] == 50  # the documented cap is the enforced one


def test_oversized_bodies_are_413_declared_or_streamed(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url, max_body_bytes=4096, max_batch_ids=20)
    key = make_key(seeded.store, "*")
    big = b'{"ids": ["' + b"1" * 5000 + b'"]}'
    with api.client(key) as c:
        r = c.post("/v1/models/churn/predictions/batch", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert "4096" in r.json()["detail"]

        def chunks() -> Any:  # no Content-Length: chunked transfer encoding
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        r = c.post("/v1/models/churn/predictions/batch", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/v1/models/churn/predictions/batch", json={"ids": ["1"]}).status_code == 200
    # A lying Content-Length header is refused before any body is read.
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/models/churn/predictions/batch HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 999999999\r\nX-API-Key: " + key.encode() + b"\r\n\r\n"
        )
        assert s.recv(1024).startswith(b"HTTP/1.1 413")
