"""The deferred half of ``wait_for_reports``: polls a federated monitoring check in the
triggerer until the quorum of live clients reported or its deadline passed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


def check_progress(check_id: str, quorum: float) -> dict[str, Any]:
    from fl_airflow.hooks.artifact_store import ArtifactStoreHook
    from fl_core.remote_monitoring import check_progress as progress

    return progress(ArtifactStoreHook.get_store(), check_id, quorum=quorum)


class MonitoringReportsTrigger(BaseTrigger):
    """Fires when ``quorum`` of a check's clients reported, or its deadline passed."""

    def __init__(self, *, check_id: str, quorum: float = 1.0, poll_interval: float = 2.0) -> None:
        super().__init__()
        self.check_id = check_id
        self.quorum = float(quorum)
        self.poll_interval = float(poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "fl_airflow.triggers.monitoring.MonitoringReportsTrigger",
            {"check_id": self.check_id, "quorum": self.quorum, "poll_interval": self.poll_interval},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            progress = await asyncio.to_thread(check_progress, self.check_id, self.quorum)
            if progress["done"]:
                yield TriggerEvent(progress)
                return
            await asyncio.sleep(self.poll_interval)
