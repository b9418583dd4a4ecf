"""The robust rules as pure functions: argument checks and their messages, float32 output
for any input dtype, weights, tie-breaks and the median's midpoint at the float32 limit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fl_core.aggregation import robust_math as rm

X = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 0.0], [4.0, 3.0], [100.0, -50.0]])
W = np.array([1.0, 2.0, 3.0, 4.0, 5.0])


@pytest.mark.parametrize(
    "rule",
    [
        lambda u: rm.coordinate_median(u),
        lambda u: rm.weighted_coordinate_median(u, W),
        lambda u: rm.krum(u, num_byzantine=1),
        lambda u: rm.multi_krum(u, num_byzantine=1),
        lambda u: rm.norm_bounding(u, W, max_norm=1.0),
        lambda u: rm.centered_clipping(u, center=np.zeros(2), tau=1.0),
    ],
)
def test_rules_return_float32_for_float64_input(rule: object) -> None:
    out = rule(X)  # type: ignore[operator]

    assert out.dtype == np.float32 and out.shape == (2,)


def test_median_midpoint_does_not_overflow_near_the_float32_limit() -> None:
    big = np.float32(3e38)
    x = np.array([[big, -big], [big, -big]], dtype=np.float32)

    np.testing.assert_array_equal(rm.coordinate_median(x), [big, -big])
    np.testing.assert_array_equal(rm.weighted_coordinate_median(x, [1.0, 1.0]), [big, -big])


def test_weighted_median_treats_weights_equal_within_tolerance_as_a_tie() -> None:
    # cumulative weight 1 - 2e-12 of total 2: half the weight within 1e-12 relative
    w = np.array([1 - 2e-12, 1 + 2e-12])
    x = np.array([[1.0], [3.0]], dtype=np.float32)

    np.testing.assert_array_equal(rm.weighted_coordinate_median(x, w), [2.0])


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0, 0.0, 1.0, 1.0, 1.0], r"^weights must be positive and finite$"),
        ([1.0, -1.0, 1.0, 1.0, 1.0], r"^weights must be positive and finite$"),
        ([1.0, np.inf, 1.0, 1.0, 1.0], r"^weights must be positive and finite$"),
        ([1.0, 1.0], r"^weights must have one value per update \(5\), got shape \(2,\)$"),
    ],
)
def test_weighted_rules_refuse_bad_weights(weights: list[float], message: str) -> None:
    for rule in (
        lambda w: rm.weighted_coordinate_median(X, w),
        lambda w: rm.multi_krum(X, num_byzantine=1, weights=w),
        lambda w: rm.norm_bounding(X, w, max_norm=1.0),
        lambda w: rm.centered_clipping(X, center=np.zeros(2), tau=1.0, weights=w),
    ):
        with pytest.raises(ValueError, match=message):
            rule(weights)


def test_multi_krum_keeps_num_selected_and_weights_their_mean() -> None:
    x = np.array([[0.0], [1.0], [2.0], [4.0], [100.0]], dtype=np.float32)

    three = rm.multi_krum(x, num_byzantine=1, num_selected=3)  # 0, 1, 2
    weighted = rm.multi_krum(x, num_byzantine=1, num_selected=3, weights=[1, 2, 5, 1, 1])

    np.testing.assert_allclose(three, [1.0])
    np.testing.assert_allclose(weighted, [(0 + 2 + 10) / 8])


def test_multi_krum_gives_a_tie_at_the_cut_to_the_update_received_first() -> None:
    # 21 values symmetric around 0 (f = 1 keeps 20): +10 and -10 have equal Krum scores
    values = [6, -6, 1, 9, -5, -1, 8, -9, -2, -8, 4, 2, -10, 10, -3, 3, 0, -4, 7, 5, -7]
    x = np.array(values, dtype=np.float32)[:, None]

    chosen = rm.krum_select(rm.pairwise_sq_distances(x), num_byzantine=1, num_selected=20)

    assert 12 in chosen and 13 not in chosen  # -10 came first
    np.testing.assert_allclose(rm.multi_krum(x, num_byzantine=1), [-0.5])


def test_krum_select_picks_one_by_default_and_checks_num_selected() -> None:
    d = rm.pairwise_sq_distances(np.array([[0.0], [1.0], [2.0], [4.0], [100.0]]))

    assert rm.krum_select(d, num_byzantine=1).tolist() == [1]  # scores 5, 2, 5, 13, ...
    with pytest.raises(ValueError, match=r"^num_selected must be in \[1, 5\], got 6$"):
        rm.krum_select(d, num_byzantine=1, num_selected=6)


@pytest.mark.parametrize("rule", ["krum", "multi_krum"])
def test_krum_rules_name_themselves_when_the_cohort_is_too_small(rule: str) -> None:
    message = (
        rf"^{rule} needs n >= 2 \* num_byzantine \+ 3 updates; got n=5 with num_byzantine=2 "
    )
    with pytest.raises(ValueError, match=message):
        getattr(rm, rule)(X, num_byzantine=2)


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("inf"), float("nan")])
def test_norm_bounding_refuses_a_bad_max_norm(max_norm: float) -> None:
    with pytest.raises(ValueError, match=r"^max_norm must be a positive finite number, got"):
        rm.norm_bounding(X, W, max_norm=max_norm)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("inf"), float("nan")])
def test_centered_clipping_refuses_a_bad_tau(tau: float) -> None:
    with pytest.raises(ValueError, match=r"^tau must be a positive finite number, got"):
        rm.centered_clipping(X, center=np.zeros(2), tau=tau)


@pytest.mark.parametrize("iterations", [0, -1, 1.5, True])
def test_centered_clipping_refuses_a_bad_iteration_count(iterations: object) -> None:
    with pytest.raises(ValueError, match=r"^iterations must be an integer >= 1, got"):
        rm.centered_clipping(X, center=np.zeros(2), tau=1.0, iterations=iterations)  # type: ignore[arg-type]


def test_centered_clipping_refuses_a_center_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match=r"^center has shape \(3,\), expected \(2,\)$"):
        rm.centered_clipping(X, center=np.zeros(3), tau=1.0)


def test_centered_clipping_weights_the_clipped_steps() -> None:
    x = np.array([[2.0, 0.0], [0.0, 0.5]], dtype=np.float32)

    # steps from v = 0: [2, 0] clipped to [1, 0]; [0, 0.5] kept; weights 1/4 and 3/4
    out = rm.centered_clipping(x, center=np.zeros(2), tau=1.0, weights=[1.0, 3.0])

    np.testing.assert_allclose(out, [0.25, 0.375])


def test_fltrust_hand_computed_with_a_root_update_of_norm_two() -> None:
    root = np.array([2.0, 0.0], dtype=np.float32)
    # cos 1, 0, -1, 1/sqrt(2); the first is short (norm 0.25): rescaled to norm 2
    x = np.array([[0.25, 0], [0, 3], [-1, 0], [1, 1]], dtype=np.float32)

    out, trust = rm.fltrust(x, root)

    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(trust, [1, 0, 0, s], rtol=1e-6)
    expected = (np.array([2.0, 0.0]) + s * np.array([2 * s, 2 * s])) / (1 + s)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_fltrust_gives_a_zero_update_no_trust_without_warnings() -> None:
    x = np.array([[0.0, 0.0], [1.0, 0.0]], dtype=np.float32)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, trust = rm.fltrust(x, np.array([1.0, 0.0], dtype=np.float32))

    np.testing.assert_array_equal(trust, [0.0, 1.0])
    np.testing.assert_allclose(out, [1.0, 0.0])
