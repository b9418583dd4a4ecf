"""Federated monitoring end to end: real agent processes over HTTPS check the champion on
their own fresh data; no labelled data on the server.

A remote campaign round trains with four `fl client run` processes (each holding only its
own partition; the server's copies of the partitions are removed first, so a server-side
read of client data would fail). During training each agent reports the bin counts of its
training data (the reference histograms). Then two monitoring checks of the trained model
run through the coordinator: with every device's fresh data unshifted the champion is
healthy; after two devices' fresh data shifts, the check reports drift and degradation on
exactly those devices and the retraining decision fires.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fl_core.campaigns import ensure_data
from fl_core.config import load_params
from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.settings import CoordinatorSettings
from fl_core.data.io import read_json, read_table, write_table
from fl_core.monitoring import degrade_features, degrade_labels
from fl_core.operations import decide_retraining
from fl_core.remote_monitoring import check_progress, collect_check, publish_check
from fl_core.rounds import ROUND_STEPS, records, state, step
from fl_core.rounds.campaign import start_campaign
from fl_core.store import LocalStore
from tests.fl_core.coordinator.harness import free_port, make_tls, stop_processes

REPO = Path(__file__).resolve().parents[1]
NUM_CLIENTS = 4
SHIFTED = 2  # the first two devices' fresh data drifts in phase 2

pytestmark = pytest.mark.slow


def _config(root: Path) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.pop("datasets", None)
    raw["data"].update(dataset="digits", test_fraction=0.2, seed=1)
    raw["partition"].update(scheme="iid", num_clients=NUM_CLIENTS, min_samples=10, seed=1)
    raw["model"].update(name="mlp", hidden=[32])
    raw["client"].update(local_epochs=3, batch_size=32, lr=0.1, momentum=0.5)
    raw["campaign"].update(
        name="remote-monitoring", rounds=1, clients_per_round=NUM_CLIENTS, seed=7,
        clients="remote", quorum=1.0, deadline_s=600,
    )  # fmt: skip
    raw["tracking"].update(experiment="remote-monitoring", registered_model="fl-remote-mon")
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root / "params.yaml"


def _wait(what: str, done: Any, procs: list[subprocess.Popen[bytes]], logs: Path) -> Any:
    deadline = time.monotonic() + 300
    while not (value := done()):
        dead = [p.args for p in procs if p.poll() is not None]
        logs_text = "\n".join(f.read_text()[-2000:] for f in sorted(logs.glob("*.log")))
        assert not dead, f"exited early: {dead}\n{logs_text}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{logs_text}"
        time.sleep(0.5)
    return value


def test_agents_check_the_champion_on_fresh_data_and_drift_triggers_retraining(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = _config(tmp_path / "project")
    home = tmp_path / "server"
    for key in [k for k in os.environ if k.startswith("FL_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("FL_HOME", str(home))
    cfg = load_params(params)
    data_dir = ensure_data(cfg, project_root=params.parent, home=home)
    manifest = read_json(data_dir / "clients" / "manifest.json")
    clients = [c["client_id"] for c in manifest["clients"]]
    x_test, y_test = read_table(data_dir / "prepared" / "test.parquet")

    devices = tmp_path / "devices"
    fresh: dict[str, Path] = {}
    for i, entry in enumerate(manifest["clients"]):
        own = devices / entry["client_id"]
        own.mkdir(parents=True)
        server_copy = data_dir / "clients" / entry["file"]
        write_table(own / "local.parquet", *read_table(server_copy))
        server_copy.unlink()  # the server has no client data from here on
        rows = np.arange(i, len(y_test), NUM_CLIENTS)
        fresh[entry["client_id"]] = own / "fresh.parquet"
        write_table(own / "fresh.parquet", x_test[rows], y_test[rows])

    store = LocalStore(home / "artifacts")
    coord = Coordinator(CoordinatorSettings.local(home))
    tokens = {c: coord.create_enrollment_token(c, ttl_s=3600) for c in clients}
    tls = make_tls(tmp_path / "tls")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FL_", "AIRFLOW"))},
        "FL_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]),
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, args: list[str], extra: dict[str, str] | None = None) -> None:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "fl_core.cli", *args],
                env={**env, **(extra or {})},
                stdout=subprocess.DEVNULL,
                stderr=open(logs / f"{name}.log", "wb"),  # noqa: SIM115
            )
        )

    try:
        spawn("coordinator", ["coordinator", "serve", "--host", "127.0.0.1", "--port", str(port),
                              "--tls-cert", str(tls.cert), "--tls-key", str(tls.key)])  # fmt: skip
        for client in clients:
            own = devices / client
            spawn(client, ["client", "run", "--coordinator", f"https://127.0.0.1:{port}",
                           "--ca", str(tls.ca), "--enroll-token", tokens[client],
                           "--data", str(own / "local.parquet"), "--holdout", "0",
                           "--monitor-data", str(fresh[client]), "--home", str(own / "home"),
                           "--wait", "2"],
                  {"FL_HOME": str(own / ".fl")})  # fmt: skip
        _wait("heartbeats", lambda: len(coord.live_clients()) == NUM_CLIENTS, procs, logs)

        # One remote training round, step by step as the DAG runs it.
        cid = start_campaign(store, cfg, data_dir=data_dir)
        for name in ROUND_STEPS[:2]:  # select_clients, dispatch
            step(name)(store, cid, 1)
        _wait("updates", lambda: coord.round_status(cid, 1).num_received == NUM_CLIENTS, procs,
              logs)  # fmt: skip
        for name in ROUND_STEPS[3:9]:  # collect .. evaluate
            step(name)(store, cid, 1)
        test_accuracy = records.read(store, records.RoundMetrics, cid, 1, step="test").test_accuracy
        champion = state.load_model(store, cid, 1)
        # Reference histograms: every device counted its training split (counts only).
        reference = coord.histograms(cid)
        assert sorted(reference) == clients
        assert sum(h.num_examples for h in reference.values()) == sum(
            c["num_examples"] for c in manifest["clients"]
        )

        def check(run_id: str) -> dict[str, Any]:
            published = publish_check(
                store, campaign_id=cid, model="fl-remote-mon", version=1, vector=champion,
                reference_accuracy=test_accuracy, run_id=run_id,
            )  # fmt: skip
            assert published["num_tasks"] == NUM_CLIENTS
            _wait("reports", lambda: check_progress(store, published["check_id"])["done"], procs,
                  logs)  # fmt: skip
            thresholds = cfg.monitoring
            return collect_check(
                store,
                published["check_id"],
                max_accuracy_drop=thresholds.max_accuracy_drop,
                max_drift=thresholds.max_drift,
            )

        # Phase 1: fresh data like the training data -> healthy, nothing triggered.
        healthy = check("scheduled__2026-12-02T12:00:00+00:00")
        fed = healthy["federated"]
        assert fed["num_clients"] == NUM_CLIENTS and fed["num_examples"] == len(y_test)
        # The union of the devices' fresh rows is the central test set: same accuracy.
        assert healthy["accuracy"] == pytest.approx(test_accuracy, abs=1e-6)
        assert healthy["healthy"], healthy["reasons"]
        assert healthy["drift"]["psi_mean"] < 0.1
        now = time.time()
        assert not decide_retraining(store, healthy, now_s=now, cooldown_hours=24)["trigger"]

        # Phase 2: on two devices the sensors drift and the labels change meaning (new rows
        # on the device, same file): covariate shift plus concept drift.
        rng = np.random.default_rng(0)
        for client in clients[:SHIFTED]:
            x, y = read_table(fresh[client])
            x = degrade_features(x, shift=0.35, scale=0.1, rng=rng)
            y = degrade_labels(y, fraction=0.4, num_classes=10, rng=rng)
            write_table(fresh[client], x, y)
        degraded = check("scheduled__2026-12-02T13:00:00+00:00")
    finally:
        stop_processes(procs)
        coord.close()

    per_client = degraded["federated"]["clients"]
    assert all(per_client[c]["psi_mean"] > cfg.monitoring.max_drift for c in clients[:SHIFTED])
    assert all(per_client[c]["psi_mean"] < 0.1 for c in clients[SHIFTED:])
    assert not degraded["healthy"]
    assert degraded["drift"]["psi_mean"] > cfg.monitoring.max_drift
    assert test_accuracy - degraded["accuracy"] > cfg.monitoring.max_accuracy_drop
    assert any(r.startswith("drift") for r in degraded["reasons"])
    assert any(r.startswith("accuracy_drop") for r in degraded["reasons"])
    decision = decide_retraining(store, degraded, now_s=now + 60, cooldown_hours=24)
    assert decision["trigger"] and "drift" in decision["reason"]
    print(
        f"\nhealthy: accuracy {healthy['accuracy']:.4f} psi_mean "
        f"{healthy['drift']['psi_mean']:.4f}; shifted: accuracy {degraded['accuracy']:.4f} "
        f"psi_mean {degraded['drift']['psi_mean']:.4f}; per client "
        + ", ".join(f"{c}: {v['psi_mean']:.3f}" for c, v in per_client.items())
    )
