"""FastAPI dependencies: the coordinator, a registry session, and request authentication.

Authentication checks the Ed25519 request signature (see :mod:`fl_core.coordinator.protocol`)
before any body is trusted. For ordinary requests the body is read (at most
``MAX_JSON_BYTES``) and must hash to the signed digest; for the streamed upload the signed
digest is checked by the router after streaming (``authenticated_stream``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from fl_core.coordinator import protocol, registry
from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.registry import ProtocolError

MAX_JSON_BYTES = 1 << 20


def get_coordinator(request: Request) -> Coordinator:
    coord: Coordinator = request.app.state.coordinator
    return coord


def get_session(coord: Coordinator = Depends(get_coordinator)) -> Iterator[Session]:
    """A read-only registry session. FastAPI may enter and leave a generator dependency on
    different threads, so it does not take the SQLite turn lock (reads never need it)."""
    with coord.session(take_turn=False) as session:
        yield session


def app_path(request: Request) -> str:
    """The request path relative to where the app is mounted (what the client signs)."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "") or ""
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


async def _authenticate(request: Request, coord: Coordinator, body_sha256: str) -> str:
    h = request.headers
    client_id = h.get(protocol.H_CLIENT)
    signature = h.get(protocol.H_SIGNATURE)
    nonce = h.get(protocol.H_NONCE, "")
    stamp = h.get(protocol.H_TIMESTAMP, "")
    if not client_id or not signature:
        raise ProtocolError(401, "missing request signature headers")
    try:
        protocol.check_client_id(client_id)
        protocol.check_nonce(nonce)
        timestamp = float(int(stamp))
    except ValueError as exc:
        raise ProtocolError(401, f"malformed authentication headers: {exc}") from None
    message = protocol.request_message(
        method=request.method,
        path=app_path(request),
        query=request.url.query,
        body_sha256=body_sha256,
        timestamp=stamp,
        nonce=nonce,
        client_id=client_id,
    )

    def check() -> str:
        with coord.session() as s:
            return registry.authenticate(
                s,
                client_id=client_id,
                message=message,
                signature=signature,
                nonce=nonce,
                timestamp=timestamp,
                skew_s=coord.settings.clock_skew_s,
            )

    return await run_in_threadpool(check)


async def authenticated(request: Request, coord: Coordinator = Depends(get_coordinator)) -> str:
    """The client id of a signed request whose (small) body matches the signed digest."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_JSON_BYTES:
        raise ProtocolError(413, f"request body exceeds {MAX_JSON_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise ProtocolError(413, f"request body exceeds {MAX_JSON_BYTES} bytes")
    request._body = bytes(body)  # noqa: SLF001 - lets the route parse the body it was read from
    digest = hashlib.sha256(body).hexdigest()
    if request.headers.get(protocol.H_CONTENT_SHA256, digest) != digest:
        raise ProtocolError(401, "body does not match the signed sha256")
    return await _authenticate(request, coord, digest)


async def authenticated_stream(
    request: Request, coord: Coordinator = Depends(get_coordinator)
) -> str:
    """The client id of a signed streamed request; the router checks the body's digest
    against ``X-FL-Content-SHA256`` (which the signature covers) after streaming."""
    declared = request.headers.get(protocol.H_CONTENT_SHA256, "")
    if len(declared) != 64 or any(c not in "0123456789abcdef" for c in declared):
        raise ProtocolError(401, f"missing or malformed {protocol.H_CONTENT_SHA256} header")
    return await _authenticate(request, coord, declared)
