"""nightshift's own OpenLineage facets, as openlineage-python facet classes (keys prefixed `nightshift_`).

Each extends the client's RunFacet or DatasetFacet, so it carries `_producer` and a `_schemaURL` naming its
definition in `nightshift_facets.json` beside this module (`$id` CUSTOM_SCHEMA). Kept apart from
`nightshift.telemetry.openlineage` because importing openlineage-python takes a noticeable fraction of a second:
only a run that sends events imports it.
"""

from __future__ import annotations

from typing import Any

import attr
from openlineage.client.facet_v2 import DatasetFacet, RunFacet

CUSTOM_SCHEMA = "urn:nightshift:openlineage:facets:1"


@attr.define
class NightshiftRunFacet(RunFacet):
    """`nightshift_run`: the store's run and Airflow's behind an OpenLineage run."""

    model: str
    ds: str
    kind: str | None = None
    version: int | None = None
    store_run_id: int | None = None
    run_key: str | None = None
    replaced_run_id: int | None = None
    model_sha256: str | None = None
    host: str | None = None
    pid: int | None = None
    status: str | None = None
    reason: str | None = None
    candidate_id: int | None = None

    @staticmethod
    def _get_schema() -> str:
        return f"{CUSTOM_SCHEMA}#/$defs/NightshiftRunFacet"


@attr.define
class NightshiftManifestDatasetFacet(DatasetFacet):
    """`nightshift_manifest`: the partition's files as the run read them, with their fingerprints."""

    partition: str
    ds: str
    fingerprint: str
    files: list[dict[str, Any]]
    digest: str | None = None
    error: str | None = None

    @staticmethod
    def _get_schema() -> str:
        return f"{CUSTOM_SCHEMA}#/$defs/NightshiftManifestDatasetFacet"


@attr.define
class NightshiftPartitionDatasetFacet(DatasetFacet):
    """`nightshift_partition`: the (model, version, ds) partition of the predictions a scoring run writes."""

    model: str
    version: int
    ds: str
    store_run_id: int
    status: str

    @staticmethod
    def _get_schema() -> str:
        return f"{CUSTOM_SCHEMA}#/$defs/NightshiftPartitionDatasetFacet"


@attr.define
class NightshiftTrainingDatasetFacet(DatasetFacet):
    """`nightshift_training`: the days, files and rows a training run read of a feature or label dataset."""

    role: str
    days: list[Any]
    partitions: list[dict[str, Any]]
    rows: int | None = None
    content_sha256: str | None = None

    @staticmethod
    def _get_schema() -> str:
        return f"{CUSTOM_SCHEMA}#/$defs/NightshiftTrainingDatasetFacet"


@attr.define
class NightshiftModelDatasetFacet(DatasetFacet):
    """`nightshift_model`: the model version a training run registered (its ONNX artifact)."""

    model: str
    version: int
    sha256: str
    size_bytes: int | None = None
    algorithm: str | None = None
    task: str | None = None
    created_by: str | None = None
    status: str | None = None

    @staticmethod
    def _get_schema() -> str:
        return f"{CUSTOM_SCHEMA}#/$defs/NightshiftModelDatasetFacet"


CUSTOM_FACETS: dict[str, type[RunFacet] | type[DatasetFacet]] = {
    "nightshift_run": NightshiftRunFacet,
    "nightshift_manifest": NightshiftManifestDatasetFacet,
    "nightshift_partition": NightshiftPartitionDatasetFacet,
    "nightshift_training": NightshiftTrainingDatasetFacet,
    "nightshift_model": NightshiftModelDatasetFacet,
}
