"""The deferred half of ``wait_for_updates``: polls a remote round in the triggerer until
quorum or deadline, so waiting for real devices holds no worker slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


def round_progress(campaign_id: str, rnd: int, quorum: float) -> dict[str, Any]:
    """Where a remote round stands: received, tasks, the quorum count, deadline passed."""
    from fl_core.coordinator.api import Coordinator

    coord = Coordinator.from_env()
    try:
        status = coord.round_status(campaign_id, rnd)
    finally:
        coord.close()
    need = max(1, int(quorum * status.num_tasks + 0.999999)) if status.num_tasks else 0
    return {
        "received": status.num_received,
        "tasks": status.num_tasks,
        "need": need,
        "deadline_passed": status.deadline_passed,
        "done": status.num_received >= need or status.deadline_passed,
    }


class RemoteUpdatesTrigger(BaseTrigger):
    """Fires when ``quorum`` of a remote round's tasks delivered, or its deadline passed."""

    def __init__(
        self, *, campaign_id: str, round_num: int, quorum: float, poll_interval: float = 2.0
    ) -> None:
        super().__init__()
        self.campaign_id = campaign_id
        self.round_num = int(round_num)
        self.quorum = float(quorum)
        self.poll_interval = float(poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "fl_airflow.triggers.updates.RemoteUpdatesTrigger",
            {
                "campaign_id": self.campaign_id,
                "round_num": self.round_num,
                "quorum": self.quorum,
                "poll_interval": self.poll_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            progress = await asyncio.to_thread(
                round_progress, self.campaign_id, self.round_num, self.quorum
            )
            if progress["done"]:
                yield TriggerEvent(progress)
                return
            await asyncio.sleep(self.poll_interval)
