"""Step ``train_clients``: the in-process transport of simulated clients.

For each client of a batch it does what the network would: encode the model message for
the client (the global model, or a delta from the version the client holds), hand it with
the task to the one client code path (:func:`fl_core.client.run_task`) on the client's own
partition, and store the update the client returns and the client's own state. The
simulated world decides who drops out and how long a delivery takes; the adversary may
poison an attacker's data. A client whose update is already stored is skipped (retry).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fl_core import simulation, wire
from fl_core.client import ClientState, ClientTask, TaskDeclined, run_task
from fl_core.rounds import layout as L
from fl_core.rounds import records as R
from fl_core.rounds import state
from fl_core.store import ArtifactStore

logger = logging.getLogger(__name__)

STEP = "train_clients"


def train_clients(store: ArtifactStore, cid: str, rnd: int, clients: list[str]) -> dict[str, Any]:
    """Run the simulated clients ``clients`` of round ``rnd`` (a batch of the manifest)."""
    rec = state.load_campaign(store, cid)
    manifest = R.read(store, R.Manifest, cid, rnd, step=STEP)
    cfg = state.campaign_config(rec)
    if manifest.transport == "remote":  # the devices train; this transport has nothing to do
        return {
            "round": rnd,
            "remote": True,
            "trained": 0,
            "skipped": 0,
            "dropped": 0,
            "declined": 0,
            "bytes_up": 0,
            "bytes_down": 0,
        }
    lay = state.model_layout(rec)
    files = state.client_files(rec)
    base = manifest.base_version
    global_vector = state.load_model(store, cid, base)
    world = simulation.world(cfg, rec)
    adversary = simulation.adversary(cfg, rec)
    trained = skipped = dropped = declined = claimed = bytes_up = bytes_down = 0
    for client in clients:
        if client not in manifest.tasks:
            raise ValueError(f"client {client!r} has no task in round {rnd}")
        key = L.update_key(cid, rnd, client)
        if store.exists(key):
            skipped += 1
            continue
        if not world.completes(client, rnd):
            dropped += 1  # went offline before delivering: no update arrives
            continue
        raw = manifest.tasks[client]
        if raw.get("privacy") and not _claim(store, cid, rnd, client):
            # Client-side DP noise is unrepeatable: one run only may train this client
            # (another run holds the claim, or crashed holding it: a straggler this round).
            logger.warning("round %d: %s is claimed by another run; skipped", rnd, client)
            claimed += 1
            continue
        task = ClientTask.from_manifest(
            raw,
            campaign=cid,
            round=rnd,
            base_version=base,
            client=client,
            model_spec=rec["model_spec"],
        )
        client_state = _load_client_state(store, cid, client, rnd)
        known = client_state.known_version
        known_model = None if known is None else state.load_model(store, cid, known)
        client_state.known_model = known_model
        down = wire.encode_model_for_client(
            wire.Header(
                kind="model",
                campaign=cid,
                round=rnd,
                base_version=base,
                client=client,
                codec=task.downlink_codec,
                layout=lay,
            ),
            global_vector,
            known_version=known,
            known_model=known_model,
            delta_codec=task.downlink_delta_codec,
        )
        x, y = state.table(files[client])
        if adversary is not None:
            y = adversary.poison_data(client, y)
        try:
            result = run_task(
                down,
                task,
                x,
                y,
                state=client_state,
                expected_layout=lay,
                measured=world.measured(client),
            )
        except TaskDeclined as exc:
            logger.warning("round %d: %s", rnd, exc)
            declined += 1
            continue
        duration = world.duration(
            client,
            num_examples=result.num_examples,
            bytes_down=len(down),
            bytes_up=len(result.update),
            epochs=task.local_epochs,
        )
        if duration is not None:  # the simulator's clock: dispatch to delivery, real bytes
            store.put_json(L.sim_key(cid, rnd, client), {"duration_s": duration})
        # The state first, then the update: a retry re-reads the state of an earlier round.
        # The server keeps the global models, so a simulated client's state omits its copy.
        store.put_arrays(
            L.client_state_key(cid, client, rnd), result.state.to_arrays(include_model=False)
        )
        store.put_bytes(key, result.update)
        trained += 1
        bytes_up += len(result.update)
        bytes_down += len(down)
    return {
        "round": rnd,
        "trained": trained,
        "skipped": skipped,
        "dropped": dropped,
        "declined": declined,
        "claimed_elsewhere": claimed,
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
    }


def _load_client_state(store: ArtifactStore, cid: str, client: str, rnd: int) -> ClientState:
    """The client's own state before round ``rnd``: always the latest state of an *earlier*
    round, so a retried round starts from the same state and produces the same bytes."""
    earlier = [
        k
        for k in store.list(L.client_state_prefix(cid, client))
        if k.endswith(".npz") and L.client_state_round(k) < rnd
    ]
    arrays: dict[str, np.ndarray] = store.get_arrays(max(earlier)) if earlier else {}
    return ClientState.from_arrays(arrays)


def _claim(store: ArtifactStore, cid: str, rnd: int, client: str) -> bool:
    """Claim the right to train ``client`` in round ``rnd`` (write-once); True if ours."""
    import os
    import socket
    import time

    owner = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    return store.put_json_if_absent(L.claim_key(cid, rnd, client), owner)
