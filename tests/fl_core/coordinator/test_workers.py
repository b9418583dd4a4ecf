"""``fl coordinator serve --workers 2`` in real processes over HTTPS on 127.0.0.1: both
workers listen on the one port, signed uploads from many connections at once are all
accepted into the shared SQLite registry with one arrival number each, a killed worker is
replaced while the other keeps serving, and SIGTERM stops the supervisor and its workers."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx

from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.settings import CoordinatorSettings
from fl_core.rounds.layout import update_key
from tests.fl_core.coordinator.harness import (
    TLSFiles,
    free_port,
    start_campaign,
    task_dict,
    update_bytes,
)
from tests.fl_core.coordinator.test_http import CID, enroll, upload


def _workers(supervisor: int) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    kids = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    out = []
    for pid in map(int, kids):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            out.append(pid)
    return sorted(out)


def _listening(port: int) -> int:
    """Listening TCP sockets on 127.0.0.1:``port`` (one per worker with SO_REUSEPORT)."""
    want = f"0100007F:{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for r in rows if r.split()[1] == want and r.split()[3] == "0A")


def _wait(check, what: str, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _serve_two(
    tls: TLSFiles, tmp_path: Path, **popen: object
) -> tuple[subprocess.Popen[bytes], Coordinator, str, int]:
    """``fl coordinator serve --workers 2`` over HTTPS on a free port, both workers
    answering; returns the supervisor, a coordinator on the same registry and store, the
    URL and the port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FL_")}
    env["FL_HOME"] = str(tmp_path / "server-home")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[3]), *sys.path])
    coord = Coordinator(CoordinatorSettings.local(env["FL_HOME"]))
    port = free_port()
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "fl_core.cli", "coordinator", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
         "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen,  # type: ignore[call-overload]
    )  # fmt: skip
    url = f"https://127.0.0.1:{port}"
    ctx = ssl.create_default_context(cafile=str(tls.ca))

    def up() -> bool:
        assert supervisor.poll() is None, supervisor.stderr.read() if supervisor.stderr else ""
        if _listening(port) < 2:
            return False
        try:
            return bool(httpx.get(url + "/v1/health", verify=ctx).status_code == 200)
        except httpx.TransportError:
            return False

    try:
        _wait(up, "two workers listening", 120)
    except BaseException:
        supervisor.kill()
        supervisor.wait(timeout=30)
        coord.close()
        raise
    return supervisor, coord, url, port


def test_two_workers_share_port_registry_and_restart(tls: TLSFiles, tmp_path: Path) -> None:
    supervisor, coord, url, port = _serve_two(tls, tmp_path)
    layout, _ = start_campaign(coord.store, CID)
    clients = []
    try:
        first = _workers(supervisor.pid)
        assert len(first) == 2

        server = SimpleNamespace(url=url)
        names = [f"w{i:02d}" for i in range(17)]
        clients = [enroll(coord, server, tls, n) for n in names]  # type: ignore[arg-type]
        ids = [c.identity.client_id for c in clients]  # type: ignore[union-attr]
        coord.publish_round(
            CID, 1, base_version=0, tasks={c: task_dict(seed=i) for i, c in enumerate(ids)},
            deadline_s=300,
        )  # fmt: skip
        updates = {c: update_bytes(CID, 1, c, layout, scale=0.01 * (i + 1))
                   for i, c in enumerate(ids)}  # fmt: skip

        # 16 uploads at once, each client on its own connection: the kernel spreads them
        with ThreadPoolExecutor(16) as pool:
            outs = list(pool.map(lambda c: upload(c[0], 1, updates[c[1]]),
                                 zip(clients[:16], ids[:16], strict=True)))  # fmt: skip
        assert all(o["stored"] for o in outs)

        # a worker killed outright: the supervisor replaces it; the port keeps answering
        os.kill(first[1], signal.SIGKILL)
        replaced = _wait(
            lambda: (w := _workers(supervisor.pid)) and len(w) == 2 and w != first and w,
            "a replacement worker",
        )
        assert first[0] in replaced and first[1] not in replaced
        _wait(lambda: _listening(port) == 2, "the replacement listening")
        assert upload(clients[16], 1, updates[ids[16]])["stored"]

        arrivals = coord.arrivals(CID, rounds=[1])
        assert sorted(u.arrival_seq for u in arrivals) == list(range(1, 18))
        assert sorted(u.client_id for u in arrivals) == sorted(ids)
        for c in ids:
            assert coord.store.get_bytes(update_key(CID, 1, c)) == updates[c]

        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
        for pid in replaced:
            assert not Path(f"/proc/{pid}").exists() or b"Z" in _state(pid)
    finally:
        for c in clients:
            c.close()
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(timeout=30)
        coord.close()


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return b"Z"


def test_workers_that_die_at_start_give_up(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """The port is held by another program (without SO_REUSEPORT): every worker dies at
    start; the supervisor gives up with status 1 and says why, instead of restarting them
    forever."""
    import functools
    import logging
    import socket

    from fl_core.coordinator import server
    from fl_core.coordinator.app import serving_app

    settings = CoordinatorSettings.local(tmp_path / "home")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        caplog.set_level(logging.WARNING, logger="fl_core.coordinator.server")
        status = server.serve_workers(
            functools.partial(serving_app, settings), 2, host="127.0.0.1", port=port,
            log_level="critical",
        )  # fmt: skip
    assert status == 1
    assert "keeps dying at start" in caplog.text


def test_ctrl_c_lets_requests_in_flight_finish(tls: TLSFiles, tmp_path: Path) -> None:
    """Ctrl-C in the terminal that runs ``--workers 2`` (SIGINT to its whole process group):
    a long-poll in flight still gets its answer (uvicorn's graceful shutdown in each worker,
    not a second signal that forces it), then the supervisor exits 0."""
    supervisor, coord, url, _ = _serve_two(tls, tmp_path, start_new_session=True)
    client = None
    try:
        client = enroll(coord, SimpleNamespace(url=url), tls, "poller")  # type: ignore[arg-type]
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            waiting = pool.submit(client.next_task, wait_s=4.0)
            time.sleep(1.0)  # the long-poll is held by a worker
            os.killpg(supervisor.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C
            answer = waiting.result(timeout=60)
            held = time.monotonic() - started
        assert answer is None  # 204: no task, answered when its wait ran out
        assert held >= 3.5
        assert supervisor.wait(timeout=60) == 0
    finally:
        if client is not None:
            client.close()
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)  # its own session: workers included
            supervisor.wait(timeout=30)
        coord.close()
