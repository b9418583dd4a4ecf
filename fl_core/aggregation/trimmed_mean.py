"""Coordinate-wise trimmed mean (Yin et al., ICML 2018)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fl_core.aggregation.buffered import BufferedAggregator
from fl_core.aggregation.math import Updates
from fl_core.aggregation.robust_math import trimmed_mean


class TrimmedMean(BufferedAggregator):
    """Per coordinate, drop the ``floor(beta * n)`` largest and smallest values and average
    the rest; ignores the weights.

    Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates", ICML 2018. Tolerates ``f <= floor(beta * n)`` Byzantine updates.

    Parameters
    ----------
    beta
        Fraction trimmed from each end, ``0 <= beta < 0.5``.
    """

    config_arguments: ClassVar[dict[str, str]] = {"beta": "trim_fraction"}

    def __init__(self, dim: int, *, beta: float = 0.1, capacity: int | None = None) -> None:
        super().__init__(dim, capacity=capacity)
        if not 0 <= beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {beta}")
        self.beta = float(beta)

    def _aggregate(self, updates: Updates, weights: np.ndarray) -> np.ndarray:
        return trimmed_mean(updates, beta=self.beta)
