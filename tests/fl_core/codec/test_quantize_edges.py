"""Edges of the stochastic quantizer that mutation testing found untested: the empty
vector, vectors that fill their chunks exactly, the float32 range boundary on both sides
(encoder and decoder), and the reasons given on rejection."""

from __future__ import annotations

import numpy as np
import pytest

from fl_core.codec import CHUNK_SIZE, StochasticQuantizer, WireError
from fl_core.codec.quantize import check_scales, unpack_bits

F32_MAX = float(np.finfo(np.float32).max)


def _payload(lo: float, step: float, codes: int = 1) -> bytes:
    """A one-chunk q8 payload for ``codes`` values (all code 0)."""
    return np.array([lo], "<f4").tobytes() + np.array([step], "<f4").tobytes() + bytes(codes)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_an_empty_vector_round_trips(bits: int) -> None:
    codec = StochasticQuantizer(bits=bits)

    payload = codec.encode(np.zeros(0, np.float32), rng=np.random.default_rng(0))

    assert payload == b""
    assert codec.decode(payload, 0).shape == (0,)


@pytest.mark.parametrize("n", [CHUNK_SIZE, 2 * CHUNK_SIZE])
def test_vectors_filling_whole_chunks_stay_within_one_step(n: int) -> None:
    codec = StochasticQuantizer(bits=4)
    x = np.random.default_rng(1).normal(size=n).astype(np.float32)

    got = codec.decode(codec.encode(x, rng=np.random.default_rng(2)), n)

    for c in range(n // CHUNK_SIZE):
        chunk = x[c * CHUNK_SIZE : (c + 1) * CHUNK_SIZE]
        step = (float(chunk.max()) - float(chunk.min())) / 15
        assert np.abs(got[c * CHUNK_SIZE : (c + 1) * CHUNK_SIZE] - chunk).max() <= step * 1.0001


def test_a_chunk_spanning_exactly_the_float32_range_is_encoded() -> None:
    codec = StochasticQuantizer(bits=8)
    x = np.array([0.0, F32_MAX], np.float32)

    got = codec.decode(codec.encode(x, rng=np.random.default_rng(0)), 2)

    assert np.isfinite(got).all() and got[0] >= 0 and got[1] <= F32_MAX


def test_a_chunk_spanning_more_than_float32_is_refused_with_the_reason() -> None:
    codec = StochasticQuantizer(bits=8)
    x = np.array([-F32_MAX, F32_MAX], np.float32)

    with pytest.raises(
        ValueError, match="^vector spans more than float32's range within one chunk$"
    ):
        codec.encode(x, rng=np.random.default_rng(0))


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_a_wide_but_valid_chunk_decodes(bits: int) -> None:
    codec = StochasticQuantizer(bits=bits)
    x = np.array([-0.4985 * F32_MAX, 0.4985 * F32_MAX], np.float32)  # 257 steps would overflow

    got = codec.decode(codec.encode(x, rng=np.random.default_rng(0)), 2)

    assert np.isfinite(got).all()


def test_scale_whose_top_level_just_overflows_is_rejected() -> None:
    levels = 255
    step = np.float32(F32_MAX / (levels - 0.5))  # 254 levels fit, the 255th overflows
    assert 254 * float(step) < F32_MAX < 255 * float(step)

    with pytest.raises(
        WireError, match="^chunk 0 has a bad scale .*: non-finite, negative or overflowing float32$"
    ):
        check_scales(np.array([0.0], np.float32), np.array([step]), 8)


def test_offset_plus_a_valid_range_overflowing_is_rejected() -> None:
    lo = np.array([0.9 * F32_MAX], np.float32)
    step = np.array([0.2 * F32_MAX / 255], np.float32)  # the range alone fits

    with pytest.raises(WireError, match="bad scale"):
        check_scales(lo, step, 8)
    with pytest.raises(WireError, match="bad scale"):
        StochasticQuantizer(bits=8).decode(_payload(float(lo[0]), float(step[0])), 1)


def test_bits_outside_8_4_2_are_refused_naming_the_argument() -> None:
    with pytest.raises(ValueError, match=r"^bits must be one of \(8, 4, 2\), got 3$"):
        StochasticQuantizer(bits=3)


def test_non_finite_input_and_missing_rng_are_refused_naming_the_codec() -> None:
    codec = StochasticQuantizer(bits=4)

    with pytest.raises(ValueError, match="codec 'q4' needs finite input"):
        codec.encode(np.array([1.0, np.nan], np.float32), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="codec 'q4' is stochastic"):
        codec.encode(np.ones(3, np.float32))


def test_unpack_errors_give_the_sizes_and_the_reason() -> None:
    with pytest.raises(WireError, match=r"^3 bytes of 4-bit codes, 8 values need 4$"):
        unpack_bits(np.zeros(3, np.uint8), 4, 8)
    with pytest.raises(WireError, match="^non-zero padding bits after the last code$"):
        unpack_bits(np.array([0xF0], np.uint8), 4, 1)


def test_each_value_gets_its_own_dither() -> None:
    """Independent rounding: one draw's errors average out over many values (a dither shared
    by a whole chunk would shift them all by the same (u - 1/2) step)."""
    codec = StochasticQuantizer(bits=2)
    n = 64 * CHUNK_SIZE
    x = np.tile(np.linspace(0.0, 3.0, CHUNK_SIZE, dtype=np.float32), 64)  # step 1 per chunk

    for seed in range(5):
        err = codec.decode(codec.encode(x, rng=np.random.default_rng(seed)), n) - x
        assert abs(float(err.astype(np.float64).mean())) < 6 * 0.5 / np.sqrt(n)


def test_values_at_the_top_of_a_chunk_never_wrap_around() -> None:
    """t + u can round up to levels + 1 at the chunk's maximum; the clamp keeps the code
    at the top level (a uint8 cast of 256 would wrap to 0: an error of the whole range)."""
    codec = StochasticQuantizer(bits=8)
    x = np.full(2_000_000, 255.0, np.float32)
    x[::CHUNK_SIZE] = 0.0  # each chunk spans [0, 255] (step 1): most values on the top level

    got = codec.decode(codec.encode(x, rng=np.random.default_rng(0)), x.size)

    assert float(np.abs(got - x).max()) <= 1.0
