"""Local training on one client (CPU), returning an update, never raw data.

A client receives the global parameter vector, trains for a few local epochs on its own
partition (optionally with the FedProx proximal term, Li et al., MLSys 2020) and returns the
*update* ``delta = local - global`` with ``num_examples``, the mean training loss and the
wall-clock duration.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from fl_core.models import ModelSpec, build_model, get_flat, set_flat

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """Local optimisation hyperparameters sent with each task."""

    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    prox_mu: float = 0.0


@dataclass(frozen=True)
class ClientResult:
    """What a client reports after local training."""

    delta: np.ndarray
    num_examples: int
    train_loss: float
    duration_s: float


def local_train(
    spec: ModelSpec,
    global_vector: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    settings: TrainSettings,
    seed: int,
) -> ClientResult:
    """Train locally from ``global_vector`` and return the update.

    Deterministic for a given ``seed`` (batch order and any randomness in the model).

    Parameters
    ----------
    spec, global_vector
        The model to rebuild and the parameters to start from.
    x, y
        The client's private examples (float32 features, int64 labels).
    settings
        Local epochs, batch size, SGD lr/momentum/weight decay, FedProx ``prox_mu``.
    seed
        Derived by the caller from (campaign seed, round, client).
    """
    from fl_core.models import single_thread

    with single_thread():
        return _local_train(spec, global_vector, x, y, settings=settings, seed=seed)


def _local_train(
    spec: ModelSpec,
    global_vector: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    settings: TrainSettings,
    seed: int,
) -> ClientResult:
    import torch
    import torch.nn.functional as F

    if len(x) == 0:
        raise ValueError("client has no examples")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    model = build_model(spec)
    set_flat(model, global_vector)
    model.train()
    anchor = [p.detach().clone() for p in model.parameters()] if settings.prox_mu > 0 else []
    opt = torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    xt = torch.tensor(np.asarray(x, dtype=np.float32))
    yt = torch.tensor(np.asarray(y, dtype=np.int64))
    n = len(xt)
    total_loss = 0.0
    total_seen = 0
    for _ in range(settings.local_epochs):
        order = torch.randperm(n, generator=generator)
        for begin in range(0, n, settings.batch_size):
            idx = order[begin : begin + settings.batch_size]
            xb, yb = xt[idx], yt[idx]
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            total_loss += float(loss.detach()) * len(idx)
            total_seen += len(idx)
            if settings.prox_mu > 0:
                prox = sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
                loss = loss + 0.5 * settings.prox_mu * prox
            loss.backward()
            opt.step()
    delta = get_flat(model) - np.asarray(global_vector, dtype=np.float32)
    return ClientResult(
        delta=delta.astype(np.float32, copy=False),
        num_examples=n,
        train_loss=total_loss / max(total_seen, 1),
        duration_s=time.perf_counter() - start,
    )


def evaluate(spec: ModelSpec, vector: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Cross-entropy loss and accuracy of (spec, vector) on (x, y)."""
    import torch
    import torch.nn.functional as F

    from fl_core.models import predict_logits

    if len(x) == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "num_examples": 0.0}
    logits = predict_logits(spec, vector, x)
    lt = torch.from_numpy(logits)
    yt = torch.tensor(np.asarray(y, dtype=np.int64))
    loss = float(F.cross_entropy(lt, yt))
    acc = float((lt.argmax(1) == yt).float().mean())
    return {"loss": loss, "accuracy": acc, "num_examples": float(len(y))}


def train_centralized(
    spec: ModelSpec,
    x: np.ndarray,
    y: np.ndarray,
    *,
    settings: TrainSettings,
    epochs: int,
    seed: int,
) -> np.ndarray:
    """The centralized baseline: the same model trained on the pooled data; returns its vector."""
    from fl_core.models import init_vector

    vector, _ = init_vector(spec, seed=seed)
    pooled = TrainSettings(
        local_epochs=epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    result = local_train(spec, vector, x, y, settings=pooled, seed=seed)
    return vector + result.delta
