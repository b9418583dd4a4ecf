"""Federated feature scaling: per-feature mean and standard deviation from client aggregates.

Each client computes three aggregates over its own rows, never sharing a row: the row count
``n_k``, the per-feature sum ``s_k`` and the per-feature sum of squares ``q_k``
(:func:`client_moments`). The server adds them up (:func:`combine`) and derives

    mean = sum_k s_k / N,    var = sum_k q_k / N - mean^2,    N = sum_k n_k

(the population variance of the union of the clients' rows, exactly what pooling the rows
would give, computed in float64). The statistics go into the model itself as a fixed
standardization layer (:class:`fl_core.models.ModelSpec` ``feature_mean`` /
``feature_std``), so clients, evaluation, the served MLflow model and the edge TorchScript
file all apply the same transform and all take raw features.

Features with (near) zero variance get a standard deviation of 1: they are only centred.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FeatureMoments", "FeatureScaling", "client_moments", "combine"]

logger = logging.getLogger(__name__)

#: Standard deviations below this (relative to 1 + |mean|) count as zero variance.
_MIN_STD = 1e-6


@dataclass(frozen=True)
class FeatureMoments:
    """One client's aggregates: row count, per-feature sum and sum of squares."""

    count: int
    sum: tuple[float, ...]
    sum_sq: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "sum": list(self.sum), "sum_sq": list(self.sum_sq)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FeatureMoments:
        """Parse a client's report; ``ValueError`` on a malformed or non-finite one."""
        try:
            count = int(raw["count"])
            total = tuple(float(v) for v in raw["sum"])
            squares = tuple(float(v) for v in raw["sum_sq"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed feature moments: {exc}") from None
        if count < 0 or len(total) != len(squares):
            raise ValueError("feature moments need count >= 0 and equal-length sum / sum_sq")
        if not all(math.isfinite(v) for v in (*total, *squares)) or min(squares, default=0) < 0:
            raise ValueError("feature moments must be finite with non-negative sums of squares")
        return cls(count, total, squares)


@dataclass(frozen=True)
class FeatureScaling:
    """Per-feature standardization ``(x - mean) / std`` and how many rows it summarizes."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: int
    num_clients: int

    def to_json(self) -> dict[str, Any]:
        return {
            "method": "federated_moments",
            "mean": list(self.mean),
            "std": list(self.std),
            "count": self.count,
            "num_clients": self.num_clients,
        }


def client_moments(x: np.ndarray) -> FeatureMoments:
    """A client's aggregates over its own feature rows ``x`` (shape ``(n, d)``)."""
    rows = np.asarray(x, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got {rows.shape}")
    return FeatureMoments(
        count=int(rows.shape[0]),
        sum=tuple(float(v) for v in rows.sum(axis=0)),
        sum_sq=tuple(float(v) for v in np.square(rows).sum(axis=0)),
    )


def combine(moments: Iterable[FeatureMoments] | Sequence[FeatureMoments]) -> FeatureScaling:
    """Combine the clients' aggregates into the global per-feature mean and std.

    Raises
    ------
    ValueError
        If there are no rows at all or the clients disagree on the number of features.
    """
    items = list(moments)
    if not items:
        raise ValueError("no client moments to combine")
    width = len(items[0].sum)
    if any(len(m.sum) != width for m in items):
        raise ValueError("clients report different numbers of features")
    count = sum(m.count for m in items)
    if count == 0:
        raise ValueError("the clients hold no rows")
    total = np.sum([m.sum for m in items], axis=0, dtype=np.float64)
    squares = np.sum([m.sum_sq for m in items], axis=0, dtype=np.float64)
    mean = np.asarray(total / count, dtype=np.float64)
    var = np.maximum(squares / count - np.square(mean), 0.0)
    std = np.asarray(np.sqrt(var), dtype=np.float64)
    flat = std <= _MIN_STD * (1.0 + np.abs(mean))
    std[flat] = 1.0
    if flat.any():
        logger.info("%d feature(s) have zero variance: centred, not scaled", int(flat.sum()))
    return FeatureScaling(
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        count=int(count),
        num_clients=len(items),
    )
