"""Sensor for the collect step: waits until the round's updates reach quorum, or the
deadline passes (stragglers are then recorded by ``collect``, not waited for).

Read-only: it reads the round's manifest (``dispatch`` must have run) and never writes.
Simulated rounds are checked in place (their updates are already stored). Remote rounds
defer to :class:`~fl_airflow.triggers.updates.RemoteUpdatesTrigger`, which polls the
coordinator in the triggerer and holds no worker slot while devices train; asynchronous
(FedBuff) remote rounds wait for the round's buffer in the coordinator's arrival order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator

from fl_airflow.hooks.artifact_store import ArtifactStoreHook

if TYPE_CHECKING:
    from airflow.sdk import Context


class UpdatesArrivedSensor(BaseSensorOperator):
    """True when ``quorum`` (a fraction of the cohort) of updates are in the store, or when
    ``deadline_s`` seconds passed since the sensor started (simulated rounds); remote
    rounds use the campaign's own quorum and deadline, deferred."""

    template_fields: Sequence[str] = ("campaign_id", "round_num")

    def __init__(
        self,
        *,
        campaign_id: str,
        round_num: Any,
        quorum: float = 1.0,
        deadline_s: float = 600.0,
        poll_interval: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < quorum <= 1:
            raise ValueError(f"quorum must be in (0, 1], got {quorum}")
        self.campaign_id = campaign_id
        self.round_num = round_num
        self.quorum = quorum
        self.deadline_s = deadline_s
        self.poll_interval = poll_interval
        self._started: float | None = None

    def execute(self, context: Context) -> Any:
        from fl_core.rounds import state

        store = ArtifactStoreHook.get_store()
        cfg = state.campaign_config(state.load_campaign(store, self.campaign_id))
        if cfg.campaign.clients == "remote":
            from fl_airflow.triggers.updates import RemoteUpdatesTrigger

            self.defer(
                trigger=RemoteUpdatesTrigger(
                    campaign_id=self.campaign_id,
                    round_num=int(self.round_num),
                    quorum=cfg.campaign.quorum,
                    poll_interval=self.poll_interval,
                    buffered=cfg.asynchronous.enabled,
                ),
                method_name="execute_complete",
            )
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Back from the trigger: the round reached quorum or its deadline."""
        event = event or {}
        self.log.info(
            "round %s: %s/%s updates arrived (quorum %s)%s",
            self.round_num,
            event.get("received"),
            event.get("tasks"),
            event.get("need"),
            ", deadline passed" if event.get("deadline_passed") else "",
        )
        return event

    def poke(self, context: Context) -> bool:
        from fl_core.rounds import records
        from fl_core.rounds.layout import update_key

        store = ArtifactStoreHook.get_store()
        rnd = int(self.round_num)
        tasks = records.read(
            store, records.Manifest, self.campaign_id, rnd, step="wait_for_updates"
        ).tasks
        if not tasks:  # an empty cohort (Poisson sampling under DP): nothing to wait for
            return True
        arrived = sum(store.exists(update_key(self.campaign_id, rnd, c)) for c in tasks)
        need = max(1, int(self.quorum * len(tasks) + 0.999999))
        self._started = self._started or time.monotonic()
        late = time.monotonic() - self._started > self.deadline_s
        self.log.info("round %d: %d/%d updates arrived (quorum %d)", rnd, arrived, len(tasks), need)
        return arrived >= need or (late and arrived > 0)
