"""What jobs emit beside their results: input manifests, OpenLineage run events and job metrics for operators.

* `manifest` — every input file of a scoring run (URI, bytes, rows, a SHA-256 fingerprint) and the model
  version's artifact SHA-256, stored with the run (`runs.manifest`) for `nightshift lineage`.
* `openlineage` — START, COMPLETE and FAIL run events of scoring and training runs, built and sent with
  openlineage-python (`openlineage_facets`: nightshift's own facets as the client's facet classes).
* `jobmetrics` — rows, seconds, rows/s and peak memory of every scoring, monitoring and training run, as a
  node_exporter textfile, a Pushgateway push, and to sinks a caller registers (Airflow's metrics).
* `runs` — the hooks the jobs call (scoring, training, monitoring); none of them ever fails a run.

Lives low in the layers (above `db`, `data` and `config`), so every job can call it; it never imports airflow.
"""

from __future__ import annotations

from nightshift.telemetry.jobmetrics import JobClock, JobRun, record_job, sink
from nightshift.telemetry.manifest import input_manifest, verify_manifest
from nightshift.telemetry.runs import ScoringTelemetry, TrainingTelemetry, monitoring_metrics

__all__ = [
    "JobClock",
    "JobRun",
    "ScoringTelemetry",
    "TrainingTelemetry",
    "input_manifest",
    "monitoring_metrics",
    "record_job",
    "sink",
    "verify_manifest",
]
