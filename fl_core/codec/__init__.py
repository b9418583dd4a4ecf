"""Codecs for updates (uplink) and models (downlink), and client-side error feedback.

=========================  ============================================================
name                       payload
=========================  ============================================================
``dense_fp32``             float32, lossless (4 bytes/value)
``fp16``                   float16 (2 bytes/value)
``q8`` / ``q4`` / ``q2``   unbiased stochastic uniform quantization, per-chunk scales
                           (:mod:`fl_core.codec.quantize`), bits packed tightly
``topk:<f>``               the ``ceil(f * n)`` largest-magnitude entries, float32 values,
                           compact indices (:mod:`fl_core.codec.sparse`)
``topk:<f>+fp16|q8|q4|q2`` top-k with the kept values through that codec
=========================  ============================================================

``parse_codec(name)`` returns a :class:`Codec` with ``encode(vector, *, rng)``,
``decode(payload, n)``, ``decode_sparse(payload, n)``, ``lossless``, ``sparse``,
``stochastic`` and ``max_payload_size(n)``. Decoders raise :class:`WireError` (the same
class as :class:`fl_core.wire.WireError`) on hostile payloads. :class:`ErrorFeedback` keeps
a client's residual across rounds. The wire format that frames payloads with a header and
checksum is :mod:`fl_core.wire`.
"""

from fl_core.codec.base import Codec, WireError
from fl_core.codec.dense import DenseFp32, Fp16
from fl_core.codec.feedback import ErrorFeedback
from fl_core.codec.quantize import CHUNK_SIZE, StochasticQuantizer
from fl_core.codec.registry import CODEC_FORMS, is_sparse, parse_codec
from fl_core.codec.sparse import TopK

__all__ = [
    "CHUNK_SIZE",
    "CODEC_FORMS",
    "Codec",
    "DenseFp32",
    "ErrorFeedback",
    "Fp16",
    "StochasticQuantizer",
    "TopK",
    "WireError",
    "is_sparse",
    "parse_codec",
]
