"""Central DP wrapper, noise and adaptive clipping, stated from the papers (DP-FedAvg,
McMahan et al., ICLR 2018; Andrew et al., NeurIPS 2021): tests that mutation testing showed
were missing (the wrapper had none of its own)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fl_core.aggregation.fedavg import FedAvg
from fl_core.privacy.aggregator import CentralDP, release
from fl_core.privacy.clipping import AdaptiveClipper, clip_by_l2, update_noise_multiplier
from fl_core.privacy.noise import add_gaussian_noise, gaussian_noise_std, noisy_mean


def test_central_dp_sums_clipped_updates_ignoring_weights() -> None:
    big = np.array([6.0, 8.0, 0.0], np.float32)  # norm 10
    small = np.array([0.3, 0.0, 0.4], np.float32)  # norm 0.5
    edge = np.array([0.0, 1.0, 0.0], np.float32)  # norm exactly C
    dp = CentralDP(3, clipping_norm=1.0)

    dp.add(big, weight=100.0)
    dp.add(small, weight=1.0)
    dp.add(edge, weight=7.0)
    total = dp.result()

    np.testing.assert_allclose(total, [0.6 + 0.3, 0.8 + 1.0, 0.4], rtol=1e-6)
    assert total.dtype == np.float64
    assert dp.norms == pytest.approx([10.0, 0.5, 1.0])
    assert dp.num_clipped == 1  # strictly above C only
    assert dp.count == 3


def test_central_dp_of_an_empty_cohort_is_zero_and_uses_the_given_inner_sum() -> None:
    inner = FedAvg(2)
    dp = CentralDP(2, clipping_norm=0.5, inner=inner)

    np.testing.assert_array_equal(dp.result(), np.zeros(2))
    dp.add(np.array([3.0, 4.0], np.float32), weight=2.0)
    assert dp.inner is inner
    np.testing.assert_allclose(inner.weighted_sum(), [0.3, 0.4], rtol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_central_dp_refuses_a_bad_clipping_norm_naming_it(bad: float) -> None:
    with pytest.raises(ValueError, match="^clipping_norm: .* must be a finite number > 0$"):
        CentralDP(2, clipping_norm=bad)


def test_release_is_the_mean_over_the_expected_cohort_plus_calibrated_noise() -> None:
    total = np.full(20_000, 3.0)
    z, c, m = 1.5, 0.5, 4.0

    out = release(
        total,
        noise_multiplier=z,
        clipping_norm=c,
        expected_cohort_size=m,
        rng=np.random.default_rng(0),
    )
    same = noisy_mean(
        total, noise_multiplier=z, clipping_norm=c, expected_cohort_size=m,
        rng=np.random.default_rng(0),
    )  # fmt: skip

    np.testing.assert_array_equal(out, same)
    assert out.dtype == np.float32
    noise = out.astype(np.float64) - 3.0 / m
    assert noise.std() == pytest.approx(z * c / m, rel=0.03)
    assert abs(noise.mean()) < 5 * (z * c / m) / math.sqrt(noise.size)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"noise_multiplier": -0.1}, "noise_multiplier"),
        ({"noise_multiplier": math.nan}, "noise_multiplier"),
        ({"noise_multiplier": True}, "noise_multiplier"),
        ({"clipping_norm": 0.0}, "clipping_norm"),
        ({"clipping_norm": math.inf}, "clipping_norm"),
        ({"expected_cohort_size": 0.0}, "expected_cohort_size"),
        ({"expected_cohort_size": math.nan}, "expected_cohort_size"),
    ],
)
def test_noise_std_refuses_bad_arguments_naming_them(kwargs: dict, name: str) -> None:
    args = {"noise_multiplier": 1.0, "clipping_norm": 1.0, "expected_cohort_size": 10.0, **kwargs}

    with pytest.raises(ValueError, match=f"^{name}: "):
        gaussian_noise_std(**args)


def test_noise_std_formula_and_zero_noise() -> None:
    assert gaussian_noise_std(
        noise_multiplier=2.0, clipping_norm=0.5, expected_cohort_size=10.0
    ) == pytest.approx(0.1)
    x = np.array([1.0, 2.0])
    out = add_gaussian_noise(x, std=0.0, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out, x.astype(np.float32))
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="^std: "):
        add_gaussian_noise(x, std=-1.0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="^mean_update: contains non-finite values$"):
        add_gaussian_noise(np.array([np.nan]), std=1.0, rng=np.random.default_rng(0))


def test_clip_by_l2_scales_onto_the_ball_and_keeps_inner_updates() -> None:
    inside = np.array([0.3, 0.4], np.float64)
    outside = np.array([3.0, 4.0], np.float64)

    kept, n_in = clip_by_l2(inside, 1.0)
    clipped, n_out = clip_by_l2(outside, 1.0)

    np.testing.assert_array_equal(kept, inside.astype(np.float32))
    assert (n_in, n_out) == (pytest.approx(0.5), pytest.approx(5.0))
    assert np.linalg.norm(clipped.astype(np.float64)) <= 1.0
    np.testing.assert_allclose(clipped, [0.6, 0.8], rtol=1e-5)
    with pytest.raises(ValueError, match="^update: contains non-finite values$"):
        clip_by_l2(np.array([np.inf]), 1.0)
    with pytest.raises(ValueError, match="^clipping_norm: "):
        clip_by_l2(inside, 0.0)


def test_update_noise_multiplier_solves_the_split_budget() -> None:
    z = update_noise_multiplier(noise_multiplier=2.0, count_stddev=5.0)

    assert z**-2 + (2 * 5.0) ** -2 == pytest.approx(2.0**-2)
    assert z > 2.0
    with pytest.raises(ValueError, match="^count_stddev: 0.5 must be > noise_multiplier / 2"):
        update_noise_multiplier(noise_multiplier=1.0, count_stddev=0.5)


def test_adaptive_clipper_moves_geometrically_towards_the_target_quantile() -> None:
    clipper = AdaptiveClipper(
        initial_norm=1.0, target_quantile=0.5, learning_rate=0.2, count_stddev=0.0,
        expected_cohort_size=4.0,
    )  # fmt: skip

    up = clipper.update([2.0, 3.0, 4.0, 5.0], np.random.default_rng(0))  # none below: grow
    assert up == pytest.approx(math.exp(0.2 * 0.5))
    assert clipper.rounds == 1
    down = clipper.update([0.1, 0.2, 0.3, 0.4], np.random.default_rng(0))  # all below: shrink
    assert down == pytest.approx(up * math.exp(-0.2 * 0.5))
    exact = clipper.noisy_fraction_below([down, 2 * down], np.random.default_rng(0))
    assert exact == pytest.approx((0.5 - 0.5) / 4.0 + 0.5)  # a norm equal to C counts below

    restored = AdaptiveClipper(initial_norm=9.0, count_stddev=0.0, expected_cohort_size=4.0)
    restored.load_state_dict(clipper.state_dict())
    assert (restored.current_norm, restored.rounds) == (clipper.current_norm, 2)


def test_adaptive_clipper_noise_is_on_the_count_with_the_given_std() -> None:
    clipper = AdaptiveClipper(initial_norm=1.0, count_stddev=2.0, expected_cohort_size=10.0)
    rng = np.random.default_rng(1)

    draws = np.array([clipper.noisy_fraction_below([0.5] * 10, rng) for _ in range(4000)])

    assert draws.mean() == pytest.approx(1.0, abs=0.01)  # (10 * 0.5) / 10 + 0.5
    assert draws.std() == pytest.approx(2.0 / 10.0, rel=0.05)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"initial_norm": 0.0}, "initial_norm"),
        ({"target_quantile": 1.0}, "target_quantile"),
        ({"target_quantile": 0.0}, "target_quantile"),
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"count_stddev": -1.0}, "count_stddev"),
        ({"count_stddev": math.nan}, "count_stddev"),
        ({"expected_cohort_size": 0.0}, "expected_cohort_size"),
    ],
)
def test_adaptive_clipper_refuses_bad_arguments_naming_them(kwargs: dict, name: str) -> None:
    args = {"initial_norm": 1.0, "count_stddev": 1.0, "expected_cohort_size": 5.0, **kwargs}

    with pytest.raises(ValueError, match=f"^{name}: "):
        AdaptiveClipper(**args)


@pytest.mark.parametrize(
    ("state", "name"),
    [
        ({"current_norm": "1"}, "state.current_norm"),
        ({"current_norm": True}, "state.current_norm"),
        ({"current_norm": -1.0}, "state.current_norm"),
        ({"current_norm": 1.0, "rounds": -1}, "state.rounds"),
        ({"current_norm": 1.0, "rounds": 1.5}, "state.rounds"),
    ],
)
def test_adaptive_clipper_refuses_a_bad_state(state: dict, name: str) -> None:
    clipper = AdaptiveClipper(initial_norm=1.0, count_stddev=1.0, expected_cohort_size=5.0)

    with pytest.raises(ValueError, match=f"^{name}: "):
        clipper.load_state_dict(state)
    assert clipper.current_norm == 1.0


def test_an_update_exactly_on_the_ball_is_returned_unchanged() -> None:
    on_ball = np.array([0.0, 1.0, 0.0], np.float32)

    clipped, norm = clip_by_l2(on_ball, 1.0)

    assert norm == 1.0
    np.testing.assert_array_equal(clipped, on_ball)


def test_the_split_budget_names_each_argument() -> None:
    with pytest.raises(ValueError, match="^noise_multiplier: 0.0 must be a finite number > 0$"):
        update_noise_multiplier(noise_multiplier=0.0, count_stddev=1.0)
    with pytest.raises(ValueError, match="^count_stddev: -1.0 must be a finite number > 0$"):
        update_noise_multiplier(noise_multiplier=1.0, count_stddev=-1.0)
    with pytest.raises(ValueError, match=r"must be > noise_multiplier / 2 \(1\.5\) for the update"):
        update_noise_multiplier(noise_multiplier=3.0, count_stddev=1.0)


def test_adaptive_clipper_defaults_to_the_papers_learning_rate_and_adds_its_noise() -> None:
    clipper = AdaptiveClipper(initial_norm=1.0, count_stddev=0.0, expected_cohort_size=4.0)
    assert clipper.update([2.0, 3.0, 4.0, 5.0], np.random.default_rng(0)) == pytest.approx(
        math.exp(0.2 * 0.5)
    )

    noisy = AdaptiveClipper(initial_norm=1.0, count_stddev=3.0, expected_cohort_size=4.0)
    z = float(np.random.default_rng(7).normal(0.0, 3.0))
    got = noisy.noisy_fraction_below([0.5, 0.5, 2.0, 2.0], np.random.default_rng(7))
    assert got == pytest.approx((0.0 + z) / 4.0 + 0.5)


def test_gaussian_noise_is_added_whenever_std_is_positive() -> None:
    x = np.zeros(1000)

    out = add_gaussian_noise(x, std=1.0, rng=np.random.default_rng(3))

    expected = np.random.default_rng(3).normal(0.0, 1.0, size=1000)
    np.testing.assert_allclose(out, expected.astype(np.float32), rtol=1e-6)
    with pytest.raises(ValueError, match="^std: True must be a finite number >= 0$"):
        add_gaussian_noise(x, std=True, rng=np.random.default_rng(0))


def test_small_and_zero_noise_multipliers_are_allowed() -> None:
    for z in (0.0, 0.5):
        std = gaussian_noise_std(noise_multiplier=z, clipping_norm=1.0, expected_cohort_size=2.0)
        assert std == pytest.approx(z / 2.0)


def test_a_clipper_state_without_rounds_starts_at_round_0() -> None:
    clipper = AdaptiveClipper(initial_norm=1.0, count_stddev=1.0, expected_cohort_size=5.0)

    clipper.load_state_dict({"current_norm": 2.5})

    assert (clipper.current_norm, clipper.rounds) == (2.5, 0)
    with pytest.raises(ValueError, match="^norms_of_cohort: contains non-finite values$"):
        clipper.noisy_fraction_below([1.0, math.nan], np.random.default_rng(0))
