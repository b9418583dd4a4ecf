"""Opening a campaign: the campaign record and the initial global model (version 0).

Not a round step: ``start_campaign`` runs once, before round 1 (the DAG's ``open_round``).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from fl_core import simulation
from fl_core.config import Config, resolve_privacy
from fl_core.data.io import file_sha256, read_json
from fl_core.models import ModelSpec, init_vector
from fl_core.rounds import layout as L
from fl_core.rounds.layout import CAMPAIGN_ID_PATTERN, check_campaign_id
from fl_core.rounds.state import encode_model
from fl_core.seeding import derive_seed

__all__ = ["CAMPAIGN_ID_PATTERN", "check_campaign_id", "new_campaign_id", "start_campaign"]
from fl_core.store import ArtifactStore

logger = logging.getLogger(__name__)


def new_campaign_id(name: str) -> str:
    """A fresh, sortable campaign id (an identifier, not a source of randomness)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "campaign"
    return f"{stem[:70]}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


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
    cid = check_campaign_id(campaign_id or new_campaign_id(cfg.campaign.name))
    if store.exists(L.campaign_record_key(cid)):
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
    vector, lay = init_vector(spec, seed=derive_seed(cfg.campaign.seed, "init"))
    if warm_start is not None:
        if warm_start.shape != vector.shape:
            raise ValueError("warm-start model does not match the configured model's layout")
        vector = warm_start.astype(np.float32)
    privacy = None
    if cfg.privacy.level != "off" or cfg.privacy.client_dp_sgd:
        privacy = resolve_privacy(cfg, num_clients=len(manifest["clients"])).to_dict()
    ids = [c["client_id"] for c in manifest["clients"]]
    test_file = data_dir / "prepared" / "test.parquet"
    rec = {
        "campaign_id": cid,
        "config": cfg.to_dict(),
        "data_dir": str(data_dir),
        "dataset": meta.get("dataset"),
        "model_spec": spec.to_json(),
        "layout": lay.to_json(),
        "clients": [
            {k: c[k] for k in ("client_id", "file", "num_examples", "sha256")}
            for c in manifest["clients"]
        ],
        "test": {"file": str(test_file), "sha256": file_sha256(test_file)},
        "tracking": tracking,
        "warm_start": warm_start is not None,
        "validation_status": validation_status,
        "privacy": privacy,
        "profiles": simulation.campaign_profiles(cfg, ids) if cfg.simulation.enabled else None,
        "malicious": simulation.malicious_clients(cfg, ids),
        # Server-private: DP noise must not be predictable from params.yaml's seed.
        "noise_seed": secrets.randbits(62),
    }
    store.put_bytes(L.model_key(cid, 0), encode_model(cid, 0, lay, vector))
    # Written once: a concurrent start of the same id keeps the first record.
    put_once = getattr(store, "put_bytes_if_absent", None)
    if put_once is not None:
        import json

        put_once(
            L.campaign_record_key(cid),
            (json.dumps(rec, sort_keys=True, indent=1) + "\n").encode(),
        )
    else:
        store.put_json(L.campaign_record_key(cid), rec)
    logger.info(
        "campaign %s: %s on %s, %d clients, %d params",
        cid,
        spec.name,
        rec["dataset"],
        len(rec["clients"]),
        lay.num_params,
    )
    return cid
