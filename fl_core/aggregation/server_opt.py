"""Server optimizers applied to the aggregated update (the pseudo-gradient).

``sgd`` with ``momentum=0`` and ``lr=1`` is plain FedAvg; with momentum it is FedAvgM
(Hsu et al., "Measuring the Effects of Non-Identical Data Distribution", 2019); ``adam`` is
FedAdam (Reddi et al., "Adaptive Federated Optimization", ICLR 2021). State round-trips
through ``state_dict`` / ``load_state_dict`` so a round can resume after a crash.
"""

from __future__ import annotations

import numpy as np


class ServerOptimizer:
    """Applies ``global + step(aggregate)``; stateful (momentum / Adam moments)."""

    def __init__(
        self,
        *,
        name: str = "sgd",
        lr: float = 1.0,
        momentum: float = 0.0,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        if name not in ("sgd", "adam"):
            raise ValueError(f"name: {name!r} is not allowed; allowed values: 'sgd', 'adam'")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {beta1}, {beta2}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.name, self.lr, self.momentum = name, lr, momentum
        self.beta1, self.beta2, self.tau = beta1, beta2, tau
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def step(self, global_vector: np.ndarray, aggregate: np.ndarray) -> np.ndarray:
        """Return the new global vector (float32)."""
        g = np.asarray(aggregate, dtype=np.float64)
        x = np.asarray(global_vector, dtype=np.float64)
        if self.name == "sgd":
            if self.momentum > 0:
                self.m = g if self.m is None else self.momentum * self.m + g
                g = self.m
            return (x + self.lr * g).astype(np.float32)
        self.m = (
            (1 - self.beta1) * g if self.m is None else self.beta1 * self.m + (1 - self.beta1) * g
        )
        sq = g * g
        self.v = (
            (1 - self.beta2) * sq if self.v is None else self.beta2 * self.v + (1 - self.beta2) * sq
        )
        return (x + self.lr * self.m / (np.sqrt(self.v) + self.tau)).astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {}
        if self.m is not None:
            out["m"] = self.m
        if self.v is not None:
            out["v"] = self.v
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.m = np.asarray(state["m"], dtype=np.float64) if "m" in state else None
        self.v = np.asarray(state["v"], dtype=np.float64) if "v" in state else None
