"""The deferred half of ``wait_for_updates``: polls a remote round in the triggerer until
quorum or deadline (asynchronous campaigns: until FedBuff's buffer of ``buffer_size``
arrivals is full, or the deadline), so waiting for real devices holds no worker slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


def round_progress(
    campaign_id: str, rnd: int, quorum: float, *, buffered: bool = False
) -> dict[str, Any]:
    """Where a remote round stands: received, tasks, the quorum count, deadline passed.

    ``buffered`` (FedBuff): received is the round's buffer in the coordinator's arrival
    order, among every client in flight (:func:`fl_core.rounds.remote.buffer_progress`)."""
    from fl_core.coordinator.settings import CoordinatorSettings
    from fl_core.rounds import remote
    from fl_core.store import open_store

    store = open_store(CoordinatorSettings.from_env().store_url)
    if buffered:
        return remote.buffer_progress(store, campaign_id, rnd)
    status = remote.coordinator(store).round_status(campaign_id, rnd)
    need = max(1, int(quorum * status.num_tasks + 0.999999)) if status.num_tasks else 0
    return {
        "received": status.num_received,
        "tasks": status.num_tasks,
        "need": need,
        "deadline_passed": status.deadline_passed,
        "done": status.num_received >= need or status.deadline_passed,
    }


class RemoteUpdatesTrigger(BaseTrigger):
    """Fires when ``quorum`` of a remote round's tasks delivered, or its deadline passed;
    with ``buffered`` (FedBuff), when the round's buffer is full or its deadline passed."""

    def __init__(
        self,
        *,
        campaign_id: str,
        round_num: int,
        quorum: float,
        poll_interval: float = 2.0,
        buffered: bool = False,
    ) -> None:
        super().__init__()
        self.campaign_id = campaign_id
        self.round_num = int(round_num)
        self.quorum = float(quorum)
        self.poll_interval = float(poll_interval)
        self.buffered = bool(buffered)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "fl_airflow.triggers.updates.RemoteUpdatesTrigger",
            {
                "campaign_id": self.campaign_id,
                "round_num": self.round_num,
                "quorum": self.quorum,
                "poll_interval": self.poll_interval,
                "buffered": self.buffered,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            progress = await asyncio.to_thread(
                round_progress,
                self.campaign_id,
                self.round_num,
                self.quorum,
                buffered=self.buffered,
            )
            if progress["done"]:
                yield TriggerEvent(progress)
                return
            await asyncio.sleep(self.poll_interval)
