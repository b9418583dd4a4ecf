import numpy as np
import pytest

from fl_core import wire
from fl_core.aggregation import FedAvg
from fl_core.codec import StochasticQuantizer, TopK
from fl_core.models import Layout


def _densify(indices: np.ndarray, values: np.ndarray, dim: int) -> np.ndarray:
    out = np.zeros(dim, dtype=np.float32)
    out[indices] = values
    return out


def test_add_sparse_equals_densify_then_add() -> None:
    rng = np.random.default_rng(0)
    dim = 10_000
    sparse, dense = FedAvg(dim), FedAvg(dim)
    codec = TopK(fraction=0.01, values=StochasticQuantizer(bits=8))

    for i in range(6):
        update = rng.normal(size=dim).astype(np.float32)
        weight = float(rng.integers(1, 500))
        idx, values = codec.decode_sparse(codec.encode(update, rng=rng), dim)
        if i % 2:  # any order and index dtype is fine
            order = rng.permutation(idx.size)
            idx, values = idx[order].astype(np.uint32), values[order]
        sparse.add_sparse(idx, values, weight=weight)
        dense.add(_densify(idx, values, dim), weight=weight)

    np.testing.assert_array_equal(sparse.result(), dense.result())
    assert (sparse.count, sparse.total_weight) == (dense.count, dense.total_weight)


def test_sparse_and_dense_updates_mix() -> None:
    agg = FedAvg(4)
    agg.add(np.array([1, 1, 1, 1], dtype=np.float32), weight=1)
    agg.add_sparse(np.array([3]), np.array([5.0], dtype=np.float32), weight=3)
    agg.add_sparse(np.array([], dtype=np.int64), np.array([], dtype=np.float32), weight=4)

    np.testing.assert_allclose(agg.result(), [1 / 8, 1 / 8, 1 / 8, 16 / 8])
    assert agg.count == 3 and agg.total_weight == 8


def test_sparse_messages_aggregate_end_to_end_without_densifying() -> None:
    layout = Layout(("w",), ((50_000,),))
    rng = np.random.default_rng(1)
    agg, reference = FedAvg(layout.num_params), FedAvg(layout.num_params)
    for c in range(4):
        header = wire.Header(
            kind="update",
            campaign="c",
            round=1,
            base_version=0,
            client=f"client_{c}",
            codec="topk:0.01",
            layout=layout,
            num_examples=10 * (c + 1),
        )
        data = wire.encode(header, rng.normal(size=layout.num_params).astype(np.float32))

        h, idx, values = wire.decode_sparse(data, expected_layout=layout)
        agg.add_sparse(idx, values, weight=float(h.num_examples))
        reference.add(wire.decode(data)[1], weight=float(h.num_examples))

    np.testing.assert_array_equal(agg.result(), reference.result())


def test_bad_sparse_updates_are_rejected_and_change_nothing() -> None:
    agg = FedAvg(5)
    one = np.array([1.0], dtype=np.float32)

    with pytest.raises(ValueError, match=r"indices must lie in \[0, 5\)"):
        agg.add_sparse(np.array([5]), one, weight=1)
    with pytest.raises(ValueError, match="indices must lie"):
        agg.add_sparse(np.array([-1]), one, weight=1)
    with pytest.raises(ValueError, match="indices must lie"):
        agg.add_sparse(np.array([2**63 + 1], dtype=np.uint64), one, weight=1)
    with pytest.raises(ValueError, match="duplicates"):
        agg.add_sparse(np.array([3, 1, 3]), np.ones(3, dtype=np.float32), weight=1)
    with pytest.raises(ValueError, match="same length"):
        agg.add_sparse(np.array([1, 2]), one, weight=1)
    with pytest.raises(ValueError, match="integers"):
        agg.add_sparse(np.array([1.0]), one, weight=1)
    with pytest.raises(ValueError, match="weight"):
        agg.add_sparse(np.array([1]), one, weight=0)

    assert agg.count == 0 and agg.total_weight == 0
    with pytest.raises(ValueError, match="no update"):
        agg.result()


def test_sparse_updates_reach_the_first_and_last_coordinate() -> None:
    agg = FedAvg(5)
    agg.add_sparse(np.array([0, 4]), np.array([2.0, -1.0], dtype=np.float32), weight=1)
    agg.add_sparse(np.array([4, 0], dtype=np.uint8), np.array([3.0, 4.0]), weight=3)

    np.testing.assert_array_equal(agg.result(), [14 / 4, 0, 0, 0, 8 / 4])


@pytest.mark.parametrize("indices", [[3, 3], [1, 3, 3], [0, 0, 2], [2, 4, 4, 4]])
def test_sorted_duplicate_indices_are_rejected_too(indices: list[int]) -> None:
    agg = FedAvg(5)

    with pytest.raises(ValueError, match=r"^indices must be distinct; got duplicates$"):
        agg.add_sparse(np.array(indices), np.ones(len(indices), dtype=np.float32), weight=1)
    assert agg.count == 0


def test_out_of_range_errors_report_the_index_as_sent() -> None:
    agg = FedAvg(5)
    huge = 2**63 + 1  # wraps to a negative int64

    with pytest.raises(ValueError, match=rf"^indices must lie in \[0, 5\), got {huge}$"):
        agg.add_sparse(np.array([1, huge], dtype=np.uint64), np.ones(2), weight=1)
    with pytest.raises(ValueError, match=r"^indices must lie in \[0, 5\), got 5$"):
        agg.add_sparse(np.array([5], dtype=np.uint32), np.ones(1), weight=1)
    with pytest.raises(ValueError, match=r"^indices must lie in \[0, 5\), got -1\.\.2$"):
        agg.add_sparse(np.array([2, -1]), np.ones(2), weight=1)
    with pytest.raises(ValueError, match=r"^no update was aggregated$"):
        agg.result()
