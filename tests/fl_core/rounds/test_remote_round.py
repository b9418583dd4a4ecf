"""A remote round through the real round steps: enrolled agents over HTTPS (a real uvicorn
coordinator on 127.0.0.1, TLS from a test CA), one of them killed mid-round and one
coordinator restart; the round closes at quorum, records the straggler, refuses its late
upload, loses no accepted update and aggregates the others.

Services: the coordinator app served by uvicorn in a thread (restarted on the same port),
agents as in-process ``Agent`` loops on their own partition files; registry on SQLite.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fl_core import pipeline
from fl_core.agent.runner import Agent, AgentConfig
from fl_core.agent.transport import RetryPolicy
from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.settings import CoordinatorSettings
from fl_core.rounds import layout as L
from fl_core.rounds import records as R
from fl_core.store import LocalStore
from tests.conftest import tiny_config
from tests.fl_core.coordinator.harness import ServerThread, TLSFiles, make_tls

FAST = RetryPolicy(attempts=6, base_s=0.05, cap_s=0.5)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


def test_remote_round_with_a_killed_agent_and_a_coordinator_restart(
    tiny_data: Path, tmp_path: Path, tls: TLSFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "server"
    monkeypatch.setenv("FL_HOME", str(home))
    monkeypatch.delenv("FL_COORDINATOR_DB_URL", raising=False)
    monkeypatch.delenv("FL_ARTIFACT_STORE", raising=False)
    store = LocalStore(home / "artifacts")
    cfg = tiny_config(
        campaign={"clients_per_round": 6, "rounds": 1, "clients": "remote", "quorum": 0.8,
                  "deadline_s": 300},
    )  # fmt: skip
    cid = pipeline.start_campaign(store, cfg, data_dir=tiny_data, campaign_id="remote-faults")
    coord = Coordinator(CoordinatorSettings.local(home, long_poll_s=1.0), store=store)
    server = ServerThread(coord, tls).start()
    agents: dict[str, Agent] = {}
    for k in range(6):
        client = f"client_{k:04d}"
        token = coord.create_enrollment_token(client)
        agents[client] = Agent(
            AgentConfig(
                coordinator=server.url, ca=tls.ca, data=tiny_data / "clients" / f"{client}.parquet",
                home=tmp_path / "devices" / client, enroll_token=token,
                holdout=0.0, wait_s=1.0, heartbeat_s=1.0, retry=FAST,
            )
        )  # fmt: skip
        agents[client].ensure_identity()
        agents[client].heartbeat()

    cohort = pipeline.select_clients(store, cid, 1)["cohort"]
    pipeline.dispatch(store, cid, 1)
    killed = cohort[-1]  # selected, then killed before it delivers
    workers = [
        threading.Thread(target=agents[c].run, kwargs={"max_tasks": 1}, daemon=True)
        for c in cohort
        if c != killed
    ]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 300
    while coord.round_status(cid, 1).num_received < 2:
        assert time.monotonic() < deadline, "no upload arrived"
        time.sleep(0.1)
    server.stop()  # the coordinator restarts mid-round ...
    time.sleep(1.0)
    server = ServerThread(coord, tls, port=server.port).start()  # ... on the same port
    while coord.round_status(cid, 1).num_received < 5:  # quorum: 0.8 of 6
        assert time.monotonic() < deadline, f"quorum not reached: {coord.round_status(cid, 1)}"
        time.sleep(0.1)
    for w in workers:
        w.join(timeout=60)

    collected = pipeline.collect(store, cid, 1)
    late = threading.Thread(target=agents[killed].run, kwargs={"max_tasks": 1}, daemon=True)
    late.start()  # the killed device comes back after the round closed
    late.join(timeout=10)
    agents[killed].stop.set()
    late.join(timeout=30)
    validation = pipeline.validate_updates(store, cid, 1)
    info = pipeline.aggregate(store, cid, 1)
    pipeline.privatize(store, cid, 1)
    pipeline.server_update(store, cid, 1)
    server.stop()
    for agent in agents.values():
        agent.close()

    assert collected["missing"] == [killed] and collected["num_received"] == 5
    status = coord.round_status(cid, 1)
    assert killed in status.stragglers
    assert not store.exists(L.update_key(cid, 1, killed))  # its late upload was refused
    assert validation["num_accepted"] == 5  # no accepted update lost over the restart
    assert info["num_aggregated"] == 5
    model = pipeline.load_model(store, cid, 1)
    assert np.all(np.isfinite(model)) and not np.array_equal(
        model, pipeline.load_model(store, cid, 0)
    )
    # Each device's weight is what it reported with its validated data, never more.
    for item in R.read(store, R.Validation, cid, 1, step="test").accepted:
        assert item.num_examples == agents[item.client].data.num_examples
    coord.close()
