"""OpenLineage run events of scoring and training runs, sent to a real HTTP endpoint on 127.0.0.1 and validated
against the OpenLineage JSON schema; an endpoint that is down or failing never fails a run."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from openlineage.client.serde import Serde

from nightshift.config import LineageSettings
from nightshift.db import open_store
from nightshift.errors import DuplicateEntityError
from nightshift.rollout import Rollouts
from nightshift.scoring import score_partition
from nightshift.telemetry import openlineage as ol
from nightshift.telemetry.openlineage import Emitter
from nightshift.training import train_and_register
from tests.conftest import DEMO_FILES, DEMO_ROWS, SCORE_DS
from tests.lineage.conftest import Recorder, Schema

TRAIN_DS = date(2026, 11, 17)


@pytest.fixture
def lineage_settings(make_settings: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Settings whose [lineage] endpoint is `url`, set the way operators set it: NIGHTSHIFT_LINEAGE__* variables."""

    def _make(store_url: str, url: str, **env: str) -> Any:
        monkeypatch.setenv("NIGHTSHIFT_LINEAGE__OPENLINEAGE_URL", url)
        monkeypatch.setenv("NIGHTSHIFT_LINEAGE__NAMESPACE", "nightshift-test")
        for key, value in env.items():
            monkeypatch.setenv(f"NIGHTSHIFT_LINEAGE__{key.upper()}", value)
        return make_settings(store_url)

    return _make


def _facets(event: dict[str, Any]) -> dict[str, Any]:
    return dict(event["run"]["facets"])


def test_a_committed_scoring_run_sends_start_and_complete_with_its_datasets(
    sqlite_url: str,
    lineage_settings: Any,
    registered: Any,
    dask_client: Any,
    data_root: Path,
    endpoint: Recorder,
    ol_schema: Schema,
) -> None:
    settings = lineage_settings(sqlite_url, endpoint.url, openlineage_api_key="s3cret")
    mv = registered(settings)
    summary = score_partition(settings, "churn", SCORE_DS, client=dask_client, run_key="scheduled__2026-11-19")

    assert [(m, p) for m, p, _h, _b in endpoint.requests] == [("POST", "/api/v1/lineage")] * 2
    assert all(h.get("Content-Type") == "application/json" for _m, _p, h, _b in endpoint.requests)
    assert all(h.get("Authorization") == "Bearer s3cret" for _m, _p, h, _b in endpoint.requests)
    start, complete = endpoint.events
    for event in (start, complete):
        seen = ol_schema.validate_event(event)
        assert {"nominalTime", "processing_engine", "jobType", "schema", "nightshift_run"} <= set(seen)
    assert [start["eventType"], complete["eventType"]] == ["START", "COMPLETE"]
    assert start["run"]["runId"] == complete["run"]["runId"]
    assert start["job"] == complete["job"]
    assert start["job"]["namespace"] == "nightshift-test"
    assert start["job"]["name"] == "score.churn"
    # The run id is the one stored with the run, and the run facet names the store's run and Airflow's.
    store = open_store(settings)
    run = next(r for r in store.runs("churn") if r["run_id"] == summary.run_id)
    assert complete["run"]["runId"] == run["manifest"]["openlineage_run_id"]
    nightshift_run = _facets(complete)["nightshift_run"]
    assert nightshift_run["store_run_id"] == summary.run_id
    assert nightshift_run["run_key"] == "scheduled__2026-11-19"
    assert nightshift_run["model_sha256"] == mv.sha256
    assert _facets(complete)["nominalTime"]["nominalStartTime"] == "2026-11-18T00:00:00.000Z"
    # Input: the model's feature dataset, with this partition's files and their fingerprints.
    [inp] = complete["inputs"]
    assert (inp["namespace"], inp["name"]) == ("file", str(data_root / "features"))
    assert inp["inputFacets"]["inputStatistics"]["rowCount"] == DEMO_ROWS
    assert inp["inputFacets"]["inputStatistics"]["fileCount"] == DEMO_FILES
    manifest = inp["facets"]["nightshift_manifest"]
    assert manifest["files"] == run["manifest"]["files"]
    assert inp["facets"]["version"]["datasetVersion"] == run["manifest"]["digest"]
    assert {f["name"] for f in inp["facets"]["schema"]["fields"]} >= {"customer_id", "monthly_charges"}
    # Output: the store's committed predictions, this (model, version, ds) partition overwritten with its rows.
    [out] = complete["outputs"]
    assert out["namespace"] == "sqlite"
    assert out["name"].endswith("store.db.main.committed_predictions")
    assert out["outputFacets"]["outputStatistics"]["rowCount"] == DEMO_ROWS
    assert out["facets"]["lifecycleStateChange"]["lifecycleStateChange"] == "OVERWRITE"
    assert out["facets"]["nightshift_partition"] == {
        **out["facets"]["nightshift_partition"],
        "model": "churn",
        "version": mv.version,
        "ds": SCORE_DS.isoformat(),
        "store_run_id": summary.run_id,
        "status": "committed",
    }
    assert start["outputs"][0]["facets"]["nightshift_partition"]["status"] == "running"


def test_a_failing_scoring_run_sends_start_and_fail_with_the_error(
    sqlite_url: str,
    lineage_settings: Any,
    registered: Any,
    dask_client: Any,
    data_root: Path,
    endpoint: Recorder,
    ol_schema: Schema,
) -> None:
    settings = lineage_settings(sqlite_url, endpoint.url)
    registered(settings)
    files = sorted((data_root / "features" / f"ds={SCORE_DS.isoformat()}").glob("*.parquet"))
    stolen = pq.read_table(files[0]).column("customer_id")[0].as_py()
    t = pq.read_table(files[1])
    ids = t.column("customer_id").to_pylist()
    ids[0] = stolen
    pq.write_table(
        t.set_column(t.schema.get_field_index("customer_id"), "customer_id", pa.array(ids, pa.int64())), files[1]
    )

    with pytest.raises(DuplicateEntityError):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)

    start, fail = endpoint.events
    for event in (start, fail):
        ol_schema.validate_event(event)
    assert [start["eventType"], fail["eventType"]] == ["START", "FAIL"]
    assert start["run"]["runId"] == fail["run"]["runId"]
    error = _facets(fail)["errorMessage"]
    assert error["message"].startswith("DuplicateEntityError:")
    assert str(stolen) in error["message"]
    assert error["programmingLanguage"] == "python"
    assert fail["inputs"][0]["facets"]["nightshift_manifest"]["files"][1]["uri"] == str(files[1])
    assert fail["outputs"][0]["facets"]["nightshift_partition"]["status"] == "failed"
    assert "outputFacets" not in fail["outputs"][0]  # nothing was written


def test_a_training_run_sends_its_partitions_in_and_its_artifact_out(
    sqlite_url: str, lineage_settings: Any, data_root: Path, endpoint: Recorder, ol_schema: Schema
) -> None:
    settings = lineage_settings(sqlite_url, endpoint.url)
    result = train_and_register(settings, "churn", TRAIN_DS, created_by="carol")
    mv = result.version

    start, complete = endpoint.events
    for event in (start, complete):
        ol_schema.validate_event(event)
    assert [start["eventType"], complete["eventType"]] == ["START", "COMPLETE"]
    assert start["run"]["runId"] == complete["run"]["runId"]
    assert complete["job"]["name"] == "train.churn"
    assert complete["job"]["facets"]["jobType"]["jobType"] == "TRAINING"
    features, labels = complete["inputs"]
    assert (features["namespace"], features["name"]) == ("file", str(data_root / "features"))
    assert (labels["namespace"], labels["name"]) == ("file", str(data_root / "labels"))
    trained_on = features["facets"]["nightshift_training"]
    assert trained_on["days"] == [p["ds"] for p in mv.training_data["partitions"]] == ["2026-11-16", "2026-11-17"]
    assert trained_on["content_sha256"] == mv.training_data["content_sha256"]
    assert trained_on["rows"] == mv.training_data["rows"] > 0
    assert labels["facets"]["nightshift_training"]["role"] == "labels"
    [artifact] = complete["outputs"]
    assert (artifact["namespace"], artifact["name"]) == ("file", mv.artifact_uri)
    assert artifact["facets"]["version"]["datasetVersion"] == mv.sha256
    assert artifact["facets"]["nightshift_model"]["created_by"] == "carol"
    assert _facets(complete)["nightshift_run"]["status"] == "promoted"


def test_a_retrain_without_labelled_data_sends_fail_with_the_reason(
    sqlite_url: str, lineage_settings: Any, endpoint: Recorder, ol_schema: Schema
) -> None:
    settings = lineage_settings(sqlite_url, endpoint.url)
    out = Rollouts(settings).retrain("churn", date(2027, 3, 1), trigger={"kind": "manual", "dag_run_id": "manual__x"})
    assert out.status == "rejected"
    start, fail = endpoint.events
    for event in (start, fail):
        ol_schema.validate_event(event)
    assert [start["eventType"], fail["eventType"]] == ["START", "FAIL"]
    assert "no usable labelled data" in _facets(fail)["errorMessage"]["message"]
    assert _facets(fail)["nightshift_run"]["candidate_id"] == out.candidate_id
    assert _facets(fail)["nightshift_run"]["run_key"] == "manual__x"
    assert fail["outputs"] == []


@pytest.mark.parametrize("how", ["down", "HTTP 500"])
def test_an_endpoint_that_is_down_or_failing_never_fails_a_run(
    how: str,
    sqlite_url: str,
    lineage_settings: Any,
    registered: Any,
    dask_client: Any,
    endpoint: Recorder,
    closed_port: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint.status = 500
    settings = lineage_settings(sqlite_url, closed_port if how == "down" else endpoint.url, timeout_s="2")
    registered(settings)
    with caplog.at_level(logging.WARNING, logger="nightshift.telemetry"):
        summary = score_partition(settings, "churn", SCORE_DS, client=dask_client)
        trained = train_and_register(settings, "churn", TRAIN_DS, promote="never")
    assert summary.rows == DEMO_ROWS
    assert open_store(settings).partition("churn", 1, SCORE_DS) is not None
    assert trained.version.version == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    expected = "unreachable" if how == "down" else "refused the START of score.churn"
    assert sum(expected in w for w in warnings) >= 1, warnings
    assert len([w for w in warnings if "OpenLineage endpoint" in w]) == 4  # START+COMPLETE of each run
    if how == "HTTP 500":
        assert len(endpoint.events) == 4  # each one was tried


def test_no_endpoint_sends_nothing_and_only_http_is_used(endpoint: Recorder) -> None:
    assert not Emitter(LineageSettings()).enabled
    assert not Emitter(LineageSettings(openlineage_url="file:///etc/passwd")).enabled
    emitter = Emitter(LineageSettings(openlineage_url=endpoint.url + "/", openlineage_endpoint="/custom/path"))
    event = ol.run_event("START", run_id=ol.new_run_id(), namespace="n", job_name="score.churn", job_type="SCORING")
    assert emitter.emit(event) is True
    assert endpoint.requests[0][1] == "/custom/path"
    assert "NIGHTSHIFT_LINEAGE__OPENLINEAGE_URL" not in os.environ


def test_the_schema_check_refuses_what_the_spec_refuses(ol_schema: Schema) -> None:
    import copy

    import jsonschema

    good = Serde.to_dict(
        ol.run_event(
            "COMPLETE",
            run_id=ol.new_run_id(),
            namespace="n",
            job_name="score.churn",
            job_type="SCORING",
            run_facets={"nominalTime": ol.nominal_time(SCORE_DS), "errorMessage": ol.error_facet("boom")},
            inputs=[ol.dataset("file", "/data", {"version": ol.facet("version", datasetVersion="abc")})],
        )
    )
    ol_schema.validate_event(good)

    def broken(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        event = copy.deepcopy(good)
        change(event)
        return event

    bad = [
        broken(lambda e: e.update(eventType="DONE")),
        broken(lambda e: e["run"].update(runId="run-12")),
        broken(lambda e: e.pop("producer")),
        broken(lambda e: e.update(eventTime="yesterday")),
        broken(lambda e: e["run"]["facets"]["nominalTime"].pop("_schemaURL")),
        broken(lambda e: e["run"]["facets"]["nominalTime"].pop("nominalStartTime")),
        broken(lambda e: e["run"]["facets"]["errorMessage"].pop("programmingLanguage")),
        broken(lambda e: e["inputs"][0]["facets"]["version"].pop("datasetVersion")),
        broken(lambda e: e["inputs"][0].pop("namespace")),
    ]
    for event in bad:
        with pytest.raises(jsonschema.ValidationError):
            ol_schema.validate_event(event)
    # A facet under a key its schema does not give it.
    moved = broken(lambda e: e["run"]["facets"].update(nominal=e["run"]["facets"].pop("nominalTime")))
    with pytest.raises(AssertionError, match="is not the key"):
        ol_schema.validate_event(moved)


# -- the official client: what it adds, its own configuration, its bounds --------------------------------


@pytest.fixture
def ol_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Set openlineage-python's own variables (OPENLINEAGE_*) for one test. The client copies OPENLINEAGE_URL
    into OPENLINEAGE__TRANSPORT__TRANSPORTS__DEFAULT_HTTP__* variables of the process; those go too."""
    before = {k for k in os.environ if k.startswith("OPENLINEAGE")}

    def _set(**env: str) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    yield _set
    for key in [k for k in os.environ if k.startswith("OPENLINEAGE") and k not in before]:
        del os.environ[key]


@pytest.fixture
def background_sends(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Events a run left to be sent in the background are waited for when the test ends, once its endpoint is
    gone: without the client's backoff between tries (the tries and their timeout stay), they end at once."""
    import threading

    from openlineage.client.transport.http_common import DEFAULT_RETRY_CONFIG

    monkeypatch.setitem(DEFAULT_RETRY_CONFIG, "backoff_factor", 0)
    yield
    for thread in threading.enumerate():
        if thread.name == "openlineage-emit":
            thread.join(timeout=10)


@pytest.fixture
def silent_port(background_sends: None) -> Iterator[str]:
    """A loopback URL that accepts connections and never answers: an endpoint that hangs."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_the_events_are_sent_by_the_official_client(
    sqlite_url: str, lineage_settings: Any, endpoint: Recorder, ol_schema: Schema
) -> None:
    from openlineage.client.constants import __version__ as client_version
    from openlineage.client.generated import base

    settings = lineage_settings(sqlite_url, endpoint.url)
    train_and_register(settings, "churn", TRAIN_DS)

    start, complete = endpoint.events
    for event in (start, complete):
        assert "tags" in ol_schema.validate_event(event)
        # The client tags every run event with its version, under its own producer; nightshift's facets and
        # the event keep nightshift's.
        [tag] = [t for t in _facets(event)["tags"]["tags"] if t["key"] == "openlineage_client_version"]
        assert tag == {"key": "openlineage_client_version", "value": client_version, "source": "OPENLINEAGE_CLIENT"}
        # The client's producer: its default, or what an integration loaded in the process set (Airflow's
        # OpenLineage provider does, on import).
        assert _facets(event)["tags"]["_producer"] == base.PRODUCER != ol.producer()
        assert event["producer"] == _facets(event)["nightshift_run"]["_producer"] == ol.producer()
        assert event["schemaURL"] == "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
    # The client's serialisation: keys sorted, no nulls.
    body = endpoint.requests[1][3].decode()
    assert list(json.loads(body)) == sorted(complete)
    assert ": null" not in body


def test_the_clients_own_configuration_sends_the_events(
    sqlite_url: str,
    make_settings: Callable[..., Any],
    registered: Any,
    dask_client: Any,
    endpoint: Recorder,
    ol_schema: Schema,
    ol_env: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No [lineage] openlineage_url: OPENLINEAGE_URL (and its _ENDPOINT, _API_KEY), as the client reads them."""
    monkeypatch.setenv("NIGHTSHIFT_LINEAGE__NAMESPACE", "nightshift-test")
    ol_env(OPENLINEAGE_URL=endpoint.url, OPENLINEAGE_ENDPOINT="/ol/v1/lineage", OPENLINEAGE_API_KEY="k3y")
    settings = make_settings(sqlite_url)
    assert settings.lineage.openlineage_url is None
    registered(settings)
    summary = score_partition(settings, "churn", SCORE_DS, client=dask_client)

    assert [(m, p) for m, p, _h, _b in endpoint.requests] == [("POST", "/ol/v1/lineage")] * 2
    assert all(h.get("Authorization") == "Bearer k3y" for _m, _p, h, _b in endpoint.requests)
    start, complete = endpoint.events
    for event in (start, complete):
        ol_schema.validate_event(event)
    assert [start["eventType"], complete["eventType"]] == ["START", "COMPLETE"]
    assert complete["job"] == {**complete["job"], "namespace": "nightshift-test", "name": "score.churn"}
    assert _facets(complete)["nightshift_run"]["store_run_id"] == summary.run_id


def test_an_openlineage_yml_configures_the_client(
    sqlite_url: str,
    make_settings: Callable[..., Any],
    endpoint: Recorder,
    ol_schema: Schema,
    ol_env: Callable[..., None],
    tmp_path: Path,
) -> None:
    """The client's config file: its transport, and what else it configures (here, a run tag)."""
    config = tmp_path / "openlineage.yml"
    config.write_text(
        f"transport:\n  type: http\n  url: {endpoint.url}\n  endpoint: api/v1/lineage\n"
        "tags:\n  run:\n    team: scoring\n"
    )
    ol_env(OPENLINEAGE_CONFIG=str(config))
    settings = make_settings(sqlite_url)
    train_and_register(settings, "churn", TRAIN_DS)

    start, complete = endpoint.events
    for event in (start, complete):
        ol_schema.validate_event(event)
        assert {"key": "team", "value": "scoring", "source": "USER"} in _facets(event)["tags"]["tags"]
    assert complete["job"]["name"] == "train.churn"


def test_the_clients_switches_and_a_config_without_transport_send_nothing(
    endpoint: Recorder, ol_env: Callable[..., None], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ol_env(OPENLINEAGE_DISABLED="true")
    assert not Emitter(LineageSettings(openlineage_url=endpoint.url)).enabled
    assert not Emitter(LineageSettings()).enabled
    del os.environ["OPENLINEAGE_DISABLED"]
    # A config file without a transport: the client would print every event; nightshift sends none.
    config = tmp_path / "openlineage.yml"
    config.write_text("tags:\n  run:\n    team: scoring\n")
    ol_env(OPENLINEAGE_CONFIG=str(config))
    assert not Emitter(LineageSettings()).enabled
    # [lineage] openlineage_url takes precedence over the client's own transport.
    ol_env(OPENLINEAGE_URL="http://127.0.0.1:9")
    emitter = Emitter(LineageSettings(openlineage_url=endpoint.url))
    assert emitter.target == f"{endpoint.url}/api/v1/lineage"
    event = ol.run_event("START", run_id=ol.new_run_id(), namespace="n", job_name="train.churn", job_type="TRAINING")
    assert emitter.emit(event) is True
    assert len(endpoint.events) == 1


@pytest.mark.parametrize("configured_by", ["[lineage]", "OPENLINEAGE_URL"])
@pytest.mark.parametrize("how", ["silent", "down"])
def test_an_endpoint_that_hangs_or_is_down_holds_a_run_no_longer_than_the_timeout(
    how: str,
    configured_by: str,
    sqlite_url: str,
    lineage_settings: Any,
    make_settings: Callable[..., Any],
    silent_port: str,
    closed_port: str,
    ol_env: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever the transport (the client's own one retries 5 times, 5 s each, by default), a run waits at most
    [lineage] timeout_s for each event, and the run itself succeeds."""
    import time

    url = silent_port if how == "silent" else closed_port
    if configured_by == "[lineage]":
        settings = lineage_settings(sqlite_url, url, timeout_s="1")
    else:
        ol_env(OPENLINEAGE_URL=url)
        monkeypatch.setenv("NIGHTSHIFT_LINEAGE__TIMEOUT_S", "1")
        settings = make_settings(sqlite_url)
    emitter = Emitter(settings.lineage)
    assert emitter.enabled
    event = ol.run_event("START", run_id=ol.new_run_id(), namespace="n", job_name="train.churn", job_type="TRAINING")
    for _ in range(2):
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="nightshift.telemetry"):
            assert emitter.emit(event) is False
        assert time.monotonic() - t0 < 1.0 + 1.0  # the client alone would take 9 s (down) to 39 s (silent)
    with caplog.at_level(logging.WARNING, logger="nightshift.telemetry"):
        t0 = time.monotonic()
        trained = train_and_register(settings, "churn", TRAIN_DS, promote="never")
        elapsed = time.monotonic() - t0
    assert trained.version.version == 1
    warnings = [r.getMessage() for r in caplog.records if "OpenLineage endpoint" in r.getMessage()]
    assert len(warnings) == 4, warnings  # two sent by hand, START and COMPLETE of the training run
    if how == "down" and configured_by == "[lineage]":  # one try, refused at once
        assert all("unreachable" in w for w in warnings), warnings
    else:  # the wait ends first (or, for a hang under [lineage], the transport's own timeout of the same 1 s)
        assert all("did not take the" in w or "unreachable" in w for w in warnings), warnings
    assert elapsed < 60  # a generous bound for the training itself; each event adds at most 1 s


def test_nightshifts_facet_classes_match_their_json_schema() -> None:
    """Each nightshift_* facet class has the fields its definition in nightshift_facets.json lists, and
    requires those it requires."""
    import attr

    from nightshift.telemetry.openlineage_facets import CUSTOM_FACETS
    from tests.lineage.conftest import CUSTOM_FACETS as SCHEMA_FILE

    defs = json.loads(SCHEMA_FILE.read_text())["$defs"]
    for key, cls in CUSTOM_FACETS.items():
        name = cls.__name__
        assert ol.facet_schemas()[key] == f"urn:nightshift:openlineage:facets:1#/$defs/{name}"
        [own] = [part for part in defs[name]["allOf"] if "properties" in part]
        fields = [f for f in attr.fields(cls) if not f.name.startswith("_")]
        assert {f.name for f in fields} == set(own["properties"]), name
        assert {f.name for f in fields if f.default is attr.NOTHING} == set(own["required"]), name


# -- the client's lifetime: closed after each run's last event, every wait bounded -----------------------------


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every OpenLineage client an Emitter builds, with `closed` set on it once its `close` was called."""
    from openlineage.client import OpenLineageClient

    made: list[Any] = []
    make = ol._make_client
    close = OpenLineageClient.close

    def _make(settings: LineageSettings, context: Any = None) -> Any:
        client, target = make(settings, context)
        if client is not None:
            made.append(client)
        return client, target

    def _close(self: Any, timeout: float = -1.0) -> bool:
        self.closed = True
        return close(self, timeout)

    monkeypatch.setattr(ol, "_make_client", _make)
    monkeypatch.setattr(OpenLineageClient, "close", _close)
    return made


def test_every_run_closes_its_client_after_its_last_event(
    sqlite_url: str, lineage_settings: Any, registered: Any, dask_client: Any, endpoint: Recorder, clients: list[Any]
) -> None:
    """Scoring (COMPLETE), training (COMPLETE), a retrain that fails (FAIL), a training that raises (FAIL): each
    run's client is closed once its last event is sent, so no HTTP session outlives its run."""
    settings = lineage_settings(sqlite_url, endpoint.url)
    registered(settings)
    score_partition(settings, "churn", SCORE_DS, client=dask_client)
    train_and_register(settings, "churn", TRAIN_DS, promote="never")
    Rollouts(settings).retrain("churn", date(2027, 3, 1), trigger={"kind": "manual"})
    with pytest.raises(Exception):  # noqa: B017 - whatever an unknown model raises; its FAIL is sent
        train_and_register(settings, "no-such-model", TRAIN_DS)

    assert [e["eventType"] for e in endpoint.events] == ["START", "COMPLETE"] * 2 + ["START", "FAIL"] * 2
    assert len(clients) == 4  # one per run
    assert all(getattr(c, "closed", False) for c in clients)
    assert all(c.transport._session is None for c in clients)  # the HttpTransport's requests.Session is gone


def test_a_queueing_transport_delivers_every_event_before_the_run_returns(
    sqlite_url: str,
    make_settings: Callable[..., Any],
    endpoint: Recorder,
    ol_env: Callable[..., None],
    tmp_path: Path,
    clients: list[Any],
) -> None:
    """`type: async_http` queues each event and returns before it is sent: closing the client at the end of
    the run sends what it still holds (here, a slow endpoint), so nothing is lost when the process exits."""
    endpoint.delay = 0.3
    config = tmp_path / "openlineage.yml"
    config.write_text(f"transport:\n  type: async_http\n  url: {endpoint.url}\n  endpoint: api/v1/lineage\n")
    ol_env(OPENLINEAGE_CONFIG=str(config))
    settings = make_settings(sqlite_url)
    train_and_register(settings, "churn", TRAIN_DS)

    assert [e["eventType"] for e in endpoint.events] == ["START", "COMPLETE"]
    [client] = clients
    assert client.transport.kind == "async_http"
    assert not client.transport.worker_thread.is_alive()

    # By hand: many events, all delivered when close returns, within timeout_s.
    emitter = Emitter(LineageSettings(timeout_s=5))
    run_id = ol.new_run_id()
    for kind in ("START", "RUNNING", "RUNNING", "COMPLETE"):
        event = ol.run_event(kind, run_id=run_id, namespace="n", job_name="score.churn", job_type="SCORING")
        assert emitter.emit(event) is True
    endpoint.requests.clear()
    assert emitter.close() is True
    # All delivered. The transport sends START first and the rest from several threads, so they may arrive in
    # any order after it (a consumer orders a run's events by eventTime; these four share a millisecond).
    arrived = [e["eventType"] for e in endpoint.events]
    assert arrived[0] == "START"
    assert sorted(arrived) == ["COMPLETE", "RUNNING", "RUNNING", "START"]
    assert not emitter.enabled
    assert emitter.close() is True  # a second close does nothing
    assert emitter.emit(event) is False  # nor does an event after it


def test_a_send_that_hangs_forever_holds_each_later_event_no_longer_than_the_timeout(
    endpoint: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    import threading
    import time

    emitter = Emitter(LineageSettings(openlineage_url=endpoint.url, timeout_s=0.5))
    client = emitter.client
    assert client is not None
    release = threading.Event()
    send = client.emit

    def emit(event: Any) -> None:
        if event.eventType.value == "START":
            release.wait()  # a transport that never returns
        send(event)

    client.emit = emit  # type: ignore[method-assign]
    run_id = ol.new_run_id()
    events = [
        ol.run_event(kind, run_id=run_id, namespace="n", job_name="train.churn", job_type="TRAINING")
        for kind in ("START", "RUNNING", "RUNNING", "COMPLETE")
    ]
    try:
        with caplog.at_level(logging.WARNING, logger="nightshift.telemetry"):
            t0 = time.monotonic()
            assert emitter.emit(events[0]) is False
            assert 0.4 < time.monotonic() - t0 < 1.0
            for event in events[1:]:  # sent at once: the hung START is waited for only until its timeout
                t0 = time.monotonic()
                assert emitter.emit(event) is True
                assert time.monotonic() - t0 < 0.5
            t0 = time.monotonic()
            assert emitter.close() is True
            assert time.monotonic() - t0 < 0.5
        assert [e["eventType"] for e in endpoint.events] == ["RUNNING", "RUNNING", "COMPLETE"]
        assert client.transport._session is None  # type: ignore[attr-defined]
        assert sum("did not take the START" in r.getMessage() for r in caplog.records) == 1
    finally:
        release.set()


def test_a_close_that_hangs_holds_the_run_no_longer_than_the_timeout(
    endpoint: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    import threading
    import time

    emitter = Emitter(LineageSettings(openlineage_url=endpoint.url, timeout_s=0.5))
    client = emitter.client
    assert client is not None
    release = threading.Event()
    client.close = lambda timeout=-1.0: release.wait()  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.WARNING, logger="nightshift.telemetry"):
            t0 = time.monotonic()
            assert emitter.close() is False
            assert time.monotonic() - t0 < 1.0
        assert any("did not close within 0.5s" in r.getMessage() for r in caplog.records)
    finally:
        release.set()


def test_a_run_with_lineage_off_never_imports_the_client() -> None:
    """Every run records an OpenLineage run id, lineage on or off; with it off, the client's package (0.24 s to
    import) stays out of the process. The id is a UUIDv7, time-ordered, as the client makes them."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, time, uuid\n"
        "from nightshift.config import LineageSettings\n"
        "from nightshift.telemetry.openlineage import Emitter, new_run_id\n"
        "assert not Emitter(LineageSettings()).enabled\n"
        "a = new_run_id(); time.sleep(0.002); b = new_run_id()\n"
        "assert uuid.UUID(a).version == 7 and uuid.UUID(a).variant == uuid.RFC_4122 and a < b, (a, b)\n"
        "assert 'openlineage.client' not in sys.modules, 'imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENLINEAGE", "NIGHTSHIFT_LINEAGE"))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr


# -- runs inside a larger run: a parent handed by a scheduler --------------------------------------------


def test_a_run_started_with_an_openlineage_parent_names_it_and_its_root(
    sqlite_url: str,
    lineage_settings: Any,
    registered: Any,
    dask_client: Any,
    endpoint: Recorder,
    ol_schema: Schema,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The convention Airflow's `lineage_parent_id` macro and dbt-ol use: <namespace>/<job>/<run id> in
    OPENLINEAGE_PARENT_ID (and the root's in OPENLINEAGE_ROOT_PARENT_ID), as a BashOperator hands them over."""
    task_run, dag_run = "01a1d75a-9400-71a5-b6e4-785c7d8744b8", "01a1d75a-9400-712d-837e-d7a7460138e7"
    monkeypatch.setenv("OPENLINEAGE_PARENT_ID", f"http://airflow:8080/score_churn.score/{task_run}")
    monkeypatch.setenv("OPENLINEAGE_ROOT_PARENT_ID", f"http://airflow:8080/score_churn/{dag_run}")
    settings = lineage_settings(sqlite_url, endpoint.url)
    registered(settings)
    score_partition(settings, "churn", SCORE_DS, client=dask_client)

    assert [e["eventType"] for e in endpoint.events] == ["START", "COMPLETE"]
    for event in endpoint.events:
        assert "parent" in ol_schema.validate_event(event)
        parent = _facets(event)["parent"]
        # The namespace keeps its slashes: the job and the run are the last two parts.
        assert parent["job"] == {"namespace": "http://airflow:8080", "name": "score_churn.score", "facets": {}}
        assert parent["run"]["runId"] == task_run
        assert parent["root"]["job"]["name"] == "score_churn"
        assert parent["root"]["run"]["runId"] == dag_run


@pytest.mark.parametrize(
    "value", ["", "just-a-job", "ns/job/", "/job/01a1d75a-9400-71a5-b6e4-785c7d8744b8", "ns/job/run"]
)
def test_a_malformed_parent_is_ignored_with_a_warning(value: str, caplog: pytest.LogCaptureFixture) -> None:
    from nightshift.telemetry import openlineage as ol

    with caplog.at_level(logging.WARNING, logger="nightshift.telemetry.openlineage"):
        assert ol.RunRef.parse(value) is None
    assert (value.strip() == "") == (not caplog.records), caplog.text
    run = "01a1d75a-9400-71a5-b6e4-785c7d8744b8"
    assert ol.RunRef.parse(f"ns/job/{run}") == ol.RunRef("ns", "job", run)


def test_a_lineage_context_gives_the_parent_the_client_and_sees_every_event(
    sqlite_url: str,
    make_settings: Callable[..., Any],
    registered: Any,
    dask_client: Any,
    endpoint: Recorder,
    ol_schema: Schema,
) -> None:
    """What Airflow's tasks set (nightshift_airflow.lineage): with no destination of nightshift's own, the
    events go through the context's client (the provider's), name the context's parent, and are seen."""
    from openlineage.client import OpenLineageClient
    from openlineage.client.transport.http import HttpConfig, HttpTransport

    from nightshift.telemetry import openlineage as ol

    settings = make_settings(sqlite_url)
    assert settings.lineage.openlineage_url is None
    assert not ol.client_configured()
    registered(settings)
    seen: list[Any] = []
    made: list[OpenLineageClient] = []

    def client() -> OpenLineageClient:
        made.append(OpenLineageClient(transport=HttpTransport(HttpConfig(url=endpoint.url))))
        return made[-1]

    parent = ol.RunRef("af", "score_churn.score", ol.new_run_id())
    root = ol.RunRef("af", "score_churn", ol.new_run_id())
    with ol.lineage_context(ol.LineageContext(parent=parent, root=root, client_factory=client, on_event=seen.append)):
        score_partition(settings, "churn", SCORE_DS, client=dask_client)
    # Outside the context nothing is sent: nightshift has no destination of its own.
    score_partition(settings, "churn", SCORE_DS, client=dask_client)

    assert len(made) == 1
    assert [e["eventType"] for e in endpoint.events] == ["START", "COMPLETE"]
    assert [ol.event_type(e) for e in seen] == ["START", "COMPLETE"]
    for event in endpoint.events:
        ol_schema.validate_event(event)
        facet = _facets(event)["parent"]
        assert (facet["job"]["name"], facet["run"]["runId"]) == (parent.name, parent.run_id)
        assert (facet["root"]["job"]["name"], facet["root"]["run"]["runId"]) == (root.name, root.run_id)


def test_without_a_parent_events_have_no_parent_facet(
    sqlite_url: str, lineage_settings: Any, registered: Any, dask_client: Any, endpoint: Recorder
) -> None:
    settings = lineage_settings(sqlite_url, endpoint.url)
    registered(settings)
    score_partition(settings, "churn", SCORE_DS, client=dask_client)
    assert [e["eventType"] for e in endpoint.events] == ["START", "COMPLETE"]
    assert all("parent" not in _facets(e) for e in endpoint.events)
