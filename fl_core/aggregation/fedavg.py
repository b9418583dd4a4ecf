"""Weighted FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017), streaming over updates, dense or sparse."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fl_core.aggregation.base import Aggregator
from fl_core.aggregation.math import accumulate


class FedAvg(Aggregator):
    """Mean of updates weighted by ``weight`` (num_examples), accumulated in float64.

    Holds one running sum of size ``dim``, whatever the cohort size. Sparse updates (e.g.
    top-k, Stich et al., NeurIPS 2018) go through :meth:`add_sparse`, which touches only
    their ``k`` entries: an absent entry is a zero, so this equals adding the densified
    update, without building it.
    """

    supports_sparse: ClassVar[bool] = True

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self._sum = np.zeros(dim, dtype=np.float64)

    def _add(self, update: np.ndarray, weight: float) -> None:
        # In place, block by block: no full-size float64 temporaries per update.
        accumulate(self._sum, np.asarray(update), weight)

    def add_sparse(self, indices: np.ndarray, values: np.ndarray, *, weight: float) -> None:
        """Add one client's sparse update ``{indices[i]: values[i]}`` with its weight.

        Parameters
        ----------
        indices
            1-D integer array of distinct positions in ``[0, dim)``, any order.
        values
            1-D array of the same length (accumulated in float64).
        weight
            Aggregation weight (e.g. num_examples), positive and finite.

        Counts like :meth:`add` (``count``, ``total_weight``). Raises ``ValueError`` naming
        the argument on out-of-range or duplicate indices, mismatched lengths or a bad
        weight, before changing any state.
        """
        idx = np.asarray(indices)
        vals = np.asarray(values)
        if idx.ndim != 1 or vals.shape != idx.shape:
            raise ValueError(
                f"indices and values must be 1-D, same length: {idx.shape}, {vals.shape}"
            )
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
        if not np.isfinite(weight) or weight <= 0:
            raise ValueError(f"weight must be a positive finite number, got {weight}")
        if idx.size:
            if np.issubdtype(idx.dtype, np.unsignedinteger) and int(idx.max()) >= self.dim:
                raise ValueError(f"indices must lie in [0, {self.dim}), got {int(idx.max())}")
            idx = idx.astype(np.int64, copy=False)
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.dim:
                raise ValueError(f"indices must lie in [0, {self.dim}), got {lo}..{hi}")
            increasing = idx.size < 2 or bool(np.all(idx[1:] > idx[:-1]))
            if not increasing and np.unique(idx).size != idx.size:
                raise ValueError("indices must be distinct; got duplicates")
            # Distinct indices: fancy-index += is np.add.at without its per-element cost.
            self._sum[idx] += weight * vals.astype(np.float64)
        self.count += 1
        self.total_weight += weight

    def weighted_sum(self) -> np.ndarray:
        """The running float64 sum of ``weight * update`` (zeros before any add)."""
        return self._sum.copy()

    def result(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no update was aggregated")
        return (self._sum / self.total_weight).astype(np.float32)
