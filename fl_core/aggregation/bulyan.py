"""Bulyan (El Mhamdi et al., ICML 2018)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fl_core.aggregation.buffered import BufferedAggregator
from fl_core.aggregation.math import Updates, select_rows, updates_shape
from fl_core.aggregation.robust_math import (
    bulyan_select,
    check_bulyan_cohort,
    check_num_byzantine,
    content_ranks,
    mean_around_median,
    pairwise_sq_distances,
)


class Bulyan(BufferedAggregator):
    """Recursive Krum picks ``theta = n - 2f`` updates; each coordinate is then the mean of
    the ``theta - 2f`` picked values closest to their median. Ignores the weights.

    El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
    Byzantium", ICML 2018. Needs ``n >= 4f + 3`` updates at :meth:`result`; ``selected``
    holds the picked indices (in the order added) afterwards.

    Parameters
    ----------
    num_byzantine
        ``f``, the number of Byzantine updates to tolerate.
    """

    config_arguments: ClassVar[dict[str, str]] = {"num_byzantine": "num_byzantine"}

    def __init__(self, dim: int, *, num_byzantine: int, capacity: int | None = None) -> None:
        super().__init__(dim, capacity=capacity)
        check_num_byzantine(num_byzantine)
        self.num_byzantine = int(num_byzantine)
        self.selected: np.ndarray | None = None

    def _aggregate(self, updates: Updates, weights: np.ndarray) -> np.ndarray:
        n, _ = updates_shape(updates)
        check_bulyan_cohort(n, self.num_byzantine)
        f = self.num_byzantine
        self.selected = bulyan_select(
            pairwise_sq_distances(updates), num_byzantine=f, tiebreak=content_ranks(updates)
        )
        return mean_around_median(
            select_rows(updates, self.selected), num_kept=len(self.selected) - 2 * f
        )
