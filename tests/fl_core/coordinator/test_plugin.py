"""The Airflow plugin: discovered by Airflow's plugin manager from ``plugins/``, and the app
it mounts serves signed agent requests under its prefix (signatures are mount-independent)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

from fl_core.agent.identity import Identity
from fl_core.agent.transport import CoordinatorClient, RetryPolicy
from fl_core.coordinator import protocol
from fl_core.coordinator.api import Coordinator
from tests.fl_core.coordinator.harness import ServerThread, TLSFiles, start_campaign, task_dict

ROOT = Path(__file__).resolve().parents[3]


def test_airflow_discovers_the_plugin_with_its_fastapi_app(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "FL_HOME": str(tmp_path / "fl"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), *sys.path]),
    }
    code = (
        "from airflow import plugins_manager as pm\n"
        "apps, _ = pm.get_fastapi_plugins()\n"
        "print([(a['name'], a['url_prefix']) for a in apps])\n"
        "import sys; print('fl_core.coordinator.db' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "('FL coordinator', '/fl')" in out.stdout
    assert out.stdout.strip().endswith("False")  # loading the plugin built nothing


def test_mounted_app_serves_signed_requests_under_its_prefix(
    coord: Coordinator, tls: TLSFiles, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "plugins"))
    try:
        from fl_airflow import coordinator as plugin
    finally:
        sys.path.remove(str(ROOT / "plugins"))
    monkeypatch.setenv("FL_HOME", str(Path(coord.settings.store_url).parent))
    start_campaign(coord.store, "camp")
    host = FastAPI()  # stands in for the API server: Airflow mounts the same way
    lazy = plugin.LazyCoordinatorApp()
    host.mount(plugin.URL_PREFIX, lazy)
    server = ServerThread(coord, tls).start(app=host)
    try:
        token = coord.create_enrollment_token("dev-1")
        client = CoordinatorClient(
            server.url + plugin.URL_PREFIX, ca=tls.ca, retry=RetryPolicy(attempts=1)
        )
        key = Ed25519PrivateKey.generate()
        client.identity = Identity(
            client.enroll(token, protocol.public_key_b64(key)), server.url, key
        )
        coord.publish_round("camp", 1, base_version=0, tasks={"dev-1": task_dict()}, deadline_s=60)
        client.heartbeat({"num_examples": 7})
        task = client.next_task(wait_s=0)
        client.close()
    finally:
        server.stop()
    assert task is not None and task["round"] == 1
    assert [c.num_examples for c in coord.live_clients()] == [7]
