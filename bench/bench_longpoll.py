"""Idle load of waiting agents: N enrolled clients long-poll a coordinator that has no task
for them, for D seconds; prints the coordinator's CPU seconds over that time.

Agents long-poll around the clock between rounds, so this is the coordinator's cost of an
idle fleet. The coordinator runs as its own uvicorn process on 127.0.0.1 (as in
``bench_coordinator.py``); each simulated device has its own HTTP client::

    python bench/bench_longpoll.py [--clients 1000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_coordinator as bc  # noqa: E402 - the same server and device clients


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    from fl_core.coordinator.api import Coordinator
    from fl_core.coordinator.settings import CoordinatorSettings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-longpoll-") as tmp:
        home = Path(tmp)
        coord = Coordinator(CoordinatorSettings.local(home))
        keys = bc.enroll_clients(coord, args.clients)
        coord.close()
        server = bc.Server("coordinator", home)
        try:
            polls = [0]
            stop = time.monotonic() + args.seconds

            async def agent(client: str) -> None:
                async with bc._device_client(server.url) as http:  # noqa: SLF001
                    while time.monotonic() < stop:
                        await bc._send(http, "GET", "/v1/tasks/next", key=keys[client],  # noqa: SLF001
                                       client=client, params={"wait": 25})  # fmt: skip
                        polls[0] += 1

            async def fleet() -> None:
                await asyncio.gather(*(agent(c) for c in keys))

            cpu0, wall0 = _cpu_seconds(server.proc.pid), time.monotonic()
            asyncio.run(fleet())
            cpu, wall = _cpu_seconds(server.proc.pid) - cpu0, time.monotonic() - wall0
        finally:
            server.stop()
    print(
        f"{args.clients} idle agents long-polling for {args.seconds:.0f} s: coordinator CPU "
        f"{cpu:.1f} s over {wall:.1f} s wall ({100 * cpu / wall:.0f}% of a core), "
        f"{polls[0]} long-polls answered (load {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
