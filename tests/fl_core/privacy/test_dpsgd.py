"""Record-level DP-SGD on one client through Opacus's PrivacyEngine."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fl_core.models import ModelSpec, init_vector
from fl_core.privacy.dpsgd import train_dp_sgd


def _client_data(n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(0)
    y = gen.integers(0, 4, size=n).astype(np.int64)
    x = (gen.standard_normal((n, 16)) + y[:, None]).astype(np.float32)
    return x, y


def _train(
    spec: ModelSpec, noise: float, *, seed: int = 3, noise_seed: int | None = 11
) -> tuple[np.ndarray, float, float]:
    x, y = _client_data()
    vector, _ = init_vector(spec, seed=0)
    result, eps = train_dp_sgd(
        spec,
        vector,
        x,
        y,
        local_epochs=2,
        batch_size=16,
        lr=0.1,
        noise_multiplier=noise,
        max_grad_norm=1.0,
        delta=1e-3,
        seed=seed,
        noise_seed=noise_seed,
    )
    assert result.num_examples == len(x)
    assert math.isfinite(result.train_loss)
    return result.delta, eps, float(vector.size)


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
def test_dp_sgd_returns_a_finite_update_and_epsilon(name: str) -> None:
    spec = ModelSpec(name=name, input_shape=(1, 4, 4), num_classes=4, hidden=(8,), channels=(4,))

    delta, eps, size = _train(spec, noise=1.0)

    assert delta.dtype == np.float32 and delta.shape == (size,)
    assert np.all(np.isfinite(delta)) and np.any(delta != 0)
    assert 0 < eps < math.inf


def test_dp_sgd_epsilon_decreases_as_noise_increases_and_is_deterministic() -> None:
    spec = ModelSpec(name="logreg", input_shape=(16,), num_classes=4)

    d1, eps_low_noise, _ = _train(spec, noise=0.8)
    d2, eps_high_noise, _ = _train(spec, noise=2.0)
    d1_again, _, _ = _train(spec, noise=0.8)

    assert eps_high_noise < eps_low_noise
    np.testing.assert_array_equal(d1, d1_again)
    assert not np.array_equal(d1, d2)


def test_dp_sgd_noise_is_not_derived_from_the_public_seed() -> None:
    # By default (what clients run) the noise seed comes from the OS CSPRNG: the same public
    # seed gives different updates, so the server cannot recompute and subtract the noise.
    spec = ModelSpec(name="logreg", input_shape=(16,), num_classes=4)

    first, _, _ = _train(spec, noise=1.0, noise_seed=None)
    second, _, _ = _train(spec, noise=1.0, noise_seed=None)

    assert not np.array_equal(first, second)
