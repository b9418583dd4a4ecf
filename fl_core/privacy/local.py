"""Local DP: the client clips and noises its update before it leaves the device.

The server is not trusted, so there is no amplification by subsampling (the server sees who
sent) and no averaging over other clients before the noise: each participation is a plain
Gaussian mechanism on the client's clipped update (sensitivity ``C`` under replacing the
client's whole dataset by nothing, i.e. user-level), with noise ``N(0, (z C)^2 I)``.
Over ``k`` participations the client's guarantee is the ``k``-fold composition, computed
with an Opacus accountant at sample rate 1 (:func:`local_epsilon`).

Local DP needs far more noise than central DP for the same epsilon (roughly ``sqrt(m)``
times more on the mean of ``m`` clients); that is the price of not trusting the server.
"""

from __future__ import annotations

import math

import numpy as np

from fl_core.privacy.accountant import compute_epsilon
from fl_core.privacy.clipping import clip_by_l2
from fl_core.privacy.noise import add_gaussian_noise


def privatize_update_locally(
    update: np.ndarray,
    *,
    clipping_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Clip ``update`` to ``clipping_norm`` and add ``N(0, (z C)^2 I)``; float32.

    ``rng`` must be the client's own unpredictable source (not derived from a seed the
    server knows), or the server can subtract the noise.
    """
    if (
        isinstance(noise_multiplier, bool)
        or not math.isfinite(noise_multiplier)
        or (noise_multiplier <= 0)
    ):
        raise ValueError(f"noise_multiplier: {noise_multiplier!r} must be a finite number > 0")
    clipped, _ = clip_by_l2(update, clipping_norm)
    return add_gaussian_noise(clipped, std=noise_multiplier * clipping_norm, rng=rng)


def local_epsilon(
    *, noise_multiplier: float, participations: int, delta: float, kind: str = "rdp"
) -> float:
    """The client's epsilon at ``delta`` after ``participations`` noised updates.

    The Gaussian mechanism composed ``participations`` times, via an Opacus accountant with
    sample rate 1 (``kind`` ``"rdp"`` or ``"prv"``). 0 participations spend 0.
    """
    if (
        isinstance(participations, bool)
        or not isinstance(participations, int | np.integer)
        or (participations < 0)
    ):
        raise ValueError(f"participations: {participations!r} must be an integer >= 0")
    return compute_epsilon(
        noise_multiplier=noise_multiplier,
        sampling_rate=1.0,
        steps=int(participations),
        delta=delta,
        kind=kind,
    )
