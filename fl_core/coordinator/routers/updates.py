"""``PUT /v1/updates/{campaign}/{round}``: one signed update, streamed with a size cap;
``POST /v1/updates/{campaign}/{round}/turn``: an upload turn, asked for before a large one;
``POST /v1/updates/{campaign}/{round}/direct`` and ``.../commit``: a direct upload to the
S3 store through a presigned URL, then its commit (when the coordinator offers them).

Admission first (:mod:`fl_core.coordinator.admission`): beyond ``max_concurrent_uploads``
in flight plus ``max_queued_uploads`` waiting (turns granted count), 503 with
``Retry-After`` at once, before any other work; a client holding a turn is admitted, and
a small upload (at most 64 KiB declared) while fewer than ``max_queued_small_uploads``
small ones are admitted.
Then, before the body is read, in one registry session: request signature (401), revoked
(403), replay (409), selected in an open round (403 / 410); declared length within the
cap (413). While streaming: hashed chunk by chunk, cut off at the cap (413;
never buffered whole). After: body digest equals the signed one (401), then
:meth:`~fl_core.coordinator.api.Coordinator.accept_update`'s checks (401 / 409 / 400 / 403 /
410): in a worker thread, inline on SQLite where nothing waits, or on PostgreSQL in a batch
with the uploads read meanwhile (``deps.accept_upload``).
201 stores it; 200 is an idempotent retry of the same bytes. The upload is served by its own
lean route (:class:`UploadRoute`, a plain Starlette route ahead of the documented one).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.routing import Match, Route
from starlette.types import Scope

from fl_core.coordinator import protocol
from fl_core.coordinator.admission import UploadAdmission
from fl_core.coordinator.api import Coordinator, PendingUpload, ReceivedUpdate
from fl_core.coordinator.deps import (
    accept_upload,
    authenticated,
    authenticated_upload,
    get_coordinator,
    in_thread,
)
from fl_core.coordinator.registry import ProtocolError, UploadContext
from fl_core.coordinator.routers import ENDS_CONNECTION
from fl_core.coordinator.routers._body import parse
from fl_core.coordinator.schemas import (
    CAMPAIGN_PATTERN,
    MAX_ROUND,
    DirectIn,
    DirectOut,
    TurnOut,
    UploadOut,
)

router = APIRouter(prefix="/updates", tags=["updates"])

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

T = TypeVar("T")


@router.put("/{campaign}/{rnd}", response_model=UploadOut, status_code=201)
async def upload_update(
    request: Request,
    campaign: str = Path(pattern=CAMPAIGN_PATTERN),
    rnd: int = Path(ge=1, le=MAX_ROUND),
) -> JSONResponse:
    """Served by :class:`UploadRoute` for a well-formed path; this route documents it and
    refuses the others."""
    coord: Coordinator = request.app.state.coordinator  # not a dependency: the hot path
    admission: UploadAdmission = request.app.state.upload_admission
    claimed = request.headers.get(protocol.H_CLIENT)  # a turn is looked up before auth
    length = request.headers.get("content-length")
    declared = int(length) if length is not None and length.isdigit() else None
    # bounded memory: slots + queue (+ the small uploads' own allowance), 503 beyond
    with admission.admit(claimed, length=declared) as spend_turn:
        client_id, ctx, cap = await authenticated_upload(request, coord, campaign, rnd)
        spend_turn()
        signature = request.headers.get(protocol.H_UPDATE_SIGNATURE)
        if not signature:
            raise ProtocolError(401, f"missing {protocol.H_UPDATE_SIGNATURE} header")
        if declared is not None and declared > cap:
            raise ProtocolError(413, f"update of {declared} bytes exceeds the limit of {cap}")
        async with admission.slot():  # a few bodies read at a time; the queue waits unread
            fresh, rec = await _receive(request, coord, client_id, campaign, rnd, ctx, cap)
    return _uploaded(client_id, rec, fresh)


_CAMPAIGN = re.compile(CAMPAIGN_PATTERN)
_ROUND_DIGITS = len(str(MAX_ROUND))


class UploadRoute(Route):
    """``PUT {prefix}/updates/{campaign}/{round}`` served by :func:`upload_update` without
    FastAPI's request handling (its dependency solving, exit stacks and parameter
    validation were about 6 % of the coordinator's interpreter time on small uploads): a
    plain Starlette route that the app puts ahead of the documented one. It takes only a
    well-formed path (the campaign's pattern, a round in 1..10^6); any other falls through
    to the documented route, which refuses it as before (400)."""

    def __init__(self, prefix: str) -> None:
        super().__init__(
            f"{prefix}{router.prefix}/{{campaign}}/{{rnd}}", _upload, methods=["PUT"],
            include_in_schema=False,
        )  # fmt: skip

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.FULL:
            campaign, rnd = child["path_params"]["campaign"], child["path_params"]["rnd"]
            if not (
                _CAMPAIGN.fullmatch(campaign)
                and rnd.isascii() and rnd.isdigit() and len(rnd) <= _ROUND_DIGITS
                and 1 <= int(rnd) <= MAX_ROUND
            ):  # fmt: skip
                return Match.NONE, {}
        return match, child


async def _upload(request: Request) -> JSONResponse:
    params = request.path_params
    return await upload_update(request, params["campaign"], int(params["rnd"]))


@router.post("/{campaign}/{rnd}/turn", response_model=TurnOut)
async def upload_turn(
    request: Request,
    campaign: str = Path(pattern=CAMPAIGN_PATTERN),
    rnd: int = Path(ge=1, le=MAX_ROUND),
    wait: float = Query(0.0, ge=0.0, le=300.0),
    coord: Coordinator = Depends(get_coordinator),
) -> TurnOut:
    """A place among the uploads admitted, held for the caller's next ``PUT`` (signed, empty
    body). When none is free: with ``wait`` (seconds, capped by ``long_poll_s``) the
    request waits for one, authenticated first, in line with the others waiting
    (:meth:`UploadAdmission.wait_turn`); without, or when too many wait already, 503 +
    ``Retry-After`` at once, before authentication. The same checks as the upload's
    headers: 401, 403 (revoked / not selected), 409 (nonce), 410 (closed)."""
    admission: UploadAdmission = request.app.state.upload_admission
    if not (wait > 0 and admission.can_wait()):
        admission.check_room(request.headers.get(protocol.H_CLIENT, ""))
    async for chunk in request.stream():  # at most one chunk read
        if chunk:
            raise ProtocolError(400, "a turn request has no body")
    if request.headers.get(protocol.H_CONTENT_SHA256) != EMPTY_SHA256:
        raise ProtocolError(401, "body does not match the signed sha256")
    client_id, ctx, _ = await authenticated_upload(request, coord, campaign, rnd)
    if ctx.update_stored:  # nothing to wait for: the PUT will be an idempotent retry
        return TurnOut(client_id=client_id, turn_s=0.0, stored=True)
    if wait > 0:
        turn_s = await _unless_gone(
            request, admission.wait_turn(client_id, min(wait, coord.settings.long_poll_s))
        )
    else:
        turn_s = admission.grant_turn(client_id)
    return TurnOut(client_id=client_id, turn_s=turn_s, stored=False)


async def _unless_gone(request: Request, waiting: Coroutine[Any, Any, T]) -> T:
    """``waiting``'s result, cancelled if the client disconnects first (a request whose
    body was read: its next ASGI message is the disconnect), so that a client gone does
    not keep its place in line, nor a turn granted to nobody."""
    work = asyncio.ensure_future(waiting)
    gone = asyncio.ensure_future(request.receive())
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work  # its place goes on to the next in line
    if work.cancelled():
        raise ProtocolError(503, "the client disconnected while waiting for a turn")
    return work.result()


@router.post("/{campaign}/{rnd}/direct", response_model=DirectOut)
async def direct_upload(
    request: Request,
    campaign: str = Path(pattern=CAMPAIGN_PATTERN),
    rnd: int = Path(ge=1, le=MAX_ROUND),
    client_id: str = Depends(authenticated),
    coord: Coordinator = Depends(get_coordinator),
) -> DirectOut:
    """A presigned ``PUT`` URL for the update's staging key in the S3 store (body:
    ``{"size", "sha256"}``): 403 / 409 / 410 / 413 as for an upload, 404 without direct
    uploads."""
    body = await parse(request, DirectIn)
    offer = await in_thread(
        coord.direct_upload, client_id, campaign, rnd, size=body.size, sha256=body.sha256
    )
    return DirectOut(**offer)


@router.post("/{campaign}/{rnd}/commit", response_model=UploadOut, status_code=201)
async def commit_direct(
    request: Request,
    campaign: str = Path(pattern=CAMPAIGN_PATTERN),
    rnd: int = Path(ge=1, le=MAX_ROUND),
    client_id: str = Depends(authenticated),
    coord: Coordinator = Depends(get_coordinator),
) -> JSONResponse:
    """Accept the update put at its staging key (body: ``{"size", "sha256"}``, header
    ``X-FL-Update-Signature``): admitted as an upload is (503 + ``Retry-After`` when full),
    read back from the store within an upload slot (its bytes are in memory while
    checked), then the upload's checks; 201 stored, 200 retry."""
    signature = request.headers.get(protocol.H_UPDATE_SIGNATURE)
    if not signature:
        raise ProtocolError(401, f"missing {protocol.H_UPDATE_SIGNATURE} header")
    body = await parse(request, DirectIn)
    admission: UploadAdmission = request.app.state.upload_admission
    # counted with the uploads (503 + Retry-After beyond slots + queue), one read at a time
    with admission.admit(client_id, length=body.size) as spend_turn:
        spend_turn()
        async with admission.slot():
            fresh, rec = await in_thread(
                coord.commit_direct, client_id, campaign, rnd,
                size=body.size, sha256=body.sha256, signature=signature,
            )  # fmt: skip
    return _uploaded(client_id, rec, fresh)


def _uploaded(client_id: str, rec: ReceivedUpdate, fresh: bool) -> JSONResponse:
    """201 (stored now) or 200 (an idempotent retry) with the :class:`UploadOut` fields,
    built as a dict: the pydantic model's construction and dump were about 2 % of the
    upload path's interpreter time. The connection ends with it (:data:`ENDS_CONNECTION`)."""
    out = {"client_id": client_id, "key": rec.key, "sha256": rec.sha256, "size": rec.size,
           "stored": fresh}  # fmt: skip
    return JSONResponse(out, status_code=201 if fresh else 200, headers=ENDS_CONNECTION)


async def _receive(
    request: Request,
    coord: Coordinator,
    client_id: str,
    campaign: str,
    rnd: int,
    ctx: UploadContext,
    cap: int,
) -> tuple[bool, ReceivedUpdate]:
    """Stream the body (hashed, capped), check its digest, then verify and store it."""
    signature = request.headers[protocol.H_UPDATE_SIGNATURE]
    chunks: list[bytes] = []
    size = 0
    digest = hashlib.sha256()
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ProtocolError(413, f"update exceeds the limit of {cap} bytes")
        chunks.append(chunk)
        digest.update(chunk)
    hexdigest = digest.hexdigest()
    if hexdigest != request.headers.get(protocol.H_CONTENT_SHA256):
        raise ProtocolError(401, "body does not match the signed sha256")
    body = b"".join(chunks)
    del chunks
    return await accept_upload(
        coord, PendingUpload(client_id, campaign, rnd, body, signature, hexdigest, ctx)
    )
