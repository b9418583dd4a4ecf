"""The agent against a real coordinator over HTTPS on 127.0.0.1: enrollment, training through
the shared client code path, federated evaluation, its own restart (identity and
error-feedback state on disk), a pending upload after a crash, and a coordinator restart."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fl_core import wire
from fl_core.agent import training
from fl_core.agent.identity import ClientHome, PendingUpload
from fl_core.agent.runner import Agent, AgentConfig
from fl_core.agent.transport import RetryPolicy
from fl_core.coordinator import protocol
from fl_core.coordinator.api import Coordinator
from fl_core.data.io import file_sha256, read_table, write_table
from fl_core.rounds.layout import update_key
from tests.fl_core.coordinator.harness import (
    SPEC,
    ServerThread,
    TLSFiles,
    put_model,
    start_campaign,
    task_dict,
)

CID = "camp-a"
FAST = RetryPolicy(attempts=3, base_s=0.05, cap_s=0.5)


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, SPEC.num_features)).astype(np.float32)
    y = rng.integers(0, SPEC.num_classes, size=60)
    path = tmp_path / "device" / "local.parquet"
    write_table(path, x, y)
    return path


def agent_for(
    server: ServerThread, tls: TLSFiles, data: Path, home: Path, token: str | None, **kw: object
) -> Agent:
    config = AgentConfig(
        coordinator=server.url,
        ca=tls.ca,
        data=data,
        home=home,
        enroll_token=token,
        wait_s=1.0,
        retry=FAST,
        **kw,  # type: ignore[arg-type]
    )
    return Agent(config)


def test_agent_enrolls_validates_trains_uploads_and_evaluates(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, data_file: Path, tmp_path: Path
) -> None:
    layout, _ = start_campaign(coord.store, CID)
    token = coord.create_enrollment_token("dev-1")
    home = tmp_path / "agent-home"
    agent = agent_for(server, tls, data_file, home, token, holdout=0.25)
    coord.publish_round(CID, 1, base_version=0, tasks={"dev-1": task_dict(seed=5)}, deadline_s=60)

    assert agent.run(max_tasks=1) == 1
    agent.close()

    header, vector = wire.decode(
        coord.store.get_bytes(update_key(CID, 1, "dev-1")), expected_layout=layout
    )
    assert header.client == "dev-1" and header.base_version == 0
    assert header.num_examples == 45  # the 15 held-out rows never train
    assert np.isfinite(vector).all() and np.abs(vector).sum() > 0
    [report] = coord.evaluations(CID, 1)
    assert report.client_id == "dev-1" and report.num_examples == 15
    assert 0.0 <= report.metrics["accuracy"] <= 1.0
    [live] = coord.live_clients()
    assert live.data_sha256 == file_sha256(data_file) and live.data_valid is True
    assert live.num_examples == 45 and live.latency_s is not None
    assert (home / "key.pem").stat().st_mode & 0o777 == 0o600
    assert "PRIVATE" not in (home / "identity.json").read_text()


def test_agent_with_invalid_data_reports_it_and_does_not_train(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, tmp_path: Path
) -> None:
    start_campaign(coord.store, CID)
    bad = tmp_path / "bad.parquet"
    write_table(bad, np.zeros((20, SPEC.num_features + 2), np.float32), np.zeros(20, np.int64))
    agent = agent_for(server, tls, bad, tmp_path / "h", coord.create_enrollment_token("dev-1"))
    coord.publish_round(CID, 1, base_version=0, tasks={"dev-1": task_dict()}, deadline_s=60)
    agent.ensure_identity()
    task = agent.client.next_task(wait_s=0)
    assert task is not None

    with pytest.raises(Exception, match="failed validation"):
        agent.handle(task)
    agent.close()

    assert coord.round_status(CID, 1).received == []
    assert coord.clients()[0].data_valid is False
    assert coord.live_clients() == []


def test_restarted_agent_keeps_identity_and_error_feedback_state(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, data_file: Path, tmp_path: Path
) -> None:
    layout, v0 = start_campaign(coord.store, CID)
    home = tmp_path / "agent-home"
    task = task_dict(seed=9, codec="topk:0.1")
    first = agent_for(
        server, tls, data_file, home, coord.create_enrollment_token("dev-1"), holdout=0.0
    )
    coord.publish_round(CID, 1, base_version=0, tasks={"dev-1": task}, deadline_s=60)
    first.run(max_tasks=1)
    first.close()
    saved = ClientHome(home).load_state(CID)
    assert np.abs(saved["residual"]).sum() > 0  # top-k left a residual behind

    # A new process: no token, everything from its home.
    put_model(coord.store, CID, 1, layout, v0 + 0.01)
    coord.publish_round(CID, 2, base_version=1, tasks={"dev-1": task}, deadline_s=60)
    second = agent_for(server, tls, data_file, home, None, holdout=0.0)
    second.run(max_tasks=1)
    second.close()

    sent = wire.decode(coord.store.get_bytes(update_key(CID, 2, "dev-1")))[1]
    model = coord.model_message("dev-1", CID, 2, known_version=0)
    task2 = {
        **task,
        "campaign": CID,
        "round": 2,
        "base_version": 1,
        "client": "dev-1",
        "model_spec": SPEC.to_json(),
        "layout": layout.to_json(),
    }
    x, y = read_table(data_file)
    with_state = training.train(model, task2, x, y, state=training.ClientState.from_arrays(saved))
    fresh = training.train(
        coord.model_message("dev-1", CID, 2, known_version=None),
        task2,
        x,
        y,
        state=training.ClientState(),
    )
    assert np.array_equal(sent, wire.decode(with_state.update)[1])
    assert not np.array_equal(sent, wire.decode(fresh.update)[1])


def test_update_left_pending_by_a_crash_is_sent_on_restart(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, data_file: Path, tmp_path: Path
) -> None:
    layout, _ = start_campaign(coord.store, CID)
    home = tmp_path / "agent-home"
    agent = agent_for(server, tls, data_file, home, coord.create_enrollment_token("dev-1"))
    identity = agent.ensure_identity()
    coord.publish_round(CID, 1, base_version=0, tasks={"dev-1": task_dict()}, deadline_s=60)
    task = agent.client.next_task(wait_s=0)
    assert task is not None
    message, _ = agent.client.download_model(task["model_url"], known_version=None)
    result = training.train(message, task, agent.data.x, agent.data.y, state=training.ClientState())
    signature = protocol.sign(
        identity.key,
        protocol.update_message(
            campaign=CID,
            rnd=1,
            client_id="dev-1",
            message_sha256=hashlib.sha256(result.update).hexdigest(),
        ),
    )
    # What handle() leaves on disk right before sending; then the process dies.
    ClientHome(home).save_pending(
        PendingUpload(CID, 1, result.update, signature, result.state.to_arrays())
    )
    agent.close()

    restarted = agent_for(server, tls, data_file, home, None)
    assert restarted.resume() == 1
    restarted.close()

    assert coord.store.get_bytes(update_key(CID, 1, "dev-1")) == result.update
    assert list(ClientHome(home).pending()) == []
    assert int(ClientHome(home).load_state(CID)["known_version"]) == 0


def test_agent_survives_a_coordinator_restart(
    coord: Coordinator, tls: TLSFiles, data_file: Path, tmp_path: Path
) -> None:
    layout, v0 = start_campaign(coord.store, CID)
    server = ServerThread(coord, tls).start()
    agent = agent_for(
        server, tls, data_file, tmp_path / "h", coord.create_enrollment_token("dev-1")
    )
    coord.publish_round(CID, 1, base_version=0, tasks={"dev-1": task_dict()}, deadline_s=60)
    done: list[int] = []
    worker = threading.Thread(target=lambda: done.append(agent.run(max_tasks=2)), daemon=True)
    worker.start()
    deadline = time.monotonic() + 60
    while not coord.round_status(CID, 1).received and time.monotonic() < deadline:
        time.sleep(0.1)

    server.stop()  # the coordinator goes away mid-campaign ...
    put_model(coord.store, CID, 1, layout, v0)
    coord.publish_round(CID, 2, base_version=1, tasks={"dev-1": task_dict()}, deadline_s=60)
    time.sleep(1.5)  # ... the agent keeps failing and backing off ...
    restarted = ServerThread(coord, tls, port=server.port).start()  # ... and comes back.
    worker.join(timeout=90)
    restarted.stop()
    agent.close()

    assert done == [2]
    assert coord.round_status(CID, 1).received == ["dev-1"]
    assert coord.round_status(CID, 2).received == ["dev-1"]


def test_agent_takes_a_csv_table_and_validates_it(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, tmp_path: Path
) -> None:
    import pandas as pd

    layout, _ = start_campaign(coord.store, CID)
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(
        rng.normal(size=(30, SPEC.num_features)), columns=[f"x{i}" for i in range(8)]
    )
    frame["label"] = rng.integers(0, SPEC.num_classes, 30)
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    frame.to_csv(good, index=False)
    frame.assign(x3=np.where(np.arange(30) == 7, np.nan, frame["x3"])).to_csv(bad, index=False)
    coord.publish_round(
        CID, 1, base_version=0, tasks={"ok": task_dict(), "nan": task_dict()}, deadline_s=60
    )

    ok = agent_for(server, tls, good, tmp_path / "h1", coord.create_enrollment_token("ok"),
                   holdout=0.0)  # fmt: skip
    assert ok.run(max_tasks=1) == 1
    ok.close()
    nan = agent_for(server, tls, bad, tmp_path / "h2", coord.create_enrollment_token("nan"))
    nan.ensure_identity()
    task = nan.client.next_task(wait_s=0)
    assert task is not None
    with pytest.raises(Exception, match="failed validation"):
        nan.handle(task)
    nan.close()

    header, _ = wire.decode(coord.store.get_bytes(update_key(CID, 1, "ok")), expected_layout=layout)
    assert header.num_examples == 30
    assert {c.client_id: c.data_sha256 for c in coord.clients()}["ok"] == file_sha256(good)
    assert coord.round_status(CID, 1).received == ["ok"]
