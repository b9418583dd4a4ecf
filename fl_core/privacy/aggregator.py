"""Central DP as a wrapper around an aggregator (DP-FedAvg, McMahan et al., ICLR 2018).

:class:`CentralDP` wraps a summing aggregator (FedAvg's running sum) the way Flower's
server-side DP strategy wrappers wrap a strategy: each update is clipped to the clipping
norm and added with weight 1 (example counts would break the sensitivity bound and leak
data sizes); :meth:`CentralDP.result` is the pre-noise sum of clipped updates, and
:func:`release` turns it into the noised mean over the *expected* cohort size (the
fixed-denominator estimator, unbiased under Poisson sampling, sensitivity ``C / m``).
"""

from __future__ import annotations

import numpy as np

from fl_core.aggregation.base import Aggregator
from fl_core.aggregation.fedavg import FedAvg
from fl_core.privacy.clipping import clip_by_l2
from fl_core.privacy.noise import noisy_mean


class CentralDP(Aggregator):
    """Clip each update to ``clipping_norm`` and sum it, unweighted, into ``inner``.

    Parameters
    ----------
    dim
        Model dimension.
    clipping_norm
        The L2 bound ``C`` (this round's, under adaptive clipping).
    inner
        The summing aggregator (default: a fresh :class:`FedAvg`, whose running sum is used).
    """

    def __init__(self, dim: int, *, clipping_norm: float, inner: FedAvg | None = None) -> None:
        super().__init__(dim)
        if not np.isfinite(clipping_norm) or clipping_norm <= 0:
            raise ValueError(f"clipping_norm: {clipping_norm!r} must be a finite number > 0")
        self.clipping_norm = float(clipping_norm)
        self.inner = inner if inner is not None else FedAvg(dim)
        self.norms: list[float] = []

    def _add(self, update: np.ndarray, weight: float) -> None:
        clipped, norm = clip_by_l2(update, self.clipping_norm)
        self.norms.append(float(norm))
        self.inner.add(clipped, weight=1.0)  # the weight is dropped on purpose (see above)

    def result(self) -> np.ndarray:
        """The unweighted float64 sum of the clipped updates (zeros for an empty cohort)."""
        return self.inner.weighted_sum()

    @property
    def num_clipped(self) -> int:
        return int(sum(n > self.clipping_norm for n in self.norms))


def release(
    sum_of_clipped: np.ndarray,
    *,
    noise_multiplier: float,
    clipping_norm: float,
    expected_cohort_size: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The noised mean released from :meth:`CentralDP.result` (see ``noisy_mean``)."""
    return noisy_mean(
        sum_of_clipped,
        noise_multiplier=noise_multiplier,
        clipping_norm=clipping_norm,
        expected_cohort_size=expected_cohort_size,
        rng=rng,
    )


__all__ = ["CentralDP", "release"]
