"""OpenLineage in the DAGs, through Airflow's OpenLineage provider (apache-airflow-providers-openlineage).

With the provider configured (`[openlineage] transport`, `OPENLINEAGE_URL`, an `openlineage.yml`, ...; it is
off without one), Airflow emits START/COMPLETE/FAIL events for every DAG run and task. nightshift adds what
only it knows to them:

* the `score` and `retrain` tasks' events carry their **input and output datasets**: the night's partition
  (schema, row and file counts, the manifest's fingerprint) and the store's `committed_predictions` (rows
  written); the training days' feature and label data and the registered model artifact. The provider asks
  the operator for them (`get_openlineage_facets_on_complete` / `_on_failure`, attached by `with_lineage`);
  they are the datasets of the nightshift runs the task made.
* nightshift's own run events (`score.<model>`, `train.<model>`, one per store run, see
  nightshift.telemetry.runs) name the task's run as their **parent** (the standard `parent` facet, with the
  DAG run as root), and go through the provider's transport when nightshift names no destination of its
  own, so one consumer gets the whole tree: DAG run → task → each model's run.

Nothing here runs when the provider is not installed or not configured.
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

#: The datasets of the nightshift runs each task instance made, until the provider asks for them (the listener
#: runs in the task's own process, after the task).
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


@contextmanager
def airflow_lineage(context: Any) -> Iterator[None]:
    """Inside a task: nightshift's runs are children of the task's OpenLineage run, their events go through
    the provider's transport (unless nightshift has a destination of its own), and their datasets are kept
    for the task's own events."""
    if not provider_enabled():
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


def _unique(datasets: list[Any]) -> list[Any]:
    seen: dict[tuple[str, str], Any] = {}
    for d in datasets:
        seen.setdefault((d.namespace, d.name), d)
    return list(seen.values())


def task_lineage(task_instance: Any, *_: Any) -> Any:
    """What the provider asks the operator on COMPLETE or FAIL: the inputs and outputs of the nightshift runs
    this task instance made (their COMPLETE/FAIL events; the first of each dataset)."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    events = _EVENTS.pop(_key(task_instance), [])
    ended = [e for e in events if getattr(e.eventType, "value", e.eventType) in ("COMPLETE", "FAIL")] or events
    return OperatorLineage(
        inputs=_unique([d for e in ended for d in e.inputs or []]),
        outputs=_unique([d for e in ended for d in e.outputs or []]),
    )


def with_lineage(task_output: T) -> T:
    """A TaskFlow task's output (XComArg), its operator answering the provider with `task_lineage`."""
    operator = task_output.operator  # type: ignore[attr-defined]
    operator.get_openlineage_facets_on_complete = task_lineage
    operator.get_openlineage_facets_on_failure = task_lineage
    return task_output
