"""Sensor for the collect step: waits until the round's updates reach quorum, or the
deadline passes (stragglers are then recorded by ``collect``, not waited for)."""

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
    ``deadline_s`` seconds passed since the round's manifest was published."""

    template_fields: Sequence[str] = ("campaign_id", "round_num")

    def __init__(
        self,
        *,
        campaign_id: str,
        round_num: Any,
        quorum: float = 1.0,
        deadline_s: float = 600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < quorum <= 1:
            raise ValueError(f"quorum must be in (0, 1], got {quorum}")
        self.campaign_id = campaign_id
        self.round_num = round_num
        self.quorum = quorum
        self.deadline_s = deadline_s
        self._started: float | None = None

    def poke(self, context: Context) -> bool:
        from fl_core.rounds import records
        from fl_core.rounds.layout import update_key

        store = ArtifactStoreHook.get_store()
        rnd = int(self.round_num)
        # Read-only: the manifest must exist (dispatch ran); the sensor never writes one.
        tasks = records.read(
            store, records.Manifest, self.campaign_id, rnd, step="wait_for_updates"
        ).tasks
        arrived = sum(store.exists(update_key(self.campaign_id, rnd, c)) for c in tasks)
        need = max(1, int(self.quorum * len(tasks) + 0.999999))
        self._started = self._started or time.monotonic()
        late = time.monotonic() - self._started > self.deadline_s
        self.log.info("round %d: %d/%d updates arrived (quorum %d)", rnd, arrived, len(tasks), need)
        return arrived >= need or (late and arrived > 0)
