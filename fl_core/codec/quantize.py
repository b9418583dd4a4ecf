"""Unbiased stochastic uniform quantization with per-chunk scales: ``q8``, ``q4``, ``q2``.

The vector is cut into chunks of :data:`CHUNK_SIZE` values. Each chunk is mapped onto the
``L = 2**bits - 1`` uniform levels spanning its own ``[min, max]`` (step
``s = (max - min) / L``), and each value is rounded to one of its two neighbouring levels at
random, up with probability equal to its distance from the lower one, so that
``E[x_hat] = x`` and ``|x - x_hat| <= s``. This is the stochastic k-level quantization of
Suresh et al., "Distributed Mean Estimation with Limited Communication" (ICML 2017), with the
per-bucket scaling of QSGD (Alistarh et al., "QSGD: Communication-Efficient SGD via Gradient
Quantization and Encoding", NeurIPS 2017); the min/max offset uses all ``2**bits`` codes
(a sign-magnitude scheme wastes one, which matters at 2 bits).

Payload (little-endian)::

    lo: float32[m] | step: float32[m] | codes packed tightly: ceil(n * bits / 8) bytes

with ``m = ceil(n / CHUNK_SIZE)`` and ``x_hat = lo[c] + code * step[c]``. Codes are packed
``8 // bits`` per byte, the first value in the lowest bits; the padding bits of the last
byte are zero. Decoding rejects non-finite or negative scales, scales whose levels overflow
float32, non-zero padding bits and any length that is not exactly the expected one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fl_core.codec.base import Codec, WireError, as_vector, require_finite, require_rng

CHUNK_SIZE = 1024
BITS = (8, 4, 2)
_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).tiny)


# --------------------------------------------------------------------------- bit packing


def packed_size(n: int, bits: int) -> int:
    """Bytes holding ``n`` codes of ``bits`` bits each, packed tightly."""
    return math.ceil(n * bits / 8)


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 ``codes`` (each ``< 2**bits``) ``8 // bits`` per byte, first in the low bits."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    per = 8 // bits
    if per == 1:
        return codes
    n = codes.size
    if n % per:
        padded = np.zeros(packed_size(n, bits) * per, dtype=np.uint8)
        padded[:n] = codes
        codes = padded
    grid = codes.reshape(-1, per)
    out = grid[:, 0].copy()
    for j in range(1, per):
        out |= grid[:, j] << (bits * j)
    return out


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`; raises :class:`WireError` on a wrong size or non-zero
    padding bits."""
    if packed.size != packed_size(n, bits):
        raise WireError(
            f"{packed.size} bytes of {bits}-bit codes, {n} values need {packed_size(n, bits)}"
        )
    per = 8 // bits
    if per == 1:
        return packed.astype(np.uint8, copy=True)
    mask = (1 << bits) - 1
    grid = np.empty((packed.size, per), dtype=np.uint8)
    for j in range(per):
        np.bitwise_and(packed >> (bits * j), mask, out=grid[:, j])
    flat = grid.reshape(-1)
    if flat[n:].any():
        raise WireError("non-zero padding bits after the last code")
    return flat[:n]


# --------------------------------------------------------------------------- the math


def _chunked(x: np.ndarray, chunk_size: int) -> np.ndarray:
    """``x`` as a ``(m, chunk_size)`` array; the last chunk is padded with its last value
    (which changes neither its min nor its max)."""
    m = -(-x.size // chunk_size)
    if x.size == m * chunk_size:
        return x.reshape(m, chunk_size)
    padded = np.empty(m * chunk_size, dtype=x.dtype)
    padded[: x.size] = x
    padded[x.size :] = x[-1]
    return padded.reshape(m, chunk_size)


def quantize(
    x: np.ndarray, *, bits: int, rng: np.random.Generator, chunk_size: int = CHUNK_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stochastically quantize a finite float32 vector.

    Returns
    -------
    lo, step
        float32 per chunk: the chunk's minimum and level spacing (0 for a constant chunk).
    codes
        uint8 per value in ``[0, 2**bits - 1]``, with ``E[lo + code * step] = x``.
    """
    levels = (1 << bits) - 1
    if x.size == 0:
        empty = np.zeros(0, dtype=np.float32)
        return empty, empty, np.zeros(0, dtype=np.uint8)
    grid = _chunked(x, chunk_size)
    lo = grid.min(axis=1)
    spread = grid.max(axis=1).astype(np.float64) - lo
    step = (spread / levels).astype(np.float32)
    if np.any(spread > _F32_MAX):
        raise ValueError("vector spans more than float32's range within one chunk")
    positive = step > 0
    # The float32 path is exact enough (bias ~1e-5 of a step); a subnormal step, whose
    # inverse overflows float32, takes the float64 path.
    wide = bool(np.any(positive & (step < _F32_TINY)))
    dtype = np.float64 if wide else np.float32
    inv = np.zeros(step.shape, dtype=dtype)
    np.divide(1.0, step.astype(dtype), out=inv, where=positive)
    t = grid.astype(dtype, copy=False) - lo.astype(dtype)[:, None]
    t *= inv[:, None]
    t += rng.random(t.shape, dtype=dtype)
    # floor(t + u) with u in [0, 1): rounds up with probability frac(t); the clamp catches
    # t + u rounding to levels + 1 at the top of the range.
    np.minimum(t, levels, out=t)
    codes = t.astype(np.uint8).reshape(-1)[: x.size]
    return lo, step, codes


def dequantize(
    lo: np.ndarray, step: np.ndarray, codes: np.ndarray, *, chunk_size: int = CHUNK_SIZE
) -> np.ndarray:
    """``lo[c] + code * step[c]`` for every value, float32."""
    n = codes.size
    m = lo.size
    out = np.zeros(m * chunk_size, dtype=np.float32)
    out[:n] = codes
    grid = out.reshape(m, chunk_size)
    grid *= step[:, None]
    grid += lo[:, None]
    return out[:n]


def check_scales(lo: np.ndarray, step: np.ndarray, bits: int) -> None:
    """Reject scales that are non-finite, negative, or whose levels overflow float32."""
    levels = (1 << bits) - 1
    lo64 = lo.astype(np.float64)
    top = levels * step.astype(np.float64)
    bad = ~(np.isfinite(lo64) & np.isfinite(top) & (top >= 0))
    bad |= (top > _F32_MAX) | (np.abs(lo64 + top) > _F32_MAX)
    if bad.any():
        c = int(np.flatnonzero(bad)[0])
        raise WireError(
            f"chunk {c} has a bad scale (lo={lo[c]!r}, step={step[c]!r}): "
            "non-finite, negative or overflowing float32"
        )


# --------------------------------------------------------------------------- the codec


@dataclass(frozen=True, repr=False)
class StochasticQuantizer(Codec):
    """``q8`` / ``q4`` / ``q2``: unbiased stochastic uniform quantization, per-chunk scales.

    Parameters
    ----------
    bits
        Bits per value: 8, 4 or 2 (1, 2 or 4 values per byte).

    Notes
    -----
    Payload size is ``8 * ceil(n / 1024) + ceil(n * bits / 8)`` bytes, e.g. ``q8`` is
    ~25.8% of ``dense_fp32``, ``q4`` ~13.3%, ``q2`` ~7.0%. See the module docstring for the
    layout and the references.
    """

    bits: int
    stochastic = True

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {self.bits!r}")

    @property
    def name(self) -> str:
        return f"q{self.bits}"

    def max_payload_size(self, n: int) -> int:
        return 8 * -(-n // CHUNK_SIZE) + packed_size(n, self.bits)

    def encode(self, vector: np.ndarray, *, rng: np.random.Generator | None = None) -> bytes:
        x = as_vector(vector)
        require_finite(x, self.name)
        lo, step, codes = quantize(x, bits=self.bits, rng=require_rng(rng, self.name))
        return b"".join(
            (
                lo.astype("<f4", copy=False).tobytes(),
                step.astype("<f4", copy=False).tobytes(),
                pack_bits(codes, self.bits).tobytes(),
            )
        )

    def _scales(self, payload: bytes, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The checked per-chunk scales and the packed codes (not yet unpacked)."""
        if len(payload) != self.max_payload_size(n):
            raise WireError(
                f"{self.name} payload has {len(payload)} bytes, layout needs "
                f"{self.max_payload_size(n)}"
            )
        m = -(-n // CHUNK_SIZE)
        lo = np.frombuffer(payload, dtype="<f4", count=m).astype(np.float32)
        step = np.frombuffer(payload, dtype="<f4", count=m, offset=4 * m).astype(np.float32)
        check_scales(lo, step, self.bits)
        return lo, step, np.frombuffer(payload, dtype=np.uint8, offset=8 * m)

    def decode(self, payload: bytes, n: int) -> np.ndarray:
        lo, step, packed = self._scales(payload, n)
        codes = unpack_bits(packed, self.bits, n)
        return dequantize(lo, step, codes)

    def check(self, payload: bytes, n: int) -> None:
        """Without dequantizing: with the scales checked (finite, no float32 overflow at
        the top level), every code decodes to a finite value; what is left is the padding
        bits of the last byte."""
        _, _, packed = self._scales(payload, n)
        per = 8 // self.bits
        used = n - (packed.size - 1) * per  # codes in the last byte (size checked above)
        if n and used < per and int(packed[-1]) >> (self.bits * used):
            raise WireError("non-zero padding bits after the last code")
