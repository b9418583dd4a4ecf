"""``PUT /v1/updates/{campaign}/{round}``: one signed update, streamed with a size cap.

Before the body is read: request signature (401), revoked (403), replay (409), selected in
an open round (403 / 410), declared length within the cap (413). While streaming: cut off
at the cap (413; never buffered whole); at most ``max_concurrent_uploads`` bodies are
read at once, the rest wait unread. After: body digest equals the signed one (401),
then :meth:`~fl_core.coordinator.api.Coordinator.accept_update` (401 / 409 / 400 / 403).
201 stores it; 200 is an idempotent retry of the same bytes.
"""

from __future__ import annotations

import functools
import hashlib

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from fl_core.coordinator import protocol
from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.deps import authenticated_stream, get_coordinator
from fl_core.coordinator.registry import ProtocolError
from fl_core.coordinator.schemas import CAMPAIGN_PATTERN, UploadOut

router = APIRouter(prefix="/updates", tags=["updates"])


@router.put("/{campaign}/{rnd}", response_model=UploadOut, status_code=201)
async def upload_update(
    request: Request,
    campaign: str = Path(pattern=CAMPAIGN_PATTERN),
    rnd: int = Path(ge=1, le=10**6),
    client_id: str = Depends(authenticated_stream),
    coord: Coordinator = Depends(get_coordinator),
) -> JSONResponse:
    signature = request.headers.get(protocol.H_UPDATE_SIGNATURE)
    if not signature:
        raise ProtocolError(401, f"missing {protocol.H_UPDATE_SIGNATURE} header")
    cap = await run_in_threadpool(coord.check_upload_allowed, client_id, campaign, rnd)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise ProtocolError(413, f"update of {length} bytes exceeds the limit of {cap}")
    async with request.app.state.upload_slots:  # bounded memory: a few bodies at a time
        body = bytearray()
        digest = hashlib.sha256()
        async for chunk in request.stream():
            if len(body) + len(chunk) > cap:
                raise ProtocolError(413, f"update exceeds the limit of {cap} bytes")
            body += chunk
            digest.update(chunk)
        hexdigest = digest.hexdigest()
        if hexdigest != request.headers.get(protocol.H_CONTENT_SHA256):
            raise ProtocolError(401, "body does not match the signed sha256")
        fresh, rec = await run_in_threadpool(
            functools.partial(coord.accept_update, signature=signature, sha256=hexdigest),
            client_id,
            campaign,
            rnd,
            bytes(body),
        )
        del body
    out = UploadOut(
        client_id=client_id, key=rec.key, sha256=rec.sha256, size=rec.size, stored=fresh
    )
    return JSONResponse(out.model_dump(), status_code=201 if fresh else 200)
