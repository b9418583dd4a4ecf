"""Property-based tests (hypothesis) of the aggregation rules: permutation invariance,
weights, translation equivariance and the bounds each paper guarantees.

Updates are drawn as (n, d) float32 matrices of moderate magnitude; robust rules that pick
by distance (Krum, Bulyan) get continuous random draws so ties have probability zero.
Every property is stated from the rule's definition, not from the implementation.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fl_core.aggregation import create_aggregator
from fl_core.aggregation import robust_math as rm
from fl_core.aggregation.fedbuff import FedBuffBuffer, staleness_weight
from fl_core.aggregation.math import weighted_average

SETTINGS = settings(max_examples=60, deadline=None)
values = st.floats(-100, 100, allow_nan=False, width=32)


@st.composite
def cohorts(draw: st.DrawFn, min_n: int = 1, max_n: int = 9) -> np.ndarray:
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, 7))
    return draw(arrays(np.float32, (n, d), elements=values))


@st.composite
def continuous(draw: st.DrawFn, min_n: int, max_n: int = 11) -> np.ndarray:
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def weights_for(n: int) -> st.SearchStrategy[np.ndarray]:
    return arrays(np.float64, n, elements=st.integers(1, 1000).map(float))


permutations = st.randoms(use_true_random=False)


def _perm(rand: random.Random, n: int) -> np.ndarray:
    order = list(range(n))
    rand.shuffle(order)
    return np.array(order)


def _close(a: np.ndarray, b: np.ndarray, scale: float = 100.0) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)


# --------------------------------------------------------------------------- FedAvg


@SETTINGS
@given(data=st.data(), u=cohorts())
def test_fedavg_is_the_weighted_mean_and_ignores_order(data: st.DataObject, u: np.ndarray) -> None:
    w = data.draw(weights_for(len(u)))
    p = _perm(data.draw(permutations), len(u))
    expected = (w[:, None] * u.astype(np.float64)).sum(axis=0) / w.sum()

    agg = create_aggregator("fedavg", dim=u.shape[1])
    for i in p:
        agg.add(u[i], weight=float(w[i]))

    _close(agg.result(), expected)
    _close(weighted_average(u, w), expected)


@SETTINGS
@given(data=st.data(), u=cohorts(max_n=5))
def test_integer_weights_equal_repeating_the_update(data: st.DataObject, u: np.ndarray) -> None:
    w = data.draw(arrays(np.int64, len(u), elements=st.integers(1, 4)))
    repeated = np.repeat(u, w, axis=0)

    _close(weighted_average(u, w.astype(float)), repeated.astype(np.float64).mean(axis=0))
    _close(weighted_average(u, 7.5 * w.astype(float)), weighted_average(u, w.astype(float)))


# --------------------------------------------------------------------------- median, trimmed mean


@SETTINGS
@given(data=st.data(), u=cohorts())
def test_coordinate_median_is_order_free_bounded_and_translation_equivariant(
    data: st.DataObject, u: np.ndarray
) -> None:
    p = _perm(data.draw(permutations), len(u))
    shift = data.draw(arrays(np.float32, u.shape[1], elements=st.integers(-50, 50).map(float)))
    med = rm.coordinate_median(u)

    np.testing.assert_array_equal(rm.coordinate_median(u[p]), med)
    np.testing.assert_allclose(med, np.median(u.astype(np.float64), axis=0), rtol=1e-6, atol=1e-5)
    assert np.all(med >= u.min(axis=0)) and np.all(med <= u.max(axis=0))
    _close(rm.coordinate_median(u + shift), med + shift)


@SETTINGS
@given(data=st.data(), u=cohorts(min_n=1, max_n=12), beta=st.floats(0, 0.49))
def test_trimmed_mean_drops_the_extremes_of_each_coordinate(
    data: st.DataObject, u: np.ndarray, beta: float
) -> None:
    p = _perm(data.draw(permutations), len(u))
    n = len(u)
    k = int(beta * n)
    s = np.sort(u.astype(np.float64), axis=0)
    expected = s[k : n - k].mean(axis=0)

    got = rm.trimmed_mean(u, beta=beta)

    _close(got, expected)
    _close(rm.trimmed_mean(u[p], beta=beta), got)
    assert np.all(got >= s[k] - 1e-3) and np.all(got <= s[n - k - 1] + 1e-3)


@SETTINGS
@given(data=st.data(), u=cohorts())
def test_weighted_median_ignores_order_and_weight_scale(data: st.DataObject, u: np.ndarray) -> None:
    w = data.draw(weights_for(len(u)))
    p = _perm(data.draw(permutations), len(u))
    got = rm.weighted_coordinate_median(u, w)

    np.testing.assert_allclose(rm.weighted_coordinate_median(u[p], w[p]), got, atol=1e-6)
    np.testing.assert_allclose(rm.weighted_coordinate_median(u, 4.0 * w), got, atol=1e-6)
    np.testing.assert_array_equal(
        rm.weighted_coordinate_median(u, np.ones(len(u))), rm.coordinate_median(u)
    )
    assert np.all(got >= u.min(axis=0)) and np.all(got <= u.max(axis=0))
    # at least half the weight lies on each side of the weighted median, per coordinate
    below = (w[:, None] * (u <= got)).sum(axis=0)
    above = (w[:, None] * (u >= got)).sum(axis=0)
    assert np.all(below >= w.sum() / 2 - 1e-9) and np.all(above >= w.sum() / 2 - 1e-9)


# --------------------------------------------------------------------------- Krum, Bulyan


def _krum_scores(u: np.ndarray, f: int) -> np.ndarray:
    """Sum of squared distances to the ``n - f - 2`` nearest others (Blanchard et al.)."""
    n = len(u)
    d2 = ((u[:, None, :].astype(np.float64) - u[None, :, :]) ** 2).sum(axis=2)
    return np.array([np.sort(np.delete(d2[i], i))[: max(1, n - f - 2)].sum() for i in range(n)])


@SETTINGS
@given(data=st.data(), f=st.integers(0, 3))
def test_krum_picks_a_lowest_score_input_regardless_of_order(data: st.DataObject, f: int) -> None:
    # n - f - 2 >= 2 neighbours: with a single neighbour, mutual nearest pairs always tie
    u = data.draw(continuous(min_n=max(2 * f + 3, f + 4)))
    n = len(u)
    p = _perm(data.draw(permutations), n)
    scores = _krum_scores(u, f)
    order = np.argsort(scores)

    got = rm.krum(u, num_byzantine=f)

    np.testing.assert_array_equal(got, u[order[0]])
    np.testing.assert_array_equal(rm.krum(u[p], num_byzantine=f), got)
    multi = rm.multi_krum(u, num_byzantine=f)
    _close(multi, u[order[: n - f]].astype(np.float64).mean(axis=0), 1.0)
    _close(rm.multi_krum(u[p], num_byzantine=f), multi, 1.0)


@SETTINGS
@given(data=st.data(), f=st.integers(0, 2))
def test_bulyan_stays_within_the_range_of_the_updates(data: st.DataObject, f: int) -> None:
    u = data.draw(continuous(min_n=4 * f + 3, max_n=4 * f + 6))

    got = rm.bulyan(u, num_byzantine=f)

    assert np.all(got >= u.min(axis=0) - 1e-6) and np.all(got <= u.max(axis=0) + 1e-6)


BULYAN_TIES = np.array(  # found by hypothesis: 7 updates, f = 1
    [
        [0.12573022, -0.13210486],
        [0.64042264, 0.10490011],
        [-0.5356694, 0.36159506],
        [1.304, 0.94708097],
        [-0.70373523, -1.2654215],
        [-0.62327445, 0.04132598],
        [-2.3250308, -0.21879166],
    ],
    dtype=np.float32,
)


def test_bulyan_does_not_depend_on_the_order_of_the_updates() -> None:
    # Mutual nearest neighbours tie in recursive Krum; ties go by content, not position.
    import itertools

    results = {
        rm.bulyan(BULYAN_TIES[list(order)].copy(), num_byzantine=1).tobytes()
        for order in itertools.islice(itertools.permutations(range(7)), 0, 5040, 7)
    }
    assert len(results) == 1


def test_krum_refuses_a_cohort_too_small_for_its_guarantee() -> None:
    with pytest.raises(ValueError):
        rm.krum(np.zeros((4, 2), dtype=np.float32), num_byzantine=1)  # needs n >= 2f + 3 = 5


# --------------------------------------------------------------------------- clipping, trust


@SETTINGS
@given(data=st.data(), u=cohorts(), max_norm=st.floats(0.1, 50))
def test_norm_bounding_is_the_mean_of_clipped_updates(
    data: st.DataObject, u: np.ndarray, max_norm: float
) -> None:
    w = data.draw(weights_for(len(u)))
    p = _perm(data.draw(permutations), len(u))
    x = u.astype(np.float64)
    norms = np.linalg.norm(x, axis=1)
    clipped = x * np.minimum(1.0, max_norm / np.maximum(norms, 1e-300))[:, None]
    expected = (w[:, None] * clipped).sum(axis=0) / w.sum()

    got = rm.norm_bounding(u, w, max_norm=max_norm)

    _close(got, expected, max_norm)
    _close(rm.norm_bounding(u[p], w[p], max_norm=max_norm), got, max_norm)
    assert np.linalg.norm(got) <= max_norm * (1 + 1e-5)


@SETTINGS
@given(data=st.data(), u=cohorts(), tau=st.floats(0.1, 20))
def test_centered_clipping_moves_the_center_by_at_most_tau(
    data: st.DataObject, u: np.ndarray, tau: float
) -> None:
    center = data.draw(arrays(np.float32, u.shape[1], elements=values))
    p = _perm(data.draw(permutations), len(u))

    got = rm.centered_clipping(u, center=center, tau=tau)

    assert np.linalg.norm(got.astype(np.float64) - center) <= tau * (1 + 1e-4) + 1e-3
    _close(rm.centered_clipping(u[p], center=center, tau=tau), got)


@SETTINGS
@given(data=st.data(), u=cohorts())
def test_fltrust_output_is_bounded_by_the_root_norm_and_ignores_order(
    data: st.DataObject, u: np.ndarray
) -> None:
    root = data.draw(arrays(np.float32, u.shape[1], elements=values))
    root_norm = float(np.linalg.norm(root.astype(np.float64)))
    if not root_norm > 1e-3:
        return
    p = _perm(data.draw(permutations), len(u))

    got, trust = rm.fltrust(u, root)
    again, trust_p = rm.fltrust(u[p], root)

    assert np.all((trust >= 0) & (trust <= 1))
    assert np.linalg.norm(got) <= root_norm * (1 + 1e-4) + 1e-4
    _close(again, got, root_norm)
    np.testing.assert_allclose(trust_p, trust[p], atol=1e-9)
    # an update pointing away from the root update gets no trust
    opposite = (u @ root.astype(np.float64)) <= 0
    assert np.all(trust[opposite] == 0)


# --------------------------------------------------------------------------- FedBuff


@SETTINGS
@given(
    data=st.data(),
    u=cohorts(max_n=6),
    exponent=st.floats(0, 2),
    max_staleness=st.one_of(st.none(), st.integers(0, 5)),
)
def test_fedbuff_is_the_staleness_weighted_sum_over_the_sample_weights(
    data: st.DataObject, u: np.ndarray, exponent: float, max_staleness: int | None
) -> None:
    n = len(u)
    w = data.draw(weights_for(n))
    stale = data.draw(arrays(np.int64, n, elements=st.integers(0, 8)))
    current = 10
    kept = np.array([max_staleness is None or s <= max_staleness for s in stale])
    s_w = np.where(kept, (1.0 + stale) ** -exponent, 0.0)
    expected = (
        ((w * s_w)[:, None] * u.astype(np.float64)).sum(axis=0) / w[kept].sum()
        if kept.any()
        else np.zeros(u.shape[1])
    )

    buffer = FedBuffBuffer(
        u.shape[1], buffer_size=n, exponent=exponent, max_staleness=max_staleness
    )
    for i in range(n):
        buffer.add(
            u[i], weight=float(w[i]), base_version=current - int(stale[i]), current_version=current
        )

    for s, sw in zip(stale, s_w, strict=True):
        assert staleness_weight(
            int(s), exponent=exponent, max_staleness=max_staleness
        ) == pytest.approx(sw)
    if kept.any():
        _close(buffer.flush(), expected)
    assert buffer.num_dropped == int((~kept).sum())
