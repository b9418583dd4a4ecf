"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fl_core.aggregation.buffered import BufferedAggregator
from fl_core.aggregation.math import Updates, select_rows, updates_shape, weighted_average
from fl_core.aggregation.robust_math import (
    check_krum_cohort,
    check_num_byzantine,
    krum_select,
    pairwise_sq_distances,
)


class Krum(BufferedAggregator):
    """Picks the update whose ``n - f - 2`` nearest neighbours are closest (lowest score).

    Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent", NeurIPS 2017. Needs ``n >= 2f + 3`` updates at
    :meth:`result`; ``selected`` holds the chosen indices (in the order added) afterwards.

    Parameters
    ----------
    num_byzantine
        ``f``, the number of Byzantine updates to tolerate.
    """

    config_arguments: ClassVar[dict[str, str]] = {"num_byzantine": "num_byzantine"}

    rule = "krum"

    def __init__(self, dim: int, *, num_byzantine: int, capacity: int | None = None) -> None:
        super().__init__(dim, capacity=capacity)
        check_num_byzantine(num_byzantine)
        self.num_byzantine = int(num_byzantine)
        self.selected: np.ndarray | None = None

    def _num_selected(self, n: int) -> int:
        return 1

    def _aggregate(self, updates: Updates, weights: np.ndarray) -> np.ndarray:
        n, _ = updates_shape(updates)
        check_krum_cohort(n, self.num_byzantine, self.rule)
        self.selected = krum_select(
            pairwise_sq_distances(updates),
            num_byzantine=self.num_byzantine,
            num_selected=self._num_selected(n),
        )
        return self._combine(updates, weights, self.selected)

    def _combine(self, updates: Updates, weights: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        return np.array(updates[int(chosen[0])], dtype=np.float32)


class MultiKrum(Krum):
    """Mean of the ``m`` updates with the lowest Krum scores (Multi-Krum, Blanchard et al.,
    NeurIPS 2017).

    Parameters
    ----------
    num_byzantine
        ``f``; needs ``n >= 2f + 3`` updates.
    num_selected
        ``m``, at most ``n``; ``n - f`` when None.
    weighted
        Weight the mean of the selected updates by ``weight`` (``num_examples``, as Flower's
        ``aggregate_krum`` does) instead of the paper's plain mean.
    """

    rule = "multi_krum"

    def __init__(
        self,
        dim: int,
        *,
        num_byzantine: int,
        num_selected: int | None = None,
        weighted: bool = False,
        capacity: int | None = None,
    ) -> None:
        super().__init__(dim, num_byzantine=num_byzantine, capacity=capacity)
        if num_selected is not None and (isinstance(num_selected, bool) or num_selected < 1):
            raise ValueError(f"num_selected must be a positive integer or None, got {num_selected}")
        self.num_selected = num_selected
        self.weighted = bool(weighted)

    def _num_selected(self, n: int) -> int:
        m = n - self.num_byzantine if self.num_selected is None else self.num_selected
        if m > n:
            raise ValueError(f"num_selected={m} exceeds the {n} updates aggregated")
        return m

    def _combine(self, updates: Updates, weights: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        w = weights[chosen] if self.weighted else np.ones(len(chosen))
        return weighted_average(select_rows(updates, chosen), w)
