import numpy as np
import pytest

from fl_core.codec import ErrorFeedback, TopK


def test_residual_is_exactly_what_topk_dropped() -> None:
    update = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    ef = ErrorFeedback(1000)
    codec = TopK(fraction=0.1)

    payload, sent = ef.compress(update, codec)

    idx, _ = codec.decode_sparse(payload, 1000)
    expected = update.copy()
    expected[idx] = 0
    np.testing.assert_array_equal(ef.residual, expected)
    np.testing.assert_array_equal(sent + ef.residual, update)


def test_residual_is_added_to_the_next_update() -> None:
    ef = ErrorFeedback(4)
    ef.compress(np.array([4, 3, 2, 1], dtype=np.float32), "topk:0.25")  # sends 4, keeps 3, 2, 1

    _, sent = ef.compress(np.array([0, 0, 0, 0.5], dtype=np.float32), "topk:0.25")

    np.testing.assert_array_equal(sent, [0, 3, 0, 0])
    np.testing.assert_array_equal(ef.residual, [0, 0, 2, 1.5])


@pytest.mark.parametrize("name", ["topk:0.05", "topk:0.05+q8", "q2", "fp16"])
def test_transmitted_plus_residual_equals_the_sum_of_updates(name: str) -> None:
    rng = np.random.default_rng(1)
    ef = ErrorFeedback(3000)
    raw = np.zeros(3000)
    transmitted = np.zeros(3000)

    for _ in range(8):
        update = rng.normal(size=3000).astype(np.float32)
        _, sent = ef.compress(update, name, rng=rng)
        raw += update
        transmitted += sent

    np.testing.assert_allclose(transmitted + ef.residual, raw, rtol=0, atol=1e-5)
    assert np.linalg.norm(ef.residual) > 0


def test_lossless_codec_leaves_no_residual() -> None:
    ef = ErrorFeedback(10)

    ef.compress(np.arange(10, dtype=np.float32), "dense_fp32")

    assert not ef.residual.any()


def test_state_round_trips_and_is_validated() -> None:
    ef = ErrorFeedback(500)
    ef.compress(np.random.default_rng(2).normal(size=500), "topk:0.1")
    resumed = ErrorFeedback(500)

    resumed.load_state_dict(ef.state_dict())

    np.testing.assert_array_equal(resumed.residual, ef.residual)
    assert resumed.state_dict()["residual"].dtype == np.float32
    with pytest.raises(ValueError, match="residual"):
        resumed.load_state_dict({})
    with pytest.raises(ValueError, match="shape"):
        resumed.load_state_dict({"residual": np.zeros(3)})
    with pytest.raises(ValueError, match="non-finite"):
        resumed.load_state_dict({"residual": np.full(500, np.nan)})


def test_resumed_client_sends_the_same_bytes() -> None:
    rng = np.random.default_rng(3)
    ef = ErrorFeedback(500)
    ef.compress(rng.normal(size=500), "topk:0.1")
    resumed = ErrorFeedback(500)
    resumed.load_state_dict(ef.state_dict())
    update = rng.normal(size=500).astype(np.float32)

    a, _ = ef.compress(update, "topk:0.1+q8", rng=np.random.default_rng(9))
    b, _ = resumed.compress(update, "topk:0.1+q8", rng=np.random.default_rng(9))

    assert a == b
    np.testing.assert_array_equal(ef.state_dict()["residual"], resumed.state_dict()["residual"])


def test_bad_updates_leave_the_residual_untouched() -> None:
    ef = ErrorFeedback(4)
    ef.compress(np.array([4, 3, 2, 1], dtype=np.float32), "topk:0.25")
    before = ef.state_dict()["residual"]

    with pytest.raises(ValueError, match="non-finite"):
        ef.compress(np.array([np.nan, 0, 0, 0], dtype=np.float32), "topk:0.25")
    with pytest.raises(ValueError, match="update has 3 values"):
        ef.compress(np.zeros(3, dtype=np.float32), "topk:0.25")
    with pytest.raises(ValueError, match="rng"):
        ef.compress(np.zeros(4, dtype=np.float32), "q8")
    with pytest.raises(ValueError, match="dim"):
        ErrorFeedback(0)

    np.testing.assert_array_equal(ef.residual, before)
