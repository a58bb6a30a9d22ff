"""OpenLineage run events (START, COMPLETE, FAIL) of scoring and training runs, POSTed as JSON over HTTP.

openlineage-python is not a dependency of nightshift: the events are plain JSON following the OpenLineage spec
(`OpenLineage.json` 2-0-2 and the standard facets named in FACET_SCHEMAS), sent the way that client's
HttpTransport sends them: `POST <openlineage_url>/<openlineage_endpoint>`, `Content-Type: application/json`,
`Authorization: Bearer <key>` when a key is set. nightshift's own facets (prefixed `nightshift_`) are described
by the JSON schema beside this module (`nightshift_facets.json`).

Datasets are named by OpenLineage's naming conventions: a local path is namespace `file`, name the absolute
path; `s3://bucket/key` is namespace `s3://bucket`, name `key` (likewise any `scheme://authority/path`); the
predictions are the store's `committed_predictions` view (PostgreSQL: `postgres://host:port`,
`<database>.public.committed_predictions`; SQLite: `sqlite`, `<file>.main.committed_predictions`).

An endpoint that is down, slow (`[lineage] timeout_s`) or answers an error is logged as a warning: lineage
never fails a run.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # pragma: no cover
    from nightshift.config import LineageSettings

log = logging.getLogger(__name__)

SPEC_URL = "https://openlineage.io/spec/2-0-2/OpenLineage.json"
_FACETS = "https://openlineage.io/spec/facets"
#: The standard facets nightshift writes, by their key in an event, with the schema (version) each follows.
FACET_SCHEMAS = {
    "nominalTime": f"{_FACETS}/1-0-1/NominalTimeRunFacet.json#/$defs/NominalTimeRunFacet",
    "processing_engine": f"{_FACETS}/1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet",
    "errorMessage": f"{_FACETS}/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet",
    "jobType": f"{_FACETS}/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet",
    "schema": f"{_FACETS}/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet",
    "version": f"{_FACETS}/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet",
    "lifecycleStateChange": f"{_FACETS}/1-0-1/LifecycleStateChangeDatasetFacet.json"
    "#/$defs/LifecycleStateChangeDatasetFacet",
    "inputStatistics": f"{_FACETS}/1-0-0/InputStatisticsInputDatasetFacet.json#/$defs/InputStatisticsInputDatasetFacet",
    "outputStatistics": f"{_FACETS}/1-0-2/OutputStatisticsOutputDatasetFacet.json"
    "#/$defs/OutputStatisticsOutputDatasetFacet",
}
#: The schema of nightshift's own facets (nightshift_facets.json beside this module) and each facet's definition.
CUSTOM_SCHEMA = "urn:nightshift:openlineage:facets:1"
CUSTOM_FACETS = {
    "nightshift_run": "NightshiftRunFacet",
    "nightshift_manifest": "NightshiftManifestDatasetFacet",
    "nightshift_partition": "NightshiftPartitionDatasetFacet",
    "nightshift_training": "NightshiftTrainingDatasetFacet",
    "nightshift_model": "NightshiftModelDatasetFacet",
}
START, COMPLETE, FAIL = "START", "COMPLETE", "FAIL"


@cache
def nightshift_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nightshift")
    except PackageNotFoundError:  # pragma: no cover - a source tree never installed
        return "0+unknown"


def producer() -> str:
    """The URI naming what wrote an event (the spec asks for a URI; nightshift has no public home to point at)."""
    return f"urn:nightshift:{nightshift_version()}"


def new_run_id() -> str:
    """A UUIDv7 (time-ordered, as the spec recommends for run ids): 48 bits of Unix milliseconds, then random."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 | (rand & (2**62 - 1))
    return str(uuid.UUID(int=value))


def facet(key: str, **fields: Any) -> dict[str, Any]:
    """A standard facet (FACET_SCHEMAS) or one of nightshift's (CUSTOM_FACETS), with _producer and _schemaURL."""
    if key in FACET_SCHEMAS:
        schema = FACET_SCHEMAS[key]
    elif key in CUSTOM_FACETS:
        schema = f"{CUSTOM_SCHEMA}#/$defs/{CUSTOM_FACETS[key]}"
    else:
        raise KeyError(f"no schema known for facet {key!r}")
    return {"_producer": producer(), "_schemaURL": schema, **{k: v for k, v in fields.items() if v is not None}}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def nominal_time(ds: date) -> dict[str, Any]:
    """The day a run is about: [ds 00:00, ds+1 00:00) UTC."""
    start = datetime(ds.year, ds.month, ds.day, tzinfo=UTC)
    return facet("nominalTime", nominalStartTime=iso(start), nominalEndTime=iso(start + timedelta(days=1)))


def dataset_id(uri: str) -> tuple[str, str]:
    """(namespace, name) of a file or folder by OpenLineage's naming: `file` + absolute path for local paths,
    `scheme://authority` + the path for URIs (s3://bucket/key → s3://bucket, key)."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file", "local") or len(parts.scheme) == 1:  # a Windows drive letter is no scheme
        path = parts.path if parts.scheme in ("file", "local") else uri
        return "file", os.path.abspath(path)
    return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/") or "/"


def store_dataset(store_url: str) -> tuple[str, str]:
    """(namespace, name) of the store's committed predictions (the `committed_predictions` view)."""
    from sqlalchemy.engine import make_url

    url = make_url(store_url)
    if url.get_backend_name() == "postgresql":
        return (
            f"postgres://{url.host or 'localhost'}:{url.port or 5432}",
            f"{url.database}.public.committed_predictions",
        )
    return "sqlite", f"{os.path.abspath(url.database or '')}.main.committed_predictions"


def dataset(
    namespace: str, name: str, facets: dict[str, Any] | None = None, *, io: str = "", io_facets: Any = None
) -> dict[str, Any]:
    """An input (`io="input"`) or output (`io="output"`) dataset with its facets."""
    out: dict[str, Any] = {"namespace": namespace, "name": name}
    if facets:
        out["facets"] = facets
    if io_facets:
        out[f"{io}Facets"] = io_facets
    return out


def run_event(
    event_type: str,
    *,
    run_id: str,
    namespace: str,
    job_name: str,
    job_type: str,
    run_facets: dict[str, Any] | None = None,
    inputs: list[dict[str, Any]] | None = None,
    outputs: list[dict[str, Any]] | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """One RunEvent of the spec: the run, its job (a BATCH job of nightshift), inputs and outputs."""
    facets = {
        "processing_engine": facet("processing_engine", name="nightshift", version=nightshift_version()),
        **(run_facets or {}),
    }
    return {
        "eventType": event_type,
        "eventTime": iso(at or datetime.now(UTC)),
        "producer": producer(),
        "schemaURL": f"{SPEC_URL}#/$defs/RunEvent",
        "run": {"runId": run_id, "facets": facets},
        "job": {
            "namespace": namespace,
            "name": job_name,
            "facets": {"jobType": facet("jobType", processingType="BATCH", integration="NIGHTSHIFT", jobType=job_type)},
        },
        "inputs": inputs or [],
        "outputs": outputs or [],
    }


def error_facet(error: BaseException | str) -> dict[str, Any]:
    """errorMessage: the failure as the run recorded it (and its traceback when it is an exception)."""
    if isinstance(error, BaseException):
        import traceback

        message = f"{type(error).__name__}: {error}"
        stack = "".join(traceback.format_exception(error))[-8000:] if error.__traceback__ else None
    else:
        message, stack = error, None
    return facet("errorMessage", message=message[:8000], programmingLanguage="python", stackTrace=stack)


class Emitter:
    """Sends events to the configured endpoint; does nothing without one. `emit` never raises."""

    def __init__(self, settings: LineageSettings) -> None:
        self.settings = settings
        base = settings.openlineage_url
        self.url = f"{base.rstrip('/')}/{settings.openlineage_endpoint.lstrip('/')}" if base else None
        if self.url is not None and urlsplit(self.url).scheme not in ("http", "https"):
            log.warning("[lineage] openlineage_url %r is not an http(s) URL: no OpenLineage events are sent", base)
            self.url = None

    @property
    def enabled(self) -> bool:
        return self.url is not None

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    def emit(self, event: dict[str, Any]) -> bool:
        """POST one event; True when the endpoint accepted it, False (with a warning) when it did not."""
        if self.url is None:
            return False
        headers = {"Content-Type": "application/json"}
        if self.settings.openlineage_api_key is not None:
            headers["Authorization"] = f"Bearer {self.settings.openlineage_api_key.get_secret_value()}"
        body = json.dumps(event, allow_nan=False, default=str).encode()
        what = (
            f"{event.get('eventType')} of {event.get('job', {}).get('name')} (run {event.get('run', {}).get('runId')})"
        )
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")  # noqa: S310 - http(s) only
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:  # noqa: S310
                response.read()
        except urllib.error.HTTPError as exc:
            log.warning("OpenLineage endpoint %s refused the %s: HTTP %s", self.url, what, exc.code)
            return False
        except Exception as exc:  # noqa: BLE001 - a lineage endpoint never fails a run
            log.warning("OpenLineage endpoint %s unreachable, the %s was not sent: %s", self.url, what, exc)
            return False
        return True
