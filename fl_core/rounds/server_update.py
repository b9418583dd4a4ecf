"""Step ``server_update``: the server optimizer step, global v(r-1) + step(update) -> v(r).

Split from ``aggregate`` so that DP noise is added to the averaged update *before* a stateful
optimizer (FedAvgM, FedAdam) sees it (DP-FedAvg order, McMahan et al., ICLR 2018). A
non-finite model is refused: the round fails with a reason instead of publishing it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fl_core.aggregation import ServerOptimizer
from fl_core.config import Config
from fl_core.models import vector_sha256
from fl_core.rounds import layout as L
from fl_core.rounds import records as R
from fl_core.rounds import state
from fl_core.store import ArtifactStore

STEP = "server_update"


class NonFiniteModel(RuntimeError):
    """The server step would publish a model with NaN or infinite parameters."""


def server_optimizer(cfg: Config) -> ServerOptimizer:
    s = cfg.server
    return ServerOptimizer(
        name=s.optimizer, lr=s.lr, momentum=s.momentum, beta1=s.beta1, beta2=s.beta2, tau=s.tau
    )


def server_update(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Write global model version ``rnd`` and the optimizer state (idempotent)."""
    if store.exists(L.model_key(cid, rnd)) and (
        done := R.maybe(store, R.ServerUpdateInfo, cid, rnd)
    ):
        return done.to_dict()
    rec = state.load_campaign(store, cid)
    cfg = state.campaign_config(rec)
    R.read(store, R.PrivacyInfo, cid, rnd, step=STEP)
    update = store.get_arrays(L.round_key(cid, rnd, L.PRIVATIZED))["update"]
    if not np.all(np.isfinite(update)):
        raise NonFiniteModel(f"round {rnd}: the released update has non-finite values")
    opt = server_optimizer(cfg)
    prev_state = L.round_key(cid, rnd - 1, L.SERVER_OPT)
    if rnd > 1 and store.exists(prev_state):
        opt.load_state_dict(store.get_arrays(prev_state))
    new = opt.step(state.load_model(store, cid, rnd - 1), update)
    if not np.all(np.isfinite(new)):
        raise NonFiniteModel(f"round {rnd}: the server step gives a non-finite model; refused")
    store.put_arrays(L.round_key(cid, rnd, L.SERVER_OPT), opt.state_dict())
    store.put_bytes(
        L.model_key(cid, rnd), state.encode_model(cid, rnd, state.model_layout(rec), new)
    )
    record = R.ServerUpdateInfo(
        round=rnd,
        model_version=rnd,
        model_key=L.model_key(cid, rnd),
        model_sha256=vector_sha256(new),
    )
    return R.write(store, record, cid, rnd)
