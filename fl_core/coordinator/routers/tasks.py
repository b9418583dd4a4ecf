"""``GET /v1/tasks/next?wait=S``: long-poll for this client's next open task (204 if none).

Tasks are published by another process (the DAG's dispatch step) through the registry, so
waiting means polling it. One poll per process serves every waiting client
(:class:`Publications`): it reads a cheap marker of what was published every
``poll_interval_s`` while anyone waits, and wakes the waiters when it changes; each then
looks for its own task once. (Each waiter polling for itself cost 1,000 idle agents about
half a CPU core of registry queries, around the clock.)"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response

from fl_core.coordinator import registry
from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.deps import authenticated, get_coordinator, in_thread

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/tasks", tags=["tasks"])


class Publications:
    """Wakes waiting long-polls when something new is published (one registry poll per
    process, only while someone waits). Used from the app's event loop only."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self.generation = 0
        """Counts the changes seen; a waiter notes it before it looks for its task."""
        self._marker: object = None
        self._waiters = 0
        self._changed: asyncio.Condition | None = None
        self._poller: asyncio.Task[None] | None = None

    async def wait(self, seen: int, timeout_s: float) -> None:
        """Return when ``generation`` differs from ``seen``, or after ``timeout_s``."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        self._waiters += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        try:
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.generation != seen), timeout_s
                )
        except TimeoutError:
            pass
        finally:
            self._waiters -= 1

    async def _poll(self) -> None:
        assert self._changed is not None
        while self._waiters > 0:
            marker: object
            try:
                marker = await in_thread(self.coord.publication_marker)
            except Exception:  # a registry hiccup: waiters keep waiting, poll again
                logger.warning("task long-poll: registry poll failed", exc_info=True)
                marker = self._marker
            if marker != self._marker:
                self._marker = marker
                self.generation += 1
                async with self._changed:
                    self._changed.notify_all()
            await asyncio.sleep(self.coord.settings.poll_interval_s)


@router.get("/next", response_model=None)
async def next_task(
    request: Request,
    wait: float = Query(0.0, ge=0.0, le=300.0),
    client_id: str = Depends(authenticated),
    coord: Coordinator = Depends(get_coordinator),
) -> dict[str, Any] | Response:
    """The oldest open task of the caller with no accepted update: the manifest task plus
    campaign, round, base version, model spec, layout, deadline, ``model_url`` and
    ``upload_url``. Held up to ``wait`` seconds (capped by the server) until one appears."""

    def find() -> dict[str, Any] | None:
        with coord.session() as s:
            found = registry.next_task(s, client_id)
            return None if found is None else coord.task_for_client(*found)

    publications: Publications = request.app.state.publications
    give_up = time.monotonic() + min(wait, coord.settings.long_poll_s)
    while True:
        seen = publications.generation  # noted before looking: a later change wakes us
        task = await in_thread(find)
        if task is not None:
            return task
        left = give_up - time.monotonic()
        if left <= 0 or await request.is_disconnected():
            return Response(status_code=204)
        await publications.wait(seen, min(left, 5.0))  # wakes now and then: disconnects
