"""Property-based tests (hypothesis) of the wire format.

For any header and vector: ``decode(encode(h, v))`` gives back ``h`` and the codec's
decoding of ``v``; the byte count is the message length; every single-byte corruption and
every truncation is rejected with :class:`WireError` (never another exception, never a
silently different message); arbitrary bytes never get past the parser unless they form
a valid message.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fl_core import wire
from fl_core.codec import parse_codec
from fl_core.models import Layout

SETTINGS = settings(max_examples=60, deadline=None)
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=24)
codecs = st.sampled_from(
    ["dense_fp32", "fp16", "q8", "q4", "q2", "topk:0.1", "topk:0.5+q8", "topk:0.25+fp16"]
)


@st.composite
def messages(draw: st.DrawFn) -> tuple[wire.Header, np.ndarray]:
    shapes = draw(
        st.lists(st.lists(st.integers(1, 6), min_size=0, max_size=3), min_size=1, max_size=3)
    )
    layout = Layout(tuple(f"p{i}" for i in range(len(shapes))), tuple(tuple(s) for s in shapes))
    header = wire.Header(
        kind="update",
        campaign=draw(names),
        round=draw(st.integers(0, wire.MAX_COUNTER)),
        base_version=draw(st.integers(0, wire.MAX_COUNTER)),
        client=draw(names),
        codec=draw(codecs),
        layout=layout,
        num_examples=draw(st.integers(0, wire.MAX_NUM_EXAMPLES)),
        metrics=draw(
            st.dictionaries(
                st.text(min_size=1, max_size=16),
                st.floats(-wire.MAX_METRIC_ABS, wire.MAX_METRIC_ABS, allow_nan=False),
                max_size=5,
            )
        ),
    )
    vector = draw(arrays(np.float32, layout.num_params, elements=st.floats(-1e4, 1e4, width=32)))
    return header, vector


@SETTINGS
@given(message=messages(), seed=st.integers(0, 2**32 - 1))
def test_decode_inverts_encode(message: tuple[wire.Header, np.ndarray], seed: int) -> None:
    header, vector = message
    rng = np.random.default_rng(seed)
    data = wire.encode(header, vector, rng=rng)
    codec = parse_codec(header.codec)
    payload = codec.encode(vector, rng=np.random.default_rng(seed))

    got, decoded = wire.decode(data, expected_layout=header.layout, expected_codec=header.codec)

    assert got == header
    np.testing.assert_array_equal(decoded, codec.decode(payload, vector.size))
    sizes = wire.message_sizes(data)
    assert sizes["total_bytes"] == wire.encoded_size(data) == len(data)
    assert sizes["payload_bytes"] == len(payload)


@SETTINGS
@given(message=messages(), data=st.data())
def test_any_single_byte_change_or_truncation_is_rejected(
    message: tuple[wire.Header, np.ndarray], data: st.DataObject
) -> None:
    header, vector = message
    encoded = wire.encode(header, vector)
    pos = data.draw(st.integers(0, len(encoded) - 1))
    flip = data.draw(st.integers(1, 255))
    corrupt = bytearray(encoded)
    corrupt[pos] ^= flip
    cut = data.draw(st.integers(0, len(encoded) - 1))

    with pytest.raises(wire.WireError):
        wire.decode(encoded[:cut])
    try:
        got, vec = wire.decode(bytes(corrupt), expected_layout=header.layout)
    except wire.WireError:
        return
    # A flip inside the JSON header can leave valid JSON (a digit of a metric, a letter of a
    # name, whitespace): the header then says something else, but the payload is never
    # reinterpreted: the vector is bit for bit the one sent.
    assert 8 <= pos < len(encoded) - wire.message_sizes(encoded)["payload_bytes"]
    assert got.layout == header.layout
    np.testing.assert_array_equal(vec, wire.decode(encoded)[1])


@SETTINGS
@given(raw=st.binary(max_size=400))
def test_arbitrary_bytes_are_a_wire_error(raw: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(raw)
    with pytest.raises(wire.WireError):
        wire.decode(wire.MAGIC + raw)
