"""Attack simulation: label flipping and model-poisoning attacks on updates."""

from __future__ import annotations

import numpy as np
import pytest

from fl_core.aggregation import create_aggregator
from fl_core.simulation.attacks import (
    alie_z,
    apply_update_attack,
    choose_malicious,
    flip_labels,
    poison_updates,
)


def test_flip_labels_mirrors_the_classes() -> None:
    y = np.array([0, 1, 2, 9, 9], dtype=np.int64)

    flipped = flip_labels(y, 10)

    np.testing.assert_array_equal(flipped, [9, 8, 7, 0, 0])
    assert flipped.dtype == y.dtype and y[0] == 0  # a new array
    with pytest.raises(ValueError, match="outside"):
        flip_labels(np.array([3]), 3)
    with pytest.raises(ValueError, match="num_classes"):
        flip_labels(y, 1)


def test_sign_flip_scaling_and_gaussian_act_on_a_vector_or_rows() -> None:
    u = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    rows = np.vstack([u, 2 * u])
    rng = np.random.default_rng(0)

    np.testing.assert_array_equal(apply_update_attack("sign_flip", u, rng=rng), -u)
    np.testing.assert_array_equal(
        apply_update_attack("sign_flip", rows, rng=rng, scale=3), -3 * rows
    )
    np.testing.assert_array_equal(apply_update_attack("scaling", u, rng=rng), 10 * u)
    noisy = apply_update_attack("gaussian", np.zeros(20000), rng=rng, noise_std=2.0)
    assert noisy.dtype == np.float32 and abs(noisy.std() - 2.0) < 0.05


def test_alie_moves_z_standard_deviations_from_the_benign_mean() -> None:
    benign = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]], dtype=np.float32)

    out = apply_update_attack("alie", benign, rng=np.random.default_rng(0), z=1.5)

    np.testing.assert_allclose(out, [2.0 - 1.5 * float(np.std([0, 2, 4])), 1.0], rtol=1e-6)
    # Baruch et al.: n=50, f=12 -> s = 26 - 12 = 14, z = Phi^-1(36/50) ~= 0.583
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-3)
    with pytest.raises(ValueError, match="benign"):
        apply_update_attack("alie", benign[0], rng=np.random.default_rng(0), z=1.0)


def test_poison_updates_replaces_only_the_malicious_rows() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 8)).astype(np.float32)
    mask = np.zeros(10, dtype=bool)
    mask[[2, 7]] = True

    flipped = poison_updates(x, mask, "sign_flip", rng=rng)
    alie = poison_updates(x, mask, "alie", rng=rng)

    np.testing.assert_array_equal(flipped[~mask], x[~mask])
    np.testing.assert_array_equal(flipped[mask], -x[mask])
    z = alie_z(10, 2)
    expected = x[~mask].mean(axis=0) - z * x[~mask].std(axis=0)
    np.testing.assert_allclose(alie[2], expected, rtol=1e-5)
    np.testing.assert_array_equal(alie[2], alie[7])
    with pytest.raises(ValueError, match="unknown attack 'lie'"):
        poison_updates(x, mask, "lie", rng=rng)


def test_choose_malicious_draws_the_configured_fraction() -> None:
    clients = [f"c{i}" for i in range(20)]

    bad = choose_malicious(clients, fraction=0.25, rng=np.random.default_rng(3))

    assert len(bad) == 5 and set(bad) <= set(clients)
    assert bad == choose_malicious(clients[::-1], fraction=0.25, rng=np.random.default_rng(3))
    with pytest.raises(ValueError, match="fraction"):
        choose_malicious(clients, fraction=1.5, rng=np.random.default_rng(3))


def test_robust_rules_resist_a_boosting_attack_that_breaks_fedavg() -> None:
    rng = np.random.default_rng(4)
    honest_mean = np.full(50, 0.1)
    x = rng.normal(honest_mean, 0.05, size=(20, 50)).astype(np.float32)
    mask = np.zeros(20, dtype=bool)
    mask[:4] = True
    poisoned = poison_updates(x, mask, "scaling", rng=rng, scale=-100.0)

    rules: list[tuple[str, dict[str, float]]] = [
        ("fedavg", {}),
        ("median", {}),
        ("trimmed_mean", {"beta": 0.2}),
        ("krum", {"num_byzantine": 4}),
        ("bulyan", {"num_byzantine": 4}),
    ]
    errors = {}
    for name, kwargs in rules:
        agg = create_aggregator(name, dim=50, **kwargs)
        for u in poisoned:
            agg.add(u, weight=1.0)
        errors[name] = float(np.abs(agg.result() - honest_mean).mean())

    assert errors["fedavg"] > 1.0
    assert all(err < 0.06 for name, err in errors.items() if name != "fedavg"), errors
