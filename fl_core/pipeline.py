"""The round's public surface, kept for callers of the earlier single-module pipeline.

The steps live in :mod:`fl_core.rounds` (one module per step), the store layout in
:mod:`fl_core.rounds.layout`, the records in :mod:`fl_core.rounds.records`. This module only
re-exports them; it holds no logic.
"""

from __future__ import annotations

from typing import Any

from fl_core.rounds.aggregate import aggregate, root_rows
from fl_core.rounds.campaign import new_campaign_id, start_campaign
from fl_core.rounds.collect import collect
from fl_core.rounds.deploy import deploy
from fl_core.rounds.dispatch import client_batches, dispatch
from fl_core.rounds.evaluate import evaluate
from fl_core.rounds.layout import campaign_key, model_key, round_key, update_key
from fl_core.rounds.next_round import next_round
from fl_core.rounds.privatize import privatize
from fl_core.rounds.register import bytes_per_client_csv, register_model, register_round
from fl_core.rounds.select import select_clients
from fl_core.rounds.server_update import server_update
from fl_core.rounds.state import (
    campaign_config,
    history,
    load_campaign,
    load_model,
    privacy_budget,
)
from fl_core.rounds.train import train_clients
from fl_core.rounds.validate import validate_updates
from fl_core.store import ArtifactStore


def register(store: ArtifactStore, cid: str, rnd: int, *, final: bool = False) -> dict[str, Any]:
    """``register_round``, then ``register_model`` when ``final``."""
    out = register_round(store, cid, rnd)
    if final and out.get("logged"):
        out = register_model(store, cid, rnd)
    return out


__all__ = [
    "aggregate",
    "bytes_per_client_csv",
    "campaign_config",
    "campaign_key",
    "client_batches",
    "collect",
    "deploy",
    "dispatch",
    "evaluate",
    "history",
    "load_campaign",
    "load_model",
    "model_key",
    "new_campaign_id",
    "next_round",
    "privacy_budget",
    "privatize",
    "register",
    "register_model",
    "register_round",
    "root_rows",
    "round_key",
    "select_clients",
    "server_update",
    "start_campaign",
    "train_clients",
    "update_key",
    "validate_updates",
]
