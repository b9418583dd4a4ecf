"""A small streaming aggregator interface.

An aggregator sees updates one at a time (``add``) and produces the aggregate at the end
(``result``), so a FedAvg round never holds every client's update in memory at once. Rules
that need the whole cohort (median, Krum, ...) subclass it and buffer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np


class Aggregator(ABC):
    """Consumes weighted updates of one dimension and yields their aggregate.

    Class attributes describe a rule to the round steps, so they never special-case a rule
    by name: ``config_arguments`` maps the rule's keyword arguments to ``server.*`` config
    fields; ``needs_root_update`` asks for the server's root update (FLTrust);
    ``supports_sparse`` says :meth:`add_sparse` exists; ``requires_full_cohort`` that the
    rule buffers the whole cohort.
    """

    config_arguments: ClassVar[dict[str, str]] = {}
    needs_root_update: ClassVar[bool] = False
    supports_sparse: ClassVar[bool] = False
    requires_full_cohort: ClassVar[bool] = False

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

    def add_sparse(self, indices: np.ndarray, values: np.ndarray, *, weight: float) -> None:
        """Add a sparse update (only rules with ``supports_sparse``)."""
        raise NotImplementedError(f"{type(self).__name__} does not take sparse updates")

    def outlier_scores(self) -> np.ndarray:
        """Per added update, how far it lies from the aggregate (about 1 typical); empty for
        rules that do not score (feeds :mod:`fl_core.reputation`)."""
        return np.empty(0, dtype=np.float64)

    def state_dict(self) -> dict[str, np.ndarray]:
        """State carried across rounds (none for a memoryless rule)."""
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:  # noqa: B027
        """Restore :meth:`state_dict` output (nothing to restore for a memoryless rule)."""
