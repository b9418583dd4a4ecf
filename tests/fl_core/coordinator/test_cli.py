"""The command line end to end, in real processes: ``fl coordinator serve`` over TLS,
``fl clients enroll|list|revoke`` against its registry, and ``fl client run`` on a device's
own data file, with a round published through the Python API in between."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

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
    task_dict,
)

CID = "cli-camp"


def test_enroll_serve_run_list_revoke(env: dict[str, str], tls: TLSFiles, tmp_path: Path) -> None:
    import ssl

    coord = Coordinator(CoordinatorSettings.local(env["FL_HOME"]))
    start_campaign(coord.store, CID)
    enrolled = run_fl(env, "clients", "enroll", "hospital-3", "--ttl", "600")
    assert enrolled.returncode == 0, enrolled.stderr
    token = enrolled.stdout.strip()
    assert token.startswith("flenroll_") and "\n" not in token

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "fl_core.cli", "coordinator", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
         "--max-reading-connections", "2"],  # a tight read gate on real agents
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"https://127.0.0.1:{port}"
        ctx = ssl.create_default_context(cafile=str(tls.ca))
        deadline = time.monotonic() + 120
        while True:
            try:
                assert httpx.get(url + "/v1/health", verify=ctx).json()["status"] == "ok"
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "coordinator did not come up"
                time.sleep(0.3)
        coord.publish_round(
            CID, 1, base_version=0, tasks={"hospital-3": task_dict(seed=4)}, deadline_s=300
        )
        rng = np.random.default_rng(0)
        data = tmp_path / "device" / "local.parquet"
        write_table(data, rng.normal(size=(40, SPEC.num_features)).astype(np.float32),
                    rng.integers(0, SPEC.num_classes, 40))  # fmt: skip
        device_env = {**env, "FL_HOME": str(tmp_path / "device" / ".fl")}
        run = run_fl(
            device_env,
            "client", "run", "--coordinator", url, "--ca", str(tls.ca),
            "--enroll-token", token, "--data", str(data),
            "--home", str(tmp_path / "device" / "home"), "--max-tasks", "1", "--wait", "2",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "done: 1 task(s)" in run.stdout

        header, _ = wire.decode(coord.store.get_bytes(update_key(CID, 1, "hospital-3")))
        assert header.client == "hospital-3"
        listed = run_fl(env, "clients", "list", "--json")
        [row] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert row["client_id"] == "hospital-3" and row["enrolled"] and not row["revoked"]
        assert row["data_sha256"] and row["num_examples"] == 32 and row["last_heartbeat"]

        assert run_fl(env, "clients", "revoke", "hospital-3").returncode == 0
        again = run_fl(
            device_env,
            "client", "run", "--coordinator", url, "--ca", str(tls.ca), "--data", str(data),
            "--home", str(tmp_path / "device" / "home"), "--max-tasks", "1", "--wait", "0",
        )  # fmt: skip
        assert again.returncode == 1 and "revoked" in again.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
        coord.close()


def test_serve_refuses_plain_http_off_loopback(env: dict[str, str]) -> None:
    out = run_fl(env, "coordinator", "serve", "--host", "0.0.0.0", "--port", "18443")
    assert out.returncode == 2 and "--tls-cert" in out.stderr
