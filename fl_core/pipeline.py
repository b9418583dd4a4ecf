"""One function per federated round step (DESIGN.md, "A federated round").

Every step takes the artifact store, the campaign id and the round, reads what it needs from
the store and writes its result back under ``campaigns/<id>/...``; it returns a small
JSON-able dict (keys, counts, metrics) fit for Airflow's XCom. The in-process engine
(:mod:`fl_core.engine`) and the Airflow DAGs call the same functions.

Idempotence: a step that already wrote its output returns it unchanged instead of redoing
the work, and each step reads only the previous round's state, so a retry, a crash or a
manual clear never counts an update twice. Randomness comes from (seed, round, step).

Round ``r`` (1-based) starts from global model version ``r - 1`` and produces version ``r``.
The step order is select_clients -> dispatch -> train_clients (simulated clients, mappable
over batches) -> collect -> validate_updates -> aggregate -> privatize -> server_update ->
evaluate -> register -> deploy -> next_round. ``server_update`` (the server optimizer step)
is split from ``aggregate`` so that differential-privacy noise is added to the averaged
update *before* a stateful optimizer sees it (DP-FedAvg order, McMahan et al., ICLR 2018).
"""

from __future__ import annotations

import functools
import logging
import math
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from fl_core import wire
from fl_core.aggregation import ServerOptimizer, create_aggregator
from fl_core.aggregation.math import l2_norm
from fl_core.client import ClientResult, TrainSettings, local_train
from fl_core.client import evaluate as eval_model
from fl_core.config import Config, from_dict
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
    ``{"uri": ..., "experiment": ..., "run_id": ...}`` or None for no MLflow.
    """
    cid = campaign_id or new_campaign_id(cfg.campaign.name)
    if store.exists(campaign_key(cid, "campaign.json")):
        return cid
    data_dir = Path(data_dir).resolve()
    meta = read_json(data_dir / "prepared" / "meta.json")
    manifest = read_json(data_dir / "clients" / "manifest.json")
    spec = ModelSpec(
        name=cfg.model.name,
        input_shape=tuple(meta["input_shape"]),
        num_classes=int(meta["num_classes"]),
        hidden=cfg.model.hidden,
        channels=cfg.model.channels,
    )
    vector, layout = init_vector(spec, seed=derive_seed(cfg.campaign.seed, "init"))
    if warm_start is not None:
        if warm_start.shape != vector.shape:
            raise ValueError("warm-start model does not match the configured model's layout")
        vector = warm_start.astype(np.float32)
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
    """Pick this round's cohort, uniformly at random without replacement (seeded)."""
    key = round_key(cid, rnd, "cohort.json")
    if store.exists(key):
        out: dict[str, Any] = store.get_json(key)
        return out
    rec = load_campaign(store, cid)
    cfg = campaign_config(rec)
    ids = [c["client_id"] for c in rec["clients"]]
    if cfg.campaign.fraction is not None:
        k = max(1, round(cfg.campaign.fraction * len(ids)))
    else:
        k = min(cfg.campaign.clients_per_round, len(ids))
    chosen = rng(cfg.campaign.seed, rnd, "select").choice(len(ids), size=k, replace=False)
    cohort = sorted(ids[i] for i in chosen)
    out = {"round": rnd, "cohort": cohort, "num_selected": len(cohort), "strategy": "random"}
    store.put_json(key, out)
    logger.info("round %d: selected %d of %d clients", rnd, len(cohort), len(ids))
    return out


def dispatch(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Publish the round manifest: base model version and each client's task."""
    key = round_key(cid, rnd, "manifest.json")
    if store.exists(key):
        out: dict[str, Any] = store.get_json(key)
        return out
    rec = load_campaign(store, cid)
    cfg = campaign_config(rec)
    cohort = select_clients(store, cid, rnd)["cohort"]
    model_bytes = len(store.get_bytes(model_key(cid, rnd - 1)))
    c = cfg.client
    tasks = {
        client: {
            "local_epochs": c.local_epochs,
            "batch_size": c.batch_size,
            "lr": c.lr,
            "momentum": c.momentum,
            "weight_decay": c.weight_decay,
            "prox_mu": c.prox_mu,
            "codec": "dense_fp32",
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
        "bytes_down": model_bytes * len(tasks),
    }
    store.put_json(key, out)
    return out


def client_batches(store: ArtifactStore, cid: str, rnd: int, *, batch_size: int) -> list[list[str]]:
    """The cohort cut into batches, one per mapped training task."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cohort = sorted(dispatch(store, cid, rnd)["tasks"])
    return [cohort[i : i + batch_size] for i in range(0, len(cohort), batch_size)]


def update_key(cid: str, rnd: int, client: str) -> str:
    return round_key(cid, rnd, "updates", f"{client}.flw")


def train_clients(store: ArtifactStore, cid: str, rnd: int, clients: list[str]) -> dict[str, Any]:
    """Simulated clients: each trains on its own partition and uploads an encoded update.

    A client whose update is already in the store is skipped (idempotent retry).
    """
    rec = load_campaign(store, cid)
    manifest = dispatch(store, cid, rnd)
    spec, layout = _spec(rec), _layout(rec)
    files = _client_files(rec)
    global_vector = load_model(store, cid, manifest["base_version"])
    trained, skipped, bytes_up = 0, 0, 0
    for client in clients:
        if client not in manifest["tasks"]:
            raise ValueError(f"client {client!r} has no task in round {rnd}")
        key = update_key(cid, rnd, client)
        if store.exists(key):
            skipped += 1
            continue
        task = manifest["tasks"][client]
        x, y = _table(files[client])
        result = local_train(
            spec,
            global_vector,
            x,
            y,
            settings=TrainSettings(
                local_epochs=task["local_epochs"],
                batch_size=task["batch_size"],
                lr=task["lr"],
                momentum=task["momentum"],
                weight_decay=task["weight_decay"],
                prox_mu=task["prox_mu"],
            ),
            seed=task["seed"],
        )
        data = encode_update(
            cid, rnd, manifest["base_version"], client, layout, result, task["codec"]
        )
        store.put_bytes(key, data)
        trained += 1
        bytes_up += len(data)
    return {"round": rnd, "trained": trained, "skipped": skipped, "bytes_up": bytes_up}


def encode_update(
    cid: str,
    rnd: int,
    base_version: int,
    client: str,
    layout: Layout,
    result: ClientResult,
    codec: str,
) -> bytes:
    header = wire.Header(
        kind="update",
        campaign=cid,
        round=rnd,
        base_version=base_version,
        client=client,
        codec=codec,
        layout=layout,
        num_examples=result.num_examples,
        metrics={"train_loss": result.train_loss, "duration_s": result.duration_s},
    )
    return wire.encode(header, result.delta)


def collect(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Close the round's collection: which cohort members delivered, who is missing."""
    key = round_key(cid, rnd, "collected.json")
    if store.exists(key):
        out: dict[str, Any] = store.get_json(key)
        return out
    cohort = dispatch(store, cid, rnd)["tasks"]
    received = [c for c in sorted(cohort) if store.exists(update_key(cid, rnd, c))]
    missing = [c for c in sorted(cohort) if c not in received]
    if not received:
        raise RuntimeError(f"round {rnd}: no update arrived from a cohort of {len(cohort)}")
    out = {
        "round": rnd,
        "received": received,
        "missing": missing,
        "num_received": len(received),
        "num_missing": len(missing),
    }
    store.put_json(key, out)
    if missing:
        logger.warning("round %d: %d stragglers/dropouts: %s", rnd, len(missing), missing)
    return out


def validate_updates(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Check every received update; reject with a reason, accept the rest."""
    key = round_key(cid, rnd, "validation.json")
    if store.exists(key):
        out: dict[str, Any] = store.get_json(key)
        return out
    rec = load_campaign(store, cid)
    cfg = campaign_config(rec)
    layout = _layout(rec)
    base_version = dispatch(store, cid, rnd)["base_version"]
    accepted: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    bytes_up = 0
    for client in collect(store, cid, rnd)["received"]:
        data = store.get_bytes(update_key(cid, rnd, client))
        bytes_up += len(data)
        reason, info = _check_update(
            data,
            cid=cid,
            rnd=rnd,
            client=client,
            base_version=base_version,
            layout=layout,
            max_norm=cfg.server.max_update_norm,
        )
        if reason is None:
            accepted.append({"client": client, **info})
        else:
            rejected.append({"client": client, "reason": reason})
            logger.warning("round %d: rejected update from %s: %s", rnd, client, reason)
    out = {
        "round": rnd,
        "accepted": accepted,
        "rejected": rejected,
        "num_accepted": len(accepted),
        "num_rejected": len(rejected),
        "bytes_up": bytes_up,
    }
    store.put_json(key, out)
    return out


def _check_update(
    data: bytes,
    *,
    cid: str,
    rnd: int,
    client: str,
    base_version: int,
    layout: Layout,
    max_norm: float,
) -> tuple[str | None, dict[str, Any]]:
    try:
        header, vector = wire.decode(data, expected_layout=layout)
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
    }


def aggregate(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Weighted FedAvg over accepted updates, streaming (one decoded update at a time)."""
    key = round_key(cid, rnd, "aggregate.npz")
    info_key = round_key(cid, rnd, "aggregate.json")
    if store.exists(key) and store.exists(info_key):
        out: dict[str, Any] = store.get_json(info_key)
        return out
    rec = load_campaign(store, cid)
    cfg = campaign_config(rec)
    layout = _layout(rec)
    accepted = validate_updates(store, cid, rnd)["accepted"]
    if not accepted:
        raise RuntimeError(f"round {rnd}: every update was rejected; nothing to aggregate")
    agg = create_aggregator(cfg.server.strategy, dim=layout.num_params)
    for item in accepted:
        _, vector = wire.decode(store.get_bytes(update_key(cid, rnd, item["client"])))
        agg.add(vector, weight=float(item["num_examples"]))
    mean = agg.result()
    store.put_arrays(key, {"update": mean})
    out = {
        "round": rnd,
        "num_aggregated": agg.count,
        "total_examples": int(agg.total_weight),
        "strategy": cfg.server.strategy,
        "update_norm": l2_norm(mean),
    }
    store.put_json(info_key, out)
    return out


def privatize(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Differential privacy on the aggregate (noise + accountant); pass-through when off."""
    key = round_key(cid, rnd, "privatized.npz")
    info_key = round_key(cid, rnd, "privacy.json")
    if store.exists(key) and store.exists(info_key):
        out: dict[str, Any] = store.get_json(info_key)
        return out
    aggregate(store, cid, rnd)
    update = store.get_arrays(round_key(cid, rnd, "aggregate.npz"))["update"]
    store.put_arrays(key, {"update": update})
    out = {"round": rnd, "enabled": False, "epsilon": None, "delta": None}
    store.put_json(info_key, out)
    return out


def _server_optimizer(cfg: Config) -> ServerOptimizer:
    s = cfg.server
    return ServerOptimizer(
        name=s.optimizer, lr=s.lr, momentum=s.momentum, beta1=s.beta1, beta2=s.beta2, tau=s.tau
    )


def server_update(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Server optimizer step: global v(r-1) + step(update) -> global v(r)."""
    info_key = round_key(cid, rnd, "server_update.json")
    if store.exists(info_key) and store.exists(model_key(cid, rnd)):
        out: dict[str, Any] = store.get_json(info_key)
        return out
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
    """Global test metrics and the spread of accuracy over every client's own data."""
    key = round_key(cid, rnd, "metrics.json")
    if store.exists(key):
        out: dict[str, Any] = store.get_json(key)
        return out
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
        ),
        "num_accepted": validation["num_accepted"],
        "num_rejected": validation["num_rejected"],
        "bytes_up": validation["bytes_up"],
        "bytes_down": dispatch(store, cid, rnd)["bytes_down"],
    }
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
    """Decide whether the campaign goes on after round ``rnd``, and why it stops if not."""
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
    status = {
        "campaign_id": cid,
        "last_round": rnd,
        "continue": reason is None,
        "reason": reason,
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
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
        if store.exists(final_key):
            out.update(store.get_json(final_key))
            return out
        info = tr.register_campaign_model(
            tracking,
            campaign=rec,
            vector=load_model(store, cid, rnd),
            history=history(store, cid, rnd),
            model_bytes=store.get_bytes(model_key(cid, rnd)),
        )
        store.put_json(final_key, info)
        out.update(info)
    return out


def deploy(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Promote the registered version to ``champion`` only if it beats the current champion
    on the same evaluation data (this campaign's test set); otherwise it stays ``challenger``."""
    rec = load_campaign(store, cid)
    tracking = rec.get("tracking")
    final_key = campaign_key(cid, "registered_model.json")
    if not tracking or not store.exists(final_key):
        return {"round": rnd, "deployed": False, "reason": "no registered model"}
    key = campaign_key(cid, "deploy.json")
    if store.exists(key):
        out: dict[str, Any] = store.get_json(key)
        return out
    from fl_core import tracking as tr

    x_test, y_test = _table(Path(rec["test"]["file"]))
    out = tr.promote_if_better(tracking, store.get_json(final_key), x_test=x_test, y_test=y_test)
    store.put_json(key, out)
    tr.end_run(tracking)
    return out
