"""``GET /v1/tasks/next?wait=S``: long-poll for this client's next open task (204 if none)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from fl_core.coordinator import registry
from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.deps import authenticated, get_coordinator

router = APIRouter(prefix="/tasks", tags=["tasks"])


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

    give_up = time.monotonic() + min(wait, coord.settings.long_poll_s)
    while True:
        task = await run_in_threadpool(find)
        if task is not None:
            return task
        if time.monotonic() >= give_up or await request.is_disconnected():
            return Response(status_code=204)
        await asyncio.sleep(coord.settings.poll_interval_s)
