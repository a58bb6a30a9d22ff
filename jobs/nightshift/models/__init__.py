"""Models: the registry of versions, aliases and their audit trail, and the import of models users bring."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nightshift.models.registry import (
    CHAMPION,
    ModelVersion,
    Registry,
    current_user,
    json_safe,
    read_artifact,
    sha256_bytes,
)

if TYPE_CHECKING:  # pragma: no cover
    from nightshift.config import Settings
    from nightshift.db import Store


def open_registry(settings: Settings, store: Store | None = None) -> Registry:
    """The registry of the configured store (opened and schema-checked when not given)."""
    from nightshift.db import open_store

    return Registry(store or open_store(settings), settings.artifacts_uri)


__all__ = [
    "CHAMPION",
    "ModelVersion",
    "Registry",
    "current_user",
    "json_safe",
    "open_registry",
    "read_artifact",
    "sha256_bytes",
]
