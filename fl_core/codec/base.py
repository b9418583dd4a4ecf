"""The codec interface shared by every update/model codec, and the rejection error.

A codec turns a flat float32 vector into payload bytes and back. It knows nothing about
headers: the wire format (:mod:`fl_core.wire`) carries the codec's name, the layout (hence
``n``) and a checksum next to the payload. Decoders treat the payload as hostile: every
length, index and scale is checked and anything malformed raises :class:`WireError` with
the reason, before any allocation proportional to a size the payload claims.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class WireError(ValueError):
    """A message or payload that cannot be accepted; ``str(exc)`` is the rejection reason.

    Public as :class:`fl_core.wire.WireError` (the same class).
    """


class Codec(ABC):
    """Encodes a flat float32 vector of length ``n`` into bytes and decodes it back.

    Attributes
    ----------
    lossless
        ``decode(encode(v), v.size)`` equals ``v`` bit for bit.
    sparse
        :meth:`decode_sparse` returns ``(indices, values)`` instead of ``None``.
    stochastic
        :meth:`encode` draws random numbers and needs an ``rng``.
    """

    lossless: bool = False
    sparse: bool = False
    stochastic: bool = False

    @property
    @abstractmethod
    def name(self) -> str:
        """The canonical name, as accepted by :func:`fl_core.codec.parse_codec`."""

    @abstractmethod
    def encode(self, vector: np.ndarray, *, rng: np.random.Generator | None = None) -> bytes:
        """Encode a 1-D vector (converted to float32) into payload bytes.

        Raises ``ValueError`` naming ``vector`` or ``rng`` on bad input (caller error).
        """

    @abstractmethod
    def decode(self, payload: bytes, n: int) -> np.ndarray:
        """Decode ``payload`` into a dense float32 vector of length ``n``.

        Raises :class:`WireError` with the reason on a malformed payload.
        """

    def decode_sparse(self, payload: bytes, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(indices, values)`` of a sparse payload without densifying; None if dense.

        Indices are int64, strictly increasing and in ``[0, n)``; values are float32.
        """
        return None

    def check(self, payload: bytes, n: int) -> None:
        """Raise :class:`WireError` unless ``payload`` decodes to ``n`` finite values.

        What a receiver that only accepts or refuses (the coordinator's upload validation)
        needs: the same checks as :meth:`decode` plus finiteness. This default decodes;
        codecs that can check without building the vector override it.
        """
        if not np.isfinite(self.decode(payload, n)).all():
            raise WireError(f"{self.name} payload decodes to non-finite values")

    @abstractmethod
    def max_payload_size(self, n: int) -> int:
        """Payload bytes for a vector of length ``n``: exact for fixed-size codecs, an upper
        bound for top-k (whose index block picks the most compact of its encodings)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def as_vector(vector: np.ndarray, *, name: str = "vector") -> np.ndarray:
    """``vector`` as a contiguous 1-D float32 array; ``ValueError`` naming ``name`` if not 1-D."""
    arr = np.asarray(vector)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def require_finite(vector: np.ndarray, codec: str, *, name: str = "vector") -> None:
    """Lossy codecs need finite input (min/max and magnitudes of NaN are meaningless)."""
    if not np.isfinite(vector).all():
        raise ValueError(f"{name} has non-finite values; codec {codec!r} needs finite input")


def require_rng(rng: np.random.Generator | None, codec: str) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: codec {codec!r} is stochastic and needs a numpy Generator")
    return rng


def check_length(payload: bytes, expected: int, what: str) -> None:
    if len(payload) != expected:
        raise WireError(f"{what} payload has {len(payload)} bytes, layout needs {expected}")
