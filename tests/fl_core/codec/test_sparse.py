import math
from fractions import Fraction

import numpy as np
import pytest

from fl_core.codec import StochasticQuantizer, TopK, WireError, parse_codec
from fl_core.codec.sparse import INDEX_BITMAP, INDEX_DELTA16, INDEX_U32


def _u32_payload(indices: list[int], values: list[float]) -> bytes:
    return (
        bytes((INDEX_U32,))
        + np.asarray(indices, dtype="<u4").tobytes()
        + np.asarray(values, dtype="<f4").tobytes()
    )


@pytest.mark.parametrize(("fraction", "n"), [(0.01, 200_000), (0.07, 100), (0.3, 7), (1e-6, 50)])
def test_topk_keeps_exactly_ceil_fraction_n_largest_magnitudes(fraction: float, n: int) -> None:
    x = np.random.default_rng(n).normal(size=n).astype(np.float32)
    codec = TopK(fraction=fraction)
    k = max(1, math.ceil(Fraction(str(fraction)) * n))

    idx, values = codec.decode_sparse(codec.encode(x), n)

    assert idx.size == values.size == k == codec.k_for(n)
    assert np.all(np.diff(idx) > 0) and idx.dtype == np.int64 and values.dtype == np.float32
    np.testing.assert_array_equal(values, x[idx])
    dropped = np.delete(np.abs(x), idx)
    assert dropped.size == 0 or np.abs(values).min() >= dropped.max()


def test_topk_0_07_of_100_keeps_7_not_8() -> None:
    assert TopK(fraction=0.07).k_for(100) == 7  # 0.07 * 100 == 7.000000000000001 in floats


def test_topk_decode_is_the_densified_sparse_decode() -> None:
    x = np.random.default_rng(0).normal(size=5000).astype(np.float32)
    codec = TopK(fraction=0.05)
    payload = codec.encode(x)

    dense = codec.decode(payload, x.size)
    idx, values = codec.decode_sparse(payload, x.size)

    expected = np.zeros_like(x)
    expected[idx] = x[idx]
    np.testing.assert_array_equal(dense, expected)
    assert np.count_nonzero(dense) == 250


@pytest.mark.parametrize(("value_codec", "bits"), [("q8", 8), ("q4", 4), ("q2", 2)])
def test_topk_with_quantized_values_decodes_within_one_step(value_codec: str, bits: int) -> None:
    x = np.random.default_rng(1).normal(size=20_000).astype(np.float32)
    codec = TopK(fraction=0.02, values=StochasticQuantizer(bits=bits))
    plain = TopK(fraction=0.02)
    assert codec == parse_codec(f"topk:0.02+{value_codec}")

    payload = codec.encode(x, rng=np.random.default_rng(2))
    idx, values = codec.decode_sparse(payload, x.size)

    np.testing.assert_array_equal(idx, plain.select(x))
    kept = x[idx]
    step = (kept.max() - kept.min()) / (2**bits - 1)
    assert np.all(np.abs(values - kept) <= step * (1 + 1e-5))
    dense = codec.decode(payload, x.size)
    np.testing.assert_array_equal(dense[idx], values)
    assert np.count_nonzero(np.delete(dense, idx)) == 0


def test_index_encoding_picks_the_smallest_form() -> None:
    n = 100_000
    x = np.zeros(n, dtype=np.float32)
    x[[5, 99_999]] = 1.0  # gap > 65535: delta16 impossible, u32 smallest
    assert TopK(fraction=2 / n).encode(x)[0] == INDEX_U32

    spread = np.random.default_rng(0).normal(size=n).astype(np.float32)
    assert TopK(fraction=0.01).encode(spread)[0] == INDEX_DELTA16
    assert TopK(fraction=0.2).encode(spread)[0] == INDEX_BITMAP


@pytest.mark.parametrize("fraction", [2e-5, 0.01, 0.2, 1.0])
def test_every_index_form_round_trips(fraction: float) -> None:
    n = 100_000
    x = np.zeros(n, dtype=np.float32)
    x[[5, 99_999]] = 1.0
    x += np.random.default_rng(3).normal(size=n).astype(np.float32) * np.float32(1e-3)
    codec = TopK(fraction=fraction)

    idx, values = codec.decode_sparse(codec.encode(x), n)

    np.testing.assert_array_equal(idx, codec.select(x))
    np.testing.assert_array_equal(values, x[idx])


def test_compressed_size_of_topk_001_on_200k() -> None:
    n, k = 200_000, 2000
    x = np.random.default_rng(0).normal(size=n).astype(np.float32)

    fp32 = parse_codec("topk:0.01").encode(x)
    q8 = parse_codec("topk:0.01+q8").encode(x, rng=np.random.default_rng(0))

    assert len(fp32) == 1 + 2 * k + 4 * k  # delta16 indices + float32 values
    assert len(fp32) <= 0.01 * 8 * n  # at most 1% x 8 bytes x n (u32 + fp32 would be)
    assert len(q8) == 1 + 2 * k + 8 * 2 + k  # + two chunks' scales + one byte per value


# --------------------------------------------------------------------------- hostile input


def test_out_of_range_index_is_rejected() -> None:
    codec = TopK(fraction=0.5)  # k = 2 of n = 4

    with pytest.raises(WireError, match="index 4 is out of range for 4"):
        codec.decode_sparse(_u32_payload([1, 4], [1.0, 2.0]), 4)
    with pytest.raises(WireError, match="out of range"):
        codec.decode(_u32_payload([0, 2**32 - 1], [1.0, 2.0]), 4)


def test_duplicate_or_unsorted_indices_are_rejected() -> None:
    codec = TopK(fraction=0.5)

    with pytest.raises(WireError, match="duplicate"):
        codec.decode_sparse(_u32_payload([2, 2], [1.0, 2.0]), 4)
    with pytest.raises(WireError, match="not strictly increasing"):
        codec.decode_sparse(_u32_payload([3, 1], [1.0, 2.0]), 4)


def test_delta_indices_running_past_the_end_are_rejected() -> None:
    payload = (
        bytes((INDEX_DELTA16,))
        + np.array([1, 1], dtype="<u2").tobytes()
        + np.array([1, 2], dtype="<f4").tobytes()
    )

    TopK(fraction=0.5).decode_sparse(payload, 4)  # indices 1, 3: fine
    with pytest.raises(WireError, match="index 3 is out of range for 3"):
        TopK(fraction=2 / 3).decode_sparse(payload, 3)


def test_bitmap_with_the_wrong_count_or_padding_is_rejected() -> None:
    values = np.array([1, 2], dtype="<f4").tobytes()

    with pytest.raises(WireError, match="marks 3 entries, the codec keeps 2"):
        TopK(fraction=0.5).decode_sparse(bytes((INDEX_BITMAP, 0b0111)) + values, 4)
    with pytest.raises(WireError, match="padding"):
        TopK(fraction=0.5).decode_sparse(bytes((INDEX_BITMAP, 0b10011)) + values, 4)


def test_unknown_tag_truncation_and_trailing_bytes_are_rejected() -> None:
    codec = TopK(fraction=0.5)
    good = _u32_payload([0, 3], [1.0, 2.0])

    with pytest.raises(WireError, match="unknown index encoding tag 9"):
        codec.decode_sparse(bytes((9,)) + good[1:], 4)
    with pytest.raises(WireError, match="truncated"):
        codec.decode_sparse(good[:6], 4)
    with pytest.raises(WireError, match="top-k values"):
        codec.decode_sparse(good[:-1], 4)
    with pytest.raises(WireError, match="top-k values"):
        codec.decode_sparse(good + b"\x00", 4)
    with pytest.raises(WireError, match="empty"):
        codec.decode_sparse(b"", 4)


def test_nan_scale_in_quantized_values_is_rejected() -> None:
    codec = parse_codec("topk:0.5+q8")
    payload = bytearray(codec.encode(np.arange(8, dtype=np.float32), rng=np.random.default_rng(0)))
    lo_at = 1 + 1  # after the tag and the one-byte bitmap of 8 entries
    assert payload[0] == INDEX_BITMAP
    payload[lo_at : lo_at + 4] = np.array([np.nan], dtype="<f4").tobytes()

    with pytest.raises(WireError, match="top-k values: chunk 0 has a bad scale"):
        codec.decode(bytes(payload), 8)


def test_bad_arguments_are_rejected_naming_them() -> None:
    with pytest.raises(ValueError, match="fraction"):
        TopK(fraction=0.0)
    with pytest.raises(ValueError, match="values"):
        TopK(fraction=0.1, values=TopK(fraction=0.1))
