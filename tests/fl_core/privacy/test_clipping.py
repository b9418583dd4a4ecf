"""Clipping: the norm bound always holds; adaptive clipping tracks the target quantile."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fl_core.aggregation.math import l2_norm
from fl_core.privacy.clipping import AdaptiveClipper, clip_by_l2, update_noise_multiplier


def test_every_clipped_update_is_within_the_clipping_norm(rng: np.random.Generator) -> None:
    for _ in range(2000):
        dim = int(rng.integers(1, 5000))
        scale = float(10.0 ** rng.uniform(-4, 4))
        clipping_norm = float(10.0 ** rng.uniform(-3, 3))
        update = (rng.standard_normal(dim) * scale).astype(np.float32)

        clipped, norm = clip_by_l2(update, clipping_norm)

        assert clipped.dtype == np.float32 and clipped.shape == update.shape
        assert l2_norm(clipped) <= clipping_norm
        assert norm == pytest.approx(l2_norm(update))


def test_clipping_keeps_direction_and_leaves_small_updates_alone() -> None:
    big = np.array([3.0, 4.0], dtype=np.float32)
    small = np.array([0.3, 0.4], dtype=np.float32)

    clipped, norm = clip_by_l2(big, 1.0)
    same, _ = clip_by_l2(small, 1.0)

    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(clipped, [0.6, 0.8], rtol=1e-5)
    np.testing.assert_array_equal(same, small)
    assert big.tolist() == [3.0, 4.0]  # input untouched


def test_clipping_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="^clipping_norm"):
        clip_by_l2(np.ones(3), 0.0)
    for bad in (math.nan, math.inf, True):  # no bound at all, or a bool taken for 1
        with pytest.raises(ValueError, match="^clipping_norm"):
            clip_by_l2(np.ones(3), bad)
    with pytest.raises(ValueError, match="^update"):
        clip_by_l2(np.array([1.0, np.nan]), 1.0)


@pytest.mark.parametrize("target_quantile", [0.5, 0.8])
def test_adaptive_clipping_converges_to_the_target_quantile(target_quantile: float) -> None:
    # Arrange: update norms ~ lognormal(log 2, 0.5); ~100 clients per round (q=0.1, N=1000).
    gen = np.random.default_rng(7)
    mu, sigma, m = math.log(2.0), 0.5, 100.0
    true_quantile = float(np.exp(mu + sigma * _normal_ppf(target_quantile)))
    clipper = AdaptiveClipper(
        initial_norm=0.1,
        target_quantile=target_quantile,
        learning_rate=0.2,
        count_stddev=m / 20,
        expected_cohort_size=m,
    )

    # Act
    trace = []
    for _ in range(400):
        cohort_size = gen.binomial(1000, 0.1)
        norms = gen.lognormal(mu, sigma, size=cohort_size)
        trace.append(clipper.update(norms, gen))

    # Assert: started 20x too small; ends (and stays) within 10% of the true quantile.
    assert abs(clipper.current_norm / true_quantile - 1) < 0.10
    assert abs(float(np.mean(trace[-100:])) / true_quantile - 1) < 0.05


def test_adaptive_clipper_state_round_trip() -> None:
    gen = np.random.default_rng(1)
    clipper = AdaptiveClipper(initial_norm=1.0, count_stddev=1.0, expected_cohort_size=20)
    clipper.update(gen.uniform(0, 2, size=20), gen)

    copy = AdaptiveClipper(initial_norm=5.0, count_stddev=1.0, expected_cohort_size=20)
    copy.load_state_dict(clipper.state_dict())
    norms = np.linspace(0, 2, 20)

    assert copy.current_norm == clipper.current_norm and copy.rounds == 1
    assert copy.update(norms, np.random.default_rng(3)) == clipper.update(
        norms, np.random.default_rng(3)
    )


def test_update_noise_multiplier_composes_back_to_the_total() -> None:
    z_update = update_noise_multiplier(noise_multiplier=1.0, count_stddev=5.0)

    assert z_update > 1.0
    assert z_update**-2 + 10.0**-2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="^count_stddev"):
        update_noise_multiplier(noise_multiplier=1.0, count_stddev=0.5)


def _normal_ppf(p: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(p))


def test_the_clip_does_not_depend_on_the_dtype_the_update_arrives_in() -> None:
    # updates arrive as float32 from the wire: clipped in float64, rounded once at the end
    x = np.random.default_rng(5).normal(size=4000)
    for norm in (0.5, 3.0, 1e-3):
        from32, n32 = clip_by_l2(x.astype(np.float32), norm)
        from64, n64 = clip_by_l2(x.astype(np.float32).astype(np.float64), norm)
        assert n32 == n64
        np.testing.assert_array_equal(from32, from64)


def test_adaptive_clipping_compares_each_norm_exactly_with_the_current_norm() -> None:
    # float32(0.1) = 0.100000001...: above a current norm of exactly 0.1, so not "below"
    clipper = AdaptiveClipper(initial_norm=0.1, count_stddev=0.0, expected_cohort_size=2)
    rng = np.random.default_rng(0)
    below = clipper.noisy_fraction_below(np.array([0.1, 0.05], dtype=np.float32), rng)
    assert below == 0.5  # one of two
    assert clipper.noisy_fraction_below([0.1, 0.05], rng) == 1.0  # float64: both


def test_any_positive_count_noise_is_added() -> None:
    clipper = AdaptiveClipper(initial_norm=1.0, count_stddev=0.5, expected_cohort_size=4)
    draws = {clipper.noisy_fraction_below([0.5, 2.0], np.random.default_rng(s)) for s in range(5)}
    assert len(draws) == 5 and 0.5 not in draws  # noisy, not the exact fraction
