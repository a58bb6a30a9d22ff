"""The prediction store: ONE MetaData (`db.schema`), runs and their atomic commit, staging backends, reads, migrations.

`db` and `data` import nothing above them in the package (checked by import-linter in `make lint`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nightshift.db.engine import StoreError, StoreUnavailable, normalize_url, redact, utcnow
from nightshift.db.store import CommitResult, PartitionInfo, Prediction, Store

if TYPE_CHECKING:  # pragma: no cover
    from nightshift.config import Settings


def open_store(settings: Settings, *, check: bool = True) -> Store:
    """The configured store; `check` makes sure its schema is current."""
    store = Store(settings.resolved_store_url, connect_retries=settings.connect_retries)
    if check:
        store.ensure_current()
    return store


__all__ = [
    "CommitResult",
    "PartitionInfo",
    "Prediction",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "normalize_url",
    "open_store",
    "redact",
    "utcnow",
]
