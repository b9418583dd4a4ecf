"""The pure aggregation math: norms, in-place accumulation, distances and outlier scores,
including vectors longer than one streaming block, and the errors on bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fl_core.aggregation import math as am

# Longer than one block of each streaming loop, with a partial last block.
LONG = am.STREAM_BLOCK + 5
WIDE = 2 * am.BLOCK_COLUMNS + 3


def test_l2_norm_covers_every_block_and_any_shape() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=LONG).astype(np.float32)
    tail = np.zeros(LONG, dtype=np.float32)
    tail[-1] = 3.0  # only in the last, partial block

    assert am.l2_norm(v) == pytest.approx(np.linalg.norm(v.astype(np.float64)), rel=1e-12)
    assert am.l2_norm(tail) == 3.0
    matrix = np.array([[3.0, 0.0], [0.0, 4.0]], dtype=np.float32)
    assert am.l2_norm(matrix) == 5.0  # flattened: the norm of all parameters


def test_accumulate_adds_a_scaled_update_over_every_block() -> None:
    rng = np.random.default_rng(1)
    acc = rng.normal(size=LONG)
    update = rng.normal(size=LONG).astype(np.float32)
    expected = acc + 0.25 * update.astype(np.float64)

    am.accumulate(acc, update, 0.25)

    np.testing.assert_array_equal(acc, expected)


def test_accumulate_refuses_a_mismatched_update() -> None:
    acc = np.zeros(3)

    with pytest.raises(ValueError, match=r"^update has shape \(4,\), expected \(3,\)$"):
        am.accumulate(acc, np.ones(4, dtype=np.float32), 1.0)
    with pytest.raises(ValueError, match=r"^update has shape \(2,\), expected \(3,\)$"):
        am.accumulate(acc, np.ones(2, dtype=np.float32), 1.0)
    np.testing.assert_array_equal(acc, 0.0)


def test_weighted_mean_is_float32_and_takes_zero_and_fractional_weights() -> None:
    vectors = [np.array([1.0, 2.0], dtype=np.float32), np.array([3.0, 6.0], dtype=np.float32)]

    out = am.weighted_mean(vectors, [0.25, 0.75])

    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [2.5, 5.0])
    np.testing.assert_array_equal(am.weighted_mean(vectors, [0.0, 0.5]), vectors[1])


@pytest.mark.parametrize("weights", [[2.0, -1.0], [0.0, 0.0], [-1.0, -2.0]])
def test_weighted_mean_refuses_negative_weights_or_a_zero_sum(weights: list[float]) -> None:
    vectors = [np.ones(2, dtype=np.float32), np.zeros(2, dtype=np.float32)]

    with pytest.raises(ValueError, match=r"^weights must be non-negative with a positive sum$"):
        am.weighted_mean(vectors, weights)


def test_weighted_mean_refuses_an_empty_cohort() -> None:
    with pytest.raises(ValueError, match=r"^weighted_mean needs at least one vector$"):
        am.weighted_mean([], [])


def test_distances_to_cover_every_column_block() -> None:
    rng = np.random.default_rng(2)
    updates = rng.normal(size=(3, WIDE)).astype(np.float32)
    center = rng.normal(size=WIDE).astype(np.float32)
    expected = np.linalg.norm(updates.astype(np.float64) - center, axis=1)

    np.testing.assert_allclose(am.distances_to(updates, center), expected, rtol=1e-12)
    np.testing.assert_allclose(am.distances_to(list(updates), center), expected, rtol=1e-12)


def test_distances_to_refuses_a_center_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match=r"^center has shape \(2,\), expected \(3,\)$"):
        am.distances_to(np.ones((2, 3), dtype=np.float32), np.ones(2, dtype=np.float32))


def test_relative_scores_divide_by_the_median_distance() -> None:
    np.testing.assert_allclose(am.relative_scores(np.array([1.0, 1.0, 1.0, 10.0])), [1, 1, 1, 10])
    np.testing.assert_allclose(am.relative_scores(np.array([0.5, 0.5, 2.0])), [1, 1, 4])


def test_relative_scores_fall_back_to_the_mean_when_most_distances_are_zero() -> None:
    # median 0: the mean distance is the scale
    np.testing.assert_allclose(am.relative_scores(np.array([0.0, 0.0, 0.0, 6.0])), [0, 0, 0, 4])
    np.testing.assert_allclose(am.relative_scores(np.array([0.0, 0.0, 0.0, 2.0])), [0, 0, 0, 4])


def test_relative_scores_of_identical_or_no_updates_are_zeros_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zeros = am.relative_scores(np.zeros(3))
        empty = am.relative_scores(np.zeros(0))

    assert zeros.shape == (3,) and np.all(zeros == 0.0)
    assert empty.shape == (0,)


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        (np.zeros((0, 3), dtype=np.float32), r"^updates must be a non-empty \(n, d\) matrix, got"),
        (np.zeros((2, 0), dtype=np.float32), r"^updates must be a non-empty \(n, d\) matrix, got"),
        (np.zeros(3, dtype=np.float32), r"^updates must be a non-empty \(n, d\) matrix, got"),
        ([], r"^updates must hold at least one update$"),
        ([np.zeros((2, 2))], r"^each update must be a non-empty vector, got shape \(2, 2\)$"),
        ([np.zeros(0)], r"^each update must be a non-empty vector, got shape \(0,\)$"),
        ([np.zeros(3), np.zeros(4)], r"^updates\[1\] has shape \(4,\), expected \(3,\)$"),
    ],
)
def test_updates_shape_names_what_is_wrong(updates: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        am.updates_shape(updates)  # type: ignore[arg-type]


def test_updates_shape_of_a_matrix_or_a_list() -> None:
    assert am.updates_shape(np.zeros((1, 1))) == (1, 1)
    assert am.updates_shape([np.zeros(4), np.zeros(4), np.zeros(4)]) == (3, 4)


def test_column_blocks_cover_the_range_once() -> None:
    assert list(am.column_blocks(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(am.column_blocks(8, 4)) == [(0, 4), (4, 8)]
    assert list(am.column_blocks(3)) == [(0, 3)]
    assert list(am.column_blocks(am.BLOCK_COLUMNS + 1))[-1] == (
        am.BLOCK_COLUMNS,
        am.BLOCK_COLUMNS + 1,
    )


def test_weighted_sum_and_average_over_several_column_blocks() -> None:
    rng = np.random.default_rng(3)
    updates = rng.normal(size=(4, WIDE)).astype(np.float32)
    c = np.array([0.5, -2.0, 1.0, 3.0])
    expected = c @ updates.astype(np.float64)

    for given in (updates, list(updates)):
        total = am.weighted_sum(given, c)
        assert total.dtype == np.float64
        np.testing.assert_allclose(total, expected, rtol=1e-12, atol=1e-12)
        mean = am.weighted_average(given, [1.0, 2.0, 3.0, 4.0])
        assert mean.dtype == np.float32
        np.testing.assert_allclose(
            mean, np.array([1, 2, 3, 4]) @ updates.astype(np.float64) / 10, rtol=1e-6, atol=1e-7
        )


def test_weighted_sum_and_average_refuse_bad_coefficients() -> None:
    u = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(
        ValueError, match=r"^coefficients must have one value per update \(2\), got shape \(3,\)$"
    ):
        am.weighted_sum(u, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"^coefficients must be finite$"):
        am.weighted_sum(u, [1.0, np.nan])
    with pytest.raises(
        ValueError, match=r"^weights must have one value per update \(2\), got shape \(1,\)$"
    ):
        am.weighted_average(u, [1.0])
    with pytest.raises(ValueError, match=r"^weights must be finite$"):
        am.weighted_average(u, [1.0, np.inf])
    for bad in ([1.0, -0.5], [0.0, 0.0]):
        with pytest.raises(ValueError, match=r"^weights must be non-negative with a positive sum$"):
            am.weighted_average(u, bad)
    np.testing.assert_allclose(am.weighted_average(u * [[1], [3]], [0.0, 0.5]), [3, 3, 3])


def test_row_norms_and_dots_cover_every_column_block() -> None:
    rng = np.random.default_rng(4)
    updates = rng.normal(size=(3, WIDE)).astype(np.float32)
    vector = rng.normal(size=WIDE).astype(np.float32)
    x = updates.astype(np.float64)

    sq, dots = am.row_sq_norms_and_dots(list(updates), vector)

    np.testing.assert_allclose(sq, (x * x).sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(dots, x @ vector.astype(np.float64), rtol=1e-10)
    np.testing.assert_allclose(am.row_sq_norms(updates), sq, rtol=1e-12)
    with pytest.raises(ValueError, match=rf"^vector has shape \(3,\), expected \({WIDE},\)$"):
        am.row_sq_norms_and_dots(updates, np.ones(3))


def test_select_rows_and_gather_columns_of_a_list() -> None:
    rows = [np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]), np.array([7.0, 8.0, 9.0])]

    chosen = am.select_rows(rows, np.array([2, 0]))
    out = am.gather_columns(rows, 1, 3, np.empty((3, 2)))
    out_t = am.gather_columns_t(rows, 1, 3, np.empty((2, 3)))

    assert chosen[0] is rows[2] and chosen[1] is rows[0]
    np.testing.assert_array_equal(out, [[2, 3], [5, 6], [8, 9]])
    np.testing.assert_array_equal(out_t, [[2, 5, 8], [3, 6, 9]])
