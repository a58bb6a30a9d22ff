"""API keys: generation, hashing, scopes, and their management (`nightshift keys create|list|revoke`)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from nightshift.db.schema import api_keys
from nightshift.errors import NightshiftError

KEY_PREFIX = "nsk"
ALL_MODELS = "*"
_KEY_ID_HEX = 12
_KEY_RE = re.compile(rf"^{KEY_PREFIX}_([0-9a-f]{{{_KEY_ID_HEX}}})_([A-Za-z0-9_-]{{43}})$")
_MODEL_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class ApiKeyError(NightshiftError):
    """An API key operation was refused (unknown key, bad scope)."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    key_id: str
    name: str
    models: tuple[str, ...]
    created_at: datetime
    created_by: str
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "models": list(self.models),
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def hash_key(token: str) -> str:
    """The stored form of a key: SHA-256 hex of the whole token.

    A key reads ``nsk_<key_id>_<secret>``: ``key_id`` (12 hex digits) is public and finds the
    row; ``secret`` is 256 random bits. A slow password KDF (bcrypt, scrypt, argon2) exists to
    make guessing *low-entropy* secrets expensive after a database leak; a 256-bit random
    secret cannot be guessed at any hash rate, so a fast hash loses nothing and keeps each
    request's check at a microsecond instead of tens of milliseconds of CPU (which would
    itself be a denial-of-service lever).
    """
    return hashlib.sha256(token.encode()).hexdigest()


def parse_key(token: str) -> str | None:
    """The key_id of a well-formed key, else None (checked before any database access)."""
    m = _KEY_RE.match(token)
    return m.group(1) if m else None


def matches(token: str, stored_hash: str) -> bool:
    """Whether `token` hashes to `stored_hash`, compared in constant time."""
    return hmac.compare_digest(hash_key(token), stored_hash)


def new_key() -> tuple[str, str]:
    """A fresh (key_id, token) pair."""
    key_id = secrets.token_hex(_KEY_ID_HEX // 2)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def parse_scopes(models: str | Sequence[str]) -> tuple[str, ...]:
    """Validated model scopes: ("*",) or sorted unique model names."""
    items = [m.strip() for m in (models.split(",") if isinstance(models, str) else models)]
    items = [m for m in items if m]
    if not items:
        raise ApiKeyError("a key needs at least one model scope (a model name, or '*' for all models)")
    if ALL_MODELS in items:
        if len(items) > 1:
            raise ApiKeyError("scope '*' already covers every model: give '*' alone")
        return (ALL_MODELS,)
    bad = [m for m in items if not _MODEL_RE.match(m)]
    if bad:
        raise ApiKeyError(f"invalid model name(s) in scope: {', '.join(map(repr, bad))}")
    return tuple(sorted(set(items)))


def format_scopes(scopes: Sequence[str]) -> str:
    return ",".join(scopes)


def _as_utc(v: Any) -> datetime:
    if isinstance(v, str):
        v = datetime.fromisoformat(v)
    assert isinstance(v, datetime)
    return v if v.tzinfo else v.replace(tzinfo=UTC)


def _row_to_key(row: Any) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        name=row.name,
        models=tuple(row.models.split(",")),
        created_at=_as_utc(row.created_at),
        created_by=row.created_by,
        revoked_at=_as_utc(row.revoked_at) if row.revoked_at is not None else None,
    )


class KeyManager:
    """Create, list and revoke keys in the store's database (synchronous: the CLI's side)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def create(self, name: str, models: str | Sequence[str], *, created_by: str) -> tuple[ApiKey, str]:
        """A new key; returns it and the plaintext token, which is shown once and never stored."""
        name = name.strip()
        if not name or len(name) > 128:
            raise ApiKeyError("a key needs a name of 1 to 128 characters")
        scopes = parse_scopes(models)
        key_id, token = new_key()
        now = datetime.now(UTC)
        with self.store.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    key_id=key_id,
                    name=name,
                    key_hash=hash_key(token),
                    models=format_scopes(scopes),
                    created_at=now,
                    created_by=created_by[:128],
                    revoked_at=None,
                )
            )
        return ApiKey(key_id, name, scopes, now, created_by[:128], None), token

    def list_keys(self, *, include_revoked: bool = True) -> list[ApiKey]:
        q = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.key_id)
        if not include_revoked:
            q = q.where(api_keys.c.revoked_at.is_(None))
        with self.store.connect() as conn:
            return [_row_to_key(r) for r in conn.execute(q)]

    def revoke(self, key_id_or_name: str) -> list[ApiKey]:
        """Revoke the key with this key_id (or every active key with this name). Returns what was revoked."""
        ident = key_id_or_name.strip()
        parsed = parse_key(ident)
        if parsed:
            ident = parsed  # a whole token was pasted: revoke its key
        now = datetime.now(UTC)
        with self.store.begin() as conn:
            rows = list(
                conn.execute(
                    sa.select(api_keys).where(
                        sa.or_(api_keys.c.key_id == ident, api_keys.c.name == ident),
                        api_keys.c.revoked_at.is_(None),
                    )
                )
            )
            if not rows:
                raise ApiKeyError(f"no active API key with id or name {key_id_or_name!r}")
            ids = [r.key_id for r in rows]
            conn.execute(api_keys.update().where(api_keys.c.key_id.in_(ids)).values(revoked_at=now))
        return [dataclasses.replace(_row_to_key(r), revoked_at=now) for r in rows]
