"""Dense codecs: ``dense_fp32`` (lossless) and ``fp16`` (IEEE half precision, round to
nearest). Both carry values through unchanged in kind: non-finite values are transported,
and rejecting them is the update validator's job, as for any update."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fl_core.codec.base import Codec, WireError, as_vector, check_length


@dataclass(frozen=True, repr=False)
class DenseFp32(Codec):
    """Little-endian float32, 4 bytes per value; lossless."""

    lossless = True

    @property
    def name(self) -> str:
        return "dense_fp32"

    def encode(self, vector: np.ndarray, *, rng: np.random.Generator | None = None) -> bytes:
        return as_vector(vector).astype("<f4", copy=False).tobytes()

    def decode(self, payload: bytes, n: int) -> np.ndarray:
        check_length(payload, 4 * n, self.name)
        return np.frombuffer(payload, dtype="<f4").astype(np.float32)

    def check(self, payload: bytes, n: int) -> None:
        check_length(payload, 4 * n, self.name)
        if not np.isfinite(np.frombuffer(payload, dtype="<f4")).all():  # no copy
            raise WireError(f"{self.name} payload has non-finite values")

    def max_payload_size(self, n: int) -> int:
        return 4 * n


@dataclass(frozen=True, repr=False)
class Fp16(Codec):
    """Little-endian float16, 2 bytes per value; magnitudes above 65504 become ``inf``."""

    @property
    def name(self) -> str:
        return "fp16"

    def encode(self, vector: np.ndarray, *, rng: np.random.Generator | None = None) -> bytes:
        with np.errstate(over="ignore"):  # documented: beyond 65504 is inf
            return as_vector(vector).astype("<f2").tobytes()

    def decode(self, payload: bytes, n: int) -> np.ndarray:
        check_length(payload, 2 * n, self.name)
        return np.frombuffer(payload, dtype="<f2").astype(np.float32)

    def max_payload_size(self, n: int) -> int:
        return 2 * n
