"""PartitionReadySensor: waits, deferred to the triggerer, for the run's partition and its success marker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowSensorTimeout


class PartitionReadySensor(BaseSensorOperator):
    """Succeed when `<root>/<key>=<ds>/<marker>` exists; ds is the day the run's data interval starts.

    Deferrable by default: the worker slot is freed and the triggerer polls every
    `poke_interval` seconds until `timeout`, then the task fails (no retry) with a
    message naming the partition and the marker. A partition that is already there
    succeeds at once, without deferring.
    """

    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        root: str,
        key: str = "ds",
        marker: str = "_SUCCESS",
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.key = key
        self.marker = marker
        self.deferrable = deferrable

    def _where(self, ds: str) -> str:
        return f"{self.root.rstrip('/')}/{self.key}={ds}/{self.marker}"

    def poke(self, context: Any) -> bool:
        from nightshift.data import partition_ready
        from nightshift_airflow.runtime import ds_of

        return partition_ready(self.root, self.key, ds_of(context), self.marker)

    def execute(self, context: Any) -> Any:
        from nightshift_airflow.runtime import ds_of

        ds = ds_of(context).isoformat()
        if self.poke(context):
            self.log.info("partition ready: %s", self._where(ds))
            return {"ds": ds, "marker": self._where(ds), "waited_s": 0}
        if not self.deferrable:
            return super().execute(context)
        from nightshift_airflow.triggers import PartitionReadyTrigger

        deadline = datetime.now(UTC) + timedelta(seconds=self.timeout)
        self.log.info(
            "waiting for %s (deferred to the triggerer, polling every %ss until %s)",
            self._where(ds),
            self.poke_interval,
            deadline.isoformat(timespec="seconds"),
        )
        self.defer(
            trigger=PartitionReadyTrigger(
                root=self.root,
                key=self.key,
                ds=ds,
                marker=self.marker,
                poke_interval=self.poke_interval,
                deadline=deadline.isoformat(),
            ),
            method_name="execute_complete",
            # A safety net only: the trigger itself fires "timeout" at the deadline.
            timeout=timedelta(seconds=self.timeout + max(60.0, 2 * self.poke_interval)),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        from nightshift_airflow.runtime import ds_of

        ds = ds_of(context).isoformat()
        if event and event.get("status") == "ready":
            self.log.info("partition ready after %s poll(s): %s", event.get("polls"), self._where(ds))
            return {"ds": ds, "marker": self._where(ds), "waited_s": event.get("waited_s")}
        raise AirflowSensorTimeout(
            f"partition ds={ds} is not ready after waiting {self.timeout:.0f}s: {self._where(ds)} does not exist. "
            "Upstream has not delivered (or finished) this partition; nothing was scored and the previous "
            "predictions still serve. Re-run this date once the marker is written."
        )


def wait_for_partition(cfg: Any, dataset: str) -> PartitionReadySensor:
    """The `wait_for_partition` task of a scoring DAG, from the model's (or its group's first model's)
    partition key, success marker and `[models.schedule]` poke interval and wait timeout."""
    return PartitionReadySensor(
        task_id="wait_for_partition",
        root=dataset,
        key=cfg.partition_key,
        marker=cfg.success_marker,
        poke_interval=cfg.schedule.poke_interval_s,
        timeout=cfg.schedule.wait_timeout_s,
    )
