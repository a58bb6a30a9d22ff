"""The hooks jobs call: a scoring pass's manifests, run events and metrics; a training run's; a monitoring run's.

Every method logs and swallows its own failures: what a run emits never fails the run.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from nightshift.telemetry import openlineage as ol
from nightshift.telemetry.jobmetrics import JobClock, JobRun, record_job
from nightshift.telemetry.manifest import MANIFEST_FORMAT, METHODS, input_manifest, run_manifest

if TYPE_CHECKING:  # pragma: no cover
    from nightshift.config import Settings
    from nightshift.contracts import FeatureContract
    from nightshift.data.partitions import Partition
    from nightshift.models.registry import ModelVersion

log = logging.getLogger(__name__)

#: The columns of the committed predictions (the `committed_predictions` view), for the output's schema facet.
PREDICTION_FIELDS = [
    {"name": "model", "type": "VARCHAR"},
    {"name": "version", "type": "INTEGER"},
    {"name": "ds", "type": "DATE"},
    {"name": "entity_id", "type": "TEXT"},
    {"name": "score", "type": "REAL"},
    {"name": "label", "type": "SMALLINT"},
    {"name": "value", "type": "DOUBLE PRECISION"},
    {"name": "probs", "type": "BYTEA"},
    {"name": "scored_at", "type": "TIMESTAMP WITH TIME ZONE"},
    {"name": "run_id", "type": "BIGINT"},
]


def _contract_fields(contract: FeatureContract) -> list[dict[str, Any]]:
    fields = [{"name": contract.entity_id, "type": str(contract.entity_id_type), "description": "entity id"}]
    for c in contract.columns:
        fields.append({"name": c.name, "type": str(c.type)})
    return fields


@dataclass
class _Scored:
    mv: ModelVersion
    manifest: dict[str, Any]
    contract: FeatureContract
    extra: dict[str, Any] = field(default_factory=dict)


class ScoringTelemetry:
    """One scoring pass over a partition (scoring.partition._run): every target's manifest, run events, metrics.
    The pass calls `close` once every run has ended (its OpenLineage client is closed)."""

    def __init__(
        self,
        settings: Settings,
        store_url: str,
        partition: Partition,
        ds: date,
        *,
        dataset_uri: str,
        run_key: str | None,
        t0: float | None = None,
    ) -> None:
        self.settings = settings
        self.ds = ds
        self.run_key = run_key
        self.clock = JobClock()
        self.t0 = time.perf_counter() if t0 is None else t0
        self.emitter = ol.Emitter(settings.lineage)
        self.runs: dict[int, _Scored] = {}
        method = settings.lineage.fingerprint
        try:
            self.inputs = input_manifest(partition, method)
        except Exception as exc:  # noqa: BLE001 - the run goes on; the manifest says what it could not read
            log.warning("could not fingerprint the files of %s: %s", partition.uri, exc)
            self.inputs = {
                "format": MANIFEST_FORMAT,
                "fingerprint": METHODS[method],
                "partition": partition.uri,
                "ds": ds.isoformat(),
                "rows": int(partition.rows),
                "files": [{"uri": f.uri, "rows": int(f.rows)} for f in partition.files],
                "error": f"{type(exc).__name__}: {exc}",
            }
        self.dataset_uri = dataset_uri
        self.store_url = store_url

    def _input(self, contract: FeatureContract) -> Any:
        namespace, name = ol.dataset_id(self.dataset_uri)
        manifest = self.inputs
        facets: dict[str, Any] = {
            "schema": ol.facet("schema", fields=_contract_fields(contract)),
            "nightshift_manifest": ol.facet(
                "nightshift_manifest",
                partition=manifest["partition"],
                ds=manifest["ds"],
                fingerprint=manifest["fingerprint"],
                digest=manifest.get("digest"),
                files=manifest["files"],
                error=manifest.get("error"),
            ),
        }
        if manifest.get("digest"):
            facets["version"] = ol.facet("version", datasetVersion=manifest["digest"])
        stats = ol.facet(
            "inputStatistics",
            rowCount=manifest["rows"],
            size=manifest.get("size_bytes"),
            fileCount=len(manifest["files"]),
        )
        return ol.dataset(namespace, name, facets, io="input", io_facets={"inputStatistics": stats})

    # -- what start_run stores ------------------------------------------------------------------------

    def manifest(self, mv: ModelVersion) -> dict[str, Any]:
        """The manifest of a run of `mv` on this partition (with a fresh OpenLineage run id)."""
        return run_manifest(
            self.inputs,
            model=mv.model,
            version=mv.version,
            artifact_uri=mv.artifact_uri,
            artifact_sha256=mv.sha256,
            openlineage_run_id=ol.new_run_id(),
        )

    # -- events -------------------------------------------------------------------------------------

    def _event(self, kind: str, run_id: int, *, rows: int | None = None, error: Any = None) -> Any:
        scored = self.runs[run_id]
        mv, manifest = scored.mv, scored.manifest
        run_facet = ol.facet(
            "nightshift_run",
            store_run_id=run_id,
            run_key=self.run_key,
            model=mv.model,
            version=mv.version,
            ds=self.ds.isoformat(),
            host=socket.gethostname(),
            pid=os.getpid(),
            model_sha256=mv.sha256,
            **scored.extra,
        )
        run_facets: dict[str, Any] = {"nominalTime": ol.nominal_time(self.ds), "nightshift_run": run_facet}
        if error is not None:
            run_facets["errorMessage"] = ol.error_facet(error)
        status = {ol.START: "running", ol.COMPLETE: "committed", ol.FAIL: "failed"}[kind]
        namespace, name = ol.store_dataset(self.store_url)
        out_facets: dict[str, Any] = {
            "schema": ol.facet("schema", fields=PREDICTION_FIELDS),
            "nightshift_partition": ol.facet(
                "nightshift_partition",
                model=mv.model,
                version=mv.version,
                ds=self.ds.isoformat(),
                store_run_id=run_id,
                status=status,
            ),
        }
        io_facets = None
        if kind == ol.COMPLETE:
            out_facets["version"] = ol.facet(
                "version", datasetVersion=f"{mv.model}/v{mv.version}/ds={self.ds.isoformat()}/run={run_id}"
            )
            out_facets["lifecycleStateChange"] = ol.facet("lifecycleStateChange", lifecycleStateChange="OVERWRITE")
            io_facets = {"outputStatistics": ol.facet("outputStatistics", rowCount=int(rows or 0))}
        output = ol.dataset(namespace, name, out_facets, io="output", io_facets=io_facets)
        return ol.run_event(
            kind,
            run_id=str(manifest["openlineage_run_id"]),
            namespace=self.emitter.namespace,
            job_name=f"score.{mv.model}",
            job_type="SCORING",
            run_facets=run_facets,
            inputs=[self._input(scored.contract)],
            outputs=[output],
            parent=self.emitter.context.parent,
            root=self.emitter.context.root,
        )

    def _emit(self, kind: str, run_id: int, **kwargs: Any) -> None:
        if not self.emitter.enabled or run_id not in self.runs:
            return
        try:
            self.emitter.emit(self._event(kind, run_id, **kwargs))
        except Exception as exc:  # noqa: BLE001 - building an event never fails a run
            log.warning("could not build the OpenLineage %s event of run %s: %s", kind, run_id, exc)

    def started(self, run_id: int, mv: ModelVersion, manifest: dict[str, Any], contract: FeatureContract) -> None:
        """The run is recorded (start_run): emit START."""
        self.runs[run_id] = _Scored(mv, manifest, contract)
        self._emit(ol.START, run_id)

    def committed(
        self, run_id: int, rows: int, *, replaced_run_id: int | None = None, worker_peak_bytes: int = 0
    ) -> None:
        """The run committed: emit COMPLETE, record its metrics."""
        if run_id in self.runs:
            self.runs[run_id].extra["replaced_run_id"] = replaced_run_id
        self._emit(ol.COMPLETE, run_id, rows=rows)
        self._metrics(run_id, True, rows, worker_peak_bytes)

    def failed(self, run_id: int, error: BaseException | str, *, worker_peak_bytes: int = 0) -> None:
        """The run failed: emit FAIL with the error, record its metrics."""
        self._emit(ol.FAIL, run_id, error=error)
        self._metrics(run_id, False, 0, worker_peak_bytes)

    def close(self) -> None:
        """The pass is over (every run committed or failed): close the OpenLineage client, waiting at most
        `[lineage] timeout_s` for the events still under way. Never raises; a second call does nothing."""
        try:
            self.emitter.close()
        except Exception as exc:  # noqa: BLE001
            log.warning("could not close the OpenLineage client: %s", exc)

    def _metrics(self, run_id: int, ok: bool, rows: int, worker_peak_bytes: int) -> None:
        scored = self.runs.get(run_id)
        if scored is None:
            return
        try:
            run = JobRun(
                "score",
                scored.mv.model,
                scored.mv.version,
                self.ds,
                ok,
                rows,
                time.perf_counter() - self.t0,
                self.clock.peak_bytes(),
                worker_peak_bytes or None,
                detail={"store_run_id": run_id, "run_key": self.run_key},
            )
            record_job(self.settings.metrics, run)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not record the metrics of run %s: %s", run_id, exc)


class TrainingTelemetry:
    """One training run (`nightshift train`, a retrain): START now, then COMPLETE or FAIL, and its metrics;
    its OpenLineage client is closed after the COMPLETE or FAIL.

    Inputs: the model's feature and label datasets (with the days, files and rows trained on once known);
    output: the registered ONNX artifact (its SHA-256 as the dataset version).
    """

    def __init__(self, settings: Settings, model: str, ds: date, *, kind: str, run_key: str | None = None) -> None:
        self.settings = settings
        self.model = model
        self.ds = ds
        self.kind = kind
        self.run_key = run_key
        self.clock = JobClock()
        self.emitter = ol.Emitter(settings.lineage)
        self.run_id = ol.new_run_id()
        self.features_uri: str | None = None
        self.labels_uri: str | None = None
        try:
            cfg = settings.model(model)
            self.features_uri = cfg.dataset_uri(settings)
            self.labels_uri = cfg.labels_uri(settings)
        except Exception as exc:  # noqa: BLE001 - an unknown model fails the run itself, loudly
            log.debug("no datasets for %s: %s", model, exc)
        self._emit(ol.START)

    def _inputs(self, training: dict[str, Any] | None) -> list[Any]:
        parts = list((training or {}).get("partitions") or [])
        out = []
        for role, uri in (("features", self.features_uri), ("labels", self.labels_uri)):
            if not uri:
                continue
            namespace, name = ol.dataset_id(uri)
            facets: dict[str, Any] = {}
            if training:
                facets["nightshift_training"] = ol.facet(
                    "nightshift_training",
                    role=role,
                    days=[p.get("ds") for p in parts],
                    partitions=[
                        {
                            "ds": p.get("ds"),
                            "uri": p.get(role),
                            "rows": p.get("feature_rows" if role == "features" else "labelled_rows"),
                            "sampled_rows": p.get("sampled_rows"),
                            "files": p.get("files") if role == "features" else None,
                        }
                        for p in parts
                    ],
                    rows=training.get("rows"),
                    content_sha256=training.get("content_sha256"),
                )
            out.append(ol.dataset(namespace, name, facets))
        return out

    def _output(self, mv: ModelVersion, status: str | None) -> Any:
        namespace, name = ol.dataset_id(mv.artifact_uri)
        facets = {
            "version": ol.facet("version", datasetVersion=mv.sha256),
            "nightshift_model": ol.facet(
                "nightshift_model",
                model=mv.model,
                version=mv.version,
                sha256=mv.sha256,
                size_bytes=mv.size_bytes,
                algorithm=mv.algorithm,
                task=mv.task,
                created_by=mv.created_by,
                status=status,
            ),
            "lifecycleStateChange": ol.facet("lifecycleStateChange", lifecycleStateChange="CREATE"),
        }
        return ol.dataset(namespace, name, facets, io="output")

    def _emit(
        self,
        kind: str,
        *,
        mv: ModelVersion | None = None,
        training: dict[str, Any] | None = None,
        error: Any = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        if not self.emitter.enabled:
            return
        try:
            run_facets: dict[str, Any] = {
                "nominalTime": ol.nominal_time(self.ds),
                "nightshift_run": ol.facet(
                    "nightshift_run",
                    kind=self.kind,
                    model=self.model,
                    version=mv.version if mv else None,
                    ds=self.ds.isoformat(),
                    run_key=self.run_key,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    **(detail or {}),
                ),
            }
            if error is not None:
                run_facets["errorMessage"] = ol.error_facet(error)
            event = ol.run_event(
                kind,
                run_id=self.run_id,
                namespace=self.emitter.namespace,
                job_name=f"train.{self.model}",
                job_type="TRAINING",
                run_facets=run_facets,
                inputs=self._inputs(training),
                outputs=[self._output(mv, (detail or {}).get("status"))] if mv is not None else [],
                parent=self.emitter.context.parent,
                root=self.emitter.context.root,
            )
            self.emitter.emit(event)
        except Exception as exc:  # noqa: BLE001 - building an event never fails a run
            log.warning("could not build the OpenLineage %s event of training %s: %s", kind, self.model, exc)

    def finished(
        self,
        mv: ModelVersion | None,
        training: dict[str, Any] | None,
        *,
        status: str = "registered",
        reason: str | None = None,
        candidate_id: int | None = None,
    ) -> None:
        """The run ended: COMPLETE when it registered a version (whatever its gates said), else FAIL with why."""
        training = training if training is not None else (mv.training_data if mv is not None else None)
        detail = {"status": status, "reason": reason, "candidate_id": candidate_id}
        if mv is not None:
            self._emit(ol.COMPLETE, mv=mv, training=training, detail=detail)
        else:
            self._emit(ol.FAIL, training=training, error=reason or status, detail=detail)
        self._close()
        self._metrics(mv is not None, mv.version if mv else None, int((training or {}).get("rows") or 0), detail)

    def failed(self, error: BaseException) -> None:
        """The run raised: FAIL with the error, and its metrics."""
        self._emit(ol.FAIL, error=error, detail={"status": "failed"})
        self._close()
        self._metrics(False, None, 0, {"status": "failed", "reason": f"{type(error).__name__}: {error}"})

    def _close(self) -> None:
        """After the last event (COMPLETE or FAIL): close the OpenLineage client, within `[lineage] timeout_s`."""
        try:
            self.emitter.close()
        except Exception as exc:  # noqa: BLE001
            log.warning("could not close the OpenLineage client of training %s: %s", self.model, exc)

    def _metrics(self, ok: bool, version: int | None, rows: int, detail: dict[str, Any]) -> None:
        try:
            run = JobRun(
                "train",
                self.model,
                version,
                self.ds,
                ok,
                rows,
                self.clock.seconds,
                self.clock.peak_bytes(),
                detail={**detail, "kind": self.kind, "run_key": self.run_key},
            )
            record_job(self.settings.metrics, run)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not record the metrics of training %s: %s", self.model, exc)


def monitoring_metrics(
    settings: Settings, model: str, version: int, ds: date, clock: JobClock, *, ok: bool, rows: int
) -> None:
    """Record one monitoring run's metrics (rows checked, seconds, peak memory). Never raises."""
    try:
        run = JobRun("monitor", model, version, ds, ok, rows, clock.seconds, clock.peak_bytes())
        record_job(settings.metrics, run)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not record the monitoring metrics of %s v%s: %s", model, version, exc)
