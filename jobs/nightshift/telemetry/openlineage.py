"""OpenLineage run events (START, COMPLETE, FAIL) of scoring and training runs, built and sent with the official
client, openlineage-python (`openlineage.client`).

Events are the client's `event_v2.RunEvent`s, their standard facets its `facet_v2` classes (FACET_CLASSES names
each by its key in an event), nightshift's own facets (prefixed `nightshift_`) attrs classes extending the
client's RunFacet/DatasetFacet (`openlineage_facets`, described by `nightshift_facets.json` beside this module).
An `OpenLineageClient` sends them, so the client's own configuration applies (its filters, tags, facets; its
transports when nightshift does not choose one):

* `[lineage] openlineage_url` set: the client's HttpTransport, `POST <openlineage_url>/<openlineage_endpoint>`
  (`Authorization: Bearer <openlineage_api_key>` when set), one try per event, `[lineage] timeout_s`;
* otherwise, the transport the client configures itself from `OPENLINEAGE_URL` (with `OPENLINEAGE_ENDPOINT`,
  `OPENLINEAGE_API_KEY`), `OPENLINEAGE__TRANSPORT__*` variables or an `openlineage.yml` (`OPENLINEAGE_CONFIG`,
  the working directory, `~/.openlineage/`): HTTP, Kafka, a file, a composite of several...;
* neither: the client of the lineage context, when one is set (`lineage_context`; Airflow's tasks set the
  OpenLineage provider's, nightshift_airflow.lineage);
* none of these, or `OPENLINEAGE_DISABLED=true`: nothing is built or sent.

A run inside a larger one names it in the standard `parent` facet (with the root of the tree): the parent of
the lineage context (an Airflow task's run), else the one a scheduler hands a process in `OPENLINEAGE_PARENT_ID`
and `OPENLINEAGE_ROOT_PARENT_ID` (`<namespace>/<job name>/<run id>`, the convention of Airflow's
`lineage_parent_id` macro and dbt-ol).

Datasets are named by OpenLineage's naming conventions (the client's `openlineage.client.naming` where it has
one): a local path is namespace `file`, name the absolute path; `s3://bucket/key` is namespace `s3://bucket`,
name `key` (likewise any `scheme://authority/path`); the predictions are the store's `committed_predictions`
view (PostgreSQL: `postgres://host:port`, `<database>.public.committed_predictions`; SQLite: `sqlite`,
`<file>.main.committed_predictions`).

Whatever the transport, a run waits at most `[lineage] timeout_s` for each event: an endpoint that is down,
slow or answers an error is a warning in the log (a send still under way goes on in the background, in order;
one that hangs holds the next no longer than `timeout_s`), and lineage never fails a run. After a run's last event
its client is closed (Emitter.close, again within `timeout_s`): that frees its HTTP session and makes a queueing
transport (`async_http`) send what it still holds before the process can exit. Importing openlineage-python
takes a noticeable fraction of a second, so it is imported only when a run builds or sends an event.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

if TYPE_CHECKING:  # pragma: no cover
    from openlineage.client import OpenLineageClient
    from openlineage.client.event_v2 import InputDataset, OutputDataset, RunEvent
    from openlineage.client.facet_v2 import BaseFacet, error_message_run, nominal_time_run, parent_run

    from nightshift.config import LineageSettings

log = logging.getLogger(__name__)

START, COMPLETE, FAIL = "START", "COMPLETE", "FAIL"


@cache
def nightshift_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nightshift")
    except PackageNotFoundError:  # pragma: no cover - a source tree never installed
        return "0+unknown"


def producer() -> str:
    """The URI naming what wrote an event and nightshift's facets (the spec asks for a URI; nightshift has no
    public home to point at). Facets the client adds itself carry the client's producer."""
    return f"urn:nightshift:{nightshift_version()}"


def new_run_id() -> str:
    """A fresh run id: a UUIDv7 (RFC 9562: 48 bits of Unix milliseconds, then random bits), time-ordered as the
    spec recommends, the layout of the client's `generate_new_uuid`. Built here because every run records one,
    lineage on or off, and importing the client's package costs 0.24 s a run (measured with -X importtime)."""
    import secrets
    import uuid

    millis = (time.time_ns() // 1_000_000) & ((1 << 48) - 1)
    rand_a, rand_b = secrets.randbits(12), secrets.randbits(62)
    return str(uuid.UUID(int=(millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b))


@cache
def facet_classes() -> dict[str, type[BaseFacet]]:
    """The facet class of each key nightshift writes: the client's standard facets and nightshift's own."""
    from openlineage.client.facet_v2 import (
        dataset_version_dataset,
        error_message_run,
        input_statistics_input_dataset,
        job_type_job,
        lifecycle_state_change_dataset,
        nominal_time_run,
        output_statistics_output_dataset,
        processing_engine_run,
        schema_dataset,
    )

    from nightshift.telemetry.openlineage_facets import CUSTOM_FACETS

    return {
        "nominalTime": nominal_time_run.NominalTimeRunFacet,
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet,
        "errorMessage": error_message_run.ErrorMessageRunFacet,
        "jobType": job_type_job.JobTypeJobFacet,
        "schema": schema_dataset.SchemaDatasetFacet,
        "version": dataset_version_dataset.DatasetVersionDatasetFacet,
        "lifecycleStateChange": lifecycle_state_change_dataset.LifecycleStateChangeDatasetFacet,
        "inputStatistics": input_statistics_input_dataset.InputStatisticsInputDatasetFacet,
        "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet,
        **CUSTOM_FACETS,
    }


def facet_schemas() -> dict[str, str]:
    """The `_schemaURL` of each facet nightshift writes, as the client's classes give it."""
    return {key: cls._get_schema() for key, cls in facet_classes().items()}


def facet(key: str, **fields: Any) -> BaseFacet:
    """A standard facet or one of nightshift's, by its key (facet_classes), with nightshift as `_producer`.
    Fields given as None are left out; `schema` takes its fields as dicts (name, type, description)."""
    cls = facet_classes().get(key)
    if cls is None:
        raise KeyError(f"no facet class known for key {key!r}")
    given = {k: v for k, v in fields.items() if v is not None}
    if key == "schema":
        from openlineage.client.facet_v2 import schema_dataset

        given["fields"] = [schema_dataset.SchemaDatasetFacetFields(**f) for f in given.get("fields", [])]
    elif key == "lifecycleStateChange":
        from openlineage.client.facet_v2 import lifecycle_state_change_dataset

        given["lifecycleStateChange"] = lifecycle_state_change_dataset.LifecycleStateChange(
            given["lifecycleStateChange"]
        )
    return cls(**given, producer=producer())


# -- the run nightshift's runs belong to (an Airflow task, a dbt-ol style parent) ---------------------

#: The OpenLineage convention (dbt-ol, Airflow's `lineage_parent_id` macro) for a parent handed to a process:
#: `<namespace>/<job name>/<run id>`; the root of the whole tree likewise.
PARENT_ENV, ROOT_PARENT_ENV = "OPENLINEAGE_PARENT_ID", "OPENLINEAGE_ROOT_PARENT_ID"


@dataclass(frozen=True)
class RunRef:
    """A run of a job: (namespace, job name, run id)."""

    namespace: str
    name: str
    run_id: str

    @classmethod
    def parse(cls, text: str | None) -> RunRef | None:
        """`<namespace>/<job name>/<run id>` (the namespace may hold slashes: the last two parts are the job
        and the run; the run id a UUID, as the spec's `parent` facet requires); None for an empty or malformed
        value (with a warning: lineage never fails a run, and a bad parent never drops an event)."""
        import uuid

        if not text or not text.strip():
            return None
        parts = text.strip().rsplit("/", 2)
        if len(parts) == 3 and all(parts):
            try:
                uuid.UUID(parts[2])
            except ValueError:
                pass
            else:
                return cls(*parts)
        log.warning("an OpenLineage parent is <namespace>/<job name>/<run id (a UUID)>, not %r: ignored", text)
        return None


@dataclass(frozen=True)
class LineageContext:
    """Where nightshift's runs sit in a larger run (a task of an Airflow DAG run), set by whoever runs them.

    `parent` and `root` become the `parent` facet of every event (the root: the top of the tree, e.g. the DAG
    run); `client_factory`, when nightshift names no destination of its own, makes the client events go through
    (in Airflow: the OpenLineage provider's, so they go where Airflow's go); `on_event` sees every event sent."""

    parent: RunRef | None = None
    root: RunRef | None = None
    client_factory: Callable[[], OpenLineageClient | None] | None = None
    on_event: Callable[[RunEvent], None] | None = None


_CONTEXT: ContextVar[LineageContext | None] = ContextVar("nightshift_lineage_context", default=None)


@contextmanager
def lineage_context(context: LineageContext) -> Iterator[LineageContext]:
    """Inside: runs started in this thread (their Emitter is made here) use `context`."""
    token = _CONTEXT.set(context)
    try:
        yield context
    finally:
        _CONTEXT.reset(token)


def current_context() -> LineageContext:
    """The context set by `lineage_context`, else a parent (and root) from OPENLINEAGE_PARENT_ID and
    OPENLINEAGE_ROOT_PARENT_ID, as a scheduler hands them to a process it starts."""
    set_here = _CONTEXT.get()
    if set_here is not None:
        return set_here
    parent = RunRef.parse(os.environ.get(PARENT_ENV))
    root = RunRef.parse(os.environ.get(ROOT_PARENT_ENV)) if parent is not None else None
    return LineageContext(parent=parent, root=root)


def parent_facet(parent: RunRef, root: RunRef | None = None) -> parent_run.ParentRunFacet:
    """The standard `parent` run facet: this run was started by `parent` (within `root`'s tree)."""
    from openlineage.client.facet_v2 import parent_run

    top = root or parent
    return parent_run.ParentRunFacet(
        run=parent_run.Run(runId=parent.run_id),
        job=parent_run.Job(namespace=parent.namespace, name=parent.name),
        root=parent_run.Root(
            run=parent_run.RootRun(runId=top.run_id), job=parent_run.RootJob(namespace=top.namespace, name=top.name)
        ),
        producer=producer(),
    )


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def nominal_time(ds: date) -> nominal_time_run.NominalTimeRunFacet:
    """The day a run is about: [ds 00:00, ds+1 00:00) UTC."""
    from openlineage.client.facet_v2 import nominal_time_run

    start = datetime(ds.year, ds.month, ds.day, tzinfo=UTC)
    return nominal_time_run.NominalTimeRunFacet(
        nominalStartTime=iso(start), nominalEndTime=iso(start + timedelta(days=1)), producer=producer()
    )


def dataset_id(uri: str) -> tuple[str, str]:
    """(namespace, name) of a file or folder by OpenLineage's naming: `file` + absolute path for local paths,
    `scheme://authority` + the path for URIs (s3://bucket/key → s3://bucket, key)."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file", "local") or len(parts.scheme) == 1:  # a Windows drive letter is no scheme
        from openlineage.client.naming.dataset import LocalFileSystem

        local = LocalFileSystem(path=os.path.abspath(parts.path if parts.scheme in ("file", "local") else uri))
        return local.get_namespace(), local.get_name()
    key = parts.path.lstrip("/")
    if parts.scheme == "s3" and parts.netloc and key:
        from openlineage.client.naming.dataset import S3

        s3 = S3(bucket_name=parts.netloc, object_key=key)
        return s3.get_namespace(), s3.get_name()
    return f"{parts.scheme}://{parts.netloc}", key or "/"


def store_dataset(store_url: str) -> tuple[str, str]:
    """(namespace, name) of the store's committed predictions (the `committed_predictions` view)."""
    from sqlalchemy.engine import make_url

    url = make_url(store_url)
    if url.get_backend_name() == "postgresql":
        from openlineage.client.naming.dataset import Postgres

        pg = Postgres(
            host=url.host or "localhost",
            port=str(url.port or 5432),
            database=url.database or "postgres",
            schema="public",
            table="committed_predictions",
        )
        return pg.get_namespace(), pg.get_name()
    return "sqlite", f"{os.path.abspath(url.database or '')}.main.committed_predictions"


def dataset(
    namespace: str,
    name: str,
    facets: dict[str, Any] | None = None,
    *,
    io: str = "input",
    io_facets: dict[str, Any] | None = None,
) -> InputDataset | OutputDataset:
    """An input (`io="input"`, with `inputFacets`) or output (`io="output"`, with `outputFacets`) dataset."""
    from openlineage.client.event_v2 import InputDataset, OutputDataset

    if io == "output":
        return OutputDataset(namespace, name, facets=facets or None, outputFacets=io_facets or None)
    if io == "input":
        return InputDataset(namespace, name, facets=facets or None, inputFacets=io_facets or None)
    raise ValueError(f"io is 'input' or 'output', not {io!r}")


def run_event(
    event_type: str,
    *,
    run_id: str,
    namespace: str,
    job_name: str,
    job_type: str,
    run_facets: dict[str, Any] | None = None,
    inputs: list[Any] | None = None,
    outputs: list[Any] | None = None,
    at: datetime | None = None,
    parent: RunRef | None = None,
    root: RunRef | None = None,
) -> RunEvent:
    """One RunEvent: the run, its job (a BATCH job of nightshift), inputs and outputs; with a `parent` facet
    when given a parent (the run's Emitter holds the lineage context's: `emitter.context.parent`)."""
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import JobFacet, job_type_job, processing_engine_run

    facets = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            name="nightshift", version=nightshift_version(), producer=producer()
        ),
        **(run_facets or {}),
    }
    if parent is not None and "parent" not in facets:
        facets["parent"] = parent_facet(parent, root)
    job_facets: dict[str, JobFacet] = {
        "jobType": job_type_job.JobTypeJobFacet(
            processingType="BATCH", integration="NIGHTSHIFT", jobType=job_type, producer=producer()
        )
    }
    return RunEvent(
        eventType=RunState(event_type),
        eventTime=iso(at or datetime.now(UTC)),
        producer=producer(),
        run=Run(runId=run_id, facets=facets),
        job=Job(namespace=namespace, name=job_name, facets=job_facets),
        inputs=list(inputs or []),
        outputs=list(outputs or []),
    )


def event_type(event: RunEvent) -> str:
    """START, COMPLETE, FAIL... of an event (the client's RunState, or its value)."""
    return str(getattr(event.eventType, "value", event.eventType))


def error_facet(error: BaseException | str) -> error_message_run.ErrorMessageRunFacet:
    """errorMessage: the failure as the run recorded it (and its traceback when it is an exception)."""
    from openlineage.client.facet_v2 import error_message_run

    if isinstance(error, BaseException):
        import traceback

        message = f"{type(error).__name__}: {error}"
        stack = "".join(traceback.format_exception(error))[-8000:] if error.__traceback__ else None
    else:
        message, stack = error, None
    return error_message_run.ErrorMessageRunFacet(
        message=message[:8000], programmingLanguage="python", stackTrace=stack, producer=producer()
    )


# -- sending --------------------------------------------------------------------------------------------

_CLIENT_ENV = ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG")


def client_configured() -> bool:
    """Whether openlineage-python has a configuration of its own: `OPENLINEAGE_URL`, `OPENLINEAGE__TRANSPORT__*`
    variables, or an `openlineage.yml` where the client looks for one."""
    if any(os.environ.get(name) for name in _CLIENT_ENV):
        return True
    if any(key.startswith("OPENLINEAGE__TRANSPORT__") for key in os.environ):
        return True
    places = (os.path.join(os.getcwd(), "openlineage.yml"), os.path.expanduser("~/.openlineage/openlineage.yml"))
    return any(os.path.isfile(p) for p in places)


def _disabled() -> bool:
    return os.environ.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true"


def _make_client(
    settings: LineageSettings, context: LineageContext | None = None
) -> tuple[OpenLineageClient | None, str]:
    """The client that sends the events and a description of where to (for the log); (None, "") for none.
    nightshift's own setting first, then the client's own configuration, then the context's client (Airflow's)."""
    base = settings.openlineage_url
    if _disabled():
        return None, ""
    if not (base or client_configured()):
        if context is not None and context.client_factory is not None:
            client = context.client_factory()
            return client, "(the scheduler's OpenLineage transport)" if client is not None else ""
        return None, ""
    from openlineage.client import OpenLineageClient

    if base:
        if urlsplit(base).scheme not in ("http", "https"):
            log.warning("[lineage] openlineage_url %r is not an http(s) URL: no OpenLineage events are sent", base)
            return None, ""
        from openlineage.client.transport.http import ApiKeyTokenProvider, HttpConfig, HttpTransport, TokenProvider

        key = settings.openlineage_api_key
        config = HttpConfig(
            url=base.rstrip("/") + "/",  # so that the endpoint goes under the URL's own path
            endpoint=settings.openlineage_endpoint.lstrip("/"),
            timeout=settings.timeout_s,
            auth=ApiKeyTokenProvider({"apiKey": key.get_secret_value()}) if key is not None else TokenProvider({}),
            retry={"total": 0},  # one try: a run waits at most timeout_s for each event
        )
        return OpenLineageClient(transport=HttpTransport(config)), urljoin(config.url, config.endpoint)
    client = OpenLineageClient()
    transport = client.transport
    if transport.kind == "console" and (client.config.transport or {}).get("type") != "console":
        return None, ""  # a configuration without a transport: the client would print every event
    if isinstance(getattr(transport, "url", None), str):
        return client, urljoin(transport.url, getattr(transport, "endpoint", ""))  # type: ignore[attr-defined]
    return client, f"({transport.kind} transport)"


class Emitter:
    """Sends events through an openlineage-python client; does nothing without a destination.

    `emit` never raises and waits at most `[lineage] timeout_s`: the client sends on a thread of its own, one
    event after the other, so an event still under way when the wait ends is sent later, in order. A send is
    waited for only until its own `timeout_s` is up: one that hangs for good holds the events after it no
    longer than that (they are then sent beside it). `close` (after a run's last event) closes the client, which
    frees its connections and flushes what a queueing transport (`async_http`) still holds, within
    `timeout_s`; the emitter then sends nothing more."""

    def __init__(self, settings: LineageSettings) -> None:
        self.settings = settings
        self.context = current_context()  # the thread that makes the emitter is the run's
        self.client: OpenLineageClient | None = None
        self.target = ""
        self._lock = threading.Lock()
        self._last: tuple[threading.Thread, float] | None = None  # the latest send and when its wait ends
        try:
            self.client, self.target = _make_client(settings, self.context)
        except Exception as exc:  # noqa: BLE001 - a lineage configuration never fails a run
            log.warning("OpenLineage client could not be configured, no events are sent: %s", exc)
        if self.client is not None and self.client.transport.kind == "noop":
            self.client = None

    @property
    def enabled(self) -> bool:
        return self.client is not None

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    def _chain(self, work: Callable[[float], object]) -> Future[None]:
        """Run `work(deadline)` on a daemon thread once the emitter's previous send ended or its wait ran out
        (so a send that never returns holds no later one past its own timeout_s); `deadline` (monotonic) is
        when this one's own wait ends."""
        done: Future[None] = Future()
        deadline = time.monotonic() + self.settings.timeout_s
        with self._lock:
            previous = self._last

            def run() -> None:
                if previous is not None:
                    thread, until = previous
                    thread.join(timeout=max(0.0, until - time.monotonic()))
                try:
                    work(deadline)
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting run
                    done.set_exception(exc)
                else:
                    done.set_result(None)

            thread = threading.Thread(target=run, name="openlineage-emit", daemon=True)
            self._last = (thread, deadline)
            thread.start()
        return done

    def _send(self, event: RunEvent) -> Future[None]:
        """Emit on a daemon thread that first waits (boundedly) for the emitter's previous event."""
        client = self.client
        assert client is not None
        return self._chain(lambda _deadline: client.emit(event))

    def emit(self, event: RunEvent) -> bool:
        """Send one event; True when the transport took it, False (with a warning) when it did not in time."""
        if self.client is None:
            return False
        if self.context.on_event is not None:
            try:
                self.context.on_event(event)
            except Exception as exc:  # noqa: BLE001 - whoever watches the events never fails a run
                log.warning("the lineage context's on_event failed: %s", exc)
        what = f"{event_type(event)} of {event.job.name} (run {event.run.runId})"
        try:
            self._send(event).result(timeout=self.settings.timeout_s)
        except TimeoutError:
            log.warning(
                "OpenLineage endpoint %s did not take the %s within %ss: the run goes on, the event is sent "
                "in the background",
                self.target,
                what,
                self.settings.timeout_s,
            )
            return False
        except Exception as exc:  # noqa: BLE001 - a lineage endpoint never fails a run
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status is not None:
                log.warning("OpenLineage endpoint %s refused the %s: HTTP %s", self.target, what, status)
            else:
                log.warning("OpenLineage endpoint %s unreachable, the %s was not sent: %s", self.target, what, exc)
            return False
        return True

    def close(self) -> bool:
        """Close the client once the events before have been sent (or their waits ran out), waiting at most
        `[lineage] timeout_s`: its HTTP session goes, a queueing transport sends what it holds first. Never
        raises; True when the client closed with every event delivered. Later events are not sent; a second
        close does nothing."""
        client, self.client = self.client, None
        if client is None:
            return True
        closed: list[bool] = []

        def shut(deadline: float) -> None:
            closed.append(bool(client.close(max(0.0, deadline - time.monotonic()))))

        try:
            self._chain(shut).result(timeout=self.settings.timeout_s)
        except TimeoutError:
            log.warning(
                "OpenLineage client of %s did not close within %ss: events it still held may be lost",
                self.target,
                self.settings.timeout_s,
            )
            return False
        except Exception as exc:  # noqa: BLE001 - closing never fails a run
            log.warning("OpenLineage client of %s did not close cleanly: %s", self.target, exc)
            return False
        if closed and not closed[0]:
            log.warning(
                "OpenLineage client of %s closed before it had sent every event (within %ss)",
                self.target,
                self.settings.timeout_s,
            )
        return bool(closed and closed[0])
