"""Local DP: client-side clip + noise, and per-client accounting."""

from __future__ import annotations

import numpy as np
import pytest

from fl_core.privacy.local import local_epsilon, privatize_update_locally


def test_local_noise_is_clip_plus_gaussian(rng: np.random.Generator) -> None:
    update = np.zeros(200_000, dtype=np.float32)
    update[0] = 1000.0  # far outside the ball: clipped to norm 1

    private = privatize_update_locally(update, clipping_norm=1.0, noise_multiplier=3.0, rng=rng)

    assert private.dtype == np.float32 and private.shape == update.shape
    assert float(private[1:].std()) == pytest.approx(3.0, rel=0.01)
    assert abs(float(private[0]) - 1.0) < 5 * 3.0  # the clipped signal, not 1000


def test_local_epsilon_is_monotone_in_participations() -> None:
    eps = [
        local_epsilon(noise_multiplier=5.0, participations=k, delta=1e-5) for k in range(0, 21, 4)
    ]

    assert eps[0] == 0.0
    assert all(a < b for a, b in zip(eps, eps[1:], strict=False))


def test_local_epsilon_decreases_with_noise_and_prv_is_tighter() -> None:
    loud = local_epsilon(noise_multiplier=10.0, participations=10, delta=1e-5)
    quiet = local_epsilon(noise_multiplier=5.0, participations=10, delta=1e-5)
    prv = local_epsilon(noise_multiplier=5.0, participations=10, delta=1e-5, kind="prv")

    assert loud < quiet
    assert prv <= quiet


def test_local_arguments_are_validated(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="^participations"):
        local_epsilon(noise_multiplier=1.0, participations=-1, delta=1e-5)
    with pytest.raises(ValueError, match="^noise_multiplier"):
        privatize_update_locally(np.ones(3), clipping_norm=1.0, noise_multiplier=0.0, rng=rng)
