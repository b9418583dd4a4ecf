"""Norm bounding (Sun et al., 2019) and centered clipping (Karimireddy et al., ICML 2021)."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from fl_core.aggregation.base import Aggregator
from fl_core.aggregation.buffered import BufferedAggregator
from fl_core.aggregation.math import Updates, accumulate, l2_norm, relative_scores
from fl_core.aggregation.robust_math import centered_clipping, clip_factors


def _positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class NormBounding(Aggregator):
    """Weighted FedAvg of updates each scaled down to an L2 norm of at most ``max_norm``.

    Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?", 2019
    (arXiv:1911.07963). Streams: holds one float64 running sum whatever the cohort size.

    Parameters
    ----------
    max_norm
        The norm bound ``M``: an update ``u`` counts as ``u * min(1, M / |u|)``.
    """

    requires_full_cohort: ClassVar[bool] = False
    config_arguments: ClassVar[dict[str, str]] = {"max_norm": "clip_norm"}

    def __init__(self, dim: int, *, max_norm: float) -> None:
        super().__init__(dim)
        self.max_norm = _positive(max_norm, "max_norm")
        self._sum = np.zeros(dim, dtype=np.float64)
        self.norms: list[float] = []

    def _add(self, update: np.ndarray, weight: float) -> None:
        norm = l2_norm(update)
        factor = float(clip_factors(np.array([norm]), self.max_norm)[0])
        accumulate(self._sum, update, weight * factor)
        self.norms.append(norm)

    def result(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no update was aggregated")
        return (self._sum / self.total_weight).astype(np.float32)

    def outlier_scores(self) -> np.ndarray:
        """Per added update, its norm over the median norm."""
        return relative_scores(np.asarray(self.norms))


class CenteredClipping(BufferedAggregator):
    """``v <- v + mean_i clip_tau(x_i - v)``, ``iterations`` times, from the previous round's
    aggregate ``v``.

    Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization",
    ICML 2021. The starting center is, in order: :meth:`set_reference`, the ``center``
    argument, the ``"center"`` of :meth:`load_state_dict`, else zero. After :meth:`result`
    the center is the new aggregate, so :meth:`state_dict` carries the history to the next
    round.

    Parameters
    ----------
    tau
        Clipping radius around the center.
    iterations
        Clipping iterations ``L`` (the paper finds 1 enough when the center is good).
    weighted
        Weight the clipped mean by ``weight`` instead of the paper's plain mean.
    center
        Initial center (e.g. the previous aggregate).
    """

    config_arguments: ClassVar[dict[str, str]] = {"tau": "clip_norm"}

    def __init__(
        self,
        dim: int,
        *,
        tau: float,
        iterations: int = 1,
        weighted: bool = False,
        center: np.ndarray | None = None,
        capacity: int | None = None,
    ) -> None:
        super().__init__(dim, capacity=capacity)
        self.tau = _positive(tau, "tau")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
        self.iterations = iterations
        self.weighted = bool(weighted)
        self.center: np.ndarray | None = None
        if center is not None:
            self.set_reference(center)

    def set_reference(self, center: np.ndarray) -> None:
        """Start clipping around ``center`` (the previous round's aggregate)."""
        c = np.asarray(center)
        if c.shape != (self.dim,):
            raise ValueError(f"center has shape {c.shape}, expected ({self.dim},)")
        if not np.all(np.isfinite(c)):
            raise ValueError("center must be finite")
        self.center = c.astype(np.float32)

    def _aggregate(self, updates: Updates, weights: np.ndarray) -> np.ndarray:
        start = np.zeros(self.dim, dtype=np.float32) if self.center is None else self.center
        out = centered_clipping(
            updates,
            center=start,
            tau=self.tau,
            iterations=self.iterations,
            weights=weights if self.weighted else None,
        )
        self.center = out
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        return {} if self.center is None else {"center": self.center.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if "center" in state:
            self.set_reference(state["center"])
