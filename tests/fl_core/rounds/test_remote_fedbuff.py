"""FedBuff on the wall clock with real devices: the coordinator (``fl coordinator serve`` over
TLS, a test CA) and six agent processes, each on its own partition file and each slowed by
its own delay, so they deliver in an order that is not their client-id order. Three
asynchronous rounds (buffer K = 2, max_staleness 1) through the real round steps.

Checked against what the coordinator recorded: every round's buffer is the earliest
arrivals still in flight, in the coordinator's arrival order (``arrival_seq``), across
rounds too (no arrival is skipped: each is applied, or recorded as dropped with a reason);
the staleness and staleness weights in the round records are the versions between the
model each device was sent and the one its update is applied to; an update the next buffer
could not apply is dropped, a device whose round was closed as too stale is a straggler and
its late upload is refused (410); and every global model equals a recomputation from the
stored updates in that order.

Services, all on 127.0.0.1: the coordinator process and the agent processes (registry on
SQLite under FL_HOME, the artifact store shared with the steps).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fl_core import pipeline, wire
from fl_core.rounds import layout as L
from fl_core.rounds import records as R
from fl_core.rounds import remote
from fl_core.store import LocalStore
from tests.conftest import tiny_config
from tests.fl_core.coordinator.harness import free_port, make_tls

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow

# client -> seconds each of its tasks starts late: client_0000 is far too slow (its round is
# closed as too stale before it delivers), the others deliver roughly in reverse id order.
DELAYS = {
    "client_0000": 60.0,
    "client_0001": 8.0,
    "client_0002": 6.0,
    "client_0003": 4.0,
    "client_0004": 2.0,
    "client_0005": 0.0,
}
K, MAX_STALENESS, EXPONENT = 2, 1, 0.5


PROCS: list[subprocess.Popen[bytes]] = []


def _until(what: str, check: Callable[[], bool], logs: Path, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline or any(p.poll() is not None for p in PROCS):
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in logs.iterdir())
            pytest.fail(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.5)


def _round(store: LocalStore, cid: str, rnd: int, logs: Path) -> None:
    """One asynchronous round as the DAG runs it; wait_for_updates polls as its trigger."""
    pipeline.select_clients(store, cid, rnd)
    pipeline.dispatch(store, cid, rnd)
    _until(f"round {rnd}'s buffer", lambda: remote.buffer_progress(store, cid, rnd)["done"], logs)
    for step in ("collect", "validate_updates", "aggregate", "privatize", "server_update",
                 "evaluate", "next_round"):  # fmt: skip
        getattr(pipeline, step)(store, cid, rnd)


def test_fedbuff_applies_real_arrival_order_with_staleness(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "server"
    for name in ("FL_COORDINATOR_DB_URL", "FL_ARTIFACT_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FL_HOME", str(home))
    store = LocalStore(home / "artifacts")
    cfg = tiny_config(
        campaign={"rounds": 3, "clients_per_round": 6, "clients": "remote", "deadline_s": 1800},
        asynchronous={"enabled": True, "buffer_size": K, "concurrency": 6,
                      "max_staleness": MAX_STALENESS, "staleness_exponent": EXPONENT},
    )  # fmt: skip
    cid = pipeline.start_campaign(store, cfg, data_dir=tiny_data, campaign_id="fedbuff-wall")
    coord = remote.coordinator(store)
    tls = make_tls(tmp_path / "tls")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FL_")}
    env.update(FL_HOME=str(home), PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins")]))
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = PROCS
    procs.clear()
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "fl_core.cli", "coordinator", "serve", "--host",
                 "127.0.0.1", "--port", str(port), "--tls-cert", str(tls.cert),
                 "--tls-key", str(tls.key)],
                env=env, stdout=subprocess.DEVNULL,
                stderr=open(logs / "coordinator.log", "wb"),  # noqa: SIM115
            )
        )  # fmt: skip
        started = logs / "coordinator.log"
        _until("the coordinator", lambda: "Uvicorn running" in started.read_text(), logs)
        for client, delay in DELAYS.items():
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.fl_core.rounds.slow_agent", "--delay",
                     str(delay), "--coordinator", f"https://127.0.0.1:{port}", "--ca",
                     str(tls.ca), "--enroll-token", coord.create_enrollment_token(client),
                     "--data", str(tiny_data / "clients" / f"{client}.parquet"),
                     "--home", str(tmp_path / "devices" / client)],
                    cwd=REPO, env={**env, "FL_HOME": str(tmp_path / "devices" / client / ".fl")},
                    stdout=subprocess.DEVNULL, stderr=open(logs / f"{client}.log", "wb"),  # noqa: SIM115
                )
            )  # fmt: skip
        _until("every device's heartbeat", lambda: len(coord.live_clients()) == 6, logs)

        _round(store, cid, 1, logs)
        # The steps lag behind the devices: the others deliver before round 2 is dispatched.
        _until("five round-1 uploads", lambda: len(coord.arrivals(cid, rounds=[1])) == 5, logs)
        _round(store, cid, 2, logs)
        _round(store, cid, 3, logs)
        slowest = logs / "client_0000.log"
        _until("the slowest device's refused upload",
               lambda: "refused: 410" in slowest.read_text(), logs)  # fmt: skip
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    arrivals = coord.arrivals(cid, rounds=[1, 2, 3])
    seq: dict[tuple[str, int], int] = {}
    for u in arrivals:
        assert u.arrival_seq is not None  # every stored update has its place in the order
        seq[(u.client_id, u.round)] = u.arrival_seq
    first = [u.client_id for u in arrivals if u.round == 1]
    assert first != sorted(first)  # the devices' delays set the order, not their ids
    collected = [R.read(store, R.Collected, cid, r, step="test") for r in (1, 2, 3)]
    infos = [R.read(store, R.AggregateInfo, cid, r, step="test") for r in (1, 2, 3)]
    validations = [R.read(store, R.Validation, cid, r, step="test") for r in (1, 2, 3)]
    assert collected[0].received == first[:K]

    applied: list[tuple[str, int]] = []
    for rnd, col, info, val in zip((1, 2, 3), collected, infos, validations, strict=True):
        pairs = [(c, col.sources[c]) for c in col.received]
        assert len(pairs) == K
        # The arrival order the coordinator recorded is the buffer's and the applied order.
        assert [a["arrival_seq"] for a in col.arrivals or []] == [seq[p] for p in pairs]
        assert [seq[p] for p in pairs] == sorted(seq[p] for p in pairs)
        assert info.applied is not None
        assert [(a["client"], a["source_round"]) for a in info.applied] == pairs
        for a, item in zip(info.applied, val.accepted, strict=True):
            assert a["staleness"] == item.staleness == rnd - a["source_round"]
            assert a["staleness_weight"] == pytest.approx((1 + a["staleness"]) ** -EXPONENT)
            assert a["weight"] == item.num_examples
        applied += pairs
    # FIFO across buffers, and no arrival skipped: each earlier one was applied or dropped.
    order = [seq[p] for p in applied]
    assert order == sorted(order)
    dropped = {(d["client"], d["source_round"]) for col in collected for d in col.dropped or []}
    assert all(p in set(applied) | dropped for p, n in seq.items() if n < order[-1])
    assert any(rnd - src >= 1 for rnd, col in zip((1, 2, 3), collected, strict=True)
               for src in col.sources.values())  # fmt: skip

    # Round 2 applied round-1 updates one version stale; the next one could not be applied.
    assert [collected[1].sources[c] for c in collected[1].received] == [1, 1]
    stale = [d for d in collected[1].dropped or [] if d["source_round"] == 1]
    assert len(stale) == 1 and "too stale" in stale[0]["reason"]
    # The slowest device's round was closed as too stale: a straggler, its upload refused.
    assert "client_0000" in collected[1].missing
    assert "too stale" in coord.round_status(cid, 1).stragglers["client_0000"]
    assert not store.exists(L.update_key(cid, 1, "client_0000"))

    # Each global model is the FedBuff step recomputed from the stored updates in that order.
    for rnd, info in zip((1, 2, 3), infos, strict=True):
        assert info.applied is not None
        total = np.zeros(len(pipeline.load_model(store, cid, 0)), np.float64)
        weights = 0.0
        for a in info.applied:
            _, vec = wire.decode(store.get_bytes(L.update_key(cid, a["source_round"], a["client"])))
            total += (a["weight"] * (1 + a["staleness"]) ** -EXPONENT) * vec.astype(np.float64)
            weights += a["weight"]
        step = (total / weights).astype(np.float32).astype(np.float64)
        before = pipeline.load_model(store, cid, rnd - 1).astype(np.float64)
        expected = (before + cfg.server.lr * step).astype(np.float32)
        assert np.array_equal(pipeline.load_model(store, cid, rnd), expected)
