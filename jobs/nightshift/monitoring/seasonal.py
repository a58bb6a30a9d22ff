"""Seasonal baselines: under `monitoring.seasonality = "weekly"` a night is compared with its own weekday.

A weekly rhythm (usage up at the weekend) moves every usage feature by a few tenths of a standard
deviation between a Tuesday and a Saturday. Against one reference for all days, the drift checks
(0.1 of a reference SD) would then fail every weekend: that is no drift, it is the week. With
`seasonality = "weekly"` the reference of a night is built from the version's reference days that
fall on the same weekday (exact counts and the hash sample alike), so the week cancels and a real
change stands out at the usual thresholds. The version's training window should then cover whole
weeks (`training.window_days` of 7 or 14): a weekday missing from it falls back to the whole reference.

The weekday references are built once per (version, weekday) and stored beside the version's
reference (`<artifact folder>/monitoring/weekday-<0..6>/`), checked like it (format, sample
SHA-256, the model's SHA-256, and the days they describe).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from datetime import date

import fsspec
import pyarrow.parquet as pq

from nightshift.config import Settings
from nightshift.models.registry import ModelVersion
from nightshift.monitoring.reference import REFERENCE_FORMAT, Reference, build_reference, save_reference

log = logging.getLogger(__name__)


def reference_days(reference: Reference) -> list[date]:
    """The days a reference describes."""
    return sorted({date.fromisoformat(str(p["ds"])) for p in reference.partitions if p.get("ds")})


def same_weekday(days: list[date], ds: date) -> list[date]:
    """The days that fall on `ds`'s weekday."""
    return [d for d in days if d.weekday() == ds.weekday()]


def _load(folder: str, mv: ModelVersion, days: list[date]) -> Reference | None:
    try:
        with fsspec.open(f"{folder}/reference.json", "rb") as f:
            stats = json.loads(f.read())
        with fsspec.open(f"{folder}/reference.parquet", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    if (
        stats.get("format") != REFERENCE_FORMAT
        or hashlib.sha256(data).hexdigest() != stats.get("sample_sha256")
        or stats.get("model_sha256") != mv.sha256
        or sorted(str(p.get("ds")) for p in stats.get("partitions", [])) != [d.isoformat() for d in days]
    ):
        return None
    return Reference(mv.model, mv.version, pq.ParquetFile(io.BytesIO(data)).read(), stats, folder)


def weekday_reference(settings: Settings, mv: ModelVersion, ds: date, base: Reference) -> Reference:
    """The reference night `ds` is checked against under weekly seasonality (see the module's docstring)."""
    days = same_weekday(reference_days(base), ds)
    if not days:
        log.warning(
            "model %r v%d: no reference day falls on a %s: ds=%s is checked against the whole reference "
            "(a training window of whole weeks avoids this)",
            mv.model,
            mv.version,
            ds.strftime("%A"),
            ds,
        )
        return base
    folder = f"{base.uri.rstrip('/')}/weekday-{ds.weekday()}"
    found = _load(folder, mv, days)
    if found is not None:
        return found
    ref = build_reference(settings, mv, days, save=False)
    ref.uri = folder
    ref.stats["seasonality"] = {"weekday": ds.weekday(), "name": ds.strftime("%A"), "of": base.uri}
    save_reference(ref)
    return ref
