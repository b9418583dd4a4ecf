"""Noise statistics of the fixed-denominator estimator, and Poisson cohort sampling."""

from __future__ import annotations

import numpy as np
import pytest

from fl_core.privacy.noise import add_gaussian_noise, gaussian_noise_std, noisy_mean
from fl_core.privacy.sampling import poisson_cohort


def test_noise_std_formula() -> None:
    std = gaussian_noise_std(noise_multiplier=1.1, clipping_norm=0.5, expected_cohort_size=25.0)

    assert std == pytest.approx(1.1 * 0.5 / 25.0)


def test_added_noise_has_the_formula_std(rng: np.random.Generator) -> None:
    std = gaussian_noise_std(noise_multiplier=1.3, clipping_norm=2.0, expected_cohort_size=40.0)
    mean_update = np.full(200_000, 0.25, dtype=np.float32)

    noised = add_gaussian_noise(mean_update, std=std, rng=rng)
    noise = noised.astype(np.float64) - 0.25

    assert noised.dtype == np.float32
    assert float(noise.std()) == pytest.approx(std, rel=0.01)
    assert abs(float(noise.mean())) < 5 * std / np.sqrt(noise.size)


def test_noisy_mean_divides_by_the_expected_cohort_size(rng: np.random.Generator) -> None:
    m, z, c = 50.0, 1.0, 1.0
    total = np.full(200_000, 10.0)  # sum of clipped updates

    release = noisy_mean(
        total, noise_multiplier=z, clipping_norm=c, expected_cohort_size=m, rng=rng
    )

    assert float(release.mean()) == pytest.approx(10.0 / m, abs=5 * z * c / m / np.sqrt(2e5))
    assert float(release.std()) == pytest.approx(z * c / m, rel=0.01)


def test_empty_cohort_release_is_noise_only(rng: np.random.Generator) -> None:
    release = noisy_mean(
        np.zeros(100_000),
        noise_multiplier=2.0,
        clipping_norm=1.0,
        expected_cohort_size=10.0,
        rng=rng,
    )

    assert float(release.std()) == pytest.approx(0.2, rel=0.02)


def test_poisson_sampling_frequency_matches_rate(rng: np.random.Generator) -> None:
    ids = [f"client_{i:04d}" for i in range(1000)]
    rounds, q = 200, 0.1
    counts = dict.fromkeys(ids, 0)
    sizes = []

    for _ in range(rounds):
        cohort = poisson_cohort(ids, rate=q, rng=rng)
        sizes.append(len(cohort))
        for cid in cohort:
            counts[cid] += 1

    freq = np.array(list(counts.values())) / rounds
    assert float(freq.mean()) == pytest.approx(q, rel=0.03)
    # Each client's count is Binomial(200, 0.1): sd ~ 0.021 in frequency.
    assert float(np.abs(freq - q).max()) < 6 * np.sqrt(q * (1 - q) / rounds)
    assert np.std(sizes) > 0  # the cohort size is random, not fixed


def test_poisson_cohort_is_deterministic_sorted_and_may_be_empty() -> None:
    ids = ["c", "a", "b"]

    first = poisson_cohort(ids, rate=0.5, rng=np.random.default_rng(5))
    again = poisson_cohort(list(reversed(ids)), rate=0.5, rng=np.random.default_rng(5))
    empties = sum(
        not poisson_cohort(ids, rate=0.01, rng=np.random.default_rng(s)) for s in range(50)
    )

    assert first == again == sorted(first)
    assert empties > 0
    assert poisson_cohort(ids, rate=1.0, rng=np.random.default_rng(0)) == ["a", "b", "c"]


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.01, float("nan")])
def test_poisson_rate_is_validated(rate: float) -> None:
    with pytest.raises(ValueError, match="^rate"):
        poisson_cohort(["a"], rate=rate, rng=np.random.default_rng(0))


def test_an_expected_cohort_below_one_client_is_allowed() -> None:
    # q N < 1 (a small fleet sampled at a low rate): the std grows, nothing is refused
    assert gaussian_noise_std(
        noise_multiplier=1.0, clipping_norm=2.0, expected_cohort_size=0.5
    ) == pytest.approx(4.0)


def test_the_mean_is_taken_in_float64_and_rounded_once() -> None:
    s = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    out = noisy_mean(
        s, noise_multiplier=0.0, clipping_norm=1.0, expected_cohort_size=3.3,
        rng=np.random.default_rng(1),
    )  # fmt: skip
    np.testing.assert_array_equal(out, (s.astype(np.float64) / 3.3).astype(np.float32))
