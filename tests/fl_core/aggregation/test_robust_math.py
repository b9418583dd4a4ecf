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
        lambda u: rm.fltrust(u, np.array([1.0, 1.0]))[0],
        lambda u: rm.trimmed_mean(u, beta=0.2),
        lambda u: rm.mean_around_median(u, num_kept=3),
        lambda u: rm.bulyan(u, num_byzantine=0),
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
    message = rf"^{rule} needs n >= 2 \* num_byzantine \+ 3 updates; got n=5 with num_byzantine=2 "
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


def test_fltrust_rescales_a_lone_partly_aligned_update() -> None:
    out, trust = rm.fltrust(np.array([[3.0, 3.0]], dtype=np.float32), np.array([1.0, 0.0]))

    np.testing.assert_allclose(trust, [1 / np.sqrt(2)], rtol=1e-6)
    np.testing.assert_allclose(out, [1 / np.sqrt(2), 1 / np.sqrt(2)], rtol=1e-6)  # norm 1


@pytest.mark.parametrize("root", [[0.0, 0.0], [np.inf, 0.0], [np.nan, 1.0]])
def test_fltrust_refuses_a_zero_or_non_finite_root_update(root: list[float]) -> None:
    with pytest.raises(ValueError, match=r"^root_update must be finite and non-zero$"):
        rm.fltrust(X, np.array(root))


def test_fltrust_accepts_a_short_root_update_and_checks_its_length() -> None:
    out, _ = rm.fltrust(np.array([[4.0, 0.0]]), np.array([0.5, 0.0]))

    np.testing.assert_allclose(out, [0.5, 0.0])
    with pytest.raises(ValueError, match=r"^root_update has shape \(3,\), expected \(2,\)$"):
        rm.fltrust(X, np.ones(3))


# Longer than one sorted block (4096 columns) and one Gram block (2048), with a partial one.
WIDE = rm.SORT_BLOCK + 7


def test_coordinate_rules_cover_every_column_block() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, WIDE)).astype(np.float32)
    s = np.sort(x.astype(np.float64), axis=0)
    med = np.median(x.astype(np.float64), axis=0)

    np.testing.assert_allclose(
        rm.trimmed_mean(x, beta=0.2), s[1:6].mean(axis=0), rtol=1e-5, atol=1e-6
    )
    idx = np.argsort(np.abs(x - med), axis=0, kind="stable")[:3]
    around = np.take_along_axis(x, idx, axis=0).mean(axis=0)
    np.testing.assert_allclose(
        rm.mean_around_median(list(x), num_kept=3), around, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7])
def test_trimmed_mean_refuses_a_beta_outside_zero_to_half(beta: float) -> None:
    with pytest.raises(ValueError, match=rf"^beta must be in \[0, 0.5\), got {beta}$"):
        rm.trimmed_mean(X, beta=beta)


def test_trimmed_mean_with_nothing_to_trim_is_the_plain_mean_in_float32() -> None:
    out = rm.trimmed_mean(X, beta=0.1)  # floor(0.1 * 5) = 0

    assert out.dtype == np.float32
    np.testing.assert_allclose(out, X.mean(axis=0), rtol=1e-6)


@pytest.mark.parametrize("kept", [0, 6])
def test_mean_around_median_refuses_num_kept_outside_the_cohort(kept: int) -> None:
    with pytest.raises(ValueError, match=rf"^num_kept must be in \[1, 5\], got {kept}$"):
        rm.mean_around_median(X, num_kept=kept)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (-1, r"^num_byzantine must be >= 0, got -1$"),
        (1.0, r"^num_byzantine must be an integer, got 1\.0$"),
        (True, r"^num_byzantine must be an integer, got True$"),
    ],
)
def test_num_byzantine_must_be_a_count(bad: object, message: str) -> None:
    d = rm.pairwise_sq_distances(X)
    for call in (
        lambda: rm.krum_scores(d, num_byzantine=bad),  # type: ignore[arg-type]
        lambda: rm.bulyan_select(d, num_byzantine=bad),  # type: ignore[arg-type]
        lambda: rm.krum(X, num_byzantine=bad),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValueError, match=message):
            call()
    assert rm.krum_scores(d, num_byzantine=np.int64(1)).shape == (5,)  # type: ignore[arg-type]


def test_krum_scores_refuse_a_non_square_matrix_and_score_a_lone_update_zero() -> None:
    with pytest.raises(ValueError, match=r"^sq_distances must be a square matrix, got shape"):
        rm.krum_scores(np.zeros((2, 3)), num_byzantine=0)
    with pytest.raises(ValueError, match=r"^sq_distances must be a square matrix, got shape"):
        rm.krum_scores(np.zeros((0, 0)), num_byzantine=0)
    np.testing.assert_array_equal(rm.krum_scores(np.zeros((1, 1)), num_byzantine=0), [0.0])


def test_krum_scores_sum_the_nearest_neighbours_even_with_many_byzantine() -> None:
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    d = rm.pairwise_sq_distances(x)

    # n - f - 2 = 2 nearest for f = 0; at least one neighbour when f is large
    np.testing.assert_allclose(rm.krum_scores(d, num_byzantine=0), [1 + 9, 1 + 4, 4 + 9, 16 + 36])
    np.testing.assert_allclose(rm.krum_scores(d, num_byzantine=5), [1, 1, 4, 16])


def test_bulyan_names_its_cohort_bound() -> None:
    message = (
        r"^bulyan needs n >= 4 \* num_byzantine \+ 3 updates; got n=5 with num_byzantine=1 "
        r"\(lower num_byzantine or aggregate more updates\)$"
    )
    with pytest.raises(ValueError, match=message):
        rm.bulyan(X, num_byzantine=1)
    with pytest.raises(ValueError, match=message):
        rm.bulyan_select(rm.pairwise_sq_distances(X), num_byzantine=1)
    assert rm.bulyan_select(rm.pairwise_sq_distances(X[:3]), num_byzantine=0).size == 3


def test_bulyan_ties_go_to_the_update_closest_to_all_then_to_the_tiebreak_rank() -> None:
    # 0 and 2 are mirror images around 1: equal Krum scores and equal spread
    d = rm.pairwise_sq_distances(np.array([[0.0], [1.0], [2.0]]))

    assert rm.bulyan_select(d, num_byzantine=0).tolist() == [1, 0, 2]
    assert rm.bulyan_select(d, num_byzantine=0, tiebreak=np.array([2, 0, 1])).tolist() == [
        1,
        2,
        0,
    ]


def test_content_ranks_order_updates_by_content_not_position() -> None:
    x = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    ranks = rm.content_ranks(x)

    assert sorted(ranks.tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(x[np.argsort(ranks)][ranks], x)  # usable as indices
    np.testing.assert_array_equal(rm.content_ranks(x[[2, 0, 1]]), ranks[[2, 0, 1]])
    np.testing.assert_array_equal(rm.content_ranks(x.astype(np.float64)), ranks)


def test_fltrust_trust_never_exceeds_one_for_an_aligned_update() -> None:
    # a multiple of the root update: cos rounds to 1.0000000000000002 in float64
    # (float32 bit patterns, so the values are exact)
    root = np.array([3187908247, 1068427334, 3207219763], dtype=np.uint32).view(np.float32)
    update = np.array([[3210092073, 1091454180, 3230303077]], dtype=np.uint32).view(np.float32)

    _, trust = rm.fltrust(update, root)

    assert trust.tolist() == [1.0]


def test_trimmed_mean_sums_the_kept_values_in_float64() -> None:
    # float32 would lose the three ones next to -1e8: (-1e8 + 1 + 1 + 1 + 1e8) / 5 = 0.6
    x = np.array([[-2e8], [-1e8], [1.0], [1.0], [1.0], [1e8], [2e8]], dtype=np.float32)

    np.testing.assert_allclose(rm.trimmed_mean(x, beta=1 / 7), [0.6], rtol=1e-6)


def test_bulyan_breaks_mirror_ties_by_content_whatever_the_arrival_order() -> None:
    # mirror images across the x-axis tie in Krum score and in spread; with ties broken by
    # position the result would depend on the order of arrival
    x = np.array([[-1, 3], [-3, 1], [2, 3], [-1, -3], [-3, -1], [2, -3], [0, 0]], dtype=np.float32)
    orders = [np.random.default_rng(seed).permutation(7) for seed in range(40)]

    results = {rm.bulyan(x[order], num_byzantine=1).tobytes() for order in orders}

    assert len(results) == 1


def test_bulyan_by_hand_as_a_pure_function() -> None:
    # n=7, f=1: recursive Krum picks 2, 1, 3, 0, 4 (theta=5); the beta=3 values closest to
    # the median 2 are 1, 2, 3 -> 2. The second coordinate is shifted by 10.
    x = np.array(
        [[0, 10], [1, 11], [2, 12], [3, 13], [4, 14], [50, 60], [-50, -40]], dtype=np.float32
    )

    np.testing.assert_allclose(rm.bulyan(x, num_byzantine=1), [2, 12])


def test_mean_around_median_keeps_the_lower_of_two_equally_close_values() -> None:
    # 0 and 2 are both 1 away from the median 1: the lower one is kept (as a stable sort
    # of the sorted values by distance would)
    x = np.array([[0.0], [1.0], [2.0]], dtype=np.float32)

    np.testing.assert_array_equal(rm.mean_around_median(x, num_kept=2), [0.5])


@pytest.mark.parametrize("scale", [1.0, 1e-9])
def test_bulyan_ties_are_only_scores_equal_to_one_part_in_a_billion(scale: float) -> None:
    # Krum scores (f = 0: the two nearest): 0 -> 2, 1 and 2 -> 2 + 2e-7, 3 -> 5. Update 0
    # wins outright although update 1 lies closer to all the others (smaller spread).
    d = scale * np.array(
        [
            [0.0, 1.0, 1.0, 10.0],
            [1.0, 0.0, 1.0 + 2e-7, 2.0],
            [1.0, 1.0 + 2e-7, 0.0, 3.0],
            [10.0, 2.0, 3.0, 0.0],
        ]
    )

    assert rm.bulyan_select(d, num_byzantine=0)[0] == 0
