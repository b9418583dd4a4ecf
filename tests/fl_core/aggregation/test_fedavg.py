import numpy as np
import pytest

from fl_core.aggregation import FedAvg, ServerOptimizer, create_aggregator
from fl_core.aggregation.math import weighted_mean


def test_client_with_three_times_the_examples_counts_three_times() -> None:
    agg = FedAvg(2)
    agg.add(np.array([1.0, 0.0], dtype=np.float32), weight=300)
    agg.add(np.array([0.0, 1.0], dtype=np.float32), weight=100)

    np.testing.assert_allclose(agg.result(), [0.75, 0.25])


def test_streaming_equals_reference_weighted_mean() -> None:
    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=1000).astype(np.float32) for _ in range(7)]
    weights = [float(w) for w in rng.integers(1, 500, size=7)]
    agg = create_aggregator("fedavg", dim=1000)

    for v, w in zip(vectors, weights, strict=True):
        agg.add(v, weight=w)

    np.testing.assert_allclose(agg.result(), weighted_mean(vectors, weights), rtol=1e-6)
    assert agg.count == 7 and agg.total_weight == sum(weights)


def test_bad_updates_and_weights_are_rejected() -> None:
    agg = FedAvg(3)
    with pytest.raises(ValueError, match="shape"):
        agg.add(np.zeros(4, dtype=np.float32), weight=1)
    with pytest.raises(ValueError, match="weight"):
        agg.add(np.zeros(3, dtype=np.float32), weight=0)
    with pytest.raises(ValueError, match="no update"):
        agg.result()
    with pytest.raises(ValueError, match="allowed values"):
        create_aggregator("average", dim=3)


def test_server_sgd_lr_one_is_plain_fedavg_and_momentum_accumulates() -> None:
    x = np.zeros(2, dtype=np.float32)
    g = np.array([1.0, -1.0], dtype=np.float32)

    np.testing.assert_allclose(ServerOptimizer().step(x, g), g)
    opt = ServerOptimizer(momentum=0.9)
    x1 = opt.step(x, g)
    x2 = opt.step(x1, g)
    np.testing.assert_allclose(x2, x1 + 1.9 * g, rtol=1e-6)


def test_fedadam_state_round_trips_for_resume() -> None:
    g = np.array([0.5, -2.0], dtype=np.float32)
    full = ServerOptimizer(name="adam", lr=0.1)
    x = full.step(np.zeros(2, dtype=np.float32), g)
    resumed = ServerOptimizer(name="adam", lr=0.1)
    resumed.load_state_dict(full.state_dict())

    np.testing.assert_array_equal(resumed.step(x, g), full.step(x, g))


def test_server_optimizer_validates_arguments() -> None:
    with pytest.raises(ValueError, match="name"):
        ServerOptimizer(name="yogi")
    with pytest.raises(ValueError, match="momentum"):
        ServerOptimizer(momentum=1.0)
