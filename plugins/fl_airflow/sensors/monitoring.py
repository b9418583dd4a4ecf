"""Sensor for federated monitoring: waits (deferred, no worker slot) until the live clients
reported on the champion check, or its deadline passed. Simulated mode: nothing to wait
for, it succeeds at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class MonitoringReportsSensor(BaseSensorOperator):
    """Waits for the check that task ``publish_task_id`` published (its XCom: the check's
    id, or None in simulated mode)."""

    template_fields: Sequence[str] = ("publish_task_id",)

    def __init__(
        self,
        *,
        publish_task_id: str,
        quorum: float = 1.0,
        poll_interval: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < quorum <= 1:
            raise ValueError(f"quorum must be in (0, 1], got {quorum}")
        self.publish_task_id = publish_task_id
        self.quorum = quorum
        self.poll_interval = poll_interval

    def execute(self, context: Context) -> Any:
        published = context["ti"].xcom_pull(task_ids=self.publish_task_id)
        if not published:
            self.log.info("simulated mode: no clients to wait for")
            return None
        from fl_airflow.triggers.monitoring import MonitoringReportsTrigger

        self.defer(
            trigger=MonitoringReportsTrigger(
                check_id=published["check_id"],
                quorum=self.quorum,
                poll_interval=self.poll_interval,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        event = event or {}
        self.log.info(
            "check %s: %s/%s clients reported (quorum %s)%s",
            event.get("check_id"),
            event.get("received"),
            event.get("tasks"),
            event.get("need"),
            ", deadline passed" if event.get("deadline_passed") else "",
        )
        return event

    def poke(self, context: Context) -> bool:
        return True
