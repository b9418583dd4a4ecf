"""Coordinate-wise median, plain and weighted (Yin et al., ICML 2018)."""

from __future__ import annotations

import numpy as np

from fl_core.aggregation.buffered import BufferedAggregator
from fl_core.aggregation.math import Updates
from fl_core.aggregation.robust_math import coordinate_median, weighted_coordinate_median


class CoordinateMedian(BufferedAggregator):
    """Coordinate-wise median of the cohort; ignores the weights.

    Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates", ICML 2018. Robust to any ``f < n / 2`` Byzantine updates.
    """

    def _aggregate(self, updates: Updates, weights: np.ndarray) -> np.ndarray:
        return coordinate_median(updates)


class WeightedMedian(BufferedAggregator):
    """Coordinate-wise median weighted by ``weight`` (``num_examples``).

    The weighted form of Yin et al. (ICML 2018); see
    :func:`~fl_core.aggregation.robust_math.weighted_coordinate_median`. Client-reported
    weights are untrusted: cap them upstream or prefer ``median`` under attack.
    """

    def _aggregate(self, updates: Updates, weights: np.ndarray) -> np.ndarray:
        return weighted_coordinate_median(updates, weights)
