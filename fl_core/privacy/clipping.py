"""L2 clipping of client updates, fixed or adaptive (private quantile tracking).

Fixed clipping bounds each client's contribution to the sum by ``clipping_norm`` (its L2
sensitivity under add/remove-one-client adjacency), as in DP-FedAvg (McMahan et al.,
"Learning Differentially Private Recurrent Language Models", ICLR 2018).

Adaptive clipping follows Andrew, Thakkar, McMahan & Ramaswamy, "Differentially Private
Learning with Adaptive Clipping", NeurIPS 2021 (Algorithm 1): each round, every cohort
member reports ``b_i = 1[||update_i|| <= C]``; the server privately estimates the fraction
below the current norm and takes a geometric step towards the target quantile ``gamma``::

    b_bar = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2      # m = expected cohort size
    C    <- C * exp(-eta * (b_bar - gamma))

Centring ``b_i`` at 1/2 halves the count's sensitivity (as in TensorFlow Privacy's
``QuantileEstimatorQuery``), so the count is a Gaussian mechanism with noise multiplier
``2 sigma_b``. The update and count queries together are one Gaussian mechanism with
multiplier ``z`` where ``z^-2 = z_update^-2 + (2 sigma_b)^-2`` (Andrew et al., Sec. 3);
:func:`update_noise_multiplier` solves for ``z_update``. The accountant tracks ``z``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fl_core.aggregation.math import l2_norm

logger = logging.getLogger(__name__)

# Relative slack so that the float32 rounding of a clipped vector never lifts its norm above
# the clipping norm: rounding changes each entry by at most 2**-24 relative, hence the norm.
_F32_SLACK = 1.0 + 2.0**-22


def _check_norm(name: str, value: float) -> None:
    if isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: {value!r} must be a finite number > 0")


def clip_by_l2(update: np.ndarray, clipping_norm: float) -> tuple[np.ndarray, float]:
    """Scale ``update`` down to L2 norm at most ``clipping_norm``.

    Parameters
    ----------
    update
        A flat parameter update (any float dtype; not modified).
    clipping_norm
        The bound ``C > 0``.

    Returns
    -------
    clipped, norm
        A float32 copy with ``||clipped|| <= C`` (guaranteed after float32 rounding) and the
        original norm (float64). An update already inside the ball is returned unchanged.

    Raises
    ------
    ValueError
        If ``clipping_norm`` is not a positive finite number or ``update`` is not finite.
    """
    _check_norm("clipping_norm", clipping_norm)
    values = np.asarray(update, dtype=np.float64)
    norm = l2_norm(values)
    if not math.isfinite(norm):
        raise ValueError("update: contains non-finite values")
    if norm <= clipping_norm:
        clipped = values.astype(np.float32)
        if l2_norm(clipped) <= clipping_norm:
            return clipped, norm
    scale = clipping_norm / (norm * _F32_SLACK)
    clipped = (values * scale).astype(np.float32)
    while l2_norm(clipped) > clipping_norm:  # pragma: no cover - the slack makes this unreachable
        clipped = (clipped.astype(np.float64) / _F32_SLACK).astype(np.float32)
    return clipped, norm


def update_noise_multiplier(*, noise_multiplier: float, count_stddev: float) -> float:
    """Noise multiplier left for the update when the clipped count also uses the budget.

    Solves ``z^-2 = z_update^-2 + (2 sigma_b)^-2`` (Andrew et al., NeurIPS 2021, Sec. 3).

    Raises
    ------
    ValueError
        Naming ``count_stddev`` if ``2 * count_stddev <= noise_multiplier`` (the count alone
        would spend the whole budget).
    """
    _check_norm("noise_multiplier", noise_multiplier)
    _check_norm("count_stddev", count_stddev)
    if 2 * count_stddev <= noise_multiplier:
        raise ValueError(
            f"count_stddev: {count_stddev} must be > noise_multiplier / 2 "
            f"({noise_multiplier / 2:.6g}) for the update to keep any privacy budget"
        )
    return float((noise_multiplier**-2 - (2 * count_stddev) ** -2) ** -0.5)


class AdaptiveClipper:
    """Tracks a target quantile of the cohort's update norms privately (Andrew et al. 2021).

    Parameters
    ----------
    initial_norm
        The clipping norm of the first round.
    target_quantile
        ``gamma``, the fraction of updates meant to be left unclipped (0.5: the median).
    learning_rate
        ``eta`` of the geometric update (the paper uses 0.2).
    count_stddev
        ``sigma_b``, std of the noise on the clipped count (the paper recommends ``m / 20``).
    expected_cohort_size
        ``m = q N``, the fixed denominator of the count estimate.

    Notes
    -----
    Use :attr:`current_norm` to clip round ``r``'s updates, then call :meth:`update` with the
    *unclipped* norms of those same updates. Persist :meth:`state_dict` with the round and
    rebuild round ``r``'s clipper from round ``r-1``'s state, so a re-run gives the same norm.
    """

    def __init__(
        self,
        *,
        initial_norm: float,
        target_quantile: float = 0.5,
        learning_rate: float = 0.2,
        count_stddev: float,
        expected_cohort_size: float,
    ) -> None:
        _check_norm("initial_norm", initial_norm)
        if not 0 < target_quantile < 1:
            raise ValueError(f"target_quantile: {target_quantile!r} must be in (0, 1)")
        _check_norm("learning_rate", learning_rate)
        if isinstance(count_stddev, bool) or not math.isfinite(count_stddev) or count_stddev < 0:
            raise ValueError(f"count_stddev: {count_stddev!r} must be a finite number >= 0")
        _check_norm("expected_cohort_size", expected_cohort_size)
        self.target_quantile = float(target_quantile)
        self.learning_rate = float(learning_rate)
        self.count_stddev = float(count_stddev)
        self.expected_cohort_size = float(expected_cohort_size)
        self._norm = float(initial_norm)
        self.rounds = 0

    @property
    def current_norm(self) -> float:
        """The clipping norm to use for the current round."""
        return self._norm

    def noisy_fraction_below(
        self, norms_of_cohort: Sequence[float] | np.ndarray, rng: np.random.Generator
    ) -> float:
        """The privatized estimate ``b_bar`` of the fraction of norms <= :attr:`current_norm`."""
        norms = np.asarray(norms_of_cohort, dtype=np.float64).reshape(-1)
        if norms.size and not np.all(np.isfinite(norms)):
            raise ValueError("norms_of_cohort: contains non-finite values")
        centred = float(np.sum((norms <= self._norm).astype(np.float64) - 0.5))
        noise = float(rng.normal(0.0, self.count_stddev)) if self.count_stddev > 0 else 0.0
        return (centred + noise) / self.expected_cohort_size + 0.5

    def update(
        self, norms_of_cohort: Sequence[float] | np.ndarray, rng: np.random.Generator
    ) -> float:
        """Take one geometric step from this round's update norms; returns the new norm.

        An empty cohort is allowed (the step then moves on noise alone, as in the paper).
        """
        fraction = self.noisy_fraction_below(norms_of_cohort, rng)
        self._norm = float(
            self._norm * math.exp(-self.learning_rate * (fraction - self.target_quantile))
        )
        self.rounds += 1
        return self._norm

    def state_dict(self) -> dict[str, Any]:
        return {"current_norm": self._norm, "rounds": self.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        norm = state.get("current_norm")
        if not isinstance(norm, int | float) or isinstance(norm, bool):
            raise ValueError(f"state.current_norm: {norm!r} must be a number")
        _check_norm("state.current_norm", float(norm))
        rounds = state.get("rounds", 0)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ValueError(f"state.rounds: {rounds!r} must be an integer >= 0")
        self._norm = float(norm)
        self.rounds = rounds
