"""PartitionReadyTrigger: the triggerer polls (via fsspec) for a partition's success marker, up to a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class PartitionReadyTrigger(BaseTrigger):
    """Fire `{"status": "ready"}` when the marker exists, or `{"status": "timeout"}` at the deadline.

    The deadline is part of the trigger (an absolute UTC time), so the wait ends with a
    clear message in the triggerer and in `dag.test()` alike, and a restarted triggerer
    keeps the original deadline.
    """

    def __init__(
        self, *, root: str, key: str, ds: str, marker: str, poke_interval: float, deadline: str, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.key = key
        self.ds = ds
        self.marker = marker
        self.poke_interval = poke_interval
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "root": self.root,
                "key": self.key,
                "ds": self.ds,
                "marker": self.marker,
                "poke_interval": self.poke_interval,
                "deadline": self.deadline,
            },
        )

    def _ready(self) -> bool:
        from datetime import date

        from nightshift.data import partition_ready

        return partition_ready(self.root, self.key, date.fromisoformat(self.ds), self.marker)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = datetime.fromisoformat(self.deadline)
        polls = 0
        started = time.monotonic()
        while True:
            polls += 1
            if await asyncio.to_thread(self._ready):
                yield TriggerEvent({"status": "ready", "polls": polls, "waited_s": round(time.monotonic() - started)})
                return
            left = (deadline - datetime.now(UTC)).total_seconds()
            if left <= 0:
                yield TriggerEvent({"status": "timeout", "polls": polls, "deadline": self.deadline})
                return
            await asyncio.sleep(min(self.poke_interval, left))
