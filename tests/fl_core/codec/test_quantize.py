import math

import numpy as np
import pytest

from fl_core.codec import CHUNK_SIZE, StochasticQuantizer, WireError, parse_codec
from fl_core.codec.quantize import pack_bits, packed_size, unpack_bits


def _scales(payload: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
    m = math.ceil(n / CHUNK_SIZE)
    lo = np.frombuffer(payload, dtype="<f4", count=m)
    step = np.frombuffer(payload, dtype="<f4", count=m, offset=4 * m)
    return lo, step


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 1023, 1025, 4097])
def test_bit_packing_round_trips_for_odd_lengths(bits: int, n: int) -> None:
    codes = np.random.default_rng(n).integers(0, 1 << bits, size=n, dtype=np.uint8)

    packed = pack_bits(codes, bits)

    assert packed.size == packed_size(n, bits) == math.ceil(n * bits / 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits, n), codes)


def test_bit_packing_is_tight_and_low_bits_first() -> None:
    assert pack_bits(np.array([1, 2], dtype=np.uint8), 4).tolist() == [0x21]
    assert pack_bits(np.array([1, 2, 3, 0, 1], dtype=np.uint8), 2).tolist() == [0b00111001, 1]


def test_non_zero_padding_bits_are_rejected() -> None:
    with pytest.raises(WireError, match="padding"):
        unpack_bits(np.array([0xF1], dtype=np.uint8), 4, 1)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_error_is_at_most_one_step_of_its_chunk(bits: int) -> None:
    n = 2 * CHUNK_SIZE + 451  # three chunks, the last one partial
    x = np.random.default_rng(bits).normal(size=n).astype(np.float32)
    x[CHUNK_SIZE : 2 * CHUNK_SIZE] *= 100  # chunks with very different scales
    codec = StochasticQuantizer(bits=bits)

    payload = codec.encode(x, rng=np.random.default_rng(0))
    out = codec.decode(payload, n)

    lo, step = _scales(payload, n)
    per_value_step = np.repeat(step, CHUNK_SIZE)[:n]
    chunks = [x[i : i + CHUNK_SIZE] for i in range(0, n, CHUNK_SIZE)]
    np.testing.assert_array_equal(lo, [c.min() for c in chunks])
    np.testing.assert_allclose(
        step, [(c.max() - c.min()) / (2**bits - 1) for c in chunks], rtol=1e-6
    )
    assert np.all(np.abs(out - x) <= per_value_step * (1 + 1e-5) + 1e-6)
    assert len(payload) == 8 * 3 + math.ceil(n * bits / 8)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_stochastic_quantization_is_unbiased(bits: int) -> None:
    draws = 2000
    x = np.random.default_rng(1).uniform(-1, 1, size=CHUNK_SIZE + 300).astype(np.float32)
    codec = StochasticQuantizer(bits=bits)
    rng = np.random.default_rng(2)

    total = np.zeros(x.size)
    for _ in range(draws):
        total += codec.decode(codec.encode(x, rng=rng), x.size)
    mean = total / draws

    # Each draw is one of two levels a step apart: variance <= step^2 / 4.
    step = (x.max() - x.min()) / (2**bits - 1)  # an upper bound on every chunk's step
    standard_error = step / 2 / math.sqrt(draws)
    assert np.max(np.abs(mean - x)) < 5 * standard_error
    # ... and it really is random: not every draw equals the first.
    assert np.abs(mean - codec.decode(codec.encode(x, rng=rng), x.size)).max() > 0


def test_constant_and_tiny_chunks_decode_exactly() -> None:
    codec = parse_codec("q2")
    for x in (
        np.full(3000, 0.25, dtype=np.float32),
        np.zeros(5, dtype=np.float32),
        np.array([7.0], dtype=np.float32),
    ):
        out = codec.decode(codec.encode(x, rng=np.random.default_rng(0)), x.size)
        np.testing.assert_array_equal(out, x)


def test_extreme_and_subnormal_ranges_stay_finite_and_bounded() -> None:
    codec = parse_codec("q8")
    for x in (
        np.array([-1.5e38, 1.5e38, 0.0], dtype=np.float32),
        np.array([1e-40, 0.0, -1e-45, 3e-42], dtype=np.float32),
    ):
        out = codec.decode(codec.encode(x, rng=np.random.default_rng(0)), x.size)

        step = (float(x.max()) - float(x.min())) / 255
        assert np.isfinite(out).all()
        assert np.all(np.abs(out.astype(np.float64) - x) <= step * 1.0001 + 1e-45)
    with pytest.raises(ValueError, match="range"):
        codec.encode(np.array([-3e38, 3e38], dtype=np.float32), rng=np.random.default_rng(0))


def test_same_rng_seed_gives_the_same_bytes() -> None:
    x = np.random.default_rng(0).normal(size=5000).astype(np.float32)
    codec = parse_codec("q4")

    a = codec.encode(x, rng=np.random.default_rng(42))
    b = codec.encode(x, rng=np.random.default_rng(42))

    assert a == b


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -1.0, 3e38])
def test_hostile_scales_are_rejected(bad: float) -> None:
    n = 2000
    codec = parse_codec("q8")
    payload = bytearray(codec.encode(np.ones(n), rng=np.random.default_rng(0)))
    m = 2
    # second chunk's step (lo: bytes 0..8, step: 8..16)
    payload[4 * m + 4 : 4 * m + 8] = np.array([bad], dtype="<f4").tobytes()

    with pytest.raises(WireError, match="chunk 1 has a bad scale"):
        codec.decode(bytes(payload), n)


def test_hostile_offset_is_rejected() -> None:
    codec = parse_codec("q4")
    payload = bytearray(codec.encode(np.ones(10), rng=np.random.default_rng(0)))
    payload[0:4] = np.array([np.nan], dtype="<f4").tobytes()

    with pytest.raises(WireError, match="chunk 0 has a bad scale"):
        codec.decode(bytes(payload), 10)


def test_wrong_length_is_rejected_with_the_expected_size() -> None:
    codec = parse_codec("q2")
    payload = codec.encode(np.ones(100), rng=np.random.default_rng(0))

    with pytest.raises(WireError, match="q2 payload has 32 bytes, layout needs 33"):
        codec.decode(payload[:-1], 100)
    with pytest.raises(WireError, match="layout needs"):
        codec.decode(payload, 101)
