"""Codec names -> codec objects."""

from __future__ import annotations

import re

from fl_core.codec.base import Codec
from fl_core.codec.dense import DenseFp32, Fp16
from fl_core.codec.quantize import StochasticQuantizer
from fl_core.codec.sparse import TopK

CODEC_FORMS = (
    "dense_fp32",
    "fp16",
    "q8",
    "q4",
    "q2",
    "topk:<fraction>",
    "topk:<fraction>+fp16",
    "topk:<fraction>+q8",
    "topk:<fraction>+q4",
    "topk:<fraction>+q2",
)
"""Every accepted form of a codec name; ``<fraction>`` is a decimal in (0, 1]."""

_MAX_NAME = 64
_TOPK = re.compile(r"topk:((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?:\+(fp16|q8|q4|q2))?")


def _value_codec(name: str) -> Codec:
    if name == "fp16":
        return Fp16()
    return StochasticQuantizer(bits=int(name[1:]))


def parse_codec(name: str) -> Codec:
    """The codec for a name such as ``"q8"`` or ``"topk:0.01+q8"``.

    Raises ``ValueError`` naming ``codec`` and listing :data:`CODEC_FORMS` otherwise.
    """
    if isinstance(name, str) and len(name) <= _MAX_NAME:
        if name == "dense_fp32":
            return DenseFp32()
        if name == "fp16":
            return Fp16()
        if name in ("q8", "q4", "q2"):
            return StochasticQuantizer(bits=int(name[1:]))
        match = _TOPK.fullmatch(name)
        if match:
            fraction = float(match.group(1))
            if 0 < fraction <= 1:
                values = _value_codec(match.group(2)) if match.group(2) else DenseFp32()
                return TopK(fraction=fraction, values=values)
    shown = name[:_MAX_NAME] if isinstance(name, str) else name
    raise ValueError(
        f"codec {shown!r} is unknown; allowed forms: {', '.join(CODEC_FORMS)} "
        "(fraction in (0, 1], e.g. topk:0.01+q8)"
    )


def is_sparse(name: str) -> bool:
    """Whether the codec named ``name`` yields sparse updates (``ValueError`` if unknown)."""
    return parse_codec(name).sparse
