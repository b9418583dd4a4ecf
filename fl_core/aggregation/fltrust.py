"""FLTrust (Cao et al., NDSS 2021): trust bootstrapped from the server's root update."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from fl_core.aggregation.base import Aggregator
from fl_core.aggregation.math import accumulate, relative_scores, row_sq_norms_and_dots


class FLTrust(Aggregator):
    """Each update is rescaled to the norm of the server's root update ``g_0`` (computed on
    the server's small clean root dataset) and weighted by its trust score
    ``ReLU(cos(g_i, g_0))``; client weights are ignored, as in the paper.

    Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
    Bootstrapping", NDSS 2021. Streams (one float64 running sum) once the root update is
    known: pass ``root_update=`` or call :meth:`set_reference` before the first :meth:`add`.
    The aggregate is zero when no update has a positive trust score.
    """

    requires_full_cohort: ClassVar[bool] = False
    needs_root_update: ClassVar[bool] = True

    def __init__(self, dim: int, *, root_update: np.ndarray | None = None) -> None:
        super().__init__(dim)
        self._sum = np.zeros(dim, dtype=np.float64)
        self._total_trust = 0.0
        self._root: np.ndarray | None = None
        self._root_norm = 0.0
        self.trust_scores: list[float] = []
        self._cosines: list[float] = []
        if root_update is not None:
            self.set_reference(root_update)

    def set_reference(self, root_update: np.ndarray) -> None:
        """The server's root update ``g_0`` for this round (before any :meth:`add`)."""
        if self.count:
            raise ValueError("set_reference(root_update) must come before the first add()")
        root = np.asarray(root_update)
        if root.shape != (self.dim,):
            raise ValueError(f"root_update has shape {root.shape}, expected ({self.dim},)")
        sq, _ = row_sq_norms_and_dots([root], root)
        if not (math.isfinite(sq[0]) and sq[0] > 0):
            raise ValueError("root_update must be finite and non-zero")
        self._root = root.astype(np.float32)
        self._root_norm = math.sqrt(float(sq[0]))

    def _add(self, update: np.ndarray, weight: float) -> None:
        if self._root is None:
            raise ValueError(
                "fltrust needs the server's root update: pass root_update= or call "
                "set_reference(root_update) before add()"
            )
        sq, dot = row_sq_norms_and_dots([update], self._root)
        norm = math.sqrt(float(sq[0]))
        cos = float(dot[0]) / (norm * self._root_norm) if norm > 0 else 0.0
        trust = min(1.0, max(0.0, cos))
        if trust > 0:
            accumulate(self._sum, update, trust * self._root_norm / norm)
            self._total_trust += trust
        self.trust_scores.append(trust)
        self._cosines.append(cos)

    def result(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no update was aggregated")
        if self._total_trust <= 0:
            return np.zeros(self.dim, dtype=np.float32)
        return (self._sum / self._total_trust).astype(np.float32)

    def outlier_scores(self) -> np.ndarray:
        """Per added update, the distance between its direction and the root update's
        (``sqrt(2 - 2 cos)``) over the median such distance."""
        cos = np.asarray(self._cosines, dtype=np.float64)
        return relative_scores(np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0)))
