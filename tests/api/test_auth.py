"""API keys: the auth matrix, scopes that do not leak existence, revocation, hashing, rate limits, and the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from nightshift.api.keys import ApiKeyError, KeyManager, hash_key, parse_scopes
from tests.api.conftest import Seeded, make_key

pytestmark = pytest.mark.timeout(120)

PATHS = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/churn/predictions/1", None),
    ("POST", "/v1/models/churn/predictions/batch", {"ids": ["1"]}),
]


def _call(c: Any, method: str, path: str, body: Any) -> Any:
    return c.request(method, path, json=body) if body is not None else c.request(method, path)


def test_auth_matrix(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url, key_cache_ttl_s=0.2)
    good = make_key(seeded.store, "churn")
    revoked = make_key(seeded.store, "*", name="old-app")
    KeyManager(seeded.store).revoke("old-app")
    key_id = good.split("_")[1]
    forged = f"nsk_{key_id}_{'A' * 43}"  # a real key id with a wrong secret
    cases = {
        "no key": None,
        "empty key": "",
        "garbage": "let-me-in",
        "forged secret": forged,
        "unknown key id": f"nsk_{'0' * 12}_{'B' * 43}",
        "revoked": revoked,
        "sql in key": "nsk_' OR '1'='1",
    }
    for name, key in cases.items():
        headers = {"X-API-Key": key} if key is not None else {}
        with api.client() as c:
            for method, path, body in PATHS:
                r = c.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (name, path, r.text)
                assert r.headers["www-authenticate"].startswith("ApiKey")
                assert "detail" in r.json()
    with api.client(good) as c:
        for method, path, body in PATHS:
            assert _call(c, method, path, body).status_code == 200, path


def test_a_model_outside_the_scope_answers_exactly_like_an_unknown_model(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url)
    scoped = make_key(seeded.store, "churn")
    everything = make_key(seeded.store, "*")
    with api.client(scoped) as c:
        for model in ("fraud", "nosuchmodel"):
            single = c.get(f"/v1/models/{model}/predictions/1")
            batch = c.post(f"/v1/models/{model}/predictions/batch", json={"ids": ["1"]})
            as_of = c.get(f"/v1/models/{model}/predictions/1", params={"alias": "challenger", "ds": "2026-11-18"})
            for r in (single, batch, as_of):
                assert r.status_code == 404
                assert r.json() == {"detail": f"model {model!r} not found"}
        # Same status, same body, same headers, byte for byte, whether the model exists or not.
        a = c.get("/v1/models/fraud/predictions/1")
        b = c.get("/v1/models/frauds/predictions/1")
        assert a.content.replace(b"fraud", b"X") == b.content.replace(b"frauds", b"X")
        assert sorted(k for k in a.headers if k != "date") == sorted(k for k in b.headers if k != "date")
        assert [m["model"] for m in c.get("/v1/models").json()["models"]] == ["churn"]
    with api.client(everything) as c:  # an unknown model answers the same to a key for all models
        r = c.get("/v1/models/nosuchmodel/predictions/1")
        assert (r.status_code, r.json()) == (404, {"detail": "model 'nosuchmodel' not found"})
        assert c.get("/v1/models/fraud/predictions/1").status_code == 200


def test_revocation_takes_effect_within_the_key_cache_ttl(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url, key_cache_ttl_s=0.3)
    key = make_key(seeded.store, "churn", name="to-revoke")
    with api.client(key) as c:
        assert c.get("/v1/models/churn/predictions/1").status_code == 200
        (revoked,) = KeyManager(seeded.store).revoke(key)  # by the key itself
        assert revoked.revoked_at is not None
        time.sleep(0.5)
        assert c.get("/v1/models/churn/predictions/1").status_code == 401


def test_keys_are_stored_hashed_and_scopes_validated(seeded: Seeded) -> None:
    manager = KeyManager(seeded.store)
    key, token = manager.create("billing", "churn, fraud", created_by="tests")
    assert key.models == ("churn", "fraud")
    with seeded.store.connect() as conn:
        rows = conn.execute(sa.text("SELECT key_id, key_hash, models FROM api_keys")).all()
    stored = {r[0]: r for r in rows}[key.key_id]
    assert stored[1] == hash_key(token) != token
    assert token.split("_")[2] not in "".join(str(v) for r in rows for v in r)  # the secret is nowhere
    assert stored[2] == "churn,fraud"
    for bad in ("", "*,churn", "Churn", "churn;drop table api_keys"):
        with pytest.raises(ApiKeyError):
            parse_scopes(bad)
    with pytest.raises(ApiKeyError):
        manager.revoke("no-such-key")
    assert [k.name for k in manager.list_keys()] == ["billing"]


def test_rate_limit_answers_429_with_retry_after(seeded: Seeded, serve: Any) -> None:
    api = serve(seeded.url, rate_limit_per_minute=60, rate_limit_burst=3)
    key = make_key(seeded.store, "*")
    other = make_key(seeded.store, "*", name="other-app")
    with api.client(key) as c:
        statuses = [c.get("/v1/models/churn/predictions/1").status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        r = c.get("/v1/models/churn/predictions/1")
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert "rate limit" in r.json()["detail"]
        assert c.post("/v1/models/churn/predictions/batch", json={"ids": ["1"]}).status_code == 429
        assert c.get("/v1/models").status_code == 429
    with api.client(other) as c:  # per key: another key still has its tokens
        assert c.get("/v1/models/churn/predictions/1").status_code == 200
    with api.client() as c:  # probes are not rate limited
        assert all(c.get("/healthz").status_code == 200 for _ in range(10))


def test_keys_cli_create_list_revoke(seeded: Seeded, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nightshift.cli import app

    config = tmp_path / "nightshift.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nstore_url = "{seeded.url}"\n')
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--name", "crm", "--models", "churn", "-c", str(config)])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("nsk_")
    listed = runner.invoke(app, ["keys", "list", "--json", "-c", str(config)])
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.stdout)
    assert entry["name"] == "crm"
    assert entry["models"] == ["churn"]
    assert entry["revoked_at"] is None
    assert token not in listed.stdout
    assert token.split("_")[1] == entry["key_id"]
    revoked = runner.invoke(app, ["keys", "revoke", entry["key_id"], "-c", str(config)])
    assert revoked.exit_code == 0, revoked.output
    (entry,) = json.loads(runner.invoke(app, ["keys", "list", "--json", "-c", str(config)]).stdout)
    assert entry["revoked_at"] is not None
    bad = runner.invoke(app, ["keys", "create", "--name", "x", "--models", "Not A Model", "-c", str(config)])
    assert bad.exit_code != 0
