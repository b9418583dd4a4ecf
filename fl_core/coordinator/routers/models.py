"""``GET /v1/models/{campaign}/{round}?known_version=K``: the round's global model for the
caller in the wire format, whole or as a delta from version K; ETag / If-None-Match.
Streamed in pieces from one shared encoding of the round's model (deterministic codecs)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.deps import authenticated, get_coordinator, in_thread
from fl_core.coordinator.routers import ENDS_CONNECTION
from fl_core.coordinator.schemas import CAMPAIGN_PATTERN, MAX_ROUND

router = APIRouter(prefix="/models", tags=["models"])

CHUNK_BYTES = 64 << 10


@router.get("/{campaign}/{rnd}", response_class=Response)
async def download_model(
    request: Request,
    campaign: str = Path(pattern=CAMPAIGN_PATTERN),
    rnd: int = Path(ge=1, le=MAX_ROUND),
    known_version: int | None = Query(None, ge=0, le=10**6),
    client_id: str = Depends(authenticated),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    prefix, payload = await in_thread(
        coord.model_message_parts, client_id, campaign, rnd, known_version=known_version
    )
    # the header names the payload's sha256 and size: its hash identifies the message
    etag = '"' + hashlib.sha256(prefix).hexdigest() + '"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return StreamingResponse(
        _chunks(prefix, payload),
        media_type="application/octet-stream",
        headers={
            "ETag": etag,
            "Cache-Control": "private, no-transform",
            "Content-Length": str(len(prefix) + len(payload)),
            **ENDS_CONNECTION,
        },
    )


async def _chunks(prefix: bytes, payload: memoryview) -> AsyncIterator[bytes]:
    """The message in pieces of ``CHUNK_BYTES``: a slow reader holds one piece in the
    server's buffers, not a copy of the model (the payload is shared between downloads)."""
    yield prefix
    for start in range(0, len(payload), CHUNK_BYTES):
        yield bytes(payload[start : start + CHUNK_BYTES])
