"""Byzantine-robust aggregation rules: hand-computed cases, defining properties, validation."""

from __future__ import annotations

import numpy as np
import pytest

from fl_core.aggregation import (
    AGGREGATORS,
    Aggregator,
    aggregator_arguments,
    create_aggregator,
    requires_full_cohort,
)
from fl_core.aggregation import robust_math as rm
from fl_core.aggregation.math import weighted_average, weighted_mean

# A hyperparameter set per rule, for the tests that run every registered rule.
RULE_ARGS: dict[str, dict[str, object]] = {
    "fedavg": {},
    "median": {},
    "weighted_median": {},
    "trimmed_mean": {"beta": 0.2},
    "krum": {"num_byzantine": 1},
    "multi_krum": {"num_byzantine": 1},
    "bulyan": {"num_byzantine": 1},
    "norm_bounding": {"max_norm": 100.0},
    "centered_clipping": {"tau": 100.0},
    "fltrust": {},
}


def m32(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32)


def build(name: str, dim: int, **extra: object) -> Aggregator:
    agg = create_aggregator(name, dim=dim, **{**RULE_ARGS[name], **extra})
    if name == "fltrust":
        agg.set_reference(np.ones(dim, dtype=np.float32))  # type: ignore[attr-defined]
    return agg


def run(agg: Aggregator, updates: np.ndarray, weights: list[float] | None = None) -> np.ndarray:
    for i, u in enumerate(updates):
        agg.add(u, weight=1.0 if weights is None else weights[i])
    return agg.result()


def honest_and_byzantine(
    seed: int, n: int, f: int, d: int, *, offset: float = 50.0
) -> tuple[np.ndarray, np.ndarray]:
    """``n - f`` honest updates around a common mean, then ``f`` far-away attackers."""
    rng = np.random.default_rng(seed)
    honest = rng.normal(1.0, 0.5, size=(n - f, d))
    attackers = rng.normal(offset, 5.0, size=(f, d))
    return np.vstack([honest, attackers]).astype(np.float32), honest.astype(np.float32)


# --------------------------------------------------------------------------- hand-computed


def test_median_hand_computed_odd_and_even() -> None:
    odd = m32([[1, 10], [2, 20], [3, -5]])
    even = m32([[1], [2], [3], [10]])

    np.testing.assert_array_equal(run(build("median", 2), odd), [2, 10])
    np.testing.assert_array_equal(run(build("median", 1), even), [2.5])


def test_weighted_median_hand_computed() -> None:
    x = m32([[1, 5], [2, 6], [3, 7]])

    heavy_last = run(build("weighted_median", 2), x, weights=[1, 1, 5])
    equal_even = run(build("weighted_median", 1), m32([[1], [2], [3], [10]]), [2, 2, 2, 2])

    np.testing.assert_array_equal(heavy_last, [3, 7])
    np.testing.assert_array_equal(equal_even, [2.5])  # equal weights: the plain median


def test_trimmed_mean_hand_computed() -> None:
    x = m32([[1], [2], [3], [4], [100]])  # beta=0.2 of n=5 trims one value each side

    np.testing.assert_allclose(run(build("trimmed_mean", 1), x), [3.0])


def test_krum_and_multi_krum_hand_computed() -> None:
    # n=5, f=1: each score sums the n-f-2=2 nearest squared distances.
    # scores: 0 -> 1+4=5, 1 -> 1+1=2, 2 -> 1+4=5, 4 -> 4+9=13, 100 -> huge
    x = m32([[0], [1], [2], [4], [100]])

    np.testing.assert_allclose(
        rm.krum_scores(rm.pairwise_sq_distances(x), num_byzantine=1)[:4], [5, 2, 5, 13]
    )
    np.testing.assert_array_equal(run(build("krum", 1), x), [1])
    agg = build("multi_krum", 1, num_selected=3)
    np.testing.assert_allclose(run(agg, x), [1.0])  # mean of 0, 1, 2
    assert sorted(agg.selected.tolist()) == [0, 1, 2]  # type: ignore[attr-defined]


def test_bulyan_hand_computed() -> None:
    # n=7, f=1: recursive Krum picks 2, 1, 3, 0, 4 (theta=5); the beta=3 values closest to
    # the median 2 are 1, 2, 3 -> 2. The second coordinate is shifted by 10.
    x = m32([[0, 10], [1, 11], [2, 12], [3, 13], [4, 14], [50, 60], [-50, -40]])
    agg = build("bulyan", 2)

    np.testing.assert_allclose(run(agg, x), [2, 12])
    assert agg.selected.tolist() == [2, 1, 3, 0, 4]  # type: ignore[attr-defined]


def test_norm_bounding_and_centered_clipping_hand_computed() -> None:
    x = m32([[3, 4], [0, 1]])

    bounded = run(create_aggregator("norm_bounding", dim=2, max_norm=1.0), x)
    cc = create_aggregator("centered_clipping", dim=2, tau=1.0)
    clipped = run(cc, m32([[3, 4], [0, 0.5]]))

    np.testing.assert_allclose(bounded, [0.3, 0.9], rtol=1e-6)  # ([.6,.8] + [0,1]) / 2
    np.testing.assert_allclose(clipped, [0.3, 0.65], rtol=1e-6)  # ([.6,.8] + [0,.5]) / 2


def test_fltrust_hand_computed() -> None:
    root = np.array([1, 0], dtype=np.float32)
    x = m32([[2, 0], [0, 3], [-1, 0], [1, 1]])  # cos 1, 0, -1, 1/sqrt(2)
    agg = create_aggregator("fltrust", dim=2, root_update=root)

    out = run(agg, x)

    s = 1 / np.sqrt(2)
    expected = (np.array([1.0, 0.0]) + s * np.array([s, s])) / (1 + s)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_allclose(agg.trust_scores, [1, 0, 0, s], rtol=1e-6)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("seed", range(3))
def test_median_ignores_f_outliers(seed: int) -> None:
    x, honest = honest_and_byzantine(seed, n=11, f=5, d=300, offset=1e6)

    out = run(build("median", 300), x)

    assert np.all(out >= honest.min(axis=0)) and np.all(out <= honest.max(axis=0))


@pytest.mark.parametrize(("seed", "n", "f"), [(0, 10, 3), (1, 7, 2), (2, 20, 8), (3, 5, 1)])
def test_krum_picks_an_honest_update_when_f_below_half_of_n_minus_2(
    seed: int, n: int, f: int
) -> None:
    assert f < (n - 2) / 2
    x, _ = honest_and_byzantine(seed, n=n, f=f, d=200)
    colluding = x.copy()
    colluding[n - f :] = colluding[n - 1]  # identical attackers form a tight cluster

    for updates in (x, colluding):
        agg = build("krum", 200, num_byzantine=f)
        out = run(agg, updates)
        chosen = int(agg.selected[0])  # type: ignore[attr-defined]
        assert chosen < n - f
        np.testing.assert_array_equal(out, updates[chosen])


def test_multi_krum_and_bulyan_select_only_honest_updates() -> None:
    x, honest = honest_and_byzantine(4, n=15, f=3, d=100)

    mk = build("multi_krum", 100, num_byzantine=3)
    bu = build("bulyan", 100, num_byzantine=3)
    mk_out, bu_out = run(mk, x), run(bu, x)

    assert sorted(mk.selected.tolist()) == list(range(12))  # type: ignore[attr-defined]
    assert max(bu.selected.tolist()) < 12  # type: ignore[attr-defined]
    np.testing.assert_allclose(mk_out, honest.mean(axis=0), rtol=1e-5)
    assert np.all(bu_out >= honest.min(axis=0)) and np.all(bu_out <= honest.max(axis=0))


def test_trimmed_mean_drops_the_extremes() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(10, 50)).astype(np.float32)
    pushed = x.copy()
    order = np.argsort(x, axis=0)
    cols = np.arange(50)
    pushed[order[-1], cols] = 1e9  # the largest value of each column grows
    pushed[order[0], cols] = -1e9  # the smallest one shrinks
    middle = np.sort(x, axis=0)[1:-1].mean(axis=0)

    out = run(build("trimmed_mean", 50, beta=0.1), pushed)

    np.testing.assert_allclose(out, middle, rtol=1e-5, atol=1e-6)


def test_trimmed_mean_matches_scipy_trim_mean() -> None:
    from scipy.stats import trim_mean

    x = np.random.default_rng(6).normal(size=(13, 200)).astype(np.float32)

    for beta in (0.0, 0.1, 0.25, 0.45):
        np.testing.assert_allclose(
            rm.trimmed_mean(x, beta=beta), trim_mean(x, beta, axis=0), rtol=1e-5, atol=1e-6
        )


def test_fltrust_gives_no_trust_to_a_flipped_update_and_norm_bounding_bounds() -> None:
    rng = np.random.default_rng(7)
    honest = rng.normal(1.0, 0.3, size=(6, 40)).astype(np.float32)
    x = np.vstack([honest, -10 * honest[:1]])

    ft = create_aggregator("fltrust", dim=40, root_update=honest.mean(axis=0))
    run(ft, x)
    nb = run(create_aggregator("norm_bounding", dim=40, max_norm=2.0), x)

    assert ft.trust_scores[-1] == 0.0 and min(ft.trust_scores[:-1]) > 0  # type: ignore[attr-defined]
    assert np.linalg.norm(nb) <= 2.0 + 1e-5


def test_outlier_scores_single_out_the_attacker() -> None:
    x, _ = honest_and_byzantine(8, n=9, f=1, d=64)

    for name in ("median", "trimmed_mean", "bulyan", "norm_bounding"):
        agg = build(name, 64)
        run(agg, x)
        scores = agg.outlier_scores()  # type: ignore[attr-defined]
        assert int(np.argmax(scores)) == 8 and scores[8] > 3 * np.median(scores), name


def test_pairwise_distances_are_stable_far_from_the_origin() -> None:
    # a large common offset and a tiny spread: |a|^2 + |b|^2 - 2ab cancels catastrophically
    # in float32 without centering
    rng = np.random.default_rng(9)
    x = (1e3 + rng.normal(0, 1e-2, size=(6, 5000))).astype(np.float32)
    x64 = x.astype(np.float64)
    direct = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(axis=-1)

    np.testing.assert_allclose(rm.pairwise_sq_distances(x), direct, rtol=1e-9)


def test_mean_around_median_matches_a_brute_force_reference() -> None:
    x = np.random.default_rng(10).normal(size=(9, 300)).astype(np.float32)
    med = np.median(x, axis=0)

    for kept in (1, 4, 9):
        idx = np.argsort(np.abs(x - med), axis=0, kind="stable")[:kept]
        expected = np.take_along_axis(x, idx, axis=0).mean(axis=0)
        np.testing.assert_allclose(rm.mean_around_median(x, num_kept=kept), expected, rtol=1e-5)


# --------------------------------------------------------------------------- registry / API


def test_every_registered_rule_works_like_fedavg_and_buffers_or_streams() -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(1.0, 0.1, size=(9, 70)).astype(np.float32)
    weights = [float(w) for w in rng.integers(1, 50, size=9)]

    for name in AGGREGATORS:
        out = run(build(name, 70), x, weights)
        assert out.dtype == np.float32 and out.shape == (70,), name
        assert np.all(np.abs(out - 1.0) < 0.5), name
    assert {n for n in AGGREGATORS if requires_full_cohort(n)} == {
        "median",
        "weighted_median",
        "trimmed_mean",
        "krum",
        "multi_krum",
        "bulyan",
        "centered_clipping",
    }


def test_preallocated_and_grown_buffers_agree() -> None:
    x = np.random.default_rng(12).normal(size=(8, 5000)).astype(np.float32)

    for name in ("median", "weighted_median", "trimmed_mean", "multi_krum", "bulyan"):
        grown = run(build(name, 5000), np.vstack([x, x, x]))
        stacked = run(build(name, 5000, capacity=24), np.vstack([x, x, x]))
        np.testing.assert_array_equal(grown, stacked)


def test_pure_functions_accept_a_matrix_or_a_list_and_match_references() -> None:
    x = np.random.default_rng(13).normal(size=(10, 9001)).astype(np.float32)
    rows = list(x)
    w = np.arange(1.0, 11.0)

    np.testing.assert_array_equal(rm.coordinate_median(x), np.median(x, axis=0))
    np.testing.assert_array_equal(rm.coordinate_median(rows), rm.coordinate_median(x))
    np.testing.assert_allclose(weighted_average(rows, w), weighted_mean(rows, list(w)), rtol=1e-6)
    np.testing.assert_allclose(
        rm.weighted_coordinate_median(x, np.ones(10)), np.median(x, axis=0), rtol=1e-6
    )


def test_centered_clipping_carries_its_center_across_rounds() -> None:
    x = m32([[3, 4], [0, 0.5]])
    first = create_aggregator("centered_clipping", dim=2, tau=1.0)
    run(first, x)
    resumed = create_aggregator("centered_clipping", dim=2, tau=1.0)
    resumed.load_state_dict(first.state_dict())  # type: ignore[attr-defined]
    again = create_aggregator("centered_clipping", dim=2, tau=1.0)
    again.set_reference(first.state_dict()["center"])  # type: ignore[attr-defined]

    np.testing.assert_array_equal(run(resumed, x), run(again, x))


# --------------------------------------------------------------------------- validation


def test_rules_name_the_bad_argument() -> None:
    x5 = np.zeros((5, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"4 \* num_byzantine \+ 3"):
        run(build("bulyan", 3, num_byzantine=1), x5)
    with pytest.raises(ValueError, match=r"2 \* num_byzantine \+ 3"):
        run(build("krum", 3, num_byzantine=2), x5)
    with pytest.raises(ValueError, match="num_byzantine"):
        create_aggregator("krum", dim=3, num_byzantine=-1)
    with pytest.raises(ValueError, match="beta"):
        create_aggregator("trimmed_mean", dim=3, beta=0.5)
    with pytest.raises(ValueError, match="max_norm"):
        create_aggregator("norm_bounding", dim=3, max_norm=0.0)
    with pytest.raises(ValueError, match="tau"):
        create_aggregator("centered_clipping", dim=3, tau=float("nan"))
    with pytest.raises(ValueError, match="num_selected"):
        run(build("multi_krum", 3, num_selected=9), np.zeros((7, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="root_update"):
        create_aggregator("fltrust", dim=3, root_update=np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="set_reference"):
        create_aggregator("fltrust", dim=3).add(np.ones(3, dtype=np.float32), weight=1)
    with pytest.raises(ValueError, match="capacity"):
        run(build("median", 3, capacity=2), np.zeros((3, 3), dtype=np.float32))


def test_create_aggregator_validates_names_and_keywords() -> None:
    with pytest.raises(ValueError, match="allowed values: fedavg, median"):
        create_aggregator("geomed", dim=3)
    with pytest.raises(ValueError, match="takes no argument 'beta'"):
        create_aggregator("median", dim=3, beta=0.1)
    with pytest.raises(ValueError, match="requires the argument 'num_byzantine'"):
        create_aggregator("bulyan", dim=3)
    assert aggregator_arguments("krum") == {"num_byzantine": True, "capacity": False}
    with pytest.raises(ValueError, match="no update"):
        build("median", 3).result()
