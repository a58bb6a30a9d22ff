"""A real HTTP endpoint on 127.0.0.1 that records what is sent to it, and the OpenLineage JSON schema
(openlineage_spec/, copied from the OpenLineage repository) to validate every recorded event: shared by the
lineage tests and the Airflow tests (Airflow's OpenLineage provider)."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SPEC_DIR = Path(__file__).parent / "openlineage_spec"
CUSTOM_FACETS = Path(__file__).parents[2] / "jobs" / "nightshift" / "telemetry" / "nightshift_facets.json"
RUN_EVENT = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"


class Recorder:
    """What an HTTP endpoint received: (method, path, headers, body) per request, answered with `status` after
    `delay` seconds (recorded once answered)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.status = 200
        self.delay = 0.0
        self.lock = threading.Lock()
        self.url = ""

    @property
    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for method, _p, _h, body in self.requests if method == "POST"]


def serve(recorder: Recorder) -> tuple[ThreadingHTTPServer, threading.Thread]:
    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if recorder.delay:
                time.sleep(recorder.delay)
            with recorder.lock:
                recorder.requests.append((self.command, self.path, dict(self.headers.items()), body))
            self.send_response(recorder.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = _record

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="lineage-endpoint", daemon=True)
    thread.start()
    return server, thread


# -- the OpenLineage schema ----------------------------------------------------------------------------


def _format_checker() -> Any:
    from jsonschema import FormatChecker

    checker = FormatChecker()  # uuid, date, ...; date-time and uri need packages not installed: checked here

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return "T" in value and parsed.tzinfo is not None

    @checker.checks("uri")
    def _uri(value: object) -> bool:
        return not isinstance(value, str) or bool(urlsplit(value).scheme)

    return checker


class Schema:
    """The OpenLineage spec (2-0-2), its standard facets and nightshift's facets, resolvable by their $id."""

    def __init__(self) -> None:
        from referencing import Registry, Resource

        docs = [
            json.loads(p.read_text()) for p in [SPEC_DIR / "OpenLineage.json", *sorted(SPEC_DIR.glob("facets/*.json"))]
        ]
        docs.append(json.loads(CUSTOM_FACETS.read_text()))
        self.docs = {d["$id"]: d for d in docs}
        self.registry = Registry().with_resources((i, Resource.from_contents(d)) for i, d in self.docs.items())
        self.checker = _format_checker()

    def validate(self, instance: Any, ref: str) -> None:
        from jsonschema import Draft202012Validator

        Draft202012Validator({"$ref": ref}, registry=self.registry, format_checker=self.checker).validate(instance)

    def validate_event(self, event: dict[str, Any]) -> list[str]:
        """Validate a run event against OpenLineage.json (the whole document, then RunEvent) and every facet
        against the schema its _schemaURL names (standard facets also under the key their schema gives them).
        A custom facet whose _schemaURL is the spec's own base facet (`OpenLineage.json#/$defs/RunFacet`, as
        Airflow's provider writes its `airflow*` facets) is validated against that base.
        Returns the facet keys it validated; raises jsonschema.ValidationError or AssertionError."""
        spec = "https://openlineage.io/spec/2-0-2/OpenLineage.json"
        self.validate(event, spec)
        self.validate(event, RUN_EVENT)
        seen = []
        containers = [event["run"].get("facets"), event["job"].get("facets")]
        for ds in [*event.get("inputs", []), *event.get("outputs", [])]:
            containers += [ds.get("facets"), ds.get("inputFacets"), ds.get("outputFacets")]
        for facets in containers:
            for key, facet in (facets or {}).items():
                url = facet["_schemaURL"]
                doc_id = url.split("#", 1)[0]
                assert doc_id in self.docs, f"facet {key!r}: its _schemaURL {url} is none of the known schemas"
                self.validate(facet, url)
                if key.startswith("nightshift_"):
                    assert doc_id == "urn:nightshift:openlineage:facets:1", key
                elif doc_id == spec:
                    assert facet.get("_producer"), f"custom facet {key!r} has no _producer"
                else:
                    assert key in self.docs[doc_id]["properties"], f"facet {key!r} is not the key {doc_id} gives"
                    self.validate({key: facet}, doc_id)
                seen.append(key)
        return seen
