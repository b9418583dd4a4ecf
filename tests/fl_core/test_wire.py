import json
import struct

import numpy as np
import pytest

from fl_core import wire
from fl_core.models import Layout

LAYOUT = Layout(("w", "b"), ((3, 4), (4,)))


def _header(**kw: object) -> wire.Header:
    base = dict(
        kind="update",
        campaign="c1",
        round=2,
        base_version=1,
        client="client_0001",
        codec="dense_fp32",
        layout=LAYOUT,
        num_examples=12,
        metrics={"train_loss": 0.5},
    )
    base.update(kw)
    return wire.Header(**base)  # type: ignore[arg-type]


def test_dense_fp32_round_trips_exactly_with_its_header() -> None:
    v = np.random.default_rng(0).normal(size=16).astype(np.float32)

    header, out = wire.decode(wire.encode(_header(), v), expected_layout=LAYOUT)

    np.testing.assert_array_equal(out, v)
    assert (header.campaign, header.round, header.client, header.num_examples) == (
        "c1",
        2,
        "client_0001",
        12,
    )
    assert header.metrics == {"train_loss": 0.5}


def test_fp16_halves_the_payload() -> None:
    v = np.linspace(-1, 1, 16, dtype=np.float32)
    dense = wire.encode(_header(), v)
    half = wire.encode(_header(codec="fp16"), v)

    _, out = wire.decode(half)

    assert len(dense) - len(half) >= 16 * 2 - 8
    np.testing.assert_allclose(out, v, atol=1e-3)


def test_a_flipped_payload_byte_fails_the_checksum() -> None:
    data = bytearray(wire.encode(_header(), np.ones(16, dtype=np.float32)))
    data[-3] ^= 0xFF

    with pytest.raises(wire.WireError, match="sha256"):
        wire.decode(bytes(data))


def test_truncated_message_is_rejected() -> None:
    data = wire.encode(_header(), np.ones(16, dtype=np.float32))

    with pytest.raises(wire.WireError, match="truncated"):
        wire.decode(data[:-4])
    with pytest.raises(wire.WireError):
        wire.decode(data[:10])


def test_layout_mismatch_and_lying_shape_are_rejected() -> None:
    v = np.ones(16, dtype=np.float32)
    other = Layout(("w",), ((16,),))
    with pytest.raises(wire.WireError, match="layout does not match"):
        wire.decode(wire.encode(_header(layout=other), v), expected_layout=LAYOUT)

    # A header that claims a bigger layout than the payload holds (checksum kept valid).
    data = wire.encode(_header(), v)
    (hlen,) = struct.unpack(">I", data[4:8])
    head = json.loads(data[8 : 8 + hlen])
    head["layout"] = [["w", [5, 4]], ["b", [4]]]
    new_head = json.dumps(head).encode()
    forged = wire.MAGIC + struct.pack(">I", len(new_head)) + new_head + data[8 + hlen :]
    with pytest.raises(wire.WireError, match="layout needs"):
        wire.decode(forged)


def test_oversized_garbage_and_pickles_are_rejected() -> None:
    import pickle

    data = wire.encode(_header(), np.ones(16, dtype=np.float32))
    with pytest.raises(wire.WireError, match="exceeds"):
        wire.decode(data, max_bytes=len(data) - 1)
    with pytest.raises(wire.WireError, match="magic"):
        wire.decode(pickle.dumps({"evil": True}))
    with pytest.raises(wire.WireError, match="JSON"):
        wire.decode(wire.MAGIC + struct.pack(">I", 3) + b"\xff\xfe{")
