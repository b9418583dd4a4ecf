"""``GET /v1/models/{campaign}/{round}?known_version=K``: the round's global model for the
caller in the wire format, whole or as a delta from version K; ETag / If-None-Match."""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.deps import authenticated, get_coordinator
from fl_core.coordinator.schemas import CAMPAIGN_PATTERN

router = APIRouter(prefix="/models", tags=["models"])


@router.get("/{campaign}/{rnd}", response_class=Response)
async def download_model(
    request: Request,
    campaign: str = Path(pattern=CAMPAIGN_PATTERN),
    rnd: int = Path(ge=1, le=10**6),
    known_version: int | None = Query(None, ge=0, le=10**6),
    client_id: str = Depends(authenticated),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    data = await run_in_threadpool(
        coord.model_message, client_id, campaign, rnd, known_version=known_version
    )
    etag = '"' + hashlib.sha256(data).hexdigest() + '"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(
        content=data,
        media_type="application/octet-stream",
        headers={"ETag": etag, "Cache-Control": "private, no-transform"},
    )
