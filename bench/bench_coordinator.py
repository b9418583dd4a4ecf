"""Load on the coordinator: N concurrent clients through heartbeat -> task -> download ->
upload of realistic updates, against a bare FastAPI endpoint that writes the same bytes with
no authentication or checks, measured in the same run.

Both servers run as their own uvicorn processes on 127.0.0.1 (plain HTTP, or HTTPS with a
throwaway CA under ``--tls``); ``--max-reading-connections N`` serves the coordinator behind
its read gate of N (default 64, 0: off), as ``fl coordinator serve`` does. The clients are
asyncio + httpx in this process, one connection each. The model is the default MLP of
``params.yaml`` (MNIST 784 -> 200 -> 10, 159,010 parameters); updates are real wire messages
(``dense_fp32`` and ``topk:0.1+q8`` by default), signed as the agent signs them. The upload
phase is ``--warmup`` unmeasured rounds (default 1), then ``--rounds`` measured rounds
(default: enough for 2,000 uploads, at least 3), one after another, each with every client
uploading at once, first to the coordinator, then the same bytes to the bare endpoint (the
two take turns round by round, so a drift in the machine's speed during a run falls on
both). Both endpoints keep their files under ``.fl/bench``. Printed per (N, codec,
endpoint): uploads/s of the median round (and of each), the server's CPU time per upload and
the clients' (this process's; its garbage collector is off during each timed burst: a
collection halved every other bare round), upload p50 / p99 latency over all measured
rounds, the server's peak RSS during the upload phase (``VmHWM`` of a coordinator process
started after the heartbeat/task/download phase, as after a restart: the registry and store
persist; that phase's own latency and peak are in the last column), rejected uploads (final
non-2xx) and lost updates (acknowledged but not in the store), the warm-up's too. Each
device signs its requests before the timed burst, as it would on its own CPU (here a
thousand devices share the server's two cores); a retry signs anew. A coordinator upload of
at least ``TURN_MIN_BYTES`` asks for an upload turn first, as the agent does, waiting up to
``TURN_WAIT_S`` for one (its latency includes that). Busy answers (503 + ``Retry-After``
from the coordinator's upload admission limit, to a turn or an upload) are retried as the
agent retries them (after ``Retry-After`` times ``U(1, 2)``, not counted as attempts) and
counted in the ``busy`` column (the warm-up's too). The rows go to
``.fl/bench/results/coordinator.json`` (``coordinator_tls.json`` with ``--tls``, a
``_gate<N>`` suffix for another gate; ``python bench/_common.py docs`` renders them into
``docs/benchmarks.md``). ``--db-url`` puts the registry on a PostgreSQL server (the
production path) instead of SQLite under the run's folder: each run makes its own database
there and drops it after (rows to ``coordinator_pg.json``). ``--workers N`` serves the
coordinator as ``fl coordinator serve --workers N`` does (N processes on the port; peak RSS
is then the sum over the supervisor and its processes; ``_w<N>`` in the file name).
``--tls-proxy`` ends the devices' TLS at an haproxy in front of each server, with the
production stack's configuration (``deploy/haproxy/haproxy.cfg``), the servers on plain HTTP
behind it (``_tlsproxy``): the proxy's CPU per upload and peak RSS get columns of their own,
and the servers' columns are the servers' alone::

    python bench/bench_coordinator.py [--clients 100 1000] [--codecs dense_fp32 topk:0.1+q8]
        [--max-reading-connections N] [--tls | --tls-proxy]
        [--db-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--workers N]
        [--rounds R] [--warmup W]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import hashlib
import math
import os
import random
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI, Request

from fl_core import wire
from fl_core.agent.transport import TURN_MIN_BYTES, TURN_WAIT_S, RetryPolicy, retry_after_s
from fl_core.coordinator import protocol
from fl_core.coordinator.server import DEFAULT_MAX_READING

HOST = "127.0.0.1"
WORK = Path(__file__).resolve().parents[1] / ".fl" / "bench"
"""Where both endpoints keep their files (the coordinator its store and SQLite registry),
as the other benchmarks do: the project's state folder, not the system's temporary one. On
the machine measured, creating a file in /tmp cost 0.55-0.8 ms against 0.04-0.05 ms
elsewhere on the same disk, a quirk of that folder that bounded both endpoints."""
CID = "bench"


# --------------------------------------------------------------------------- servers


def _serve(
    kind: str, port: int, home: str, max_reading: int | None = None, tls_dir: str | None = None,
    db_url: str | None = None, workers: int = 1,
) -> None:  # fmt: skip
    """Child process: the coordinator as ``fl coordinator serve`` runs it (behind its read
    gate when ``max_reading``), or the bare endpoint on plain uvicorn (no access log, one
    worker each; TLS with the certificate in ``tls_dir``)."""
    import uvicorn

    tls = {}
    if tls_dir:
        tls = {"ssl_certfile": f"{tls_dir}/server.pem", "ssl_keyfile": f"{tls_dir}/server.key"}
    if kind == "coordinator":
        from fl_core.coordinator import server
        from fl_core.coordinator.app import serving_app

        options = dict(host=HOST, port=port, max_reading=max_reading, log_level="warning",
                       access_log=False, **tls)  # fmt: skip
        if workers > 1:  # as `fl coordinator serve --workers N` (the registry is migrated)
            make_app = functools.partial(serving_app, _settings(home, db_url))
            sys.exit(server.serve_workers(make_app, workers, **options))
        server.run(serving_app(_settings(home, db_url)), **options)
    else:
        uvicorn.run(bare_app(Path(home) / "bare"), host=HOST, port=port, log_level="warning",
                    access_log=False, **tls)  # fmt: skip


def _settings(home: str | Path, db_url: str | None) -> Any:
    """The coordinator's settings: its store under ``home``; its registry there too (SQLite)
    or at ``db_url``."""
    from fl_core.coordinator.settings import CoordinatorSettings

    return CoordinatorSettings.local(home, **({"db_url": db_url} if db_url else {}))


DB_SERVER: str | None = None
"""With ``--db-url``: the PostgreSQL server on which each run makes its own database."""


@contextlib.contextmanager
def _run_database() -> Iterator[str | None]:
    """A fresh database for one run on ``DB_SERVER`` (dropped after), or None (SQLite)."""
    if DB_SERVER is None:
        yield None
        return
    _import_tests()
    from tests.fl_core.coordinator.harness import temporary_database

    with temporary_database(DB_SERVER, "fl_bench") as url:
        yield url


def sa_url(db_url: str) -> Any:
    import sqlalchemy as sa

    return sa.engine.make_url(db_url)


def _local(db_url: str) -> bool:
    """Whether the database server of ``db_url`` runs on this machine (its CPU measured)."""
    return sa_url(db_url).host in (None, "", "127.0.0.1", "localhost", "::1")


def _import_tests() -> None:
    """Lets the bench use the tests' builders (the test CA, temporary databases)."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)


def bare_app(root: Path) -> FastAPI:
    """The baseline: write the body to a file; no authentication, no checks."""
    app = FastAPI()
    root.mkdir(parents=True, exist_ok=True)

    @app.put("/bare/{client}")
    async def bare(client: str, request: Request) -> dict[str, int]:
        body = await request.body()
        (root / f"{client}.flw").write_bytes(body)
        return {"size": len(body)}

    return app


def _listening(port: int) -> int:
    """Listening TCP sockets on 127.0.0.1:``port`` (Linux's /proc/net/tcp)."""
    want = f"0100007F:{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for r in rows if r.split()[1] == want and r.split()[3] == "0A")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) process ``root`` and every process under it have used.
    Unlike wall time, not stretched when the machine is slow for a while."""
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        stat = _proc_stat(pid)
        try:
            todo += map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        except OSError:  # gone meanwhile
            continue
        if stat is not None:
            total += (int(stat[1][11]) + int(stat[1][12])) / os.sysconf("SC_CLK_TCK")
    return total


def _tree_peak_rss_mb(root: int) -> float:
    """The peak RSS of process ``root`` plus each process's under it (each one's own peak:
    an upper bound of the peak of the sum)."""
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            todo += map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        except OSError:  # gone meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total or float("nan")


PROXY_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy" / "haproxy.cfg"
"""With ``--tls-proxy``: the production stack's haproxy configuration, used as is."""


class Server:
    def __init__(
        self, kind: str, home: Path, max_reading: int | None = None, db_url: str | None = None,
        workers: int = 1,
    ) -> None:  # fmt: skip
        self.port = _free_port()
        self.proxy: subprocess.Popen[bytes] | None = None
        gate = [] if max_reading is None else ["--max-reading-connections", str(max_reading)]
        tls = ["--tls-dir", str(TLS_DIR)] if TLS_DIR and not PROXY else []
        db = ["--db-url", db_url] if db_url else []
        many = ["--workers", str(workers)] if workers > 1 else []
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--port", str(self.port), "--home",
             str(home), *gate, *tls, *db, *many],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"{'https' if TLS_DIR and not PROXY else 'http'}://{HOST}:{self.port}"
        try:
            self._start(kind, workers)
        except BaseException:  # nothing left running: the caller has no object to stop
            self.stop()
            raise

    def _start(self, kind: str, workers: int) -> None:
        self._wait_up(kind, self.url, lambda: _listening(self.port) >= workers)
        if PROXY:  # haproxy in front, TLS terminated there, plain HTTP behind it
            assert TLS_DIR is not None
            proxy_port = _free_port()
            env = {**os.environ, "FL_PROXY_BIND": f"{HOST}:{proxy_port}",
                   "FL_TLS_CERT": str(TLS_DIR / "proxy.crt"),
                   "FL_COORDINATOR_ADDR": f"{HOST}:{self.port}"}  # fmt: skip
            self.proxy = subprocess.Popen(
                ["haproxy", "-db", "-f", str(PROXY_CONFIG)], env=env,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            self.url = f"https://{HOST}:{proxy_port}"
            self._wait_up(f"{kind}'s TLS proxy", self.url, lambda: _listening(proxy_port) >= 1)

    def _wait_up(self, what: str, url: str, listening: Any) -> None:
        deadline = time.monotonic() + 120
        while True:
            # every worker listening (one socket each): until then the kernel gives all
            # connections to those that are, while the others still import
            with contextlib.suppress(httpx.TransportError):
                if listening():
                    httpx.get(url + "/docs", timeout=2, verify=_SSL)
                    return
            dead = self.proc.poll() is not None or (self.proxy and self.proxy.poll() is not None)
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start")
            time.sleep(0.2)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server has used: with workers, its processes'
        sum (not its TLS proxy's: :meth:`proxy_cpu_s`)."""
        return _tree_cpu_s(self.proc.pid)

    def peak_rss_mb(self) -> float:
        """The server's peak RSS: with workers, the sum over the supervisor and every
        process under it (each one's own peak: an upper bound of the peak of the sum)."""
        return _tree_peak_rss_mb(self.proc.pid)

    def proxy_cpu_s(self) -> float | None:
        """The TLS proxy's CPU seconds (None: no proxy)."""
        return None if self.proxy is None else _tree_cpu_s(self.proxy.pid)

    def proxy_peak_rss_mb(self) -> float | None:
        """The TLS proxy's peak RSS (None: no proxy)."""
        return None if self.proxy is None else _tree_peak_rss_mb(self.proxy.pid)

    def stop(self) -> None:
        _import_tests()
        from tests.fl_core.coordinator.harness import stop_processes

        stop_processes([p for p in (self.proxy, self.proc) if p is not None])


def _proc_stat(pid: int) -> tuple[str, list[str]] | None:
    """A process's name and the fields of its ``/proc/PID/stat`` after the name (its state
    first: ppid at 1, utime / stime at 11 / 12); None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = stat.split(" (", 1)[1].rsplit(") ", 1)
    return name, rest.split()


class DatabaseCpu:
    """The CPU time this machine's PostgreSQL spends for one database (the registry's work,
    which shares the machine's cores with the coordinator), from /proc: the server process,
    its background processes (WAL writer, checkpointer, ...) and the database's backends;
    not the backends of other databases (``pg_stat_activity``). A process that exits
    meanwhile (a pooled connection closed, an autovacuum worker) is counted through the
    server process's reaped children's time (any database's: none other is busy while
    the benchmark runs)."""

    def __init__(self, db_url: str) -> None:
        import psycopg

        url = sa_url(db_url).set(drivername="postgresql")
        self._conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)

    def close(self) -> None:
        self._conn.close()

    def ticks(self) -> dict[int, int] | None:
        """CPU clock ticks by PostgreSQL process (the server's reaped children under its
        negative id); None when /proc shows no PostgreSQL process (another host or
        container)."""
        others = {
            int(pid)
            for (pid,) in self._conn.execute(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname IS NOT NULL AND datname <> current_database()"
            )
        }
        found: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) in others:
                continue
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[0] == "postgres":
                fields = stat[1]  # state, ppid, ...; utime, stime, cutime, cstime at 11-14
                found[int(entry.name)] = [int(fields[1]), *map(int, fields[11:15])]
        ticks = {}
        for pid, (ppid, utime, stime, cutime, cstime) in found.items():
            ticks[pid] = utime + stime
            if ppid not in found:  # the server process: its children that exited
                ticks[-pid] = cutime + cstime
        return ticks or None

    def seconds_since(self, before: dict[int, int] | None) -> float | None:
        now = self.ticks()
        if before is None or now is None:
            return None
        # a process gone since: its time moved into the server's reaped children's
        return (sum(now.values()) - sum(before.values())) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- clients


@dataclass
class Outcome:
    seconds: float = 0.0
    latencies: list[float] | None = None
    ok: int = 0
    rejected: int = 0
    lost: int = 0
    acked: set[str] | None = None
    statuses: dict[int, int] | None = None
    busy: int = 0
    rates: list[float] | None = None
    """Uploads/s of each round (the upload phase repeated ``ROUNDS`` times)."""
    cpu_s: float = 0.0
    """The server's CPU seconds over the upload phase (every round)."""
    driver_cpu_s: float = 0.0
    """The clients' (this process's) CPU seconds over the upload phase (every round)."""
    db_cpu_s: float | None = None
    """PostgreSQL's CPU seconds over the upload phase (every round), when the registry is
    on this machine's PostgreSQL; None otherwise."""
    proxy_cpu_s: float | None = None
    """The TLS proxy's CPU seconds over the upload phase (every round), with
    ``--tls-proxy``; None otherwise."""

    @property
    def rate(self) -> float:
        """The median of the rounds' uploads/s."""
        return float(np.median(self.rates)) if self.rates else float("nan")


def _merged(outs: list[Outcome], n: int, warmup: list[Outcome] | None = None) -> Outcome:
    """The measured rounds' outcomes as one: rates per round, latencies pooled, counts
    summed; the ``warmup`` rounds' refusals added (their lost updates are counted after)."""
    out = Outcome(latencies=[], acked=set(), statuses={}, rates=[])
    for o in warmup or []:
        assert out.statuses is not None
        out.rejected += o.rejected
        out.busy += o.busy
        for status, count in (o.statuses or {}).items():
            if status not in (200, 201):
                out.statuses[status] = out.statuses.get(status, 0) + count
    for o in outs:
        assert out.latencies is not None and out.rates is not None and out.statuses is not None
        out.seconds += o.seconds
        out.cpu_s += o.cpu_s
        out.driver_cpu_s += o.driver_cpu_s
        if o.db_cpu_s is not None:
            out.db_cpu_s = (out.db_cpu_s or 0.0) + o.db_cpu_s
        if o.proxy_cpu_s is not None:
            out.proxy_cpu_s = (out.proxy_cpu_s or 0.0) + o.proxy_cpu_s
        out.rates.append(n / o.seconds)
        out.latencies += o.latencies or []
        out.ok += o.ok
        out.rejected += o.rejected
        out.busy += o.busy
        for status, count in (o.statuses or {}).items():
            out.statuses[status] = out.statuses.get(status, 0) + count
    return out


ROUNDS = 3
"""The fewest measured upload phases per row (one round each, all N clients uploading at
once): the rows report the median round's uploads/s."""
MIN_UPLOADS = 2000
"""By default a row measures at least this many uploads per endpoint (``max(ROUNDS,
ceil(MIN_UPLOADS / N))`` rounds: 20 for N = 100, 3 for N = 1,000). A burst of 100 top-k
uploads lasts 0.1-0.25 s, and three of them gave medians 0.37-0.62x apart on one commit."""


def rounds_for(n: int, rounds: int | None) -> int:
    """Measured rounds for ``n`` clients: ``rounds`` if given, else enough for
    ``MIN_UPLOADS``."""
    return rounds if rounds is not None else max(ROUNDS, -(-MIN_UPLOADS // n))


WARMUP = 1
"""Unmeasured rounds before the measured ones, on both endpoints: a fresh server process
gets faster over its first bursts (the bare endpoint's top-k rate rose from 632 to 1,265
uploads/s over 8 rounds here), so without them the ratio depended on the round count."""


async def _send(
    http: httpx.AsyncClient, method: str, path: str, *, key: Any, client: str,
    content: bytes = b"", params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None, signed: bool = True, busy: list[int] | None = None,
    body_sha256: str | None = None, auth: dict[str, str] | None = None,
) -> httpx.Response:  # fmt: skip
    """One request with the agent's retry rule (backoff + full jitter on errors / 5xx; a
    busy answer waits its ``Retry-After`` spread over [1, 2] times it, not an attempt).
    ``auth``: the first attempt's signed headers, made beforehand (:func:`_presigned`); a
    retry signs anew (a nonce is used once)."""
    attempt = 0
    busy_waited = 0.0
    resigned = False  # a request read too late after signing is signed again, once
    if body_sha256 is None:
        body_sha256 = hashlib.sha256(content).hexdigest()  # once, as the agent does
    while attempt < 5:
        request = http.build_request(method, path, content=content, params=params)
        request.headers.update(headers or {})
        if signed:
            request.headers.update(
                auth or protocol.sign_request(
                    key, client_id=client, method=method, path=request.url.path,
                    query=request.url.query.decode(),
                    body_sha256=body_sha256,
                )
            )  # fmt: skip
            auth = None
        try:
            response = await http.send(request)
            if (
                response.status_code == 401
                and signed
                and not resigned
                and _detail(response).startswith(protocol.STALE_TIMESTAMP_REASON)
            ):  # read too late after signing: as the agent does
                resigned = True
                continue
            if response.status_code < 500:
                return response
            wait = retry_after_s(response)
            if wait is not None and busy_waited < BUSY_POLICY.busy_s:
                if busy is not None:
                    busy[0] += 1
                pause = BUSY_POLICY.busy_delay(wait)
                busy_waited += pause
                await asyncio.sleep(pause)
                continue
        except httpx.TransportError:
            pass
        await asyncio.sleep(random.random() * min(5.0, 0.2 * 2**attempt))
        attempt += 1
    return httpx.Response(599)


def _detail(response: httpx.Response) -> str:
    """The ``detail`` of an error answer ("" when it has none)."""
    try:
        detail = response.json().get("detail", "")
    except ValueError:
        return ""
    return detail if isinstance(detail, str) else ""


BUSY_POLICY = RetryPolicy()
"""The agent's default policy (its busy waits)."""


_SSL = ssl.create_default_context()
TLS_DIR: Path | None = None
"""With ``--tls``: the test CA and the servers' certificate (both servers serve HTTPS)."""
PROXY = False
"""With ``--tls-proxy``: TLS at an haproxy in front of each server, plain HTTP behind it."""


def _use_tls(folder: Path) -> None:
    """A throwaway CA and server certificate for 127.0.0.1 (the tests' own builder)."""
    global _SSL, TLS_DIR
    _import_tests()
    from tests.fl_core.coordinator.harness import make_tls

    files = make_tls(folder)  # folder/server.pem and folder/server.key, as _serve reads
    _SSL = ssl.create_default_context(cafile=str(files.ca))
    TLS_DIR = folder
    # haproxy reads the key beside a *.crt certificate (deploy/haproxy/haproxy.cfg)
    (folder / "proxy.crt").write_bytes(files.cert.read_bytes())
    (folder / "proxy.key").write_bytes(files.key.read_bytes())


def _device_client(url: str) -> httpx.AsyncClient:
    """One device's HTTP client (its own connection, as on a real device). One client with a
    thousand connections measured the client, not the server: httpx's connection pool scans
    every connection on each request, so at N = 1,000 the driver itself was the bottleneck
    for both endpoints."""
    return httpx.AsyncClient(base_url=url, timeout=300, verify=_SSL)


def _update(layout: Any, client: str, codec: str, seed: int, rnd: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    header = wire.Header(
        kind="update", campaign=CID, round=rnd, base_version=0, client=client, codec=codec,
        layout=layout, num_examples=100, metrics={"train_loss": 1.0, "duration_s": 1.0},
    )  # fmt: skip
    return wire.encode(header, rng.normal(0, 0.01, layout.num_params).astype(np.float32))


TURN_PARAMS = {"wait": TURN_WAIT_S}


@dataclass(frozen=True)
class _Signed:
    """An upload's body digest and its requests' first signed headers (None: unsigned)."""

    sha256: str
    put: dict[str, str] | None
    turn: dict[str, str] | None


def _presigned(
    client: str, path: str, headers: dict[str, str], data: bytes, key_of: dict[str, Any]
) -> _Signed:
    """What the device computes before it sends: the body's digest, and, for the
    coordinator, the signed headers of its upload (and of its turn request first, for an
    update of at least ``TURN_MIN_BYTES``, as the agent asks for one)."""
    digest = hashlib.sha256(data).hexdigest()
    key = key_of.get(client)
    if key is None:
        return _Signed(digest, None, None)
    put = protocol.sign_request(key, client_id=client, method="PUT", path=path,
                                body_sha256=digest)  # fmt: skip
    turn = None
    if len(data) >= TURN_MIN_BYTES:
        turn = protocol.sign_request(key, client_id=client, method="POST", path=f"{path}/turn",
                                     query=str(httpx.QueryParams(TURN_PARAMS)))  # fmt: skip
    return _Signed(digest, put, turn)


async def _timed_uploads(
    url: str, jobs: list[tuple[str, str, dict[str, str], bytes]], key_of: dict[str, Any]
) -> Outcome:
    latencies: list[float] = []
    out = Outcome(latencies=latencies, acked=set(), statuses={})
    busy = [0]

    async def one(
        client: str, path: str, headers: dict[str, str], data: bytes, signed: _Signed
    ) -> None:
        async with _device_client(url) as http:
            await upload(http, client, path, headers, data, signed)

    async def upload(
        http: httpx.AsyncClient, client: str, path: str, headers: dict[str, str], data: bytes,
        signed: _Signed,
    ) -> None:  # fmt: skip
        start = time.perf_counter()
        if signed.turn is not None:  # as the agent does, for a large update
            await _send(http, "POST", f"{path}/turn", key=key_of[client], client=client,
                        params=TURN_PARAMS, busy=busy, auth=signed.turn)  # fmt: skip
        r = await _send(
            http, "PUT", path, key=key_of.get(client), client=client, content=data,
            headers=headers, signed=client in key_of, busy=busy, body_sha256=signed.sha256,
            auth=signed.put,
        )  # fmt: skip
        latencies.append(time.perf_counter() - start)
        assert out.acked is not None and out.statuses is not None
        out.statuses[r.status_code] = out.statuses.get(r.status_code, 0) + 1
        if r.status_code in (200, 201):
            out.ok += 1
            out.acked.add(client)
        else:
            out.rejected += 1

    # each device signs its requests on its own CPU; here a thousand share the server's
    # cores, so they sign before the timed burst (a retry signs then)
    signed = [_presigned(*job, key_of) for job in jobs]
    gc.collect()  # the driver's collections, not the server, would pause a short burst
    gc.disable()
    try:
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(*job, sig) for job, sig in zip(jobs, signed, strict=True)))
        out.seconds = time.perf_counter() - start
        out.driver_cpu_s = time.process_time() - cpu
    finally:
        gc.enable()
    out.busy = busy[0]
    return out


async def _prepare_clients(
    url: str, clients: list[str], key_of: dict[str, Any]
) -> tuple[list[float], int]:
    """Heartbeat, long-poll (task ready) and model download for every client."""
    latencies: list[float] = []
    failed = 0

    async def one(client: str) -> None:
        async with _device_client(url) as http:
            await prepare(http, client)

    async def prepare(http: httpx.AsyncClient, client: str) -> None:
        nonlocal failed
        key = key_of[client]
        start = time.perf_counter()
        import json

        body = json.dumps({"num_examples": 100, "uplink_mbps": 10.0}).encode()
        r1 = await _send(
            http, "POST", "/v1/clients/heartbeat", key=key, client=client, content=body,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        r2 = await _send(http, "GET", "/v1/tasks/next", key=key, client=client,
                         params={"wait": 5})  # fmt: skip
        r3 = await _send(http, "GET", f"/v1/models/{CID}/1", key=key, client=client)
        latencies.append(time.perf_counter() - start)
        if not (r1.status_code == 200 and r2.status_code == 200 and r3.status_code == 200):
            failed += 1

    await asyncio.gather(*(one(c) for c in clients))
    return latencies, failed


def enroll_clients(coord: Any, n: int) -> dict[str, Any]:
    """``n`` clients enrolled in ``coord``'s registry: client id -> its Ed25519 key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fl_core.coordinator import registry

    key_of = {f"c{i:05d}": Ed25519PrivateKey.generate() for i in range(n)}
    with coord.session() as s:
        for client, key in key_of.items():
            token = registry.create_enrollment_token(s, client, ttl_s=600)
            registry.enroll(s, token=token, public_key=protocol.public_key_b64(key))
    return key_of


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


def run_one(
    n: int,
    codec: str,
    max_reading: int | None = None,
    workers: int = 1,
    rounds: int = ROUNDS,
    warmup: int = WARMUP,
) -> list[dict[str, Any]]:
    from fl_core.coordinator.api import Coordinator
    from fl_core.models import ModelSpec, init_vector
    from fl_core.rounds.layout import campaign_record_key, model_key, update_key

    rows = []
    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WORK, prefix="coord-") as tmp, _run_database() as db_url:
        home = Path(tmp)
        coord = Coordinator(_settings(home, db_url))
        spec = ModelSpec(name="mlp", input_shape=(784,), num_classes=10, hidden=(200,))
        vector, layout = init_vector(spec, seed=0)
        coord.store.put_json(
            campaign_record_key(CID), {"layout": layout.to_json(), "model_spec": spec.to_json()}
        )
        header = wire.Header(kind="model", campaign=CID, round=0, base_version=0,
                             client="server", codec="dense_fp32", layout=layout)  # fmt: skip
        coord.store.put_bytes(model_key(CID, 0), wire.encode(header, vector))
        key_of = enroll_clients(coord, n)
        clients = list(key_of)
        task = {
            "local_epochs": 1, "batch_size": 32, "lr": 0.1, "momentum": 0.0,
            "weight_decay": 0.0, "prox_mu": 0.0, "codec": codec, "error_feedback": False,
            "downlink_codec": "dense_fp32", "downlink_delta_codec": None, "seed": 0,
        }  # fmt: skip
        for rnd in range(1, warmup + rounds + 1):  # open at once, each on model version 0
            coord.publish_round(CID, rnd, base_version=0, tasks={c: task for c in clients},
                                deadline_s=3600)  # fmt: skip

        def updates_of(rnd: int) -> dict[str, bytes]:
            return {c: _update(layout, c, codec, rnd * n + i, rnd) for i, c in enumerate(clients)}

        sent: dict[int, dict[str, bytes]] = {}  # every round's updates, for the bare endpoint
        server = Server("coordinator", home, max_reading, db_url, workers)
        bare = None
        db_cpu = DatabaseCpu(db_url) if db_url and _local(db_url) else None
        try:
            prep, failed = asyncio.run(_prepare_clients(server.url, clients, key_of))
            rss_prep = server.peak_rss_mb()
            # The upload phase on a freshly started coordinator (registry and store persist,
            # as across a restart): its peak RSS is the uploads' own, not what the heap kept
            # from a thousand long-polls and model downloads (that peak is rss_prep).
            server.stop()
            server = Server("coordinator", home, max_reading, db_url, workers)
            bare = Server("bare", home)
            outs, outs_b = [], []
            for rnd in range(1, warmup + rounds + 1):
                # each round on the coordinator, then the same bytes on the bare endpoint:
                # the machine's speed drifts within a run (the bare endpoint's own rate
                # moved 330-660/s between runs here), so the two take turns, round by round
                updates = sent[rnd] = updates_of(rnd)
                jobs = []
                for c in clients:
                    data = updates[c]
                    sig = protocol.sign(key_of[c], protocol.update_message(
                        campaign=CID, rnd=rnd, client_id=c,
                        message_sha256=hashlib.sha256(data).hexdigest()))  # fmt: skip
                    jobs.append((c, f"/v1/updates/{CID}/{rnd}",
                                 {protocol.H_UPDATE_SIGNATURE: sig}, data))  # fmt: skip
                cpu, db_before = server.cpu_s(), db_cpu.ticks() if db_cpu else None
                proxy_cpu = server.proxy_cpu_s()
                outs.append(asyncio.run(_timed_uploads(server.url, jobs, key_of)))
                outs[-1].cpu_s = server.cpu_s() - cpu
                if proxy_cpu is not None:
                    outs[-1].proxy_cpu_s = (server.proxy_cpu_s() or 0.0) - proxy_cpu
                if db_cpu:
                    outs[-1].db_cpu_s = db_cpu.seconds_since(db_before)
                del jobs
                jobs_b = [(c, f"/bare/{c}-r{rnd}", {}, sent[rnd][c]) for c in clients]
                cpu, proxy_cpu = bare.cpu_s(), bare.proxy_cpu_s()
                outs_b.append(asyncio.run(_timed_uploads(bare.url, jobs_b, {})))
                outs_b[-1].cpu_s = bare.cpu_s() - cpu
                if proxy_cpu is not None:
                    outs_b[-1].proxy_cpu_s = (bare.proxy_cpu_s() or 0.0) - proxy_cpu
                del jobs_b
            rss, rss_proxy = server.peak_rss_mb(), server.proxy_peak_rss_mb()
            rss_b, rss_proxy_b = bare.peak_rss_mb(), bare.proxy_peak_rss_mb()
        finally:
            server.stop()
            if bare is not None:
                bare.stop()
            if db_cpu is not None:
                db_cpu.close()
        size = int(np.mean([len(u) for u in sent[1].values()]))
        out = _merged(outs[warmup:], n, warmup=outs[:warmup])
        for rnd, o in enumerate(outs, start=1):
            stored = set(coord.round_status(CID, rnd).received)
            out.lost += sum(
                1 for c in o.acked or ()
                if c not in stored
                or coord.store.get_bytes(update_key(CID, rnd, c)) != sent[rnd][c]
            )  # fmt: skip
        coord.close()
        rows.append(dict(
            n=n, codec=codec, endpoint="coordinator", size=size, out=out, rss=rss,
            rss_proxy=rss_proxy,
            rss_prep=rss_prep, prep_p50=_pct(prep, 50), prep_p99=_pct(prep, 99), prep_failed=failed,
        ))  # fmt: skip

        out_b = _merged(outs_b[warmup:], n, warmup=outs_b[:warmup])
        bare_root = home / "bare"
        for rnd, o in enumerate(outs_b, start=1):
            out_b.lost += sum(
                1 for c in o.acked or ()
                if not (bare_root / f"{c}-r{rnd}.flw").is_file()
                or (bare_root / f"{c}-r{rnd}.flw").read_bytes() != sent[rnd][c]
            )  # fmt: skip
        rows.append(dict(n=n, codec=codec, endpoint="bare", size=size, out=out_b, rss=rss_b,
                         rss_proxy=rss_proxy_b,
                         prep_p50=float("nan"), prep_p99=float("nan"), prep_failed=0))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--codecs", nargs="+", default=["dense_fp32", "topk:0.1+q8"])
    parser.add_argument("--serve", choices=["coordinator", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument(
        "--max-reading-connections", type=int, default=DEFAULT_MAX_READING, metavar="N",
        help="the coordinator's read gate, as `fl coordinator serve --max-reading-connections "
        f"N` (default {DEFAULT_MAX_READING}, as there; 0: off)",
    )  # fmt: skip
    parser.add_argument("--tls", action="store_true", help="both servers over HTTPS (a test CA)")
    parser.add_argument(
        "--tls-proxy", action="store_true",
        help="HTTPS terminated at an haproxy in front of each server (deploy/haproxy/"
        "haproxy.cfg), the servers on plain HTTP behind it; needs haproxy on the PATH",
    )  # fmt: skip
    parser.add_argument("--tls-dir", help=argparse.SUPPRESS)
    parser.add_argument(
        "--db-url", metavar="URL",
        help="the registry on this PostgreSQL server (a database per run, dropped after), "
        "e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres; default: SQLite",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="coordinator processes, as `fl coordinator serve --workers N` (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=None, metavar="R",
        help=f"measured upload phases per row, each a round of all N clients (default: "
        f"enough for {MIN_UPLOADS} uploads, at least {ROUNDS}); the "
        "rows report the median round",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=int, default=WARMUP, metavar="W",
        help=f"unmeasured upload rounds first, on both endpoints (default {WARMUP})",
    )  # fmt: skip
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve, args.port, args.home, args.max_reading_connections, args.tls_dir,
               args.db_url, args.workers)  # fmt: skip
        return
    global DB_SERVER
    DB_SERVER = args.db_url
    tls_tmp = tempfile.TemporaryDirectory(prefix="bench-tls-")
    if args.tls and args.tls_proxy:
        parser.error("--tls serves TLS in the servers, --tls-proxy in front of them: pick one")
    if args.tls_proxy:
        import shutil

        if shutil.which("haproxy") is None:
            parser.error("--tls-proxy needs haproxy (Debian: apt-get install haproxy)")
        global PROXY
        PROXY = True
    if args.tls or args.tls_proxy:
        _use_tls(Path(tls_tmp.name))
    load = os.getloadavg()[0]
    print(
        f"cpus={os.cpu_count()} load={load:.1f}  coordinator: {args.workers} worker(s), bare: 1, "
        f"{_transport(args)} on {HOST}; "
        f"coordinator read gate: {args.max_reading_connections or 'off'}; registry: "
        f"{'PostgreSQL' if args.db_url else 'SQLite'}"
    )
    print(
        f"{'N':>5} {'codec':<12} {'endpoint':<11} {'update':>8} {'uploads/s':>10} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'peak RSS':>9} {'rejected':>8} {'lost':>5} {'busy':>5}  "
        f"{'hb+task+model p50/p99 ms, peak RSS':>36}"
    )
    table: list[dict[str, Any]] = []
    for n in args.clients:
        for codec in args.codecs:
            rows = run_one(
                n,
                codec,
                args.max_reading_connections,
                args.workers,
                rounds_for(n, args.rounds),
                args.warmup,
            )
            for r in rows:
                o: Outcome = r["out"]
                lat = o.latencies or []
                prep = (
                    f"{r['prep_p50']:.0f}/{r['prep_p99']:.0f} ({r['prep_failed']} failed)"
                    if r["endpoint"] == "coordinator"
                    else "-"
                )
                if r["endpoint"] == "coordinator":
                    prep += f" RSS {r['rss_prep']:.0f}MB"
                print(
                    f"{n:>5} {codec:<12} {r['endpoint']:<11} {r['size'] / 1024:>6.0f}KB "
                    f"{o.rate:>10.1f} {_pct(lat, 50):>8.0f} {_pct(lat, 99):>8.0f} "
                    f"{r['rss']:>7.0f}MB {o.rejected:>8} {o.lost:>5} {o.busy:>5}  {prep:>36}",
                    flush=True,
                )
                if o.rejected:
                    print(f"      statuses: {o.statuses}", flush=True)
            ratio = rows[0]["out"].rate / rows[1]["out"].rate
            for r in rows:
                rates = ", ".join(f"{x:.0f}" for x in r["out"].rates or [])
                print(
                    f"{'':>5} {'':<12} {r['endpoint']:<11} uploads/s by round: {rates}; "
                    f"server CPU {1000 * r['out'].cpu_s / max(1, r['out'].ok):.2f} ms/upload, "
                    f"clients' {1000 * r['out'].driver_cpu_s / max(1, r['out'].ok):.2f}"
                    + (
                        f", TLS proxy's {1000 * r['out'].proxy_cpu_s / max(1, r['out'].ok):.2f}"
                        f" (peak RSS {_mb(r['rss_proxy'])} MB)"
                        if r["out"].proxy_cpu_s is not None
                        else ""
                    )
                    + (
                        f", PostgreSQL's {1000 * r['out'].db_cpu_s / max(1, r['out'].ok):.2f}"
                        if r["out"].db_cpu_s is not None
                        else ""
                    )
                )
            print(f"{'':>5} {'':<12} coordinator/bare throughput = {ratio:.2f}", flush=True)
            for r in rows:
                o = r["out"]
                table.append({
                    "N": n, "codec": codec, "endpoint": r["endpoint"],
                    "update KB": round(r["size"] / 1024),
                    "uploads/s": round(o.rate, 1),
                    "uploads/s by round": ", ".join(f"{x:.0f}" for x in o.rates or []),
                    "p50 ms": round(_pct(o.latencies or [], 50)),
                    "p99 ms": round(_pct(o.latencies or [], 99)),
                    "server CPU ms per upload": round(1000 * o.cpu_s / max(1, o.ok), 2),
                    "clients' CPU ms per upload": round(1000 * o.driver_cpu_s / max(1, o.ok), 2),
                    **({"PostgreSQL CPU ms per upload": "" if o.db_cpu_s is None
                        else round(1000 * o.db_cpu_s / max(1, o.ok), 2)}
                       if args.db_url and _local(args.db_url) else {}),
                    "peak RSS MB": round(r["rss"]),
                    **({"TLS proxy CPU ms per upload": round(
                            1000 * (o.proxy_cpu_s or 0.0) / max(1, o.ok), 2),
                        "TLS proxy peak RSS MB": _mb(r["rss_proxy"])}
                       if args.tls_proxy else {}),
                    "rejected": o.rejected, "lost": o.lost, "busy (503 retried)": o.busy,
                    "coordinator/bare": round(ratio, 2) if r["endpoint"] == "coordinator" else "",
                })  # fmt: skip
    _write(args, table, load)


def _mb(value: float | None) -> int | str:
    """A peak RSS for the table ("n/a" when it could not be read: the process was gone)."""
    return "n/a" if value is None or math.isnan(value) else round(value)


def _transport(args: argparse.Namespace) -> str:
    if args.tls_proxy:
        return "HTTPS terminated at an haproxy in front of each server (plain HTTP behind it)"
    return "HTTPS" if args.tls else "plain HTTP"


def _write(args: argparse.Namespace, table: list[dict[str, Any]], load: float) -> None:
    """The rows and the goals as ``.fl/bench/results/coordinator.json``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import write_results

    coord = [r for r in table if r["endpoint"] == "coordinator"]
    ratios = [r["coordinator/bare"] for r in coord]
    rss = [(r["N"], r["codec"], r["peak RSS MB"]) for r in coord]
    lost = sum(r["lost"] for r in table)
    low, high = min(args.clients), max(args.clients)
    rss_low = max(r["peak RSS MB"] for r in coord if r["N"] == low)
    rss_high = max(r["peak RSS MB"] for r in coord if r["N"] == high)

    def per_client_kb(endpoint: str, codec: str) -> str:
        by_n = {r["N"]: r["peak RSS MB"] for r in table
                if r["endpoint"] == endpoint and r["codec"] == codec}  # fmt: skip
        if low not in by_n or high not in by_n or high == low:
            return "n/a"
        return f"{(by_n[high] - by_n[low]) * 1024 / (high - low):.0f} KB"

    growth = "; ".join(
        f"{codec}: coordinator {per_client_kb('coordinator', codec)}, "
        f"bare {per_client_kb('bare', codec)} per extra client"
        for codec in args.codecs
    )
    if args.tls_proxy:  # what the proxy holds instead, in the same words
        proxy = [(r["N"], r["codec"], r["TLS proxy peak RSS MB"]) for r in coord]
        growth += f"; the coordinator's TLS proxy's peak RSS MB by N: {proxy}"
    goals = [
        {"goal": "coordinator upload throughput >= 0.5 x the bare endpoint, every row",
         "holds": min(ratios) >= 0.5, "evidence": f"ratios {ratios}"},
        {"goal": f"0 lost updates (N up to {high})", "holds": lost == 0,
         "evidence": f"{lost} lost"},
        {"goal": f"coordinator peak RSS flat in N (N={high} within 1.25 x N={low})",
         "holds": rss_high <= 1.25 * rss_low,
         "evidence": f"peak RSS MB by N: {rss}; growth {growth}"},
    ]  # fmt: skip
    clients = " ".join(str(n) for n in args.clients)
    nice = f"nice -n {os.nice(0)} " if os.nice(0) else ""  # as it was run
    name = (
        "coordinator"
        + ("_tls" if args.tls else "")
        + ("_tlsproxy" if args.tls_proxy else "")
        + ("_pg" if args.db_url else "")
    )
    if args.workers > 1:
        name += f"_w{args.workers}"
    if args.max_reading_connections != DEFAULT_MAX_READING:
        name += f"_gate{args.max_reading_connections}"
    path = write_results(
        name,
        {
            "title": "Coordinator under load: N concurrent clients, signed uploads"
            + (
                ", HTTPS"
                if args.tls
                else ", HTTPS at an haproxy"
                if args.tls_proxy
                else ", plain HTTP"
            )
            + (f", read gate {args.max_reading_connections or 'off'}")
            + (", registry on PostgreSQL" if args.db_url else "")
            + (f", {args.workers} coordinator workers" if args.workers > 1 else ""),
            "question": "How many signed uploads per second does the coordinator take, at what "
            "latency and memory, against a bare FastAPI endpoint that writes the same bytes, "
            f"in the same run? (2 shared CPUs; 1-minute load average {load:.1f} at the start: "
            "absolute figures are noisy, the ratio is what is compared. Each simulated device "
            "has its own HTTP client and connection, as real devices do.)",
            "command": f"{nice}python bench/bench_coordinator.py --clients {clients} "
            f"--codecs {' '.join(args.codecs)}"
            + (
                f" --max-reading-connections {args.max_reading_connections}"
                if args.max_reading_connections != DEFAULT_MAX_READING
                else ""
            )
            + (" --tls" if args.tls else "")
            + (" --tls-proxy" if args.tls_proxy else "")
            + (f" --db-url {args.db_url}" if args.db_url else "")
            + (f" --workers {args.workers}" if args.workers > 1 else "")
            + (f" --rounds {args.rounds}" if args.rounds is not None else "")
            + (f" --warmup {args.warmup}" if args.warmup != WARMUP else ""),
            "seeds": "n/a (one run per row, "
            + ", ".join(
                f"{rounds_for(n, args.rounds)} measured upload rounds for N = {n}"
                for n in args.clients
            )
            + f" after {args.warmup} unmeasured: the median round's uploads/s)",
            "columns": list(table[0]) if table else [],
            "rows": table,
            "goals": goals,
        },
        quick=False,
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
