"""One function per federated round step (DESIGN.md, "A federated round").

Every step takes the artifact store, the campaign id and the round, reads what it needs from
the store and writes its result back under ``campaigns/<id>/...``; it returns a small
JSON-able dict (keys, counts, metrics) fit for Airflow's XCom. The in-process engine
(:mod:`fl_core.engine`) and the Airflow DAGs call the same functions.

Idempotence: a step that already wrote its output returns it unchanged instead of redoing
the work, and each step reads only the previous round's state, so a retry, a crash or a
manual clear never counts an update or a privacy expenditure twice. Randomness comes from
(seed, round, step); DP noise from a server-private per-campaign seed.

Round ``r`` (1-based) starts from global model version ``r - 1`` and produces version ``r``.
The step order is select_clients -> dispatch -> train_clients (simulated clients, mappable
over batches) -> collect -> validate_updates -> aggregate -> privatize -> server_update ->
evaluate -> register -> next_round, and at the end register(final) -> deploy.
``server_update`` (the server optimizer step) is split from ``aggregate`` so that DP noise
is added to the averaged update *before* a stateful optimizer sees it (DP-FedAvg order,
McMahan et al., ICLR 2018).
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from fl_core import simulation as sim
from fl_core import wire
from fl_core.aggregation import ServerOptimizer, create_aggregator
from fl_core.aggregation.math import l2_norm
from fl_core.client import ClientResult, TrainSettings, local_train
from fl_core.client import evaluate as eval_model
from fl_core.codec import ErrorFeedback, parse_codec
from fl_core.config import Config, from_dict, resolve_privacy
from fl_core.data.io import file_sha256, read_json, read_table
from fl_core.models import Layout, ModelSpec, init_vector, vector_sha256
from fl_core.seeding import derive_seed, rng
from fl_core.store import ArtifactStore

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- keys and state


def campaign_key(cid: str, *parts: str) -> str:
    return "/".join(["campaigns", cid, *parts])


def round_key(cid: str, rnd: int, *parts: str) -> str:
    return campaign_key(cid, "rounds", f"{rnd:04d}", *parts)


def model_key(cid: str, version: int) -> str:
    return campaign_key(cid, "models", f"v{version:04d}.flw")


def update_key(cid: str, rnd: int, client: str) -> str:
    return round_key(cid, rnd, "updates", f"{client}.flw")


def load_campaign(store: ArtifactStore, cid: str) -> dict[str, Any]:
    """The campaign record written by :func:`start_campaign`."""
    rec: dict[str, Any] = store.get_json(campaign_key(cid, "campaign.json"))
    return rec


def campaign_config(rec: dict[str, Any]) -> Config:
    return from_dict(rec["config"])


def _spec(rec: dict[str, Any]) -> ModelSpec:
    return ModelSpec.from_json(rec["model_spec"])


def _layout(rec: dict[str, Any]) -> Layout:
    return Layout.from_json(rec["layout"])


def load_model(store: ArtifactStore, cid: str, version: int) -> np.ndarray:
    """Global model vector of a campaign at ``version`` (0 = initial)."""
    _, vector = wire.decode(store.get_bytes(model_key(cid, version)))
    return vector


@functools.lru_cache(maxsize=512)
def _read_table_cached(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    return read_table(Path(path))


def _table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    st = path.stat()
    return _read_table_cached(str(path), st.st_mtime_ns, st.st_size)


def _client_files(rec: dict[str, Any]) -> dict[str, Path]:
    root = Path(rec["data_dir"]) / "clients"
    return {c["client_id"]: root / c["file"] for c in rec["clients"]}


def _cached(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    if store.exists(key):
        out: dict[str, Any] = store.get_json(key)
        return out
    return None


# --------------------------------------------------------------------------- privacy state


def _privacy(rec: dict[str, Any]) -> Any:
    """The campaign's ``ResolvedPrivacy`` (None when privacy is off)."""
    if not rec.get("privacy"):
        return None
    from fl_core.privacy.settings import ResolvedPrivacy

    return ResolvedPrivacy.from_dict(rec["privacy"])


def _central(rp: Any) -> bool:
    return rp is not None and rp.enabled and rp.mode == "central"


def _accountant(store: ArtifactStore, cid: str, rp: Any, upto: int) -> Any:
    """The accountant with every round <= ``upto`` recorded (the state saved with ``upto``)."""
    acct = rp.make_accountant()
    if upto >= 1:
        acct.load_state_dict(store.get_json(round_key(cid, upto, "accountant.json")))
    return acct


def _clipper(store: ArtifactStore, cid: str, rp: Any, upto: int) -> Any:
    clipper = rp.make_clipper()
    if clipper is not None and upto >= 1:
        clipper.load_state_dict(store.get_json(round_key(cid, upto, "clipper.json")))
    return clipper


def privacy_budget(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Whether round ``rnd`` may run without pushing epsilon past the campaign's target."""
    rp = _privacy(load_campaign(store, cid))
    if rp is None or not rp.enabled:
        return {"allowed": True, "enabled": False}
    acct = _accountant(store, cid, rp, rnd - 1)
    after = float(acct.epsilon_if_step())
    return {
        "allowed": after <= rp.epsilon + 1e-9,
        "enabled": True,
        "epsilon_spent": float(acct.epsilon()) if rnd > 1 else 0.0,
        "epsilon_after_round": after,
        "target_epsilon": rp.epsilon,
        "delta": rp.delta,
    }


# --------------------------------------------------------------------------- client state


def _client_state_key(cid: str, client: str, rnd: int) -> str:
    return campaign_key(cid, "clients", client, f"state_r{rnd:04d}.npz")


def _load_client_state(store: ArtifactStore, cid: str, client: str, rnd: int) -> dict[str, Any]:
    """The client's own state before round ``rnd`` (error-feedback residual, the model
    version it last received): always the latest state of an *earlier* round, so a retried
    round starts from the same state and produces the same bytes."""
    earlier = [
        k
        for k in store.list(campaign_key(cid, "clients", client))
        if k.endswith(".npz") and int(k.rsplit("state_r", 1)[1][:4]) < rnd
    ]
    return store.get_arrays(max(earlier)) if earlier else {}


# --------------------------------------------------------------------------- campaign start


def new_campaign_id(name: str) -> str:
    """A fresh, sortable campaign id (an identifier, not a source of randomness)."""
    return f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def start_campaign(
    store: ArtifactStore,
    cfg: Config,
    *,
    data_dir: str | Path,
    campaign_id: str | None = None,
    tracking: dict[str, Any] | None = None,
    warm_start: np.ndarray | None = None,
    validation_status: str = "unknown",
) -> str:
    """Create the campaign record and the initial global model (version 0); idempotent.

    ``data_dir`` holds ``prepared/`` and ``clients/`` (the DVC outputs); the partitions'
    content hashes are recorded as the campaign's data lineage. ``tracking`` is
    ``{"uri": ..., "experiment": ..., "run_id": ...}`` or None for no MLflow. Privacy
    settings are resolved (and the noise calibrated) here, before any round runs.
    """
    cid = campaign_id or new_campaign_id(cfg.campaign.name)
    if store.exists(campaign_key(cid, "campaign.json")):
        return cid
    data_dir = Path(data_dir).resolve()
    meta = read_json(data_dir / "prepared" / "meta.json")
    manifest = read_json(data_dir / "clients" / "manifest.json")
    spec = ModelSpec.for_data(
        name=cfg.model.name,
        hidden=cfg.model.hidden,
        channels=cfg.model.channels,
        meta=meta,
        manifest=manifest,
    )
    vector, layout = init_vector(spec, seed=derive_seed(cfg.campaign.seed, "init"))
    if warm_start is not None:
        if warm_start.shape != vector.shape:
            raise ValueError("warm-start model does not match the configured model's layout")
        vector = warm_start.astype(np.float32)
    privacy = None
    if cfg.privacy.level != "off" or cfg.privacy.client_dp_sgd:
        privacy = resolve_privacy(cfg, num_clients=len(manifest["clients"])).to_dict()
    test_file = data_dir / "prepared" / "test.parquet"
    rec = {
        "campaign_id": cid,
        "config": cfg.to_dict(),
        "data_dir": str(data_dir),
        "dataset": meta.get("dataset"),
        "model_spec": spec.to_json(),
        "layout": layout.to_json(),
        "clients": [
            {k: c[k] for k in ("client_id", "file", "num_examples", "sha256")}
            for c in manifest["clients"]
        ],
        "test": {"file": str(test_file), "sha256": file_sha256(test_file)},
        "tracking": tracking,
        "warm_start": warm_start is not None,
        "validation_status": validation_status,
        "privacy": privacy,
        "profiles": sim.campaign_profiles(cfg, [c["client_id"] for c in manifest["clients"]])
        if cfg.simulation.enabled
        else None,
        "malicious": sim.malicious_clients(cfg, [c["client_id"] for c in manifest["clients"]]),
        # Server-private: DP noise must not be predictable from params.yaml's seed.
        "noise_seed": secrets.randbits(62),
    }
    store.put_bytes(model_key(cid, 0), _encode_model(cid, 0, layout, vector))
    store.put_json(campaign_key(cid, "campaign.json"), rec)
    logger.info(
        "campaign %s: %s on %s, %d clients, %d params",
        cid,
        spec.name,
        rec["dataset"],
        len(rec["clients"]),
        layout.num_params,
    )
    return cid


def _encode_model(cid: str, version: int, layout: Layout, vector: np.ndarray) -> bytes:
    header = wire.Header(
        kind="model",
        campaign=cid,
        round=version,
        base_version=version,
        client="server",
        codec="dense_fp32",
        layout=layout,
    )
    return wire.encode(header, vector)


# --------------------------------------------------------------------------- round steps


def select_clients(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Pick this round's cohort: uniformly without replacement (seeded), or Poisson sampling
    at rate q under central DP (the accountant's assumption). Refuses a round that would
    push privacy spending past the budget."""
    key = round_key(cid, rnd, "cohort.json")
    if (cached := _cached(store, key)) is not None:
        return cached
    rec = load_campaign(store, cid)
    cfg = campaign_config(rec)
    ids = [c["client_id"] for c in rec["clients"]]
    rp = _privacy(rec)
    if rp is not None and rp.enabled:
        budget = privacy_budget(store, cid, rnd)
        if not budget["allowed"]:
            raise RuntimeError(
                f"round {rnd} refused: it would spend epsilon "
                f"{budget['epsilon_after_round']:.4f} > target {budget['target_epsilon']}"
            )
    if _central(rp):
        from fl_core.privacy.sampling import poisson_cohort

        cohort = poisson_cohort(
            ids, rate=rp.sampling_rate, rng=rng(cfg.campaign.seed, rnd, "select")
        )
        strategy = f"poisson(q={rp.sampling_rate:.4g})"
    else:
        cohort, strategy, target = _select(store, cid, rnd, rec, cfg, ids)
    out = {"round": rnd, "cohort": cohort, "num_selected": len(cohort), "strategy": strategy}
    if not _central(rp):
        out["target"] = target
    store.put_json(key, out)
    logger.info("round %d: selected %d of %d clients (%s)", rnd, len(cohort), len(ids), strategy)
    return out


def _select(
    store: ArtifactStore, cid: str, rnd: int, rec: dict[str, Any], cfg: Config, ids: list[str]
) -> tuple[list[str], str, int]:
    """Cohort without DP: among the clients online this round (simulation), not already
    training (asynchronous), and allowed by the communication policy; random or Oort;
    over-selected to survive the expected dropouts. Returns (cohort, strategy, target)."""
    from fl_core.selection import overselect

    candidates = list(ids)
    if cfg.simulation.enabled:
        candidates = sim.availability(cfg).available(candidates, rnd)
        candidates = [c for c in candidates if sim.participates(cfg, sim.profile(rec, c), rnd)]
    if cfg.asynchronous.enabled:
        busy = set(_inflight(store, cid, rnd - 1))
        candidates = [c for c in candidates if c not in busy]
        target = max(0, cfg.asynchronous.concurrency - len(busy))
    elif cfg.campaign.fraction is not None:
        target = max(1, round(cfg.campaign.fraction * len(ids)))
    else:
        target = min(cfg.campaign.clients_per_round, len(ids))
    k = target
    if cfg.selection.overselect and cfg.simulation.dropout_rate > 0 and target:
        k = overselect(target, cfg.simulation.dropout_rate)
    k = min(k, len(candidates))
    selector = _selector(store, cid, rnd - 1, cfg)
    cohort = (
        sorted(selector.select(candidates, k, rng=rng(cfg.campaign.seed, rnd, "select"), round=rnd))
        if k
        else []
    )
    return cohort, cfg.selection.strategy, target


def _selector(store: ArtifactStore, cid: str, upto: int, cfg: Config) -> Any:
    """The selector with the records of rounds <= ``upto`` and current reputations."""
    from fl_core.selection import create_selector

    kwargs: dict[str, Any] = {"min_reputation": cfg.selection.min_reputation}
    if cfg.selection.strategy == "oort":
        kwargs["exploration"] = cfg.selection.exploration
    selector = create_selector(cfg.selection.strategy, **kwargs)
    if upto >= 1 and store.exists(round_key(cid, upto, "selector.json")):
        selector.load_state_dict(store.get_json(round_key(cid, upto, "selector.json")))
    book = _reputation(store, cid, upto)
    selector.set_signals(reputation={c: book.score(c, round=upto + 1) for c in book.clients})
    return selector


def _reputation(store: ArtifactStore, cid: str, upto: int) -> Any:
    from fl_core.reputation import ReputationBook

    book = ReputationBook()
    if upto >= 1 and store.exists(round_key(cid, upto, "reputation.json")):
        book.load_state_dict(store.get_json(round_key(cid, upto, "reputation.json")))
    return book


def _inflight(store: ArtifactStore, cid: str, upto: int) -> dict[str, dict[str, Any]]:
    """Asynchronous mode: clients still training after round ``upto`` closed."""
    if upto < 1:
        return {}
    out: dict[str, dict[str, Any]] = store.get_json(round_key(cid, upto, "collected.json")).get(
        "inflight", {}
    )
    return out


def _clock(store: ArtifactStore, cid: str, upto: int) -> float:
    """Simulated time (s) when round ``upto`` closed."""
    if upto < 1:
        return 0.0
    return float(store.get_json(round_key(cid, upto, "collected.json")).get("clock_s", 0.0))


def dispatch(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Publish the round manifest: base model version and each client's task (local epochs,
    optimiser, uplink/downlink codecs, seed)."""
    key = round_key(cid, rnd, "manifest.json")
    if (cached := _cached(store, key)) is not None:
        return cached
    rec = load_campaign(store, cid)
    cfg = campaign_config(rec)
    cohort = select_clients(store, cid, rnd)["cohort"]
    c, comm = cfg.client, cfg.communication
    plans = {client: sim.client_plan(cfg, sim.profile(rec, client)) for client in cohort}
    tasks = {
        client: {
            "local_epochs": plans[client]["local_epochs"],
            "batch_size": c.batch_size,
            "lr": c.lr,
            "momentum": c.momentum,
            "weight_decay": c.weight_decay,
            "prox_mu": c.prox_mu,
            "codec": plans[client]["codec"],
            "link": plans[client]["link"],
            "error_feedback": comm.error_feedback
            and not parse_codec(plans[client]["codec"]).lossless,
            "downlink_codec": comm.downlink_codec,
            "downlink_delta_codec": comm.downlink_delta_codec,
            "seed": derive_seed(cfg.campaign.seed, rnd, "train", client),
        }
        for client in cohort
    }
    out = {
        "round": rnd,
        "base_version": rnd - 1,
        "model_key": model_key(cid, rnd - 1),
        "tasks": tasks,
        "num_tasks": len(tasks),
    }
    store.put_json(key, out)
    return out


def client_batches(store: ArtifactStore, cid: str, rnd: int, *, batch_size: int) -> list[list[str]]:
    """The cohort cut into batches, one per mapped training task."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cohort = sorted(dispatch(store, cid, rnd)["tasks"])
    return [cohort[i : i + batch_size] for i in range(0, len(cohort), batch_size)]


def train_clients(store: ArtifactStore, cid: str, rnd: int, clients: list[str]) -> dict[str, Any]:
    """Simulated clients: each receives the model (downlink codec, or a delta from the version
    it last saw when smaller), trains on its own partition and uploads an encoded update
    (uplink codec, error feedback from its own state; local DP or DP-SGD when configured).

    A client whose update is already in the store is skipped (idempotent retry).
    """
    rec = load_campaign(store, cid)
    manifest = dispatch(store, cid, rnd)
    spec, layout = _spec(rec), _layout(rec)
    rp = _privacy(rec)
    files = _client_files(rec)
    base = manifest["base_version"]
    global_vector = load_model(store, cid, base)
    cfg = campaign_config(rec)
    avail = sim.availability(cfg) if cfg.simulation.enabled else None
    malicious = set(rec.get("malicious") or [])
    trained, skipped, dropped, bytes_up, bytes_down = 0, 0, 0, 0, 0
    for client in clients:
        if client not in manifest["tasks"]:
            raise ValueError(f"client {client!r} has no task in round {rnd}")
        key = update_key(cid, rnd, client)
        if store.exists(key):
            skipped += 1
            continue
        if avail is not None and not avail.completes(client, rnd):
            dropped += 1  # went offline before delivering: no update arrives
            continue
        task = manifest["tasks"][client]
        state = _load_client_state(store, cid, client, rnd)
        known = int(state["known_version"]) if "known_version" in state else None
        known_model = None if known is None else load_model(store, cid, known)
        down = wire.encode_model_for_client(
            wire.Header(
                kind="model",
                campaign=cid,
                round=rnd,
                base_version=base,
                client=client,
                codec=task["downlink_codec"],
                layout=layout,
            ),
            global_vector,
            known_version=known,
            known_model=known_model,
            delta_codec=task["downlink_delta_codec"],
        )
        down_header, start = wire.decode_model_for_client(
            down, known_version=known, known_model=known_model, expected_layout=layout
        )
        x, y = _table(files[client])
        if client in malicious and cfg.attack.kind == "label_flip":
            from fl_core.attacks import flip_labels

            y = flip_labels(y, spec.num_classes)
        result, metrics = _train_one(spec, start, x, y, task, rp)
        if rp is not None and rp.enabled and rp.mode == "local":
            from fl_core.privacy.local import privatize_update_locally

            noisy = privatize_update_locally(
                result.delta,
                clipping_norm=rp.clipping_norm,
                noise_multiplier=float(rp.update_noise_multiplier),
                rng=rng(rec["noise_seed"], rnd, "local", client),
            )
            result = ClientResult(
                noisy.astype(np.float32), result.num_examples, result.train_loss, result.duration_s
            )
        feedback = None
        if task["error_feedback"]:
            feedback = ErrorFeedback(layout.num_params)
            if "residual" in state:
                feedback.load_state_dict({"residual": state["residual"]})
        metrics = {**metrics, "bytes_down": len(down)}
        prof = sim.profile(rec, client)
        if prof is not None:  # what a real client measures and reports
            metrics["uplink_mbps"] = prof.uplink_mbps
            metrics["latency_s"] = prof.latency_s
        data = encode_update(
            cid,
            rnd,
            base,
            client,
            layout,
            result,
            task["codec"],
            feedback=feedback,
            metrics=metrics,
            seed=task["seed"],
        )
        if prof is not None:  # the simulator's clock: dispatch to delivery, real byte counts
            duration = prof.round_time(
                num_examples=result.num_examples,
                bytes_down=len(down),
                bytes_up=len(data),
                epochs=task["local_epochs"],
            )
            store.put_json(_sim_key(cid, rnd, client), {"duration_s": duration})
        new_state: dict[str, np.ndarray] = {"known_version": np.asarray(base)}
        if feedback is not None:
            new_state.update(feedback.state_dict())
        # The state first, then the update: a retry re-reads the state of an earlier round.
        store.put_arrays(_client_state_key(cid, client, rnd), new_state)
        store.put_bytes(key, data)
        trained += 1
        bytes_up += len(data)
        bytes_down += len(down)
        logger.debug(
            "client %s: %d bytes down (delta from %s), %d up",
            client,
            len(down),
            down_header.delta_from,
            len(data),
        )
    return {
        "round": rnd,
        "trained": trained,
        "skipped": skipped,
        "dropped": dropped,
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
    }


def _train_one(
    spec: ModelSpec,
    start: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    task: dict[str, Any],
    rp: Any,
) -> tuple[ClientResult, dict[str, float]]:
    """Local training; record-level DP-SGD through Opacus when the campaign asks for it."""
    if rp is not None and rp.client_dp_sgd:
        from fl_core.privacy.dpsgd import train_dp_sgd

        result, eps = train_dp_sgd(
            spec,
            start,
            x,
            y,
            local_epochs=task["local_epochs"],
            batch_size=task["batch_size"],
            lr=task["lr"],
            noise_multiplier=rp.dp_sgd_noise_multiplier,
            max_grad_norm=rp.dp_sgd_max_grad_norm,
            delta=float(rp.dp_sgd_delta),
            seed=task["seed"],
        )
        return result, {"dp_sgd_epsilon": float(eps)}
    settings = TrainSettings(
        local_epochs=task["local_epochs"],
        batch_size=task["batch_size"],
        lr=task["lr"],
        momentum=task["momentum"],
        weight_decay=task["weight_decay"],
        prox_mu=task["prox_mu"],
    )
    return local_train(spec, start, x, y, settings=settings, seed=task["seed"]), {}


def encode_update(
    cid: str,
    rnd: int,
    base_version: int,
    client: str,
    layout: Layout,
    result: ClientResult,
    codec: str,
    *,
    feedback: ErrorFeedback | None = None,
    metrics: dict[str, float] | None = None,
    seed: int | None = None,
) -> bytes:
    """A client's update as a wire message (error feedback applied when given). Stochastic
    codecs draw from ``seed`` (the task's seed: campaign seed, round and client), so the
    same campaign config gives the same bytes whatever its id."""
    header = wire.Header(
        kind="update",
        campaign=cid,
        round=rnd,
        base_version=base_version,
        client=client,
        codec=codec,
        layout=layout,
        num_examples=result.num_examples,
        metrics={
            "train_loss": result.train_loss,
            "duration_s": result.duration_s,
            **(metrics or {}),
        },
    )
    codec_rng = None if seed is None else np.random.default_rng(derive_seed(seed, "codec"))
    return wire.encode(header, result.delta, feedback=feedback, rng=codec_rng)


def collect(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Close the round's collection: which updates count, who is missing.

    Synchronous: the cohort's updates; with simulation, on the simulated clock the round
    closes at the target count (quorum, when over-selected) or the deadline, and later
    updates are stragglers. Asynchronous (FedBuff): the ``buffer_size`` earliest arrivals
    among every client in flight, whatever model version each trained on; the rest stay in
    flight. In an attack simulation the adversary's messages replace the attackers' updates
    here (their honest updates are kept under ``honest/``).
    """
    key = round_key(cid, rnd, "collected.json")
    if (cached := _cached(store, key)) is not None:
        return cached
    rec = load_campaign(store, cid)
    cfg = campaign_config(rec)
    selection = select_clients(store, cid, rnd)
    cohort = dispatch(store, cid, rnd)["tasks"]
    start = _clock(store, cid, rnd - 1)
    arrived = {c: rnd for c in sorted(cohort) if store.exists(update_key(cid, rnd, c))}
    durations = {c: _sim_duration(store, cid, rnd, c) for c in arrived}
    out: dict[str, Any] = {"round": rnd}
    if cfg.asynchronous.enabled:
        pool = {
            c: {"round": int(v["round"]), "arrival": float(v["arrival"])}
            for c, v in _inflight(store, cid, rnd - 1).items()
        }
        for c in cohort:
            if c in arrived:
                pool[c] = {"round": rnd, "arrival": start + (durations[c] or 0.0)}
        order = sorted(pool, key=lambda c: (pool[c]["arrival"], c))
        received = order[: cfg.asynchronous.buffer_size]
        clock = max([start] + [pool[c]["arrival"] for c in received])
        sources = {c: int(pool[c]["round"]) for c in received}
        out.update(inflight={c: pool[c] for c in order[cfg.asynchronous.buffer_size :]})
        missing = sorted(c for c in cohort if c not in arrived)
    elif cfg.simulation.enabled:
        from fl_core.selection import arrivals

        timing = arrivals(
            {c: durations.get(c) for c in sorted(cohort)},
            quorum=selection.get("target") or None,
            deadline_s=cfg.simulation.deadline_s,
        )
        received, missing = sorted(timing.received), timing.stragglers
        clock, sources = start + timing.duration_s, {c: rnd for c in received}
    else:
        received = sorted(arrived)
        missing = [c for c in sorted(cohort) if c not in arrived]
        clock, sources = start, {c: rnd for c in received}
    if not received and not _central(_privacy(rec)):
        raise RuntimeError(f"round {rnd}: no update arrived from a cohort of {len(cohort)}")
    _adversary(store, cid, rnd, cfg, rec, sources)
    out.update(
        received=received,
        missing=missing,
        sources=sources,
        clock_s=clock,
        num_received=len(received),
        num_missing=len(missing),
    )
    store.put_json(key, out)
    if missing:
        logger.info("round %d: %d stragglers/dropouts: %s", rnd, len(missing), missing)
    return out


def _sim_key(cid: str, rnd: int, client: str) -> str:
    return round_key(cid, rnd, "sim", f"{client}.json")


def _sim_duration(store: ArtifactStore, cid: str, rnd: int, client: str) -> float | None:
    """Simulated seconds from dispatch to delivery (None without simulation)."""
    key = _sim_key(cid, rnd, client)
    return float(store.get_json(key)["duration_s"]) if store.exists(key) else None


def _adversary(
    store: ArtifactStore,
    cid: str,
    rnd: int,
    cfg: Config,
    rec: dict[str, Any],
    sources: dict[str, int],
) -> None:
    """Evaluation only: replace the received attackers' updates with the attack."""
    malicious = set(rec.get("malicious") or [])
    if cfg.attack.kind in ("none", "label_flip") or not malicious & set(sources):
        return
    honest: dict[str, np.ndarray] = {}
    headers: dict[str, wire.Header] = {}
    for client, src in sources.items():
        key = update_key(cid, src, client)
        kept = round_key(cid, src, "honest", f"{client}.flw")
        if client in malicious and not store.exists(kept):
            store.put_bytes(kept, store.get_bytes(key))
        data = store.get_bytes(kept if client in malicious else key)
        try:
            headers[client], honest[client] = wire.decode(data)
        except wire.WireError:
            continue
    for client, vector in sim.attack_updates(cfg, honest, sorted(malicious), rnd=rnd).items():
        header = wire.Header(**{**headers[client].__dict__, "codec": "dense_fp32"})
        store.put_bytes(update_key(cid, sources[client], client), wire.encode(header, vector))


def validate_updates(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Check every received update; reject with a reason, accept the rest."""
    key = round_key(cid, rnd, "validation.json")
    if (cached := _cached(store, key)) is not None:
        return cached
    rec = load_campaign(store, cid)
    cfg = campaign_config(rec)
    layout = _layout(rec)
    collected = collect(store, cid, rnd)
    malicious = set(rec.get("malicious") or [])
    accepted: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    bytes_up = bytes_down = 0
    for client in collected["received"]:
        src = int(collected["sources"][client])
        task = dispatch(store, cid, src)["tasks"][client]
        data = store.get_bytes(update_key(cid, src, client))
        bytes_up += len(data)
        codec = (
            "dense_fp32"
            if client in malicious and cfg.attack.kind not in ("none", "label_flip")
            else task["codec"]
        )  # the simulated adversary sends fp32
        reason, info = _check_update(
            data,
            cid=cid,
            rnd=src,
            client=client,
            base_version=src - 1,
            layout=layout,
            codec=codec,
            max_norm=cfg.server.max_update_norm,
        )
        if reason is None:
            accepted.append({"client": client, "source_round": src, "staleness": rnd - src, **info})
            bytes_down += int(info.get("bytes_down", 0))
        else:
            rejected.append({"client": client, "reason": reason})
    factor = cfg.server.norm_outlier_factor
    # Not under central DP: a threshold relative to the cohort's median lets one client flip
    # others between accepted and rejected, breaking the clipped sum's sensitivity bound.
    if factor is not None and len(accepted) >= 3 and not _central(_privacy(rec)):
        median = float(np.median([a["norm"] for a in accepted]))
        for item in [a for a in accepted if a["norm"] > factor * median]:
            accepted.remove(item)
            rejected.append(
                {
                    "client": item["client"],
                    "reason": (
                        f"norm outlier: {item['norm']:.4g} > {factor:g} x median {median:.4g}"
                    ),
                }
            )
    for item in rejected:
        logger.warning("round %d: rejected update from %s: %s", rnd, item["client"], item["reason"])
    out = {
        "round": rnd,
        "accepted": accepted,
        "rejected": rejected,
        "num_accepted": len(accepted),
        "num_rejected": len(rejected),
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
    }
    store.put_json(key, out)
    return out


def _upd_key(cid: str, item: dict[str, Any], rnd: int) -> str:
    return update_key(cid, int(item.get("source_round", rnd)), item["client"])


def _check_update(
    data: bytes,
    *,
    cid: str,
    rnd: int,
    client: str,
    base_version: int,
    layout: Layout,
    codec: str,
    max_norm: float,
) -> tuple[str | None, dict[str, Any]]:
    try:
        header, vector = wire.decode(data, expected_layout=layout, expected_codec=codec)
    except wire.WireError as exc:
        return str(exc), {}
    if header.kind != "update":
        return f"kind is {header.kind!r}, expected 'update'", {}
    if (header.campaign, header.round, header.client) != (cid, rnd, client):
        return "header names another campaign, round or client", {}
    if header.base_version != base_version:
        return f"stale: computed on version {header.base_version}, round uses {base_version}", {}
    if header.num_examples < 1:
        return f"num_examples must be >= 1, got {header.num_examples}", {}
    if not np.all(np.isfinite(vector)):
        return "update has non-finite values", {}
    norm = l2_norm(vector)
    if norm > max_norm:
        return f"update norm {norm:.4g} exceeds server.max_update_norm {max_norm:.4g}", {}
    return None, {
        "num_examples": header.num_examples,
        "norm": norm,
        "train_loss": header.metrics.get("train_loss", math.nan),
        "duration_s": header.metrics.get("duration_s", math.nan),
        "bytes": len(data),
        **{
            k: v
            for k, v in header.metrics.items()
            if k in ("dp_sgd_epsilon", "bytes_down", "uplink_mbps")
        },
    }


def aggregate(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Aggregate the accepted updates.

    Without central DP: the configured rule (weighted FedAvg by num_examples), streaming one
    decoded update at a time; sparse (top-k) updates go in without being densified.
    Central DP: each update clipped to the clipping norm and summed *unweighted* (weights
    would break the sensitivity bound and leak data sizes); ``privatize`` noises the sum.
    """
    key = round_key(cid, rnd, "aggregate.npz")
    info_key = round_key(cid, rnd, "aggregate.json")
    if store.exists(key) and (cached := _cached(store, info_key)) is not None:
        return cached
    rec = load_campaign(store, cid)
    cfg = campaign_config(rec)
    layout = _layout(rec)
    rp = _privacy(rec)
    accepted = validate_updates(store, cid, rnd)["accepted"]
    if _central(rp):
        from fl_core.privacy.clipping import clip_by_l2

        clipper = _clipper(store, cid, rp, rnd - 1)
        c_norm = float(clipper.current_norm) if clipper is not None else rp.clipping_norm
        total = np.zeros(layout.num_params, dtype=np.float64)
        norms = []
        for item in accepted:
            _, vector = wire.decode(store.get_bytes(_upd_key(cid, item, rnd)))
            clipped, norm = clip_by_l2(vector, c_norm)
            total += clipped
            norms.append(norm)
        store.put_arrays(key, {"sum": total, "norms": np.asarray(norms, dtype=np.float64)})
        out = {
            "round": rnd,
            "num_aggregated": len(accepted),
            "strategy": "dp_clipped_sum",
            "clipping_norm": c_norm,
            "num_clipped": int(sum(n > c_norm for n in norms)),
            "total_examples": int(sum(a["num_examples"] for a in accepted)),
            "update_norm": l2_norm(total),
        }
        store.put_json(info_key, out)
        return out
    if not accepted:
        raise RuntimeError(f"round {rnd}: every update was rejected; nothing to aggregate")
    if cfg.asynchronous.enabled:
        return _aggregate_fedbuff(store, cid, rnd, cfg, layout, accepted, key, info_key)
    agg = create_aggregator(
        cfg.server.strategy,
        dim=layout.num_params,
        **_rule_kwargs(store, cid, rnd, rec, cfg, len(accepted)),
    )
    if cfg.server.strategy == "centered_clipping" and store.exists(
        round_key(cid, rnd - 1, "rule_state.npz")
    ):
        agg.load_state_dict(store.get_arrays(round_key(cid, rnd - 1, "rule_state.npz")))  # type: ignore[attr-defined]
    sparse = (
        hasattr(agg, "add_sparse")
        and all(
            parse_codec(
                dispatch(store, cid, int(a["source_round"]))["tasks"][a["client"]]["codec"]
            ).sparse
            for a in accepted
        )
        and not rec.get("malicious")
    )
    for item in accepted:
        weight = float(item["num_examples"])
        data = store.get_bytes(_upd_key(cid, item, rnd))
        if sparse:
            _, idx, values = wire.decode_sparse(data)
            agg.add_sparse(idx, values, weight=weight)  # type: ignore[attr-defined]
        else:
            _, vector = wire.decode(data)
            agg.add(vector, weight=weight)
    mean = agg.result()
    store.put_arrays(key, {"update": mean})
    if cfg.server.strategy == "centered_clipping":  # the center carries over to next round
        store.put_arrays(round_key(cid, rnd, "rule_state.npz"), agg.state_dict())  # type: ignore[attr-defined]
    scores = [float(v) for v in agg.outlier_scores()] if hasattr(agg, "outlier_scores") else []
    _record_clients(store, cid, rnd, cfg, accepted, scores)
    out = {
        "round": rnd,
        "num_aggregated": agg.count,
        "total_examples": int(agg.total_weight),
        "strategy": cfg.server.strategy,
        "sparse": sparse,
        "update_norm": l2_norm(mean),
        "max_staleness_seen": max(int(a.get("staleness", 0)) for a in accepted),
    }
    store.put_json(info_key, out)
    return out


def _aggregate_fedbuff(
    store: ArtifactStore,
    cid: str,
    rnd: int,
    cfg: Config,
    layout: Layout,
    accepted: list[dict[str, Any]],
    key: str,
    info_key: str,
) -> dict[str, Any]:
    """FedBuff (Nguyen et al., AISTATS 2022): sum of w_i s(staleness_i) u_i over the sum
    of the sample weights w_i, so stale updates also shrink the step (not only their share);
    updates staler than ``max_staleness`` are dropped."""
    from fl_core.aggregation.fedbuff import FedBuffBuffer

    a = cfg.asynchronous
    buffer = FedBuffBuffer(
        layout.num_params,
        buffer_size=len(accepted),
        exponent=a.staleness_exponent,
        max_staleness=a.max_staleness,
    )
    for item in accepted:
        _, vector = wire.decode(store.get_bytes(_upd_key(cid, item, rnd)))
        buffer.add(
            vector,
            weight=float(item["num_examples"]),
            base_version=int(item["source_round"]) - 1,
            current_version=rnd - 1,
        )
    mean = buffer.flush().astype(np.float32)
    store.put_arrays(key, {"update": mean})
    _record_clients(store, cid, rnd, cfg, accepted, [])
    out = {
        "round": rnd,
        "num_aggregated": len(accepted) - buffer.num_dropped,
        "num_too_stale": buffer.num_dropped,
        "strategy": "fedbuff",
        "sparse": False,
        "total_examples": int(sum(a["num_examples"] for a in accepted)),
        "update_norm": l2_norm(mean),
        "max_staleness_seen": max(int(a.get("staleness", 0)) for a in accepted),
    }
    store.put_json(info_key, out)
    return out


def _duration(store: ArtifactStore, cid: str, item: dict[str, Any], rnd: int) -> float:
    """A delivered update's duration: simulated when simulating, else the client's report."""
    sim_s = _sim_duration(store, cid, int(item.get("source_round", rnd)), item["client"])
    return float(item.get("duration_s", 0.0)) if sim_s is None else sim_s


def _rule_kwargs(
    store: ArtifactStore, cid: str, rnd: int, rec: dict[str, Any], cfg: Config, n: int
) -> dict[str, Any]:
    """Hyperparameters of the configured rule (f, trim fraction, clip norm, root update)."""
    from fl_core.aggregation import requires_full_cohort

    s = cfg.server
    out: dict[str, Any] = {"capacity": n} if requires_full_cohort(s.strategy) else {}
    if s.strategy in ("krum", "multi_krum", "bulyan"):
        out["num_byzantine"] = s.num_byzantine
    elif s.strategy == "trimmed_mean":
        out["beta"] = s.trim_fraction
    elif s.strategy == "norm_bounding":
        out["max_norm"] = s.clip_norm
    elif s.strategy == "centered_clipping":
        out["tau"] = s.clip_norm
    elif s.strategy == "fltrust":
        out["root_update"] = _root_update(store, cid, rnd, rec, cfg)
    return out


def root_rows(num_rows: int, cfg: Config) -> np.ndarray:
    """Indices of FLTrust's root set in the test table (seeded, the same every round)."""
    n = min(cfg.server.root_dataset_size, num_rows)
    return np.sort(rng(cfg.campaign.seed, "fltrust-root").choice(num_rows, size=n, replace=False))


def _root_update(
    store: ArtifactStore, cid: str, rnd: int, rec: dict[str, Any], cfg: Config
) -> np.ndarray:
    """FLTrust's server update: the server trains on its own small, clean root dataset
    (simulation: ``server.root_dataset_size`` rows of the held-out test set, a seeded random
    sample fixed for the campaign: the test table can be sorted by label)."""
    x, y = _table(Path(rec["test"]["file"]))
    rows = root_rows(len(y), cfg)
    c = cfg.client
    result = local_train(
        _spec(rec),
        load_model(store, cid, rnd - 1),
        x[rows],
        y[rows],
        settings=TrainSettings(
            local_epochs=c.local_epochs, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum
        ),
        seed=derive_seed(cfg.campaign.seed, rnd, "root"),
    )
    return result.delta


def _record_clients(
    store: ArtifactStore,
    cid: str,
    rnd: int,
    cfg: Config,
    accepted: list[dict[str, Any]],
    scores: list[float],
) -> None:
    """Reputation (rejections, outlier scores) and the selector's records, as of round r."""
    validation = validate_updates(store, cid, rnd)
    book = _reputation(store, cid, rnd - 1)
    for item in validation["rejected"]:
        book.record(item["client"], round=rnd, accepted=False, reason=item["reason"])
    for i, item in enumerate(accepted):
        book.record(
            item["client"],
            round=rnd,
            accepted=True,
            outlier_score=scores[i] if i < len(scores) else None,
        )
    store.put_json(round_key(cid, rnd, "reputation.json"), book.state_dict())
    selector = _selector(store, cid, rnd - 1, cfg)
    done = {a["client"]: a for a in accepted}
    for client in dispatch(store, cid, rnd)["tasks"]:
        item = done.get(client)
        selector.observe(
            client,
            round=rnd,
            completed=item is not None,
            num_examples=None if item is None else int(item["num_examples"]),
            loss=None if item is None else float(item["train_loss"]),
            duration_s=None if item is None else _duration(store, cid, item, rnd),
        )
    store.put_json(round_key(cid, rnd, "selector.json"), selector.state_dict())


def privatize(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Differential privacy on the aggregate, and the accountant's step for this round.

    Central: Gaussian noise of std ``z C / (q N)`` on the clipped sum over the expected
    cohort size; the accountant records exactly one step for round ``r`` (its state is
    saved with the round, built from round ``r - 1``'s, so a rerun never double-counts);
    adaptive clipping updates the clipping norm. Local: clients already noised their
    updates; the worst-case client's epsilon is accounted. Off: pass-through.
    """
    key = round_key(cid, rnd, "privatized.npz")
    info_key = round_key(cid, rnd, "privacy.json")
    if store.exists(key) and (cached := _cached(store, info_key)) is not None:
        return cached
    rec = load_campaign(store, cid)
    rp = _privacy(rec)
    info = aggregate(store, cid, rnd)
    arrays = store.get_arrays(round_key(cid, rnd, "aggregate.npz"))
    out: dict[str, Any] = {"round": rnd, "enabled": bool(rp is not None and rp.enabled)}
    if _central(rp):
        from fl_core.privacy.noise import gaussian_noise_std, noisy_mean

        c_norm = float(info["clipping_norm"])
        release = noisy_mean(
            arrays["sum"],
            noise_multiplier=float(rp.update_noise_multiplier),
            clipping_norm=c_norm,
            expected_cohort_size=rp.expected_cohort_size,
            rng=rng(rec["noise_seed"], rnd, "noise"),
        )
        store.put_arrays(key, {"update": release})  # the release first, then the accounting
        clipper = _clipper(store, cid, rp, rnd - 1)
        if clipper is not None:
            clipper.update(arrays["norms"], rng(rec["noise_seed"], rnd, "clip"))
            store.put_json(round_key(cid, rnd, "clipper.json"), clipper.state_dict())
        out["noise_std"] = gaussian_noise_std(
            noise_multiplier=float(rp.update_noise_multiplier),
            clipping_norm=c_norm,
            expected_cohort_size=rp.expected_cohort_size,
        )
        out["clipping_norm"] = c_norm
        out["next_clipping_norm"] = float(clipper.current_norm) if clipper else c_norm
    else:
        store.put_arrays(key, {"update": arrays["update"]})
    if rp is not None and rp.enabled:
        acct = _accountant(store, cid, rp, rnd - 1)
        acct.step(rnd)
        store.put_json(round_key(cid, rnd, "accountant.json"), acct.state_dict())
        out.update(
            epsilon=float(acct.epsilon()),
            delta=rp.delta,
            target_epsilon=rp.epsilon,
            mode=rp.mode,
            noise_multiplier=rp.noise_multiplier,
        )
    if rp is not None and rp.client_dp_sgd:
        eps = [
            a["dp_sgd_epsilon"]
            for a in validate_updates(store, cid, rnd)["accepted"]
            if "dp_sgd_epsilon" in a
        ]
        out["dp_sgd_epsilon_max"] = max(eps) if eps else None
    store.put_json(info_key, out)
    if out.get("epsilon") is not None:
        logger.info(
            "round %d: epsilon spent %.4f of %s (delta %s)",
            rnd,
            out["epsilon"],
            rp.epsilon,
            rp.delta,
        )
    return out


def _server_optimizer(cfg: Config) -> ServerOptimizer:
    s = cfg.server
    return ServerOptimizer(
        name=s.optimizer, lr=s.lr, momentum=s.momentum, beta1=s.beta1, beta2=s.beta2, tau=s.tau
    )


def server_update(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Server optimizer step: global v(r-1) + step(update) -> global v(r)."""
    info_key = round_key(cid, rnd, "server_update.json")
    if store.exists(model_key(cid, rnd)) and (cached := _cached(store, info_key)) is not None:
        return cached
    rec = load_campaign(store, cid)
    cfg = campaign_config(rec)
    privatize(store, cid, rnd)
    update = store.get_arrays(round_key(cid, rnd, "privatized.npz"))["update"]
    opt = _server_optimizer(cfg)
    prev_state = round_key(cid, rnd - 1, "server_opt.npz")
    if rnd > 1 and store.exists(prev_state):
        opt.load_state_dict(store.get_arrays(prev_state))
    new = opt.step(load_model(store, cid, rnd - 1), update)
    store.put_arrays(round_key(cid, rnd, "server_opt.npz"), opt.state_dict())
    store.put_bytes(model_key(cid, rnd), _encode_model(cid, rnd, _layout(rec), new))
    out = {
        "round": rnd,
        "model_version": rnd,
        "model_key": model_key(cid, rnd),
        "model_sha256": vector_sha256(new),
    }
    store.put_json(info_key, out)
    return out


def evaluate(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Global test metrics, the spread of accuracy over every client's own data, bytes and
    epsilon spent."""
    key = round_key(cid, rnd, "metrics.json")
    if (cached := _cached(store, key)) is not None:
        return cached
    rec = load_campaign(store, cid)
    spec = _spec(rec)
    server_update(store, cid, rnd)
    vector = load_model(store, cid, rnd)
    x_test, y_test = _table(Path(rec["test"]["file"]))
    test = eval_model(spec, vector, x_test, y_test)
    accs = []
    for path in _client_files(rec).values():
        x, y = _table(path)
        accs.append(eval_model(spec, vector, x, y)["accuracy"])
    acc = np.asarray(accs)
    validation = validate_updates(store, cid, rnd)
    accepted = validation["accepted"]
    privacy = privatize(store, cid, rnd)
    out = {
        "round": rnd,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "client_accuracy_mean": float(acc.mean()),
        "client_accuracy_std": float(acc.std()),
        "client_accuracy_min": float(acc.min()),
        "client_accuracy_p10": float(np.percentile(acc, 10)),
        "train_loss": float(
            np.average(
                [a["train_loss"] for a in accepted], weights=[a["num_examples"] for a in accepted]
            )
        )
        if accepted
        else math.nan,
        "num_accepted": validation["num_accepted"],
        "num_rejected": validation["num_rejected"],
        "bytes_up": validation["bytes_up"],
        "bytes_down": validation["bytes_down"],
    }
    if privacy.get("epsilon") is not None:
        out["epsilon"] = privacy["epsilon"]
    out["sim_time_s"] = float(collect(store, cid, rnd).get("clock_s", 0.0))
    if accepted and validation["bytes_up"]:
        # Against dense fp32 payloads of the same updates (4 bytes per parameter).
        dense = 4 * _layout(rec).num_params * len(accepted)
        out["uplink_ratio_vs_dense"] = dense / sum(int(a["bytes"]) for a in accepted)
    store.put_json(key, out)
    return out


def history(store: ArtifactStore, cid: str, upto: int) -> list[dict[str, Any]]:
    """Per-round metrics of rounds 1..upto that have been evaluated."""
    return [
        store.get_json(round_key(cid, r, "metrics.json"))
        for r in range(1, upto + 1)
        if store.exists(round_key(cid, r, "metrics.json"))
    ]


def next_round(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Decide whether the campaign goes on after round ``rnd``, and why it stops if not:
    rounds done, target accuracy, plateau, or a privacy budget the next round would exceed."""
    rec = load_campaign(store, cid)
    c = campaign_config(rec).campaign
    hist = history(store, cid, rnd)
    accs = [h["test_accuracy"] for h in hist]
    reason = None
    if c.target_accuracy is not None and accs and accs[-1] >= c.target_accuracy:
        reason = f"target accuracy {c.target_accuracy} reached ({accs[-1]:.4f})"
    elif c.plateau_patience is not None and len(accs) > c.plateau_patience:
        best_before = max(accs[: -c.plateau_patience])
        if max(accs[-c.plateau_patience :]) < best_before + c.plateau_min_delta:
            reason = f"plateau: no gain of {c.plateau_min_delta} in {c.plateau_patience} rounds"
    if reason is None and rnd >= c.rounds:
        reason = f"rounds done ({c.rounds})"
    budget = privacy_budget(store, cid, rnd + 1)
    if reason is None and not budget["allowed"]:
        reason = (
            f"privacy budget: round {rnd + 1} would spend epsilon "
            f"{budget['epsilon_after_round']:.4f} > target {budget['target_epsilon']}"
        )
    status = {
        "campaign_id": cid,
        "last_round": rnd,
        "continue": reason is None,
        "reason": reason,
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "epsilon": hist[-1].get("epsilon") if hist else None,
    }
    store.put_json(campaign_key(cid, "status.json"), status)
    return status


def register(store: ArtifactStore, cid: str, rnd: int, *, final: bool = False) -> dict[str, Any]:
    """Log the round to the campaign's MLflow run; at campaign end register the model."""
    rec = load_campaign(store, cid)
    tracking = rec.get("tracking")
    if not tracking:
        return {"round": rnd, "logged": False}
    from fl_core import tracking as tr

    marker = round_key(cid, rnd, "registered.json")
    if not store.exists(marker):
        tr.log_round(tracking, evaluate(store, cid, rnd))
        store.put_json(marker, {"round": rnd})
    out: dict[str, Any] = {"round": rnd, "logged": True}
    if final:
        final_key = campaign_key(cid, "registered_model.json")
        if (cached := _cached(store, final_key)) is not None:
            out.update(cached)
            return out
        info = tr.register_campaign_model(
            tracking,
            campaign=rec,
            vector=load_model(store, cid, rnd),
            history=history(store, cid, rnd),
            model_bytes=store.get_bytes(model_key(cid, rnd)),
        )
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "bytes_per_client.csv"
            table.write_text(bytes_per_client_csv(store, cid, rnd))
            tr.log_artifact(tracking, table)
        store.put_json(final_key, info)
        out.update(info)
    return out


def bytes_per_client_csv(store: ArtifactStore, cid: str, upto: int) -> str:
    """round,client,bytes_up,bytes_down,codec,status for every delivered update."""
    lines = ["round,client,bytes_up,bytes_down,codec,status"]
    for r in range(1, upto + 1):
        key = round_key(cid, r, "validation.json")
        if not store.exists(key):
            continue
        report = store.get_json(key)
        tasks = dispatch(store, cid, r)["tasks"]
        for item in report["accepted"]:
            codec = tasks.get(item["client"], {}).get("codec", "")
            lines.append(
                f"{r},{item['client']},{item['bytes']},{int(item.get('bytes_down', 0))},"
                f"{codec},accepted"
            )
        for item in report["rejected"]:
            lines.append(f"{r},{item['client']},,,,rejected")
    return "\n".join(lines) + "\n"


def deploy(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Promote the registered version to ``champion`` only if it beats the current champion
    on the same evaluation data (this campaign's test set; otherwise it stays
    ``challenger``), and export the edge artifact (int8 TorchScript) with its size and its
    accuracy against the float model, logged to MLflow."""
    rec = load_campaign(store, cid)
    tracking = rec.get("tracking")
    final_key = campaign_key(cid, "registered_model.json")
    if not tracking or not store.exists(final_key):
        return {"round": rnd, "deployed": False, "reason": "no registered model"}
    key = campaign_key(cid, "deploy.json")
    if (cached := _cached(store, key)) is not None:
        return cached
    from fl_core import tracking as tr
    from fl_core.export import export_edge

    x_test, y_test = _table(Path(rec["test"]["file"]))
    out = tr.promote_if_better(tracking, store.get_json(final_key), x_test=x_test, y_test=y_test)
    with tempfile.TemporaryDirectory() as tmp:
        edge = export_edge(
            _spec(rec), load_model(store, cid, rnd), Path(tmp), x_eval=x_test, y_eval=y_test
        )
        for path in sorted(Path(tmp).iterdir()):
            store.put_bytes(campaign_key(cid, "edge", path.name), path.read_bytes())
            tr.log_artifact(tracking, path, "edge")
    edge_info = {
        k: edge[k]
        for k in ("kind", "size_bytes", "float_size_bytes", "accuracy_int8", "accuracy_float")
    }
    tr.log_metrics(
        tracking,
        {f"edge_{k}": float(v) for k, v in edge_info.items() if isinstance(v, int | float)},
    )
    out["edge"] = edge_info
    store.put_json(key, out)
    tr.end_run(tracking)
    return out
