"""Step ``dispatch``: publish the round manifest, the base model version and one task per
selected client (local epochs, optimiser, uplink/downlink codecs, seed, client-side privacy).
"""

from __future__ import annotations

from typing import Any

from fl_core import simulation
from fl_core.codec import parse_codec
from fl_core.policy import client_plan
from fl_core.rounds import layout as L
from fl_core.rounds import records as R
from fl_core.rounds import remote, state
from fl_core.seeding import derive_seed
from fl_core.store import ArtifactStore

STEP = "dispatch"


def dispatch(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Write round ``rnd``'s manifest from its cohort record (idempotent)."""
    rec = state.load_campaign(store, cid)
    cfg = state.campaign_config(rec)
    if (done := R.maybe(store, R.Manifest, cid, rnd)) is not None:
        _publish(store, cid, cfg, done)  # a rerun after a crash still publishes (idempotent)
        return done.to_dict()
    cohort = R.read(store, R.Cohort, cid, rnd, step=STEP).cohort
    world = simulation.world(cfg, rec)
    # Remote devices: the policy uses the uplink each one measured and reported.
    measured = remote.measured_uplinks(store) if remote.is_remote(cfg) else None
    c, comm = cfg.client, cfg.communication
    privacy = client_privacy(state.privacy(rec))
    # Remote devices also count their training data on a fixed grid (counts only): the
    # reference histograms federated monitoring measures drift against.
    grid = reference_grid(rec) if remote.is_remote(cfg) else None
    tasks: dict[str, dict[str, Any]] = {}
    for client in cohort:
        plan = world.plan(client) if measured is None else client_plan(cfg, measured.get(client))
        task: dict[str, Any] = {
            "local_epochs": plan["local_epochs"],
            "batch_size": c.batch_size,
            "lr": c.lr,
            "momentum": c.momentum,
            "weight_decay": c.weight_decay,
            "prox_mu": c.prox_mu,
            "codec": plan["codec"],
            "link": plan["link"],
            "error_feedback": comm.error_feedback and not parse_codec(plan["codec"]).lossless,
            "downlink_codec": comm.downlink_codec,
            "downlink_delta_codec": comm.downlink_delta_codec,
            "seed": derive_seed(cfg.campaign.seed, rnd, "train", client),
        }
        if privacy is not None:
            task["privacy"] = privacy
        if grid is not None:
            task["histogram"] = grid
        tasks[client] = task
    record = R.Manifest(
        round=rnd,
        base_version=rnd - 1,
        model_key=L.model_key(cid, rnd - 1),
        tasks=tasks,
        num_tasks=len(tasks),
        transport=cfg.campaign.clients,
        deadline_s=cfg.campaign.deadline_s if remote.is_remote(cfg) else None,
    )
    out = R.write(store, record, cid, rnd)
    _publish(store, cid, cfg, record)
    return out


def _publish(store: ArtifactStore, cid: str, cfg: Any, manifest: R.Manifest) -> None:
    """Remote rounds: the coordinator serves each device its own task until the deadline."""
    if not remote.is_remote(cfg):
        return
    remote.coordinator(store).publish_manifest(
        cid, manifest.to_dict(), deadline_s=cfg.campaign.deadline_s
    )


def reference_grid(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The fine per-feature grid (:func:`fl_core.histograms.histogram_grid`) from the
    campaign's data contract (``prepared/meta.json``); None when it is not available."""
    from pathlib import Path

    from fl_core.data.io import read_json
    from fl_core.histograms import histogram_grid

    meta = Path(rec["data_dir"]) / "prepared" / "meta.json"
    if not meta.is_file():
        return None
    return histogram_grid(read_json(meta))


def client_privacy(rp: Any) -> dict[str, Any] | None:
    """The client-side part of the campaign's privacy (local DP, DP-SGD), for its tasks."""
    if rp is None:
        return None
    out: dict[str, Any] = {}
    if rp.enabled and rp.mode == "local":
        out.update(
            mode="local",
            clipping_norm=float(rp.clipping_norm),
            noise_multiplier=float(rp.update_noise_multiplier),
        )
    if rp.client_dp_sgd:
        out["dp_sgd"] = {
            "noise_multiplier": float(rp.dp_sgd_noise_multiplier),
            "max_grad_norm": float(rp.dp_sgd_max_grad_norm),
            "delta": float(rp.dp_sgd_delta),
            "max_epsilon": getattr(rp, "dp_sgd_max_epsilon", None),
        }
    return out or None


def client_batches(store: ArtifactStore, cid: str, rnd: int, *, batch_size: int) -> list[list[str]]:
    """The round's tasks cut into batches, one per mapped training task (reads the manifest)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    clients = sorted(R.read(store, R.Manifest, cid, rnd, step="train_clients").tasks)
    return [clients[i : i + batch_size] for i in range(0, len(clients), batch_size)]
