"""Weighted FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017), streaming over updates."""

from __future__ import annotations

import numpy as np

from fl_core.aggregation.base import Aggregator


class FedAvg(Aggregator):
    """Mean of updates weighted by ``weight`` (num_examples), accumulated in float64.

    Holds one running sum of size ``dim``, whatever the cohort size.
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self._sum = np.zeros(dim, dtype=np.float64)

    def _add(self, update: np.ndarray, weight: float) -> None:
        self._sum += weight * np.asarray(update, dtype=np.float64)

    def result(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no update was aggregated")
        return (self._sum / self.total_weight).astype(np.float32)
