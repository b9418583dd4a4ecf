"""What one open connection costs the coordinator's process, by transport: N clients
connect at once, each sends one small request and holds its connection; the server's
resident memory is read before, with all N open, and after ``malloc_trim(0)``.

The server is a process of its own on 127.0.0.1 with the coordinator's event loop and TLS
(uvloop, Python's ``ssl``, a test CA, ECDSA P-256 as in the tests) and a protocol that keeps
what it is sent, so the figures are the transport's and TLS's own, not the app's. They
explain what grows with N in ``bench_coordinator.py --tls``: a device waiting for an upload
turn holds one such connection (docs/protocol.md, "Sizing the coordinator's memory").
The baseline is taken after a few connections came and went (OpenSSL's one-time set-up is
not charged to the connections). Linux with glibc only (``/proc``, ``malloc_trim``)::

    python bench/bench_tls_connections.py [--connections 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results  # noqa: E402

HOST = "127.0.0.1"
REQUEST = (
    b"POST /v1/updates/c/1/turn?wait=25 HTTP/1.1\r\nhost: coordinator\r\ncontent-length: 0\r\n\r\n"
)

VARIANTS = {
    "plain TCP, uvloop": ("uvloop", False),
    "TLS, uvloop (the coordinator's)": ("uvloop", True),
    "TLS, asyncio": ("asyncio", True),
}
"""Declared before anything runs: the transports measured."""


def _memory() -> dict[str, float]:
    """This process's resident memory in MB: all, its heap, its anonymous mappings."""
    out = {"rss": 0.0, "heap": 0.0, "anon": 0.0}
    name = ""
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5:
                name = parts[5] if len(parts) > 5 else ""
            elif parts[0] == "Rss:":
                kb = int(parts[1]) / 1024
                out["rss"] += kb
                if name == "[heap]":
                    out["heap"] += kb
                elif not name:
                    out["anon"] += kb
    return out


WARM_UP = 10
"""Connections made and closed before the baseline is read."""


def _more_descriptors() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _serve(loop_kind: str, tls_dir: str | None, n: int) -> None:
    """Child: report its memory on stdout (JSON lines) after the warm-up connections
    closed, with ``n`` more open, and after a trim."""
    from fl_core.coordinator.server import _malloc_trim, _release_large_blocks_promptly

    _more_descriptors()
    _release_large_blocks_promptly()  # as the coordinator (server.run)
    trim = _malloc_trim()
    if trim is None:
        raise SystemExit("this benchmark needs glibc's malloc_trim")
    ctx = None
    if tls_dir:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(f"{tls_dir}/server.pem", f"{tls_dir}/server.key")
    conns: list[Any] = []
    sent: set[Any] = set()  # connections whose request arrived

    class Holding(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            conns.append(self)

        def data_received(self, data: bytes) -> None:
            self.data = data
            sent.add(self)

    async def arrived(count: int) -> None:
        deadline = time.monotonic() + 120
        while len(sent) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Holding, HOST, 0, ssl=ctx, backlog=4096)
        print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
        await arrived(WARM_UP)
        for conn in conns:
            conn.transport.close()
        await asyncio.sleep(0.5)
        conns.clear()
        sent.clear()
        trim()
        print(json.dumps({"open": 0, **_memory()}), flush=True)
        await arrived(n)
        print(json.dumps({"open": len(conns), **_memory()}), flush=True)
        start = time.perf_counter()
        trim()
        trim_ms = (time.perf_counter() - start) * 1000
        print(json.dumps({"open": len(conns), "trim_ms": trim_ms, **_memory()}), flush=True)
        await asyncio.sleep(3600)  # until the parent kills it

    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


async def _connect(port: int, n: int, ca: Path | None) -> list[Any]:
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else None

    async def one() -> Any:
        _, writer = await asyncio.open_connection(
            HOST, port, ssl=ctx, server_hostname="localhost" if ctx else None
        )
        writer.write(REQUEST)
        await writer.drain()
        return writer

    return list(await asyncio.gather(*(one() for _ in range(n))))


def measure(name: str, n: int, tls_dir: Path) -> dict[str, Any]:
    loop_kind, tls = VARIANTS[name]
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", loop_kind, "--n", str(n)]
        + (["--tls-dir", str(tls_dir)] if tls else []),
        stdout=subprocess.PIPE,
        text=True,
    )
    ca = tls_dir / "ca.pem" if tls else None

    def report() -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{name}: the server exited ({proc.wait()}) before reporting")
        return dict(json.loads(line))

    async def hold() -> tuple[dict[str, Any], ...]:
        port = (await asyncio.to_thread(report))["port"]
        for w in await _connect(port, WARM_UP, ca):
            w.close()
        idle = await asyncio.to_thread(report)
        writers = await _connect(port, n, ca)
        loaded = await asyncio.to_thread(report)
        trimmed = await asyncio.to_thread(report)
        for w in writers:
            w.close()
        return idle, loaded, trimmed

    try:
        idle, loaded, trimmed = asyncio.run(hold())
    finally:
        proc.kill()
        proc.wait()
    if loaded["open"] != n:
        raise RuntimeError(f"{name}: {loaded['open']} of {n} connections opened")

    def per_conn(key: str, after: dict[str, Any]) -> float:
        return round((after[key] - idle[key]) * 1024 / n, 1)

    return {
        "transport": name,
        "connections": n,
        "KB per connection": per_conn("rss", loaded),
        "heap KB": per_conn("heap", loaded),
        "other mappings KB": per_conn("anon", loaded),
        "KB after malloc_trim": per_conn("rss", trimmed),
        "heap KB after malloc_trim": per_conn("heap", trimmed),
        "malloc_trim ms": round(trimmed["trim_ms"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--serve", choices=["uvloop", "asyncio"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tls-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve, args.tls_dir, args.n)
        return
    _more_descriptors()
    from tests.fl_core.coordinator.harness import make_tls

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        make_tls(Path(tmp))
        for i, name in enumerate(VARIANTS):
            print(f"[{i + 1}/{len(VARIANTS)}] {name}: {args.connections} connections",
                  file=sys.stderr, flush=True)  # fmt: skip
            rows.append(measure(name, args.connections, Path(tmp)))
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    path = write_results(
        "tls_connections",
        {
            "title": "What one open connection costs the coordinator",
            "question": "Resident memory per open connection that has sent one small "
            "request (a turn request), by transport; before and after malloc_trim(0), and "
            "how long that trim took. 'Other mappings' are the unnamed ones: uvloop's "
            "256 KiB read buffers (the pages touched), but also pymalloc's arenas and "
            "blocks over 128 KiB.",
            "command": f"python bench/bench_tls_connections.py --connections {args.connections}",
            "configurations": {"variants": VARIANTS, "connections": args.connections},
            "seeds": "n/a (one run)",
            "cpus": os.cpu_count(),
            "columns": columns,
            "rows": rows,
        },
        quick=False,
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
