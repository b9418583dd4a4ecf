"""FedBuff: staleness weights and the buffered asynchronous aggregate."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from fl_core.aggregation.fedbuff import FedBuffBuffer, staleness_weight


def test_staleness_weight_is_polynomial_and_zero_beyond_the_maximum() -> None:
    assert staleness_weight(0) == 1.0
    assert staleness_weight(3) == pytest.approx(0.5)  # 1 / sqrt(1 + 3), the paper's default
    assert staleness_weight(4, exponent=1.0) == pytest.approx(0.2)
    assert staleness_weight(9, exponent=2.0, max_staleness=9) == pytest.approx(0.01)
    assert staleness_weight(10, exponent=2.0, max_staleness=9) == 0.0
    assert staleness_weight(1000, exponent=0.0) == 1.0  # exponent 0: plain FedAvg weights
    weights = [staleness_weight(s, exponent=0.5) for s in range(10)]
    assert all(a > b for a, b in zip(weights, weights[1:], strict=False))


def test_staleness_weight_validates_arguments() -> None:
    with pytest.raises(ValueError, match="staleness"):
        staleness_weight(-1)
    with pytest.raises(ValueError, match="exponent"):
        staleness_weight(1, exponent=-0.5)
    with pytest.raises(ValueError, match="max_staleness"):
        staleness_weight(1, max_staleness=-2)


def test_buffer_aggregates_every_k_updates_weighted_by_staleness() -> None:
    buf = FedBuffBuffer(2, buffer_size=3, exponent=1.0, max_staleness=5)
    u = [np.array(v, dtype=np.float32) for v in ([1, 0], [0, 1], [2, 2])]

    full = [
        buf.add(u[0], weight=10, base_version=4, current_version=4),  # s=0 -> 1
        buf.add(u[1], weight=30, base_version=3, current_version=4),  # s=1 -> 1/2
        buf.add(u[2], weight=10, base_version=1, current_version=4),  # s=3 -> 1/4
    ]
    out = buf.flush()

    assert full == [False, False, True]
    expected = (10 * 1 * u[0] + 30 * 0.5 * u[1] + 10 * 0.25 * u[2]) / 50
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert buf.count == 0 and buf.num_flushed == 1


def test_too_stale_updates_are_dropped_not_buffered() -> None:
    buf = FedBuffBuffer(2, buffer_size=2, max_staleness=2)

    kept = buf.add(np.ones(2, dtype=np.float32), weight=1, base_version=7, current_version=10)

    assert kept is False and buf.count == 0 and buf.num_dropped == 1
    with pytest.raises(ValueError, match="no update"):
        buf.flush()


def test_buffer_rejects_bad_input() -> None:
    buf = FedBuffBuffer(2, buffer_size=1)
    one = np.ones(2, dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        buf.add(np.ones(3, dtype=np.float32), weight=1, base_version=0, current_version=0)
    with pytest.raises(ValueError, match="weight"):
        buf.add(one, weight=0, base_version=0, current_version=0)
    with pytest.raises(ValueError, match="base_version"):
        buf.add(one, weight=1, base_version=2, current_version=1)
    assert buf.add(one, weight=1, base_version=0, current_version=0)
    with pytest.raises(ValueError, match="full"):
        buf.add(one, weight=1, base_version=0, current_version=0)
    with pytest.raises(ValueError, match="buffer_size"):
        FedBuffBuffer(2, buffer_size=0)


def test_buffer_state_round_trips_mid_buffer() -> None:
    rng = np.random.default_rng(0)
    updates = rng.normal(size=(4, 6)).astype(np.float32)
    original = FedBuffBuffer(6, buffer_size=4, max_staleness=3)
    for i in range(2):
        original.add(updates[i], weight=i + 1, base_version=5 - i, current_version=5)
    resumed = FedBuffBuffer(6, buffer_size=4, max_staleness=3)
    resumed.load_state_dict(original.state_dict())

    for buf in (original, resumed):
        buf.add(updates[2], weight=3, base_version=2, current_version=5)
        assert buf.add(updates[3], weight=4, base_version=5, current_version=5)

    np.testing.assert_array_equal(resumed.flush(), original.flush())
    assert math.isclose(resumed.total_weight, 0.0)


def test_default_exponent_is_the_papers_square_root() -> None:
    buf = FedBuffBuffer(1, buffer_size=1)

    buf.add(np.array([1.0], dtype=np.float32), weight=2, base_version=0, current_version=3)

    np.testing.assert_allclose(buf.flush(), [0.5])  # 1 / sqrt(1 + 3)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": 2.5}, "dim"),
        ({"dim": True}, "dim"),
        ({"buffer_size": 2.5}, "buffer_size"),
        ({"buffer_size": False}, "buffer_size"),
        ({"max_staleness": -1}, "max_staleness"),
        ({"max_staleness": 2.5}, "max_staleness"),
        ({"exponent": float("inf")}, "exponent"),
    ],
)
def test_buffer_names_the_bad_constructor_argument(kwargs: dict[str, object], name: str) -> None:
    args: dict[str, object] = {"dim": 2, "buffer_size": 2, **kwargs}

    with pytest.raises(ValueError, match=rf"^{name} must be"):
        FedBuffBuffer(**args)  # type: ignore[arg-type]


def test_staleness_must_be_a_whole_number_of_versions() -> None:
    for bad in (1.5, True, "2"):
        with pytest.raises(ValueError, match=r"^staleness must be an integer, got"):
            staleness_weight(bad)  # type: ignore[arg-type]
    assert staleness_weight(np.int64(3)) == pytest.approx(0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^max_staleness must be an integer >= 0 or None"):
        staleness_weight(1, max_staleness=2.5)  # type: ignore[arg-type]


def test_each_flush_starts_an_independent_buffer() -> None:
    buf = FedBuffBuffer(2, buffer_size=2, exponent=1.0)
    first = [np.array([4.0, 2.0], dtype=np.float32), np.array([2.0, 0.0], dtype=np.float32)]
    second = [np.array([-1.0, 1.0], dtype=np.float32), np.array([3.0, 5.0], dtype=np.float32)]

    for u in first:
        buf.add(u, weight=1, base_version=0, current_version=1)  # s=1 -> 1/2
    out1 = buf.flush()
    for u, w in zip(second, (1, 3), strict=True):
        buf.add(u, weight=w, base_version=2, current_version=2)
    out2 = buf.flush()

    assert out1.dtype == np.float32 and out2.dtype == np.float32
    np.testing.assert_allclose(out1, [1.5, 0.5])
    np.testing.assert_allclose(out2, [2.0, 4.0])
    assert buf.num_flushed == 2 and buf.count == 0 and buf.total_weight == 0.0
    with pytest.raises(ValueError, match=r"^no update is buffered$"):
        buf.flush()


def test_a_dropped_update_is_logged_with_its_staleness(caplog: pytest.LogCaptureFixture) -> None:
    buf = FedBuffBuffer(1, buffer_size=1, max_staleness=2)

    with caplog.at_level(logging.INFO, logger="fl_core.aggregation.fedbuff"):
        buf.add(np.ones(1, dtype=np.float32), weight=1, base_version=4, current_version=7)

    assert [r.getMessage() for r in caplog.records] == [
        "dropped an update 3 versions stale (max 2)"
    ]


def test_state_keeps_the_counters_and_refuses_a_wrong_size() -> None:
    original = FedBuffBuffer(3, buffer_size=2, max_staleness=1)
    one = np.ones(3, dtype=np.float32)
    original.add(one, weight=1, base_version=0, current_version=5)  # dropped
    original.add(one, weight=1, base_version=5, current_version=5)
    original.add(one, weight=1, base_version=5, current_version=5)
    original.flush()
    original.add(2 * one, weight=2, base_version=4, current_version=5)

    resumed = FedBuffBuffer(3, buffer_size=2, max_staleness=1)
    resumed.load_state_dict(original.state_dict())

    assert (resumed.num_dropped, resumed.num_flushed) == (1, 1)
    assert (resumed.stalenesses, resumed.total_weight) == ([1], 2.0)
    with pytest.raises(ValueError, match=r"^state sum has shape \(4,\), expected \(3,\)"):
        resumed.load_state_dict(original.state_dict() | {"sum": np.ones(4)})
