"""A safe, versioned binary wire format for updates and models. No pickle anywhere.

Layout of a message::

    b"FLW1" | uint32 big-endian header length | header (UTF-8 JSON) | payload

The header names the campaign, round, base model version, client, codec, parameter layout,
``num_examples``, payload length and the payload's sha256. :func:`decode` checks every one
of these against the bytes and raises :class:`WireError` with a reason on anything wrong
(truncated, oversized, corrupt, mismatched layout), so a bad message is rejected and the
round goes on with the others.

Codecs here: ``dense_fp32`` (lossless) and ``fp16``. Quantized and sparse codecs plug into
:data:`CODECS` with the same ``encode(vector) -> bytes`` / ``decode(bytes, n) -> vector``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fl_core.models import Layout

MAGIC = b"FLW1"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
DEFAULT_MAX_MESSAGE_BYTES = 256 << 20
KINDS = ("update", "model")


class WireError(ValueError):
    """A message that cannot be accepted; ``str(exc)`` is the rejection reason."""


def _enc_fp32(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


def _dec_fp32(data: bytes, n: int) -> np.ndarray:
    if len(data) != 4 * n:
        raise WireError(f"dense_fp32 payload has {len(data)} bytes, layout needs {4 * n}")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _enc_fp16(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype="<f2").tobytes()


def _dec_fp16(data: bytes, n: int) -> np.ndarray:
    if len(data) != 2 * n:
        raise WireError(f"fp16 payload has {len(data)} bytes, layout needs {2 * n}")
    return np.frombuffer(data, dtype="<f2").astype(np.float32)


CODECS: dict[str, tuple[Callable[[np.ndarray], bytes], Callable[[bytes, int], np.ndarray]]] = {
    "dense_fp32": (_enc_fp32, _dec_fp32),
    "fp16": (_enc_fp16, _dec_fp16),
}


@dataclass(frozen=True)
class Header:
    """Metadata that travels with every update or model."""

    kind: str
    campaign: str
    round: int
    base_version: int
    client: str
    codec: str
    layout: Layout
    num_examples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self, *, payload: bytes) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "campaign": self.campaign,
            "round": self.round,
            "base_version": self.base_version,
            "client": self.client,
            "codec": self.codec,
            "layout": self.layout.to_json(),
            "num_examples": self.num_examples,
            "metrics": self.metrics,
            "payload_bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }


def encode(header: Header, vector: np.ndarray) -> bytes:
    """Serialise ``vector`` with ``header``; the codec is ``header.codec``."""
    if header.kind not in KINDS:
        raise ValueError(f"kind: {header.kind!r} is not allowed; allowed values: {KINDS}")
    if header.codec not in CODECS:
        raise ValueError(f"codec: {header.codec!r} is unknown; allowed values: {list(CODECS)}")
    if vector.ndim != 1 or vector.size != header.layout.num_params:
        raise ValueError(f"vector of {vector.size} values does not fit the header's layout")
    payload = CODECS[header.codec][0](vector)
    head = json.dumps(header.to_json(payload=payload), sort_keys=True).encode()
    return MAGIC + struct.pack(">I", len(head)) + head + payload


def _field(raw: dict[str, Any], name: str, tp: type | tuple[type, ...]) -> Any:
    value = raw.get(name)
    if not isinstance(value, tp) or isinstance(value, bool):
        raise WireError(f"header field {name!r} is missing or has the wrong type")
    return value


def decode(
    data: bytes,
    *,
    expected_layout: Layout | None = None,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> tuple[Header, np.ndarray]:
    """Parse and verify a message; raises :class:`WireError` with the reason if it is bad."""
    if len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    if len(data) < 8 or data[:4] != MAGIC:
        raise WireError("not a FLW1 message (bad magic)")
    (head_len,) = struct.unpack(">I", data[4:8])
    if head_len > MAX_HEADER_BYTES or 8 + head_len > len(data):
        raise WireError("truncated or oversized header")
    try:
        raw = json.loads(data[8 : 8 + head_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"header is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise WireError("header is not a JSON object")
    if raw.get("format_version") != FORMAT_VERSION:
        raise WireError(f"unsupported format_version {raw.get('format_version')!r}")
    payload = data[8 + head_len :]
    if len(payload) != _field(raw, "payload_bytes", int):
        raise WireError(
            f"payload has {len(payload)} bytes, header says {raw.get('payload_bytes')} (truncated?)"
        )
    if hashlib.sha256(payload).hexdigest() != _field(raw, "sha256", str):
        raise WireError("payload sha256 does not match the header (corrupt)")
    try:
        layout = Layout.from_json(raw.get("layout"))
    except ValueError as exc:
        raise WireError(f"bad layout: {exc}") from None
    if expected_layout is not None and layout != expected_layout:
        raise WireError("layout does not match the global model's layout")
    kind = _field(raw, "kind", str)
    if kind not in KINDS:
        raise WireError(f"unknown kind {kind!r}")
    codec = _field(raw, "codec", str)
    if codec not in CODECS:
        raise WireError(f"unknown codec {codec!r}")
    metrics = raw.get("metrics", {})
    if not isinstance(metrics, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) for k, v in metrics.items()
    ):
        raise WireError("header field 'metrics' must map names to numbers")
    header = Header(
        kind=kind,
        campaign=_field(raw, "campaign", str),
        round=_field(raw, "round", int),
        base_version=_field(raw, "base_version", int),
        client=_field(raw, "client", str),
        codec=codec,
        layout=layout,
        num_examples=_field(raw, "num_examples", int),
        metrics={k: float(v) for k, v in metrics.items()},
    )
    vector = CODECS[codec][1](payload, layout.num_params)
    return header, vector
