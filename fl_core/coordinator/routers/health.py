"""``GET /v1/health``: liveness and registry reachability (unauthenticated)."""

from __future__ import annotations

import time

import sqlalchemy as sa
from fastapi import APIRouter, Depends

from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.deps import get_coordinator, in_thread
from fl_core.coordinator.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthOut)
async def health(coord: Coordinator = Depends(get_coordinator)) -> HealthOut:
    def ping() -> None:
        with coord.session() as session:
            session.execute(sa.select(1))

    await in_thread(ping)
    return HealthOut(status="ok", api="v1", server_time=time.time())
