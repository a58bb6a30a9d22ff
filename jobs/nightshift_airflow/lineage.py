"""OpenLineage in the DAGs, through Airflow's OpenLineage provider (apache-airflow-providers-openlineage).

With the provider configured (`[openlineage] transport`, `OPENLINEAGE_URL`, `[openlineage] config_path` or
`OPENLINEAGE_CONFIG` naming an `openlineage.yml`, ...; it is off without one), Airflow emits START, COMPLETE
and FAIL events for every DAG run and task. nightshift adds what only it knows to them:

* the `score` and `retrain` tasks' events carry their **input and output datasets**: the night's partition
  (schema, row and file counts, the manifest's fingerprint) and the store's `committed_predictions` (rows
  written by every run that committed); the training days' feature and label data and the registered model
  artifact. The provider asks the operator for them on COMPLETE or FAIL (`get_openlineage_facets_on_complete`
  / `_on_failure`, attached by `with_lineage`); they are the datasets of the nightshift runs the task made.
* nightshift's own run events (`score.<model>`, `train.<model>`, one per store run, see
  nightshift.telemetry.runs) name the task's run as their **parent** (the standard `parent` facet, with the
  DAG run as root), and go through the provider's transport when nightshift names no destination of its
  own, so one consumer gets the whole tree: DAG run → task → each model's run. They are sent with an
  OpenLineage client of the provider's configuration, not through its adapter (no Airflow secrets masking or
  `ol.emit` stats; nightshift's facets hold no credentials).

Nothing here runs when the provider is not installed, not configured, or its emission policy
(`[openlineage] emission_policy`, `selective_enable`, `disabled_for_operators`) mutes the task.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    from openlineage.client.event_v2 import RunEvent

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The events of the nightshift runs each task instance made, until the provider asks for them: its listener
#: runs in the task's own process, after the task (in a thread of it, or in a fork, whose copy it empties).
_EVENTS: dict[tuple[str, str, str, int], list[RunEvent]] = {}


def provider_enabled() -> bool:
    """Whether Airflow's OpenLineage provider is installed and configured (it disables itself without a
    transport)."""
    try:
        from airflow.providers.openlineage import conf
    except ImportError:
        return False
    try:
        return not conf.is_disabled()
    except Exception as exc:  # noqa: BLE001 - a broken lineage configuration never fails a task
        log.warning("Airflow's OpenLineage configuration could not be read: %s", exc)
        return False


def _key(task_instance: Any) -> tuple[str, str, str, int]:
    map_index = getattr(task_instance, "map_index", -1)
    return (task_instance.dag_id, task_instance.task_id, task_instance.run_id, -1 if map_index is None else map_index)


def _provider_client() -> Any:
    """A client of the provider's own configuration (a fresh one: nightshift closes it after its runs)."""
    from airflow.providers.openlineage.plugins.adapter import OpenLineageAdapter

    return OpenLineageAdapter().get_or_create_openlineage_client()


def _emits(context: Any) -> bool:
    """Whether the provider sends this task's events: configured, and its emission policy does not mute it."""
    if not provider_enabled():
        return False
    ti = context["ti"]
    try:
        from airflow.providers.openlineage.utils.emission_policy import resolve_task_emission_policy

        return bool(resolve_task_emission_policy(operator=context["task"], dag_id=ti.dag_id, task_id=ti.task_id).emit)
    except Exception as exc:  # noqa: BLE001 - lineage never fails a task
        log.warning("Airflow's OpenLineage emission policy could not be read, nightshift adds nothing: %s", exc)
        return False


@contextmanager
def airflow_lineage(context: Any) -> Iterator[None]:
    """Inside a task: nightshift's runs are children of the task's OpenLineage run, their events go through
    the provider's transport (unless nightshift has a destination of its own), and their datasets are kept
    for the task's own events. Does nothing when the provider sends no event of this task."""
    if not _emits(context):
        yield
        return
    from nightshift.telemetry import openlineage as ol

    ti = context["ti"]
    try:
        from airflow.providers.openlineage.plugins.macros import lineage_parent_id, lineage_root_parent_id

        parent, root = ol.RunRef.parse(lineage_parent_id(ti)), ol.RunRef.parse(lineage_root_parent_id(ti))
    except Exception as exc:  # noqa: BLE001 - lineage never fails a task
        log.warning("the task's OpenLineage run could not be named, nightshift's events have no parent: %s", exc)
        parent = root = None
    events: list[RunEvent] = []
    _EVENTS[_key(ti)] = events
    lineage = ol.LineageContext(parent=parent, root=root, client_factory=_provider_client, on_event=events.append)
    with ol.lineage_context(lineage):
        yield


def _merged_outputs(events: list[Any]) -> list[Any]:
    """One output per dataset over the committed runs: the first run's, its rows the sum of every run's, and
    without the facets that describe one run (its version, partition, lifecycle) when several contributed."""
    from nightshift.telemetry import openlineage as ol

    runs: dict[tuple[str, str], list[Any]] = {}
    for event in events:
        for d in event.outputs or []:
            runs.setdefault((d.namespace, d.name), []).append(d)
    merged = []
    for (namespace, name), outputs in runs.items():
        if len(outputs) == 1:
            merged.append(outputs[0])
            continue
        per_run = {"version", "nightshift_partition", "lifecycleStateChange"}
        facets = {k: v for k, v in (outputs[0].facets or {}).items() if k not in per_run}
        stats = [(d.outputFacets or {}).get("outputStatistics") for d in outputs]
        rows = sum(int(s.rowCount) for s in stats if s is not None and s.rowCount is not None)
        io = {"outputStatistics": ol.facet("outputStatistics", rowCount=rows)}
        merged.append(ol.dataset(namespace, name, facets, io="output", io_facets=io))
    return merged


def task_lineage(task_instance: Any) -> Any:
    """What the provider asks the operator on COMPLETE or FAIL: as inputs, what the nightshift runs this task
    instance made read (those that ended, committed or failed; each dataset once); as outputs, what the
    committed ones wrote (_merged_outputs). Nothing for a task that ended before any run did."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    from nightshift.telemetry.openlineage import event_type

    events = _EVENTS.pop(_key(task_instance), [])
    ended = [e for e in events if event_type(e) in ("COMPLETE", "FAIL")]
    inputs: dict[tuple[str, str], Any] = {}
    for d in (d for e in ended for d in e.inputs or []):
        inputs.setdefault((d.namespace, d.name), d)
    committed = [e for e in ended if event_type(e) == "COMPLETE"]
    return OperatorLineage(inputs=list(inputs.values()), outputs=_merged_outputs(committed))


def with_lineage(task_output: T) -> T:
    """A TaskFlow task's output (XComArg), its operator answering the provider with `task_lineage`."""
    operator = task_output.operator  # type: ignore[attr-defined]
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    if isinstance(operator, MappedOperator):
        raise TypeError(f"with_lineage: {operator.task_id} is a mapped task, whose runs the provider asks apart")
    operator.get_openlineage_facets_on_complete = task_lineage
    operator.get_openlineage_facets_on_failure = task_lineage
    return task_output
