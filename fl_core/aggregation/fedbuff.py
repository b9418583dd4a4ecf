"""Asynchronous buffered aggregation (FedBuff).

Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba, "Federated Learning with Buffered
Asynchronous Aggregation", AISTATS 2022. Clients train on whatever global model version they
pulled; the server aggregates as soon as ``K`` updates have arrived, each down-weighted by
its staleness ``s = current_version - base_version`` with ``1 / (1 + s) ** exponent``;
updates staler than ``max_staleness`` are dropped.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from fl_core.aggregation.math import accumulate

logger = logging.getLogger(__name__)


def _check_exponent(exponent: float) -> None:
    if isinstance(exponent, bool) or not (math.isfinite(exponent) and exponent >= 0):
        raise ValueError(f"exponent must be a finite number >= 0, got {exponent!r}")


def _check_max_staleness(max_staleness: int | None) -> None:
    if max_staleness is not None and (
        isinstance(max_staleness, bool) or not isinstance(max_staleness, int) or max_staleness < 0
    ):
        raise ValueError(f"max_staleness must be an integer >= 0 or None, got {max_staleness!r}")


def staleness_weight(
    staleness: int, *, exponent: float = 0.5, max_staleness: int | None = None
) -> float:
    """FedBuff's polynomial staleness weight ``1 / (1 + s) ** exponent``; 0 beyond
    ``max_staleness`` (None: never 0).

    Nguyen et al., AISTATS 2022 (``exponent=0.5`` is the paper's ``1 / sqrt(1 + s)``).

    Raises
    ------
    ValueError
        If ``staleness`` is negative or an argument is invalid.
    """
    _check_exponent(exponent)
    _check_max_staleness(max_staleness)
    if isinstance(staleness, bool) or not isinstance(staleness, int | np.integer):
        raise ValueError(f"staleness must be an integer, got {staleness!r}")
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if max_staleness is not None and staleness > max_staleness:
        return 0.0
    return float((1.0 + staleness) ** -exponent)


class FedBuffBuffer:
    """Collects asynchronous updates and aggregates every ``buffer_size`` of them.

    The aggregate of a full buffer is ``sum_i w_i * s(tau_i) * u_i / sum_i w_i`` with
    ``w_i`` the update's weight (``num_examples``; use 1 for the paper's plain ``1/K``) and
    ``s`` :func:`staleness_weight`: normalizing by the sample weights only, so stale updates
    shrink the step instead of merely redistributing it. Holds one float64 running sum.

    Parameters
    ----------
    dim
        Length of every update.
    buffer_size
        ``K``, the number of accepted updates that triggers an aggregation.
    exponent, max_staleness
        Of :func:`staleness_weight`.
    """

    def __init__(
        self,
        dim: int,
        *,
        buffer_size: int,
        exponent: float = 0.5,
        max_staleness: int | None = None,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size must be an integer >= 1, got {buffer_size!r}")
        _check_exponent(exponent)
        _check_max_staleness(max_staleness)
        self.dim, self.buffer_size = dim, buffer_size
        self.exponent, self.max_staleness = float(exponent), max_staleness
        self._sum = np.zeros(dim, dtype=np.float64)
        self.total_weight = 0.0
        self.stalenesses: list[int] = []
        self.num_dropped = 0
        self.num_flushed = 0

    @property
    def count(self) -> int:
        """Updates in the buffer now."""
        return len(self.stalenesses)

    @property
    def full(self) -> bool:
        return self.count >= self.buffer_size

    def add(
        self, update: np.ndarray, *, weight: float, base_version: int, current_version: int
    ) -> bool:
        """Buffer one update computed on ``base_version`` arriving at ``current_version``.

        Returns True when the buffer holds ``buffer_size`` updates (call :meth:`flush`).
        An update staler than ``max_staleness`` is dropped (counted in ``num_dropped``).

        Raises
        ------
        ValueError
            On a wrong shape, a non-positive weight, a base version newer than the current
            one, or an add to a full buffer.
        """
        if update.shape != (self.dim,):
            raise ValueError(f"update has shape {update.shape}, expected ({self.dim},)")
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"weight must be a positive finite number, got {weight}")
        if base_version > current_version:
            raise ValueError(
                f"base_version {base_version} is newer than current_version {current_version}"
            )
        if self.full:
            raise ValueError(f"buffer is full ({self.buffer_size} updates); flush() it first")
        staleness = int(current_version - base_version)
        factor = staleness_weight(
            staleness, exponent=self.exponent, max_staleness=self.max_staleness
        )
        if factor == 0.0:
            self.num_dropped += 1
            logger.info(
                "dropped an update %d versions stale (max %s)", staleness, self.max_staleness
            )
            return False
        accumulate(self._sum, update, weight * factor)
        self.total_weight += float(weight)
        self.stalenesses.append(staleness)
        return self.full

    def flush(self) -> np.ndarray:
        """The staleness-weighted aggregate of the buffered updates (float32); empties the
        buffer. Raises ``ValueError`` if it is empty."""
        if self.count == 0:
            raise ValueError("no update is buffered")
        out = (self._sum / self.total_weight).astype(np.float32)
        self._sum[:] = 0.0
        self.total_weight = 0.0
        self.stalenesses = []
        self.num_flushed += 1
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """The buffer's content, as arrays (fit for ``ArtifactStore.put_arrays``)."""
        return {
            "sum": self._sum.copy(),
            "total_weight": np.asarray(self.total_weight, dtype=np.float64),
            "stalenesses": np.asarray(self.stalenesses, dtype=np.int64),
            "num_dropped": np.asarray(self.num_dropped, dtype=np.int64),
            "num_flushed": np.asarray(self.num_flushed, dtype=np.int64),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        total = np.asarray(state["sum"], dtype=np.float64)
        if total.shape != (self.dim,):
            raise ValueError(f"state sum has shape {total.shape}, expected ({self.dim},)")
        self._sum = total.copy()
        self.total_weight = float(state["total_weight"])
        self.stalenesses = [int(s) for s in np.asarray(state["stalenesses"]).reshape(-1)]
        self.num_dropped = int(state["num_dropped"])
        self.num_flushed = int(state["num_flushed"])
