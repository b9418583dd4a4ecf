"""Per-feature histograms that clients compute locally, for drift (PSI) without their rows.

Federated monitoring measures drift from bin counts only (:func:`fl_core.monitoring.
psi_from_counts`); the rows never leave the device. Two kinds of bins:

- the **grid**: a fixed, fine, equal-width grid per feature (``low``, ``high``, ``bins``),
  sent with every remote training task. Each client reports the counts of its training
  data on it; the coordinator sums them over clients: the reference histograms of the
  campaign's training data.
- the **edges**: for monitoring, ~10 quantile bins per feature of that reference,
  derived from the summed fine counts (:func:`quantile_edges`). They are a subset of the
  grid's edges, so the reference counts in them are exact sums of fine counts
  (:func:`regroup`); clients count their fresh data in them (:func:`bin_counts`).

A value ``v`` falls in bin ``i`` = the number of edges strictly below it, i.e. bins are
``(-inf, e_1], (e_1, e_2], ..., (e_k, +inf)``, as in :func:`fl_core.monitoring.
drift_statistic`; the outer bins are open, so out-of-range values still count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MAX_GRID_CELLS",
    "bin_counts",
    "check_counts",
    "grid_edges",
    "histogram_grid",
    "quantile_edges",
    "regroup",
]

MAX_GRID_CELLS = 100_000
"""Features x fine bins stays below this, so a report stays well under the 1 MiB body cap."""


def histogram_grid(meta: Mapping[str, Any], *, bins: int = 64) -> dict[str, Any]:
    """The fine grid for a dataset: its data contract's feature range, ``bins`` cells.

    ``meta`` is the prepared data's ``meta.json`` (``num_features``, ``feature_min``,
    ``feature_max``; a missing range means standardised features, grid ``[-4, 4]``).
    Wide inputs get fewer cells so ``num_features * bins <= MAX_GRID_CELLS``.
    """
    d = int(meta["num_features"])
    if d < 1:
        raise ValueError(f"num_features must be >= 1, got {d}")
    low = meta.get("feature_min")
    high = meta.get("feature_max")
    low = -4.0 if low is None else low
    high = 4.0 if high is None else high
    bins = max(4, min(int(bins), MAX_GRID_CELLS // d))
    grid = {"low": low, "high": high, "bins": bins, "num_features": d}
    grid_edges(grid)  # fails early on a bad range
    return grid


def grid_edges(grid: Mapping[str, Any]) -> np.ndarray:
    """Interior edges of ``grid``, shape ``(num_features, bins - 1)``."""
    d, bins = int(grid["num_features"]), int(grid["bins"])
    if d < 1 or bins < 2:
        raise ValueError(f"grid needs num_features >= 1 and bins >= 2, got {d}, {bins}")
    low = np.broadcast_to(np.asarray(grid["low"], dtype=np.float64), (d,))
    high = np.broadcast_to(np.asarray(grid["high"], dtype=np.float64), (d,))
    if not (np.isfinite(low).all() and np.isfinite(high).all() and (high > low).all()):
        raise ValueError("grid low/high must be finite with high > low")
    steps = np.arange(1, bins) / bins
    return np.asarray(low[:, None] + (high - low)[:, None] * steps[None, :])


def bin_counts(x: np.ndarray, edges: np.ndarray | Sequence[Sequence[float]]) -> list[list[int]]:
    """Counts per feature of the rows of ``x`` in bins with the given interior edges.

    ``edges`` is one sorted sequence per feature (lengths may differ). Returns one list of
    ``len(edges[j]) + 1`` counts per feature, each summing to ``len(x)``: counts only.
    """
    arr = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if len(edges) != arr.shape[1]:
        raise ValueError(f"data has {arr.shape[1]} features, the bins {len(edges)}")
    out = []
    for j, e in enumerate(edges):
        cuts = np.asarray(e, dtype=np.float64)
        idx = np.searchsorted(cuts, arr[:, j], side="left")
        out.append(np.bincount(idx, minlength=len(cuts) + 1).astype(int).tolist())
    return out


def check_counts(
    counts: Sequence[Sequence[int]], sizes: Sequence[int], num_examples: int
) -> list[np.ndarray]:
    """Validate a client's reported counts: one row per feature of ``sizes[j]`` non-negative
    integers summing to ``num_examples``. Raises ``ValueError`` naming the problem."""
    if len(counts) != len(sizes):
        raise ValueError(f"counts has {len(counts)} features, expected {len(sizes)}")
    rows = []
    for j, (row, size) in enumerate(zip(counts, sizes, strict=True)):
        if len(row) != size:
            raise ValueError(f"feature {j}: {len(row)} bins, expected {size}")
        arr = np.asarray(row, dtype=np.int64)
        if (arr < 0).any():
            raise ValueError(f"feature {j}: negative count")
        if int(arr.sum()) != num_examples:
            raise ValueError(f"feature {j}: counts sum to {int(arr.sum())}, not {num_examples}")
        rows.append(arr)
    return rows


def quantile_edges(
    fine_counts: np.ndarray, fine_edges: np.ndarray, *, bins: int = 10
) -> list[list[float]]:
    """About ``bins`` quantile bins per feature of the reference, from its fine histogram.

    Edge ``j`` of a feature is the first fine edge where the reference's cumulative mass
    reaches ``j / bins``; repeated edges merge (ties), so a feature constant in the reference
    keeps two bins, "at most the constant" and "above it", as in
    :func:`fl_core.monitoring.drift_statistic`. The result is a subset of ``fine_edges``.
    """
    counts = np.asarray(fine_counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[1] != fine_edges.shape[1] + 1:
        raise ValueError("fine_counts must have shape (num_features, fine bins)")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    out: list[list[float]] = []
    levels = np.arange(1, bins) / bins
    for j in range(counts.shape[0]):
        total = counts[j].sum()
        if total <= 0:
            raise ValueError(f"feature {j} has an empty reference histogram")
        cum = np.cumsum(counts[j])[:-1] / total  # mass at or below each fine edge
        picks = np.searchsorted(cum, levels - 1e-12, side="left")
        picks = np.unique(np.minimum(picks, len(cum) - 1))
        out.append([float(fine_edges[j, i]) for i in picks])
    return out


def regroup(fine_counts: np.ndarray, fine_edges: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts of one feature's fine histogram in the coarser bins ``edges`` (a subset of
    ``fine_edges``): exact, since no fine bin straddles a coarse edge."""
    fine = np.asarray(fine_counts)
    coarse = np.asarray(edges, dtype=np.float64)
    if not np.isin(coarse, fine_edges).all():
        raise ValueError("coarse edges must be a subset of the fine edges")
    # Fine bin i holds (f_{i-1}, f_i]; its values are above exactly the coarse edges < f_i.
    upper = np.append(np.asarray(fine_edges, dtype=np.float64), math.inf)
    group = np.searchsorted(coarse, upper, side="left")
    return np.bincount(group, weights=fine, minlength=len(coarse) + 1).astype(np.int64)
