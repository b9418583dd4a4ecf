"""A small streaming aggregator interface.

An aggregator sees updates one at a time (``add``) and produces the aggregate at the end
(``result``), so a FedAvg round never holds every client's update in memory at once. Rules
that need the whole cohort (median, Krum, ...) subclass it and buffer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Aggregator(ABC):
    """Consumes weighted updates of one dimension and yields their aggregate."""

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.count = 0
        self.total_weight = 0.0

    def add(self, update: np.ndarray, *, weight: float) -> None:
        """Add one client's update with its aggregation weight (e.g. num_examples)."""
        if update.shape != (self.dim,):
            raise ValueError(f"update has shape {update.shape}, expected ({self.dim},)")
        if not np.isfinite(weight) or weight <= 0:
            raise ValueError(f"weight must be a positive finite number, got {weight}")
        self._add(update, weight)
        self.count += 1
        self.total_weight += weight

    @abstractmethod
    def _add(self, update: np.ndarray, weight: float) -> None: ...

    @abstractmethod
    def result(self) -> np.ndarray:
        """The aggregate update (float32); raises ``ValueError`` if nothing was added."""
