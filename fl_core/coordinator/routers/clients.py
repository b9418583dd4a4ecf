"""``POST /v1/clients/enroll`` (one-time token -> identity) and ``POST /v1/clients/heartbeat``."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request

from fl_core.coordinator import registry
from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.deps import MAX_JSON_BYTES, authenticated, get_coordinator, in_thread
from fl_core.coordinator.registry import ProtocolError
from fl_core.coordinator.routers._body import parse
from fl_core.coordinator.schemas import EnrollIn, EnrollOut, HeartbeatIn, HeartbeatOut

router = APIRouter(prefix="/clients", tags=["clients"])


@router.post("/enroll", response_model=EnrollOut, status_code=201)
async def enroll(request: Request, coord: Coordinator = Depends(get_coordinator)) -> EnrollOut:
    """Redeem a one-time enrollment token, registering the device's Ed25519 public key."""
    if int(request.headers.get("content-length") or 0) > MAX_JSON_BYTES:
        raise ProtocolError(413, "request body too large")
    body = await parse(request, EnrollIn)

    def run() -> str:
        with coord.session() as s:
            return registry.enroll(s, token=body.token, public_key=body.public_key)

    return EnrollOut(client_id=await in_thread(run))


@router.post("/heartbeat", response_model=HeartbeatOut)
async def heartbeat(
    request: Request,
    client_id: str = Depends(authenticated),
    coord: Coordinator = Depends(get_coordinator),
) -> HeartbeatOut:
    """Availability, device/link profile, measured bandwidth and latency, data version."""
    body = await parse(request, HeartbeatIn)

    def run() -> None:
        with coord.session() as s:
            registry.heartbeat(s, client_id, body.model_dump())

    await in_thread(run)
    return HeartbeatOut(client_id=client_id, server_time=time.time())
