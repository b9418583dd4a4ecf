"""Real edge clients end to end: ten `fl client run` processes, each holding only its own
partition file, train a 3-round campaign over HTTPS through the real `federated_training`
DAG in remote mode; with quorum = every client, the final model is byte-identical to the
simulated run of the same config and seed.

Services, all started here on 127.0.0.1: the coordinator (`fl coordinator serve` over TLS
with a test CA made with `cryptography`), ten agent processes, and Airflow (`python -m
fl_airflow.run`: real `airflow db migrate`, real DAG runs through `dag.test`, the
`wait_for_updates` sensor deferring to its trigger). Registry: SQLite under FL_HOME.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fl_core.campaigns import ensure_data
from fl_core.config import load_params, with_overrides
from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.settings import CoordinatorSettings
from fl_core.data.io import read_json, read_table, write_table
from fl_core.engine import run_campaign
from fl_core.rounds import records
from fl_core.store import LocalStore
from tests.fl_core.coordinator.harness import free_port, make_tls, stop_processes

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NUM_CLIENTS = 10

pytestmark = pytest.mark.slow


def _project(root: Path) -> Path:
    """A project folder whose params.yaml is a small remote campaign (digits, 10 clients)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.pop("datasets", None)
    raw["data"].update(dataset="digits", test_fraction=0.2, seed=1)
    raw["partition"].update(scheme="iid", num_clients=NUM_CLIENTS, min_samples=10, seed=1)
    raw["model"].update(name="mlp", hidden=[32])
    raw["client"].update(local_epochs=1, batch_size=32, lr=0.1, momentum=0.5)
    raw["server"].update(momentum=0.0)
    raw["campaign"].update(
        name="remote-e2e", rounds=3, clients_per_round=NUM_CLIENTS, seed=7,
        clients="remote", quorum=1.0, deadline_s=900,
    )  # fmt: skip
    raw["evaluate"]["baseline_epochs"] = 1
    raw["tracking"].update(experiment="remote-e2e", registered_model="fl-remote-e2e")
    # Three one-epoch rounds may stay below the default gate; the monitoring check after
    # the campaign needs a champion (beating the majority class is still required).
    raw["deploy"]["min_accuracy"] = 0.2
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


def _env(home: Path, project: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "FL_")) and k != "MLFLOW_TRACKING_URI"
    }
    env.update(
        FL_HOME=str(home),
        FL_PROJECT_ROOT=str(project),
        PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins")]),
        PATH=f"{BIN}:{os.environ['PATH']}",
        GIT_PYTHON_REFRESH="quiet",
    )
    return env


def _wait_healthy(url: str, ca: Path, proc: subprocess.Popen[bytes]) -> None:
    import ssl

    import httpx

    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, "the coordinator exited"
        try:
            if httpx.get(f"{url}/v1/health", verify=context, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the coordinator did not come up"
        time.sleep(0.5)


def test_ten_agents_over_https_train_the_same_model_as_the_simulation(tmp_path: Path) -> None:
    project = _project(tmp_path / "project")
    home = tmp_path / "server"
    env = _env(home, project)
    cfg = load_params(project / "params.yaml")
    data_dir = ensure_data(cfg, project_root=project, home=home)  # what open_round reuses
    manifest = read_json(data_dir / "clients" / "manifest.json")
    clients = [c["client_id"] for c in manifest["clients"]]
    assert len(clients) == NUM_CLIENTS

    # Each device gets only its own partition (copied out) and a shard of held-out rows.
    x_test, y_test = read_table(data_dir / "prepared" / "test.parquet")
    devices = tmp_path / "devices"
    tls = make_tls(tmp_path / "tls")
    coord = Coordinator(CoordinatorSettings.local(home))
    tokens = {c: coord.create_enrollment_token(c, ttl_s=3600) for c in clients}
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "fl_core.cli", "coordinator", "serve", "--host",
                 "127.0.0.1", "--port", str(port), "--tls-cert", str(tls.cert),
                 "--tls-key", str(tls.key)],
                env=env, stdout=subprocess.DEVNULL, stderr=open(logs / "coordinator.log", "wb"),  # noqa: SIM115
            )
        )  # fmt: skip
        _wait_healthy(url, tls.ca, procs[0])  # agents give up on a coordinator that is not up
        for i, (client, entry) in enumerate(zip(clients, manifest["clients"], strict=True)):
            own = devices / client
            own.mkdir(parents=True)
            x, y = read_table(data_dir / "clients" / entry["file"])
            write_table(own / "local.parquet", x, y)
            rows = np.arange(i, len(y_test), NUM_CLIENTS)
            write_table(own / "heldout.parquet", x_test[rows], y_test[rows])
            device_env = {**env, "FL_HOME": str(own / ".fl")}
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "fl_core.cli", "client", "run", "--coordinator", url,
                     "--ca", str(tls.ca), "--enroll-token", tokens[client],
                     "--data", str(own / "local.parquet"), "--eval-data",
                     str(own / "heldout.parquet"), "--holdout", "0", "--home",
                     str(own / "home"), "--wait", "5"],
                    env=device_env, stdout=subprocess.DEVNULL,
                    stderr=open(logs / f"{client}.log", "wb"),  # noqa: SIM115
                )
            )  # fmt: skip
        deadline = time.monotonic() + 600
        while len(coord.live_clients()) < NUM_CLIENTS:
            dead = [i for i, p in enumerate(procs) if p.poll() is not None]
            assert not dead, "exited early:\n" + "\n".join(
                (logs / ("coordinator.log" if i == 0 else f"{clients[i - 1]}.log")).read_text()[
                    -3000:
                ]
                for i in dead
            )
            assert time.monotonic() < deadline, "agents did not all heartbeat"
            time.sleep(1)

        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "fl_airflow.run", "--json", "--client-batch-size", "10"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=2400,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        status = json.loads(out.stdout.strip().splitlines()[-1])
        # The same devices then check the champion through federated_monitoring (remote).
        conf = {"clients": "remote", "registered_model": "fl-remote-e2e", "deadline_s": 600}
        mon = subprocess.run(
            [sys.executable, "-m", "fl_airflow.run", "--dag", "federated_monitoring",
             "--conf", json.dumps(conf)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        assert mon.returncode == 0, mon.stdout[-3000:] + mon.stderr[-3000:]
    finally:
        stop_processes(procs)
        coord.close()

    store = LocalStore(home / "artifacts")
    cid = status["campaign_id"]
    assert status["last_round"] == 3
    remote_sha = records.read(store, records.ServerUpdateInfo, cid, 3, step="test").model_sha256
    for rnd in (1, 2, 3):
        col = records.read(store, records.Collected, cid, rnd, step="test")
        assert col.received == clients and col.missing == []
        metrics = records.read(store, records.RoundMetrics, cid, rnd, step="test")
        # Federated evaluation: every device reported on its own held-out rows.
        assert metrics.fed_num_clients == NUM_CLIENTS and metrics.fed_model_version == rnd - 1
        assert metrics.fed_num_examples == len(y_test)

    # Federated monitoring: every device evaluated the champion on its own data (here its
    # training partition, the data the reference histograms were counted on: PSI is 0).
    [report_file] = (home / "artifacts" / "monitoring" / "reports").glob("*.json")
    report = json.loads(report_file.read_text())
    assert report["mode"] == "remote" and report["version"] == "1"
    assert report["federated"]["num_clients"] == NUM_CLIENTS
    assert report["federated"]["num_examples"] == sum(
        c["num_examples"] for c in manifest["clients"]
    )
    assert report["drift"]["psi_mean"] == pytest.approx(0.0, abs=1e-12)
    assert report["healthy"], report["reasons"]

    simulated = with_overrides(cfg, {"campaign.clients": "simulated"})
    sim = run_campaign(simulated, data_dir=data_dir, store=LocalStore(tmp_path / "sim"),
                       progress=False)  # fmt: skip
    assert sim.model_sha256 == remote_sha
    print(f"remote campaign: 3 rounds, {NUM_CLIENTS} agents, {elapsed:.1f} s through Airflow")
