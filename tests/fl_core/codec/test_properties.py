"""Property-based tests (hypothesis) of the codecs: what each codec promises for any input.

* lossless codecs round-trip bit for bit; ``fp16`` rounds to the nearest half;
* the stochastic quantizers stay within one level step of the input, hit the chunk's min
  and max exactly, and are unbiased (checked on averages of independent draws);
* top-k keeps exactly the ``k`` largest magnitudes and their values;
* error feedback conserves mass: ``sum(sent) + residual == sum(updates)``;
* :meth:`Codec.check` refuses exactly the payloads that fail to decode or decode to
  non-finite values (valid payloads with a few bytes overwritten);
* every payload's length is ``max_payload_size`` (exact, or a bound for top-k), and any
  truncation or extension of a payload is rejected with :class:`WireError`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fl_core.codec import ErrorFeedback, WireError, parse_codec
from fl_core.codec.quantize import CHUNK_SIZE

SETTINGS = settings(max_examples=60, deadline=None)
finite32 = st.floats(-1e6, 1e6, allow_nan=False, width=32)
vectors = st.integers(1, 3000).flatmap(lambda n: arrays(np.float32, n, elements=finite32))
small_vectors = st.integers(1, 300).flatmap(lambda n: arrays(np.float32, n, elements=finite32))
seeds = st.integers(0, 2**32 - 1)
fractions = st.sampled_from([0.001, 0.01, 0.05, 0.1, 0.3, 0.5, 1.0])
value_codecs = st.sampled_from(["", "+fp16", "+q8", "+q4", "+q2"])
bits = st.sampled_from([8, 4, 2])


@SETTINGS
@given(v=vectors)
def test_dense_fp32_is_lossless_and_fp16_rounds_to_nearest(v: np.ndarray) -> None:
    dense, half = parse_codec("dense_fp32"), parse_codec("fp16")

    np.testing.assert_array_equal(
        dense.decode(dense.encode(v), v.size).view(np.uint32), v.view(np.uint32)
    )
    with np.errstate(over="ignore"):  # above 65504 is inf in half precision
        got = half.decode(half.encode(v), v.size)
        nearest = v.astype(np.float16).astype(np.float32)
    assert len(half.encode(v)) == half.max_payload_size(v.size) == 2 * v.size
    np.testing.assert_array_equal(got, nearest)


@SETTINGS
@given(v=vectors, b=bits, seed=seeds)
def test_quantizer_stays_within_one_step_and_keeps_each_chunks_range(
    v: np.ndarray, b: int, seed: int
) -> None:
    codec = parse_codec(f"q{b}")
    payload = codec.encode(v, rng=np.random.default_rng(seed))
    got = codec.decode(payload, v.size).astype(np.float64)
    x = v.astype(np.float64)

    assert len(payload) == codec.max_payload_size(v.size)
    for start in range(0, v.size, CHUNK_SIZE):
        chunk, out = x[start : start + CHUNK_SIZE], got[start : start + CHUNK_SIZE]
        step = (chunk.max() - chunk.min()) / (2**b - 1)
        slack = 1e-6 * max(1.0, float(np.abs(chunk).max()))
        assert np.all(np.abs(out - chunk) <= step + slack)
        assert out.min() >= chunk.min() - slack and out.max() <= chunk.max() + step + slack


@settings(max_examples=25, deadline=None)
@given(v=small_vectors, b=bits, seed=seeds)
def test_quantizer_is_unbiased(v: np.ndarray, b: int, seed: int) -> None:
    codec = parse_codec(f"q{b}")
    rng = np.random.default_rng(seed)
    draws = 400
    mean = np.mean([codec.decode(codec.encode(v, rng=rng), v.size) for _ in range(draws)], axis=0)
    x = v.astype(np.float64)
    step = (x.max() - x.min()) / (2**b - 1)

    # each draw is within one step of x with mean x: the average of 400 is within
    # 5 standard errors (std <= step / 2) plus float32 rounding
    assert np.all(np.abs(mean - x) <= 5 * (step / 2) / math.sqrt(draws) + 1e-5 * (1 + np.abs(x)))


@SETTINGS
@given(v=vectors, fraction=fractions, seed=seeds)
def test_topk_keeps_exactly_the_k_largest_magnitudes(
    v: np.ndarray, fraction: float, seed: int
) -> None:
    codec = parse_codec(f"topk:{fraction}")
    k = min(v.size, max(1, math.ceil(fraction * v.size - 1e-9)))
    payload = codec.encode(v)

    sparse = codec.decode_sparse(payload, v.size)
    assert sparse is not None
    idx, values = sparse
    dense = codec.decode(payload, v.size)

    assert idx.size == k and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(values, v[idx])
    dropped = np.delete(np.abs(v), idx)
    if dropped.size:
        assert np.abs(v[idx]).min() >= dropped.max()
    np.testing.assert_array_equal(dense[idx], v[idx])
    assert np.count_nonzero(np.delete(dense, idx)) == 0
    assert len(payload) <= codec.max_payload_size(v.size)


@SETTINGS
@given(
    updates=st.integers(1, 500).flatmap(
        lambda n: st.lists(
            arrays(np.float32, n, elements=st.floats(-10, 10, width=32)), min_size=1, max_size=5
        )
    ),
    fraction=fractions,
    values=value_codecs,
    seed=seeds,
)
def test_error_feedback_conserves_what_was_not_sent(
    updates: list[np.ndarray], fraction: float, values: str, seed: int
) -> None:
    codec = parse_codec(f"topk:{fraction}{values}")
    feedback = ErrorFeedback(updates[0].size)
    rng = np.random.default_rng(seed)
    sent = np.zeros(updates[0].size, dtype=np.float64)

    for u in updates:
        payload, transmitted = feedback.compress(u, codec, rng=rng)
        decoded = codec.decode(payload, u.size)
        np.testing.assert_array_equal(transmitted, decoded)  # what the server sees
        sent += decoded

    total = np.sum([u.astype(np.float64) for u in updates], axis=0)
    np.testing.assert_allclose(sent + feedback.residual, total, atol=1e-4 * len(updates))


@SETTINGS
@given(
    v=small_vectors,
    name=st.sampled_from(["dense_fp32", "fp16", "q8", "q4", "q2", "topk:0.1", "topk:0.2+q8"]),
    cut=st.integers(1, 64),
    seed=seeds,
)
def test_a_truncated_or_extended_payload_is_rejected(
    v: np.ndarray, name: str, cut: int, seed: int
) -> None:
    codec = parse_codec(name)
    payload = codec.encode(v, rng=np.random.default_rng(seed))

    with pytest.raises(WireError):
        codec.decode(payload[: max(0, len(payload) - cut)], v.size)
    if not codec.sparse:  # a sparse payload's tail belongs to its value block
        with pytest.raises(WireError):
            codec.decode(payload + bytes(cut), v.size)


@SETTINGS
@given(
    payload=st.binary(max_size=600),
    n=st.integers(1, 2000),
    name=st.sampled_from(
        ["dense_fp32", "fp16", "q8", "q4", "q2", "topk:0.01", "topk:0.1+q4", "topk:0.5+fp16"]
    ),
)
def test_random_bytes_decode_to_the_right_length_or_a_wire_error(
    payload: bytes, n: int, name: str
) -> None:
    codec = parse_codec(name)
    try:
        out = codec.decode(payload, n)
    except WireError:
        return
    assert out.shape == (n,) and out.dtype == np.float32


@settings(max_examples=300, deadline=None)
@given(
    v=small_vectors,
    name=st.sampled_from(
        ["dense_fp32", "fp16", "q8", "q4", "q2", "topk:0.3", "topk:0.5+q4", "topk:0.2+q2",
         "topk:0.1+q8", "topk:0.01+fp16"]
    ),
    seed=seeds,
    writes=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=3),
    aim=st.sampled_from(["anywhere", "tail", "index end"]),
)  # fmt: skip
def test_check_refuses_exactly_what_decoding_refuses_or_decodes_to_non_finite(
    v: np.ndarray, name: str, seed: int, writes: list[tuple[int, int]], aim: str
) -> None:
    """Payloads near valid ones: bytes are overwritten anywhere, in the last four bytes
    (the packed codes' padding) or around the end of a top-k index block (a bitmap's
    count and padding bits)."""
    codec = parse_codec(name)
    payload = bytearray(codec.encode(v, rng=np.random.default_rng(seed)))
    for pos, byte in writes:
        if aim == "tail":
            at = len(payload) - 1 - pos % 4
        elif aim == "index end":  # a bitmap's last byte is at ceil(n / 8)
            at = -(-v.size // 8) - 1 + pos % 3
        else:
            at = pos
        payload[at % len(payload)] = byte
    data = bytes(payload)
    try:
        accepted = bool(np.isfinite(codec.decode(data, v.size)).all())
    except WireError:
        accepted = False
    if accepted:
        codec.check(data, v.size)
    else:
        with pytest.raises(WireError):
            codec.check(data, v.size)
