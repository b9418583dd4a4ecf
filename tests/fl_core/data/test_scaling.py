"""Federated feature scaling: client aggregates combine to the pooled statistics."""

from __future__ import annotations

import numpy as np
import pytest

from fl_core.data.scaling import FeatureMoments, client_moments, combine


def test_combined_client_moments_equal_the_pooled_mean_and_std() -> None:
    rng = np.random.default_rng(0)
    clients = [
        rng.normal(loc, scale, (n, 3))
        for loc, scale, n in [(0.0, 1.0, 40), (100.0, 5.0, 7), (-3.0, 0.1, 120)]
    ]

    scaling = combine(client_moments(x) for x in clients)

    pooled = np.concatenate(clients)
    np.testing.assert_allclose(scaling.mean, pooled.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(scaling.std, pooled.std(axis=0), rtol=1e-8)
    assert (scaling.count, scaling.num_clients) == (167, 3)


def test_constant_feature_is_centred_not_divided_by_zero() -> None:
    x = np.column_stack([np.full(10, 7.0), np.arange(10.0)])

    scaling = combine([client_moments(x)])

    assert scaling.std[0] == 1.0 and scaling.mean[0] == 7.0


def test_malformed_or_mismatched_reports_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        FeatureMoments.from_json({"count": 3, "sum": [float("nan")], "sum_sq": [1.0]})
    with pytest.raises(ValueError, match="different numbers of features"):
        combine([client_moments(np.ones((2, 2))), client_moments(np.ones((2, 3)))])
