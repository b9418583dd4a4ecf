"""Histograms clients compute locally, and PSI from their counts alone."""

from __future__ import annotations

import numpy as np
import pytest

from fl_core.histograms import bin_counts, grid_edges, histogram_grid, quantile_edges, regroup
from fl_core.monitoring import drift_statistic, psi_from_counts

GRID = {"low": 0.0, "high": 1.0, "bins": 64, "num_features": 3}


def _federated_psi(reference_parts: list[np.ndarray], current_parts: list[np.ndarray]) -> float:
    """What the server computes: summed client counts on the grid, quantile edges, then the
    summed client counts of the current data in those edges."""
    fine_edges = grid_edges(GRID)
    fine = np.sum([bin_counts(x, fine_edges) for x in reference_parts], axis=0)
    edges = quantile_edges(fine, fine_edges, bins=10)
    current = [np.sum([bin_counts(x, edges)[j] for x in current_parts], axis=0) for j in range(3)]
    ref = [regroup(fine[j], fine_edges[j], edges[j]) for j in range(3)]
    return float(np.mean([psi_from_counts(ref[j], current[j]) for j in range(3)]))


def test_reference_counts_in_quantile_bins_are_exact_sums_of_grid_counts() -> None:
    x = np.random.default_rng(0).beta(2, 5, size=(500, 3))
    fine_edges = grid_edges(GRID)
    fine = np.asarray(bin_counts(x, fine_edges))
    edges = quantile_edges(fine, fine_edges, bins=10)

    direct = bin_counts(x, edges)

    for j in range(3):
        assert regroup(fine[j], fine_edges[j], edges[j]).tolist() == direct[j]
        assert 5 <= len(edges[j]) <= 9  # about ten bins of about equal mass
        assert max(direct[j]) < 0.2 * len(x)


def test_a_feature_constant_in_the_reference_keeps_two_bins() -> None:
    x = np.zeros((50, 3))
    fine_edges = grid_edges(GRID)
    edges = quantile_edges(np.asarray(bin_counts(x, fine_edges)), fine_edges, bins=10)
    assert all(len(e) == 1 for e in edges)
    assert bin_counts(np.full((4, 3), 0.5), edges) == [[0, 4]] * 3


def test_federated_psi_tracks_the_central_psi_on_the_same_rows() -> None:
    rng = np.random.default_rng(1)
    levels = np.arange(17) / 16  # digits-like pixel levels
    ref = rng.choice(levels, size=(1500, 3), p=np.linspace(1, 3, 17) / np.linspace(1, 3, 17).sum())
    same = rng.choice(levels, size=(400, 3), p=np.linspace(1, 3, 17) / np.linspace(1, 3, 17).sum())
    shifted = np.clip(same + 0.3, 0, 1)

    stable = _federated_psi(np.array_split(ref, 3), np.array_split(same, 2))
    drifted = _federated_psi(np.array_split(ref, 3), np.array_split(shifted, 2))

    assert stable < 0.1 < 0.25 < drifted
    assert drifted == pytest.approx(drift_statistic(ref, shifted)["psi_mean"], rel=0.25)


def test_psi_from_counts_refuses_mismatched_or_empty_counts() -> None:
    with pytest.raises(ValueError, match="one length"):
        psi_from_counts(np.array([1, 2]), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="positive total"):
        psi_from_counts(np.array([0, 0]), np.array([1, 2]))


def test_grid_from_the_data_contract_stays_small_for_wide_inputs() -> None:
    grid = histogram_grid({"num_features": 3072, "feature_min": 0.0, "feature_max": 1.0})
    assert grid["num_features"] * grid["bins"] <= 100_000
    with pytest.raises(ValueError, match="high > low"):
        histogram_grid({"num_features": 2, "feature_min": 1.0, "feature_max": 1.0})
