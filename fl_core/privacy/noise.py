"""Gaussian noise for the central (user-level) DP-FedAvg aggregate.

The estimator
-------------
With Poisson sampling at rate ``q`` over ``N`` clients, each cohort member's update clipped
to norm ``C`` and weight 1, the server releases the *fixed-denominator* mean

    mean = (sum_{i in cohort} clip(update_i) + N(0, (z C)^2 I)) / m,     m = q N,

i.e. ``sum / m`` plus Gaussian noise of std ``z C / m`` (:func:`gaussian_noise_std`). This is
McMahan et al.'s ``f~_f`` estimator ("Learning Differentially Private Recurrent Language
Models", ICLR 2018):

- it is unbiased: ``E[sum / (qN)] = (1/N) sum_over_all_clients clip(update_i)``;
- its sensitivity is exactly ``C / m``: adding or removing one client changes the sum by at
  most ``C`` and the denominator not at all, so the noise multiplier the accountant sees is
  ``z`` (noise std / sensitivity).

Dividing by the *realized* cohort size ``|S|`` instead would make the denominator depend on
whether the neighbouring client is present: the sensitivity is then no longer ``C / |S|``
(McMahan et al.'s bounded variant ``f~_c`` needs ``2 C / (q W_min)``), the count itself
would need privatizing, and the estimate blows up when ``|S|`` is small or zero. The fixed
denominator costs some variance when ``|S|`` deviates from ``m`` and is the standard choice.

Weights must be uniform (1 per client): FedAvg's ``num_examples`` weights would both break
the ``C`` sensitivity bound and leak the client's data size.
"""

from __future__ import annotations

import math

import numpy as np


def gaussian_noise_std(
    *, noise_multiplier: float, clipping_norm: float, expected_cohort_size: float
) -> float:
    """Std of the noise on the fixed-denominator mean: ``z * C / (q N)``.

    Parameters
    ----------
    noise_multiplier
        ``z``, the noise std relative to the sum's sensitivity (0 gives no noise).
    clipping_norm
        ``C``, the per-client L2 bound.
    expected_cohort_size
        ``m = q N`` (not the realized cohort size; see the module docstring).
    """
    if (
        isinstance(noise_multiplier, bool)
        or not math.isfinite(noise_multiplier)
        or (noise_multiplier < 0)
    ):
        raise ValueError(f"noise_multiplier: {noise_multiplier!r} must be a finite number >= 0")
    if not math.isfinite(clipping_norm) or clipping_norm <= 0:
        raise ValueError(f"clipping_norm: {clipping_norm!r} must be a finite number > 0")
    if not math.isfinite(expected_cohort_size) or expected_cohort_size <= 0:
        raise ValueError(
            f"expected_cohort_size: {expected_cohort_size!r} must be a finite number > 0"
        )
    return float(noise_multiplier * clipping_norm / expected_cohort_size)


def add_gaussian_noise(
    mean_update: np.ndarray, *, std: float, rng: np.random.Generator
) -> np.ndarray:
    """``mean_update + N(0, std^2 I)`` as a new float32 vector (drawn in float64).

    ``rng`` must not be predictable by anyone who sees the output (see the package notes on
    seeding): whoever can regenerate the noise can subtract it.
    """
    if isinstance(std, bool) or not math.isfinite(std) or std < 0:
        raise ValueError(f"std: {std!r} must be a finite number >= 0")
    values = np.asarray(mean_update, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("mean_update: contains non-finite values")
    if std == 0:
        return values.astype(np.float32)
    return (values + rng.normal(0.0, std, size=values.shape)).astype(np.float32)


def noisy_mean(
    sum_of_clipped: np.ndarray,
    *,
    noise_multiplier: float,
    clipping_norm: float,
    expected_cohort_size: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The DP-FedAvg release: ``sum_of_clipped / m + N(0, (z C / m)^2 I)``, float32.

    ``sum_of_clipped`` is the unweighted sum of the cohort's clipped updates (zeros for an
    empty cohort: the release is then noise only, and the round still spends budget).
    """
    std = gaussian_noise_std(
        noise_multiplier=noise_multiplier,
        clipping_norm=clipping_norm,
        expected_cohort_size=expected_cohort_size,
    )
    mean = np.asarray(sum_of_clipped, dtype=np.float64) / expected_cohort_size
    return add_gaussian_noise(mean, std=std, rng=rng)
