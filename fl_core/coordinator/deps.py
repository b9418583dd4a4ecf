"""FastAPI dependencies: the coordinator and request authentication.

Registry sessions are opened inside the worker-thread function that does the work (never as a
generator dependency): FastAPI may leave a generator dependency on another thread than it
entered it, and a session holds the SQLite turn lock and a pooled connection for its life.

Authentication checks the Ed25519 request signature (see :mod:`fl_core.coordinator.protocol`)
before any body is trusted. For ordinary requests the body is read (at most
``MAX_JSON_BYTES``) and must hash to the signed digest; for the streamed upload the signed
digest is checked by the router after streaming (``authenticated_upload``, which also
reads the upload's context in the same registry session and thread hop).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import Depends, Request

from fl_core.coordinator import batch, protocol, registry
from fl_core.coordinator.api import Coordinator, PendingUpload, ReceivedUpdate, WouldWait
from fl_core.coordinator.registry import ProtocolError, UploadContext

MAX_JSON_BYTES = 1 << 20

T = TypeVar("T")

_THREADS = ThreadPoolExecutor(max_workers=40, thread_name_prefix="fl-coordinator")
"""The worker threads of this process's blocking work (registry, store): 40, as
Starlette's default thread limit."""


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a worker thread, the event loop serving other requests
    meanwhile. asyncio's executor rather than Starlette's ``run_in_threadpool`` (anyio):
    measured with 100 calls in flight, about 45 us of CPU per call against 115-130 us,
    and a signed upload makes two."""
    call = functools.partial(fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_THREADS, call)


INLINE_MAX_BYTES = 2 << 20
"""An upload larger than this is checked and stored in a worker thread even where it could
run inline: its checks and write take milliseconds per MiB, time the event loop would not
serve anyone else."""


async def registry_work(
    coord: Coordinator, fn: Callable[..., T], *args: Any, size: int = 0, **kwargs: Any
) -> T:
    """``fn(*args, **kwargs)``, an upload's registry and store work (of an update of
    ``size`` bytes): on the event loop when that cannot wait
    (:meth:`Coordinator.inline <fl_core.coordinator.api.Coordinator.inline>`: SQLite and a
    local store, nothing locked) and the update is at most :data:`INLINE_MAX_BYTES`, else
    (and whenever the inline run found something locked) in a worker thread."""
    if coord.inline_ok and size <= INLINE_MAX_BYTES:
        try:
            with coord.inline():
                return fn(*args, **kwargs)
        except WouldWait:
            pass
    return await in_thread(fn, *args, **kwargs)


BATCH_MAX_BYTES = 1 << 20
"""An upload larger than this is accepted on its own, not in a batch: a batch checks and
writes its updates one after another on the event loop, where larger ones' checks and
writes (milliseconds per MiB) would keep it from serving the other requests; on their own
they run in the worker threads. Measured on PostgreSQL (``bench/bench_coordinator.py
--db-url ...``, the coordinator's CPU time per upload): dense 622 KB updates in batches
5.3-6.5 ms at N = 100 and 6.9 ms at N = 1,000, on their own 6.4-8.1 and 9.7 ms."""


class _Batches:
    """A coordinator's upload batchers on one event loop."""

    def __init__(self, coord: Coordinator, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        ref = weakref.ref(coord)  # not the coordinator itself: it keys a weak mapping

        async def authenticate(items: list[batch.SignedUpload]) -> Any:
            return await _alive(ref).authenticate_batch(items)

        async def accept(items: list[PendingUpload]) -> Any:
            return await _alive(ref).accept_batch(items)

        self.auth: batch.Batcher[batch.SignedUpload, Any] = batch.Batcher(authenticate)
        self.accept: batch.Batcher[PendingUpload, Any] = batch.Batcher(accept)


def _alive(ref: weakref.ref[Coordinator]) -> Coordinator:
    coord = ref()
    if coord is None:
        raise RuntimeError("the coordinator was closed")
    return coord


_BATCHES: weakref.WeakKeyDictionary[Coordinator, _Batches] = weakref.WeakKeyDictionary()


def upload_batches(coord: Coordinator) -> _Batches:
    """The coordinator's upload batchers on the running event loop (made on first use)."""
    loop = asyncio.get_running_loop()
    found = _BATCHES.get(coord)
    if found is None or found.loop is not loop:
        found = _BATCHES[coord] = _Batches(coord, loop)
    return found


async def accept_upload(coord: Coordinator, upload: PendingUpload) -> tuple[bool, ReceivedUpdate]:
    """Verify, store and accept an upload whose body was read
    (:meth:`~fl_core.coordinator.api.Coordinator.accept_update`): in a batch with the
    uploads read meanwhile where the coordinator batches acceptances (PostgreSQL and a
    local store) and the update is at most :data:`BATCH_MAX_BYTES`, else on its own
    (:func:`registry_work`)."""
    if coord.batched_acceptance and len(upload.data) <= BATCH_MAX_BYTES:
        return await upload_batches(coord).accept.submit(upload)
    u = upload
    return await registry_work(
        coord,
        functools.partial(
            coord.accept_update, signature=u.signature, sha256=u.sha256, context=u.ctx
        ),
        u.client_id,
        u.campaign,
        u.rnd,
        u.data,
        size=len(u.data),
    )


async def get_coordinator(request: Request) -> Coordinator:
    """The app's coordinator. ``async`` although it awaits nothing: FastAPI runs a plain
    ``def`` dependency in a worker thread, a thread hop on every request for one
    attribute read (about 4 % of the coordinator's CPU under a burst of uploads, profiled)."""
    coord: Coordinator = request.app.state.coordinator
    return coord


def app_path(request: Request) -> str:
    """The request path relative to where the app is mounted (what the client signs)."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "") or ""
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


async def _authenticate(
    request: Request,
    coord: Coordinator,
    body_sha256: str,
    upload: tuple[str, int] | None = None,
) -> Any:
    """The client id; for an ``upload`` to (campaign, round), (client id, upload context,
    size cap), the context read with the client's key in one query (the upload's hot path):
    on PostgreSQL in a batch with the uploads arriving meanwhile, else on an autocommit
    Core connection (inline on SQLite where it can, else in a worker thread)."""
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
        query=request.scope["query_string"].decode(errors="replace"),  # not request.url: slow
        body_sha256=body_sha256,
        timestamp=stamp,
        nonce=nonce,
        client_id=client_id,
    )
    signed: dict[str, Any] = dict(
        client_id=client_id,
        message=message,
        signature=signature,
        nonce=nonce,
        timestamp=timestamp,
        skew_s=coord.settings.clock_skew_s,
    )

    def check() -> Any:
        if upload is None:
            with coord.session() as s:
                return registry.authenticate(s, **signed)
        with coord.connection(autocommit=True) as c:
            ctx = registry.authenticate_upload(c, *upload, **signed)
        return client_id, ctx, coord.update_cap(upload[0])  # store I/O once per campaign

    if upload is not None and coord.batched:
        found = await upload_batches(coord).auth.submit(
            batch.SignedUpload(client_id, *upload, message, signature, nonce, timestamp)
        )
        return (client_id, *found)
    if upload is not None:
        return await registry_work(coord, check)
    return await in_thread(check)


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


async def authenticated_upload(
    request: Request, coord: Coordinator, campaign: str, rnd: int
) -> tuple[str, UploadContext, int]:
    """The client id of a signed streamed upload, its upload context (403 not selected,
    410 too late) and its size cap, read with its key in one query (:func:`_authenticate`);
    the router checks the body's digest against ``X-FL-Content-SHA256`` (which the
    signature covers) after streaming."""
    declared = request.headers.get(protocol.H_CONTENT_SHA256, "")
    if len(declared) != 64 or any(c not in "0123456789abcdef" for c in declared):
        raise ProtocolError(401, f"missing or malformed {protocol.H_CONTENT_SHA256} header")

    found: tuple[str, UploadContext, int] = await _authenticate(
        request, coord, declared, (campaign, rnd)
    )
    return found
