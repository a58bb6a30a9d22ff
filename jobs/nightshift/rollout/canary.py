"""Canary routing: a stable hash-based share of entities, the same every night (light: the API imports it)."""

from __future__ import annotations

import hashlib


def canary_bucket(model: str, entity_id: str) -> float:
    """A stable number in [0, 1) per (model, entity): the same entities are canaries every night."""
    digest = hashlib.blake2b(f"{model}\x00{entity_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def serves_challenger(model: str, entity_id: str, share: float) -> bool:
    """Whether the API answers this entity from the challenger while a canary of `share` runs."""
    return canary_bucket(model, entity_id) < share
