"""TLS terminated at a proxy in front of the coordinator, in real processes: haproxy with the
production stack's own configuration (deploy/haproxy/haproxy.cfg), ``fl coordinator serve
--behind-tls-proxy`` on plain HTTP behind it, and ``fl client run`` on a device's own data
file talking HTTPS to the proxy. Needs haproxy (``apt-get install haproxy``): skipped
without it, failed under CI=true. The coordinator binds 127.0.0.2 (loopback, but not the
addresses ``serve`` treats as loopback), so the flag is what lets it serve plain HTTP."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from fl_core import wire
from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.settings import CoordinatorSettings
from fl_core.data.io import write_table
from fl_core.rounds.layout import update_key
from tests.fl_core.coordinator.harness import (
    SPEC,
    TLSFiles,
    free_port,
    run_fl,
    start_campaign,
    stop_processes,
    task_dict,
)

CID = "proxy-camp"
REPO = Path(__file__).resolve().parents[3]
PROXY_CONFIG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
BACKEND_HOST = "127.0.0.2"


def _haproxy() -> str:
    path = shutil.which("haproxy")
    if path is None:
        message = "needs haproxy on the PATH (apt-get install haproxy)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _wait_for(url: str, proc: subprocess.Popen[bytes], verify: ssl.SSLContext | bool) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/v1/health", verify=verify, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, f"{proc.args[:3]} exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{url} did not come up"
        time.sleep(0.3)


@pytest.fixture
def behind_proxy(env: dict[str, str], tls: TLSFiles, tmp_path: Path) -> Iterator[str]:
    """The coordinator on plain HTTP at 127.0.0.2, haproxy terminating TLS in front of it on
    127.0.0.1: the devices' URL. Their output goes to files under ``tmp_path``."""
    haproxy = _haproxy()
    port, proxy_port = free_port(), free_port()
    certs = tmp_path / "proxy-tls"
    certs.mkdir()
    shutil.copy(tls.cert, certs / "coordinator.crt")  # the key beside it, as in the stack
    shutil.copy(tls.key, certs / "coordinator.key")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(tmp_path / "coordinator.log", "wb") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "fl_core.cli", "coordinator", "serve", "--host",
                 BACKEND_HOST, "--port", str(port), "--behind-tls-proxy"],
                env=env, stdout=subprocess.DEVNULL, stderr=log,
            ))  # fmt: skip
        _wait_for(f"http://{BACKEND_HOST}:{port}", procs[0], verify=False)
        with open(tmp_path / "haproxy.log", "wb") as log:
            procs.append(subprocess.Popen(
                [haproxy, "-db", "-f", str(PROXY_CONFIG)],
                env={**env, "FL_PROXY_BIND": f"127.0.0.1:{proxy_port}",
                     "FL_TLS_CERT": str(certs / "coordinator.crt"),
                     "FL_COORDINATOR_ADDR": f"{BACKEND_HOST}:{port}"},
                stdout=subprocess.DEVNULL, stderr=log,
            ))  # fmt: skip
        url = f"https://127.0.0.1:{proxy_port}"
        _wait_for(url, procs[1], verify=ssl.create_default_context(cafile=str(tls.ca)))
        yield url
    finally:
        stop_processes(procs)


def test_a_device_trains_and_uploads_through_the_tls_proxy(
    env: dict[str, str], tls: TLSFiles, tmp_path: Path, behind_proxy: str
) -> None:
    coord = Coordinator(CoordinatorSettings.local(env["FL_HOME"]))
    try:
        start_campaign(coord.store, CID)
        enrolled = run_fl(env, "clients", "enroll", "hospital-7", "--ttl", "600")
        assert enrolled.returncode == 0, enrolled.stderr
        coord.publish_round(
            CID, 1, base_version=0, tasks={"hospital-7": task_dict(seed=5)}, deadline_s=300
        )
        rng = np.random.default_rng(1)
        data = tmp_path / "device" / "local.parquet"
        write_table(data, rng.normal(size=(40, SPEC.num_features)).astype(np.float32),
                    rng.integers(0, SPEC.num_classes, 40))  # fmt: skip
        run = run_fl(
            {**env, "FL_HOME": str(tmp_path / "device" / ".fl")},
            "client", "run", "--coordinator", behind_proxy, "--ca", str(tls.ca),
            "--enroll-token", enrolled.stdout.strip(), "--data", str(data),
            "--home", str(tmp_path / "device" / "home"), "--max-tasks", "1", "--wait", "2",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "done: 1 task(s)" in run.stdout
        # the update went through the proxy signed, and is attributed to the device's key
        header, _ = wire.decode(coord.store.get_bytes(update_key(CID, 1, "hospital-7")))
        assert header.client == "hospital-7"
        assert coord.round_status(CID, 1).received == ["hospital-7"]
        # requests arriving through the proxy are still authenticated by the coordinator
        ctx = ssl.create_default_context(cafile=str(tls.ca))
        r = httpx.post(behind_proxy + "/v1/clients/heartbeat", json={}, verify=ctx)
        assert r.status_code == 401
    finally:
        coord.close()


def test_plain_http_off_loopback_needs_the_proxy_flag(env: dict[str, str]) -> None:
    refused = run_fl(env, "coordinator", "serve", "--host", BACKEND_HOST, "--port", "18443")
    assert refused.returncode == 2
    assert "--tls-cert" in refused.stderr and "--behind-tls-proxy" in refused.stderr
    both = run_fl(env, "coordinator", "serve", "--behind-tls-proxy", "--tls-cert", __file__,
              "--tls-key", __file__)  # fmt: skip
    assert both.returncode == 2 and "drop --tls-cert" in both.stderr
