"""``GET /v1/health``: liveness and registry reachability (unauthenticated)."""

from __future__ import annotations

import time

import sqlalchemy as sa
from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from fl_core.coordinator.deps import get_session
from fl_core.coordinator.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthOut)
def health(session: Session = Depends(get_session)) -> HealthOut:
    session.execute(sa.select(1))
    return HealthOut(status="ok", api="v1", server_time=time.time())
