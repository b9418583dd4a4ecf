"""Serving the coordinator on its own: uvicorn with a read gate before the app.

The upload admission (:mod:`fl_core.coordinator.admission`) bounds what the *app* holds. But
uvicorn reads each connection's request as it arrives, up to its 64 KiB flow-control mark of
body plus one socket read, before the app has seen the request, and keeps the unread body
of a refused request until the connection's next request. With a thousand clients
uploading at once, that is what grows the process.

The read gate (``fl coordinator serve --max-reading-connections N``, default
``DEFAULT_MAX_READING``, 0 turns it off) bounds it where the bytes enter. At most N
connections are read at a time. The others wait, paused, in arrival order; TCP flow control
holds their senders back. Nothing is refused and nothing is dropped: a waiting client's
request is read later.

A new connection needs a place until the app has answered its first request (or, when
the request has no body, until its headers are read: a task long-poll never holds a
place). After that the connection is not gated again: a keep-alive client's later requests
go straight to the app, whose upload admission bounds them, so an idle keep-alive
connection never keeps a place and never waits behind idle ones. A connection let in that
sends nothing for ``GRACE_S`` while others wait goes to the back of the line. So the gate
bounds the herd of new connections: a fleet reconnecting after a coordinator restart, or
devices that connect once per round.

Measured (``bench/bench_coordinator.py``, docs/benchmarks.md): over plain HTTP a paused
connection holds nothing of its request. Over TLS the TLS layer reads the socket below the
protocol; a paused connection's read buffer is set to zero so it stops too, and what
arrived with the handshake stays buffered. Over TLS the gate sees a connection only after
its handshake, so the listener paces the handshakes (:class:`PacedListener`). The gate
needs uvicorn's httptools protocol (``uvicorn[standard]``, in the lock). The
Airflow-mounted app is served by Airflow's API server and is bounded by the upload
admission alone.

:func:`serve_workers` (``fl coordinator serve --workers N``) runs N such servers as
processes of their own on one port (``SO_REUSEPORT``), each with its own gate and
admission, for more uploads per second than one interpreter lock allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_READING",
    "PacedListener",
    "ReadGate",
    "config",
    "gated_protocol",
    "make_server",
    "run",
    "serve_workers",
]

DEFAULT_MAX_READING = 64
"""``fl coordinator serve``'s gate: new connections read and answered at once (0: off)."""

GRACE_S = 1.0
"""How long a connection let in may stay silent while others wait, before it goes to the
back of the line (a client that connects and sends nothing must not keep a place)."""


class ReadGate:
    """At most ``max_reading`` new connections are read at once; the rest wait unread, in
    arrival order.

    A connection asks for a place when it opens (:meth:`want`) and gives it back when its
    first request is answered or has no body (:meth:`release`), or when it closes
    (:meth:`forget`); :meth:`busy` says its first request began. The gate pauses and resumes
    connections through their ``gate_pause`` / ``gate_resume`` methods. Everything runs on
    the event loop's thread: no locks."""

    def __init__(self, max_reading: int) -> None:
        if isinstance(max_reading, bool) or not isinstance(max_reading, int) or max_reading < 1:
            raise ValueError(f"max_reading must be an integer >= 1, got {max_reading!r}")
        self.max_reading = max_reading
        self._holders: dict[Any, int] = {}  # connection -> its grant number
        self._silent: set[Any] = set()  # holders whose first request has not begun
        self._waiting: OrderedDict[Any, None] = OrderedDict()
        self.grants = 0
        self.peak_reading = 0
        self.waits = 0

    @property
    def reading(self) -> int:
        return len(self._holders)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def want(self, conn: Any) -> None:
        """``conn`` opened: read it now, or pause it until a place frees."""
        if conn in self._holders or conn in self._waiting:
            return
        if len(self._holders) < self.max_reading:
            self._grant(conn)
            return
        conn.gate_pause()
        self._waiting[conn] = None
        self.waits += 1

    def busy(self, conn: Any) -> None:
        """``conn``'s first request began."""
        self._silent.discard(conn)

    def release(self, conn: Any) -> None:
        """``conn``'s first request is answered (or has no body): the place is free."""
        if self._holders.pop(conn, None) is not None:
            self._silent.discard(conn)
            self._admit()

    def forget(self, conn: Any) -> None:
        """``conn`` closed."""
        self._waiting.pop(conn, None)
        self.release(conn)

    def _grant(self, conn: Any) -> None:
        self.grants += 1
        self._holders[conn] = self.grants
        self._silent.add(conn)
        self.peak_reading = max(self.peak_reading, len(self._holders))
        conn.loop.call_later(GRACE_S, self._still_silent, conn, self.grants)

    def _still_silent(self, conn: Any, grant: int) -> None:
        if conn not in self._silent or self._holders.get(conn) != grant:
            return
        if self._waiting:
            self.release(conn)  # to the back of the line
            conn.gate_pause()
            self._waiting[conn] = None
        else:  # nobody to give way to yet: look again later
            conn.loop.call_later(GRACE_S, self._still_silent, conn, grant)

    def _admit(self) -> None:
        while self._waiting and len(self._holders) < self.max_reading:
            conn, _ = self._waiting.popitem(last=False)
            self._grant(conn)
            conn.gate_resume()


def gated_protocol(gate: ReadGate) -> type[asyncio.Protocol] | None:
    """uvicorn's httptools protocol with ``gate`` in front of each connection's first
    request (None without httptools)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools ships with uvicorn[standard]
        return None

    class GatedHttpToolsProtocol(HttpToolsProtocol):
        read_gate = gate
        _gated = True  # until its first request is answered

        def gate_pause(self) -> None:
            if not self.transport.is_closing():
                self.transport.pause_reading()
                # over TLS, pausing stops only the decrypted data; a zero read buffer makes
                # the TLS layer stop reading the socket too
                limits = getattr(self.transport, "set_read_buffer_limits", None)
                if limits is not None:
                    limits(high=0)

        def gate_resume(self) -> None:
            if not self.transport.is_closing():
                limits = getattr(self.transport, "set_read_buffer_limits", None)
                if limits is not None:
                    limits()  # the defaults
                self.transport.resume_reading()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.read_gate.want(self)

        def connection_lost(self, exc: Exception | None) -> None:
            self.read_gate.forget(self)
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._gated:
                self.read_gate.busy(self)

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            if self._gated and not _has_body(self.headers):
                self._ungate()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._gated:
                self._ungate()
            if self.cycle is not None and self.cycle.response_complete:
                # the unread body of a refused request: uvicorn would keep it until the
                # connection's next request (60 KB bodies: 58 MB for 1,000, measured)
                self.cycle.body = bytearray()

        def _ungate(self) -> None:
            self._gated = False
            self.read_gate.release(self)

    return GatedHttpToolsProtocol


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


def config(
    app: Any,
    *,
    host: str,
    port: int,
    max_reading: int | None = None,
    **uvicorn_options: Any,
) -> Any:
    """The ``uvicorn.Config`` serving ``app``, behind a :class:`ReadGate` of ``max_reading``
    unless that is None or 0 (the gate is kept on ``app.state.read_gate``)."""
    import uvicorn

    if max_reading:
        gate = ReadGate(max_reading)
        protocol = gated_protocol(gate)
        if protocol is None:  # pragma: no cover
            logger.warning("httptools is not installed: connections are read without a gate")
        else:
            app.state.read_gate = gate
            uvicorn_options["http"] = protocol
            if not uvicorn_options.get("ssl_certfile"):
                # plain HTTP (loopback only): uvloop starts reading a TCP connection *after*
                # connection_made, undoing a pause made there (measured: 1,000 gated
                # connections grew RSS as much as ungated ones); asyncio's loop keeps it.
                # Over TLS, connection_made comes after the handshake and the pause holds
                # on uvloop, whose TLS needs far less memory than asyncio's (measured: 345
                # against 472 MB for 1,000 uploads).
                uvicorn_options["loop"] = "asyncio"
    return uvicorn.Config(app, host=host, port=port, **uvicorn_options)


def make_server(app: Any, **options: Any) -> Any:
    """The uvicorn server of :func:`config` (``options`` as there). Over TLS its listener is
    a :class:`PacedListener`: one new connection per turn of the event loop, at most
    ``max_reading`` (or ``DEFAULT_MAX_READING``) TLS handshakes at once."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            conf = self.config
            if conf.ssl is None or conf.fd is not None or conf.uds:
                await super().startup(sockets)
                return
            # uvicorn's startup (0.54) with its listener replaced: the lifespan, the protocol
            # factory, self.servers (closed at shutdown), self.started. The socket is bound
            # first, as uvicorn binds it for its workers (bind_socket logs the address and
            # exits when the port is taken), so a bind failure leaves no lifespan running.
            listeners = sockets if sockets is not None else [conf.bind_socket()]
            await self.lifespan.startup()
            if self.lifespan.should_exit:
                sys.exit(3)  # uvicorn.server.STARTUP_FAILURE

            def create_protocol() -> asyncio.Protocol:
                return conf.http_protocol_class(  # type: ignore[call-arg]
                    config=conf, server_state=self.server_state, app_state=self.lifespan.state
                )

            paced = [PacedListener(s, create_protocol, conf.ssl, max_handshakes, conf.backlog)
                     for s in listeners]  # fmt: skip
            for listener in paced:
                listener.start()
            self.servers = paced  # type: ignore[assignment]
            self.started = True

    max_handshakes = options.get("max_reading") or DEFAULT_MAX_READING
    return Server(config(app, **options))


class PacedListener:
    """A TLS listener that accepts one connection per turn of the event loop (as nginx does
    by default, ``multi_accept off``) and gives at most ``max_handshakes`` new handshakes a
    place at once; the other connections wait in the kernel's accept queue (``backlog``
    long), where they cost the process nothing.

    uvicorn's listener (``loop.create_server``; libuv underneath) accepts every queued
    connection at once and starts each one's handshake. With a thousand devices connecting
    together the process then holds a thousand handshakes and, once they are done, a
    thousand connections waiting to be served, each with its TLS state (its buffers and
    OpenSSL's, 50-100 KB); the read gate can pause a connection only after its handshake.
    Measured with 1,000 HTTPS devices uploading 622 KB at once (``bench/bench_coordinator.py
    --tls``, docs/benchmarks.md): peak RSS 298-328 MB with uvicorn's listener, 271 MB with
    this one. Accepting one per turn alone did not help (an idle loop turns fast and takes
    the whole herd in before the work starts); bounding the handshakes does.

    A handshake gives its place back when it ends, or after ``HANDSHAKE_GRACE_S`` in any
    case, and goes on uncounted up to ``HANDSHAKE_TIMEOUT_S``: a client that connects and
    says nothing, or a slow link, holds a place for a moment only. So the bound is on
    handshakes younger than the grace period; links so slow that a handshake takes longer
    run uncounted, as under uvicorn's listener. New connections start at ``max_handshakes /
    HANDSHAKE_GRACE_S`` a second at least (64 at the defaults) whatever the clients do. The
    price: connections that connect and stay silent, arriving faster than that (plain TCP
    connects, about 64 open at a time from one host), make the others wait in the accept
    queue, and once it is full (2,048) new connections are dropped until they stop.
    uvicorn's listener would accept them all and fail only when out of descriptors. The
    read gate has the same kind of limit (clients that complete a handshake and then stay
    silent hold its places), so rate limits per source belong in front of the coordinator,
    at the load balancer. A connection goes on to uvicorn's protocol once its handshake is
    done; one whose handshake fails is closed by its TLS transport. Stands in for the
    ``asyncio.Server`` uvicorn closes at shutdown (``close``, ``wait_closed``,
    ``sockets``)."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        ssl_context: Any,
        max_handshakes: int = DEFAULT_MAX_READING,
        backlog: int = 2048,
    ) -> None:
        if (
            isinstance(max_handshakes, bool)
            or not isinstance(max_handshakes, int)
            or (max_handshakes < 1)
        ):
            raise ValueError(f"max_handshakes must be an integer >= 1, got {max_handshakes!r}")
        self.sockets = [sock]
        self._factory = protocol_factory
        self._ssl = ssl_context
        self._backlog = backlog
        self.max_handshakes = max_handshakes
        self._places: asyncio.Semaphore | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._closed = False
        self._fd = -1
        self._unstarted: set[socket.socket] = set()
        self.accepted = 0
        self.handshakes = 0
        """Handshakes done."""
        self.failed = 0
        """Handshakes failed or timed out (their connections closed)."""
        self.holding = 0
        """Handshakes holding a place now."""
        self.peak_holding = 0
        self.graced = 0
        """Handshakes that gave their place back unfinished, after the grace period."""

    def start(self) -> None:
        sock = self.sockets[0]
        sock.setblocking(False)
        sock.listen(self._backlog)
        self._fd = sock.fileno()
        self._places = asyncio.Semaphore(self.max_handshakes)
        self._accepting = asyncio.get_running_loop().create_task(self._accept(sock))
        self._accepting.add_done_callback(self._accept_ended)

    def _accept_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:  # a bug: say so loudly
            logger.error("coordinator: the TLS listener stopped", exc_info=task.exception())

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        assert self._places is not None
        while not self._closed:
            await self._places.acquire()
            try:
                conn, _ = sock.accept()
            except OSError as exc:
                self._places.release()
                if self._closed:
                    return
                if exc.errno in _OUT_OF_RESOURCES:
                    logger.warning("coordinator: accepting a connection failed: %r", exc)
                    await asyncio.sleep(ACCEPT_RETRY_S)
                elif isinstance(exc, (BlockingIOError, InterruptedError)):
                    await self._readable()  # nothing queued: wait for the next
                # else a connection reset or unreachable while queued (accept(2) says to
                # retry those as EAGAIN): take the next
                continue
            self.accepted += 1
            self.holding += 1
            self.peak_holding = max(self.peak_holding, self.holding)
            conn.setblocking(False)
            self._unstarted.add(conn)
            task = loop.create_task(self._handshake(conn))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)
            await asyncio.sleep(0)  # one connection per turn of the loop

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self._fd, readable)
        try:
            await ready
        finally:
            if not self._closed:  # close() removed it, and the descriptor may be reused
                loop.remove_reader(self._fd)

    async def _handshake(self, conn: socket.socket) -> None:
        self._unstarted.discard(conn)
        loop = asyncio.get_running_loop()
        holding = True

        def give_back(graced: bool) -> None:
            nonlocal holding
            if holding:
                holding = False
                self.holding -= 1
                self.graced += graced
                assert self._places is not None
                self._places.release()

        timer = loop.call_later(HANDSHAKE_GRACE_S, give_back, True)
        try:
            await loop.connect_accepted_socket(
                self._factory, conn, ssl=self._ssl, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S
            )
        except Exception as exc:  # ssl.SSLError, TimeoutError and resets are OSErrors
            # the TLS transport owns the socket and has closed it: it holds an I/O reference
            # (this close only marks it) and detaches it when it closes
            self.failed += 1
            if isinstance(exc, OSError):
                logger.debug("coordinator: a TLS handshake failed: %r", exc)
            else:
                logger.warning("coordinator: a TLS handshake failed: %r", exc)
            conn.close()  # a no-op once detached; closes it if the transport never took it
        else:
            self.handshakes += 1
        finally:
            timer.cancel()
            give_back(False)

    def close(self) -> None:
        if not self._closed and self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)  # before the fd can be reused
        self._closed = True
        if self._accepting is not None:
            self._accepting.cancel()
        for task in self._handshakes:
            task.cancel()
        for conn in self._unstarted:  # accepted, its handshake cancelled before it began
            conn.close()
        self.sockets[0].close()

    async def wait_closed(self) -> None:
        tasks = [t for t in (self._accepting, *self._handshakes) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)


HANDSHAKE_TIMEOUT_S = 60.0
"""How long a TLS handshake may take (asyncio's default)."""

HANDSHAKE_GRACE_S = GRACE_S
"""How long a handshake holds its place at most: as long as the read gate lets a silent
connection keep its place (over loopback a handshake takes about a millisecond of the
coordinator's CPU; a device 300 ms away needs one round trip after its ClientHello)."""

ACCEPT_RETRY_S = 1.0
"""The pause after accepting failed for want of descriptors or memory (asyncio's)."""

_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def run(app: Any, *, reuse_port: bool = False, **options: Any) -> None:
    """Serve ``app`` until interrupted (``options`` as for :func:`config`); with
    ``reuse_port`` on a socket of its own that shares the port with other workers
    (``SO_REUSEPORT``: the kernel spreads new connections over the workers)."""
    _release_large_blocks_promptly()
    server = make_server(app, **options)
    if not reuse_port:
        server.run()
        return
    sock = _shared_port_socket(options["host"], options["port"], server.config.backlog)
    server.run(sockets=[sock])


def _shared_port_socket(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def serve_workers(
    make_app: Callable[[], Any],
    workers: int,
    *,
    setup_logging: Callable[[], None] | None = None,
    **options: Any,
) -> int:
    """Serve ``make_app()`` in ``workers`` processes on one port until SIGTERM / SIGINT;
    returns the exit status (0 after a requested stop). ``setup_logging`` (picklable) runs
    first in each worker: a spawned process starts without the parent's logging set-up.

    Each worker is a process of its own (its own interpreter lock: one coordinator process
    takes about 3-4 ms of CPU per signed upload, so one process tops out near 210-290
    top-k uploads/s here however many cores there are). Each binds the port with
    ``SO_REUSEPORT``, so the kernel spreads new connections evenly over them; each has its
    own read gate and upload admission (the limits are per worker). The registry is shared:
    PostgreSQL in production; SQLite works too (its writers take turns across processes,
    through its lock). A worker that dies is restarted; if the workers keep dying at start
    (a port in use, a broken configuration), this gives up with status 1. ``make_app`` must
    pickle (workers are spawned, not forked: the parent may hold threads and connections).
    """
    import multiprocessing
    from multiprocessing.connection import wait

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover - Linux and BSDs have it
        raise ValueError("several workers need SO_REUSEPORT (Linux, BSD)")
    if not options.get("port"):
        raise ValueError("several workers need a fixed --port")
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, Any] = {}
    started: dict[int, float] = {}
    quick_deaths = 0
    stopping = False

    def start(slot: int) -> None:
        proc = ctx.Process(
            target=_worker, args=(make_app, setup_logging, options), name=f"fl-coordinator-{slot}"
        )
        proc.start()
        procs[slot], started[slot] = proc, time.monotonic()

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()  # SIGTERM: uvicorn's graceful shutdown

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for slot in range(workers):
            start(slot)
        logger.info("coordinator: %d workers on port %s", workers, options["port"])
        while not stopping:
            wait([p.sentinel for p in procs.values()], timeout=1.0)
            for slot, proc in list(procs.items()):
                if stopping or proc.is_alive():
                    continue
                lived = time.monotonic() - started[slot]
                quick_deaths = quick_deaths + 1 if lived < RESTART_QUICK_S else 0
                if quick_deaths >= RESTART_GIVE_UP:
                    logger.error("coordinator worker keeps dying at start (exit %s): giving up",
                                 proc.exitcode)  # fmt: skip
                    stop(signal.SIGTERM, None)
                    _join(procs.values())
                    return 1
                logger.warning("coordinator worker %d (pid %s) exited with %s after %.0f s: "
                               "restarting it", slot, proc.pid, proc.exitcode, lived)  # fmt: skip
                time.sleep(min(1.0, 0.2 * quick_deaths))
                start(slot)
        _join(procs.values())
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


RESTART_QUICK_S = 5.0
"""A worker that dies sooner than this after its start counts as dying at start."""

RESTART_GIVE_UP = 5
"""Deaths at start in a row after which :func:`serve_workers` gives up."""


def _join(procs: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


def _worker(
    make_app: Callable[[], Any], setup_logging: Callable[[], None] | None, options: dict[str, Any]
) -> None:
    """One worker process: dies with its supervisor (Linux), sets up its logging, serves
    until SIGTERM."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1  # <sys/prctl.h>
        ctypes.CDLL("libc.so.6").prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if setup_logging is not None:
        setup_logging()
    run(make_app(), reuse_port=True, **options)


def _release_large_blocks_promptly() -> None:
    """glibc raises its mmap threshold each time a large block is freed, so later request
    bodies (hundreds of KB) come from the heap, whose freed pages stay resident. A fixed
    128 KiB threshold keeps each one in its own mapping, returned when freed. Measured with
    1,000 dense uploads at once: peak RSS 176 -> 152 MB, throughput unchanged. No-op
    without glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    m_mmap_threshold = -3  # <malloc.h>
    libc.mallopt(m_mmap_threshold, 128 * 1024)
