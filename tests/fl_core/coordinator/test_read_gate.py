"""The read gate of ``fl coordinator serve --max-reading-connections N``
(:mod:`fl_core.coordinator.server`): at most N new connections are read and answered at
once, the rest wait unread and are all served in the end; long-polls and silent
connections hold no place.

Services: uvicorn started here in a thread on 127.0.0.1 with the gated protocol, exactly as
``server.run`` configures it (over TLS with a test CA for the first test; the gate works on
the connection, whatever the app). The app is a small one that counts the requests it is
handling at once.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from fl_core.coordinator import server
from tests.fl_core.coordinator.harness import HOST, TLSFiles, free_port


class Counting:
    """An app whose ``PUT /upload`` reads the body slowly and counts the requests it is
    handling at once, and whose ``GET /poll`` waits until released."""

    def __init__(self) -> None:
        self.app = FastAPI()
        self.in_flight = 0
        self.peak = 0
        self.done = 0
        self.release_polls: asyncio.Event | None = None

        @self.app.put("/upload")
        async def upload(request: Request) -> dict[str, int]:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                size = 0
                async for chunk in request.stream():
                    size += len(chunk)
                await asyncio.sleep(0.05)  # the work after the body: requests overlap
                self.done += 1
                return {"size": size}
            finally:
                self.in_flight -= 1

        @self.app.get("/poll")
        async def poll() -> dict[str, bool]:
            if self.release_polls is None:
                self.release_polls = asyncio.Event()
            await asyncio.wait_for(self.release_polls.wait(), timeout=30)
            return {"released": True}


@contextmanager
def gated(app: FastAPI, max_reading: int | None, tls: TLSFiles | None = None) -> Iterator[str]:
    port = free_port()
    options: dict[str, Any] = {"log_level": "warning", "lifespan": "off"}
    if tls is not None:
        options.update(ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key))
    srv = uvicorn.Server(
        server.config(app, host=HOST, port=port, max_reading=max_reading, **options)
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"{'https' if tls else 'http'}://{HOST}:{port}"
    finally:
        srv.should_exit = srv.force_exit = True
        thread.join(timeout=20)


async def _uploads(url: str, n: int, size: int, verify: Any = True) -> list[int]:
    async def one(i: int) -> int:  # one new connection each, as devices after a restart
        async with httpx.AsyncClient(base_url=url, timeout=60, verify=verify) as http:
            r = await http.put("/upload", content=bytes([i % 256]) * size)
            assert r.json() == {"size": size}
            return r.status_code

    return list(await asyncio.gather(*(one(i) for i in range(n))))


@pytest.mark.parametrize("max_reading", [2, None])
def test_the_gate_bounds_the_connections_read_at_once_and_serves_every_one(
    tls: TLSFiles, max_reading: int | None
) -> None:
    counting = Counting()
    with gated(counting.app, max_reading, tls) as url:
        verify = ssl.create_default_context(cafile=str(tls.ca))
        statuses = asyncio.run(_uploads(url, 12, 200_000, verify))
    assert statuses == [200] * 12  # none refused, none lost: the others waited
    assert counting.done == 12
    if max_reading is None:  # ungated, the same clients are all handled at once
        assert counting.peak > 2
    else:
        assert counting.peak <= max_reading
        gate: server.ReadGate = counting.app.state.read_gate
        assert gate.waits >= 12 - max_reading - gate.peak_reading
        assert gate.reading == 0 and gate.waiting == 0


def test_long_polls_hold_no_place() -> None:
    """Three long-polls on new connections with one place: an upload on a fourth still goes
    through while they wait (a poll has no body: its place is freed once its headers are
    read)."""
    counting = Counting()

    async def scenario(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as a, \
                httpx.AsyncClient(base_url=url, timeout=60) as b, \
                httpx.AsyncClient(base_url=url, timeout=60) as c:  # fmt: skip
            polls = [asyncio.create_task(h.get("/poll")) for h in (a, b, c)]
            await asyncio.sleep(0.5)
            assert not any(p.done() for p in polls)
            statuses = await asyncio.wait_for(_uploads(url, 1, 1000), timeout=10)
            assert not any(p.done() for p in polls)  # the upload passed while they waited
            assert counting.release_polls is not None
            counting.release_polls.set()
            return statuses + [(await p).status_code for p in polls]

    with gated(counting.app, 1) as url:
        assert asyncio.run(scenario(url)) == [200] * 4


@pytest.mark.parametrize("silent_for_s", [0.2, 2.5])
def test_a_silent_connection_does_not_keep_its_place(silent_for_s: float) -> None:
    """A client that connects and sends nothing holds the only place; an upload behind it
    is served after the grace period instead of waiting for ever, also when the silent one
    was alone for longer than the grace period."""
    counting = Counting()
    with gated(counting.app, 1) as url:
        silent = socket.create_connection((HOST, int(url.rsplit(":", 1)[1])))
        try:
            time.sleep(silent_for_s)
            start = time.monotonic()
            statuses = asyncio.run(asyncio.wait_for(_uploads(url, 1, 1000), timeout=20))
            waited = time.monotonic() - start
        finally:
            silent.close()
    assert statuses == [200]
    assert waited >= server.GRACE_S * 0.5  # it did wait behind the silent one, then passed


@pytest.mark.parametrize("over_tls", [True, False], ids=["tls-uvloop", "http-asyncio"])
def test_a_closed_connection_is_freed_at_once(
    tls: TLSFiles, over_tls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that closed is not kept alive by the gate: its grace timer held it
    until the timer fired, and with it, over TLS, its TLS state and read buffers (62 KB for
    an idle one on uvloop, ``bench/bench_tls_connections.py``; more after an upload). With
    clients coming and going fast, those add up: 606 closed connections were alive at the
    peak when 1,000 clients were refused a turn and came back (``bench/bench_coordinator.py``
    with 0 waiting turns allowed, a single run), none with this fix. The grace is made long
    here, so that a timer still holding a connection cannot fire while the test looks."""
    monkeypatch.setattr(server, "GRACE_S", 30.0)
    counting = Counting()
    with gated(counting.app, 4, tls if over_tls else None) as url:
        verify = ssl.create_default_context(cafile=str(tls.ca)) if over_tls else True
        assert asyncio.run(_uploads(url, 3, 1000, verify)) == [200] * 3  # then each closes
        gate: server.ReadGate = counting.app.state.read_gate

        def protocols() -> int:
            gc.collect()
            return sum(1 for o in gc.get_objects() if getattr(type(o), "read_gate", None) is gate)

        deadline = time.monotonic() + 10
        while protocols() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert protocols() == 0  # all freed, long before their grace would have run out
        assert gate.grants == 3 and gate.reading == 0


def test_the_heap_is_trimmed_once_after_a_burst_of_connections() -> None:
    """After ``churn`` connections opened or closed, one trim runs ``delay_s`` later, in a
    thread of its own; the connections that come and go while it is due or running count
    toward one more, which runs no sooner than ``interval_s`` after the first began; with
    fewer than ``churn`` since, none. Each trim's start is read on the loop's clock, where
    the interval is kept (its thread may begin a little later: the first one is created
    then)."""
    starts: list[float] = []
    threads: list[str] = []
    running = threading.Event()
    finish = threading.Event()
    trimmers: list[server.HeapTrimmer] = []

    def trim() -> None:
        starts.append(trimmers[0].last_start)
        threads.append(threading.current_thread().name)
        running.set()
        assert finish.wait(10)  # the test decides when it ends

    async def until(done: Any) -> None:
        deadline = time.monotonic() + 10
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        trimmer = server.HeapTrimmer(churn=4, delay_s=0.05, interval_s=0.5, trim=trim)
        trimmers.append(trimmer)
        for _ in range(3):
            trimmer.note(loop)
        await asyncio.sleep(0.2)
        assert starts == []  # fewer than churn: no trim
        noted = time.monotonic()
        for _ in range(20):  # the burst: one trim for all of it
            trimmer.note(loop)
        assert starts == []  # not at once: delay_s later
        await until(running.is_set)
        assert len(starts) == 1 and starts[0] - noted >= 0.05
        assert threads[0] != threading.current_thread().name
        for _ in range(10):
            trimmer.note(loop)  # while it runs: they count toward the next one
        await asyncio.sleep(0.1)
        assert len(starts) == 1
        running.clear()
        finish.set()  # the first ends; the second is due interval_s after the first began
        await until(lambda: trimmer.trims == 2)
        assert len(starts) == 2 and starts[1] - starts[0] >= 0.5
        for _ in range(3):  # churn - 1 since the second began: none
            trimmer.note(loop)
        await asyncio.sleep(0.8)
        assert len(starts) == 2
        trimmer.note(loop)  # the churn-th: one more
        await until(lambda: trimmer.trims == 3)
        assert len(starts) == 3

    asyncio.run(scenario())


def test_the_real_trim_runs() -> None:
    """glibc's ``malloc_trim`` is found and called (where there is glibc)."""
    trim = server._malloc_trim()  # noqa: SLF001
    if trim is None:
        pytest.skip("no glibc malloc_trim here (musl, macOS)")
    assert trim() in (0, 1)  # 1: memory was released, 0: none could be


def test_the_heap_is_trimmed_when_serving_tls_only(tls: TLSFiles) -> None:
    """``serve`` over TLS counts connections toward trims; over plain HTTP (loopback, or
    behind a TLS proxy) it does not: a plain connection leaves little to give back, and
    trims cost CPU per upload there (docs/protocol.md)."""
    plain = server.config(FastAPI(), host=HOST, port=free_port(), max_reading=8)
    secure = server.config(
        FastAPI(), host=HOST, port=free_port(), max_reading=8,
        ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key),
    )  # fmt: skip
    assert plain.http.read_gate is not None and plain.http.heap_trimmer is None
    assert isinstance(secure.http.heap_trimmer, server.HeapTrimmer)


def test_the_gate_refuses_a_bad_size() -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="max_reading"):
            server.ReadGate(bad)  # type: ignore[arg-type]
