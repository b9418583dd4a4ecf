import hashlib
import json
import struct

import numpy as np
import pytest

from fl_core import wire
from fl_core.codec import ErrorFeedback, TopK, parse_codec
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


# --------------------------------------------------------------------------- codecs on the wire

BIG = Layout(("w", "b"), ((100, 30), (7,)))  # 3007 params: three quantization chunks
ALL_CODECS = [
    "dense_fp32",
    "fp16",
    "q8",
    "q4",
    "q2",
    "topk:0.01",
    "topk:0.1+fp16",
    "topk:0.05+q8",
    "topk:0.2+q4",
    "topk:0.3+q2",
]


def _split(data: bytes) -> tuple[dict[str, object], bytes]:
    (hlen,) = struct.unpack(">I", data[4:8])
    return json.loads(data[8 : 8 + hlen]), data[8 + hlen :]


def _join(head: dict[str, object], payload: bytes) -> bytes:
    """A message with ``head`` whose payload_bytes and sha256 are made consistent."""
    head = {**head, "payload_bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    raw = json.dumps(head).encode()
    return wire.MAGIC + struct.pack(">I", len(raw)) + raw + payload


def _vector(n: int = BIG.num_params, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=n).astype(np.float32)


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_every_codec_round_trips_through_the_wire(codec: str) -> None:
    v = _vector()
    data = wire.encode(_header(codec=codec, layout=BIG), v)

    header, out = wire.decode(data, expected_layout=BIG, expected_codec=codec)

    assert header.codec == codec and header.delta_from is None
    assert out.shape == v.shape and out.dtype == np.float32
    direct = parse_codec(codec).decode(_split(data)[1], v.size)
    np.testing.assert_array_equal(out, direct)
    if codec.startswith("topk"):
        topk = parse_codec(codec)
        assert isinstance(topk, TopK)
        assert np.count_nonzero(out) == topk.k_for(v.size)
    else:
        assert np.abs(out - v).max() <= (v.max() - v.min()) / 3


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_byte_counts_equal_the_encoded_length(codec: str) -> None:
    v = _vector()
    data = wire.encode(_header(codec=codec, layout=BIG), v)

    sizes = wire.message_sizes(data)
    head, payload = _split(data)

    assert wire.encoded_size(data) == sizes["total_bytes"] == len(data)
    assert sizes["header_bytes"] + sizes["payload_bytes"] == len(data)
    assert sizes["payload_bytes"] == len(payload) == head["payload_bytes"]
    c = parse_codec(codec)
    if c.sparse:
        assert len(payload) <= c.max_payload_size(v.size)
    else:
        assert len(payload) == c.max_payload_size(v.size)


def test_compressed_message_sizes_against_dense() -> None:
    layout = Layout(("w",), ((200_000,),))
    v = _vector(200_000)
    size = {
        c: len(wire.encode(_header(codec=c, layout=layout), v))
        for c in ("dense_fp32", "q8", "q4", "q2", "topk:0.01", "topk:0.01+q8")
    }
    header_bytes = wire.message_sizes(wire.encode(_header(layout=layout), v))["header_bytes"]

    assert size["dense_fp32"] == 4 * 200_000 + header_bytes
    assert size["topk:0.01"] <= 0.01 * 8 * 200_000 + header_bytes + 20
    assert size["topk:0.01+q8"] < size["topk:0.01"] * 0.6
    assert size["q8"] < 0.26 * size["dense_fp32"]
    assert size["q4"] < 0.14 * size["dense_fp32"]
    assert size["q2"] < 0.075 * size["dense_fp32"]


@pytest.mark.parametrize("codec", ["q8", "topk:0.01", "topk:0.05+q4"])
def test_a_flipped_byte_fails_the_checksum_for_compressed_codecs_too(codec: str) -> None:
    data = bytearray(wire.encode(_header(codec=codec, layout=BIG), _vector()))
    data[-7] ^= 0x01

    with pytest.raises(wire.WireError, match="sha256"):
        wire.decode(bytes(data))


@pytest.mark.parametrize("codec", ["q8", "q2", "topk:0.01", "topk:0.3+q4"])
def test_a_compressed_payload_claiming_another_shape_is_rejected(codec: str) -> None:
    data = wire.encode(_header(codec=codec, layout=BIG), _vector())
    head, payload = _split(data)

    with pytest.raises(wire.WireError, match="layout does not match"):
        wire.decode(data, expected_layout=LAYOUT)
    for shape in ([100, 31], [100, 29], [1, 1]):
        forged = _join({**head, "layout": [["w", shape], ["b", [7]]]}, payload)
        with pytest.raises(
            wire.WireError, match=r"layout needs|out of range|truncated|marks|padding"
        ):
            wire.decode(forged)


def test_hostile_sparse_payloads_with_valid_checksums_are_rejected_with_a_reason() -> None:
    head, _ = _split(wire.encode(_header(codec="topk:0.25"), np.ones(16, dtype=np.float32)))
    values = np.ones(4, dtype="<f4").tobytes()

    def u32(indices: list[int]) -> bytes:
        return _join(head, b"\x00" + np.array(indices, dtype="<u4").tobytes() + values)

    with pytest.raises(wire.WireError, match="index 16 is out of range"):
        wire.decode(u32([0, 1, 2, 16]))
    with pytest.raises(wire.WireError, match="duplicate"):
        wire.decode_sparse(u32([0, 1, 1, 2]))
    with pytest.raises(wire.WireError, match="top-k values"):
        wire.decode(_join(head, u32([0, 1, 2, 3])[-(1 + 16 + 16) : -1]))


def test_hostile_quantization_scales_are_rejected_through_the_wire() -> None:
    head, payload = _split(wire.encode(_header(codec="q8"), np.ones(16, dtype=np.float32)))

    for bad in (np.nan, np.inf, -1.0):
        step = np.array([bad], dtype="<f4").tobytes()
        with pytest.raises(wire.WireError, match="bad scale"):
            wire.decode(_join(head, payload[:4] + step + payload[8:]))


def test_decode_sparse_returns_indices_and_values_and_refuses_dense_codecs() -> None:
    v = _vector()
    data = wire.encode(_header(codec="topk:0.01", layout=BIG), v)

    header, idx, values = wire.decode_sparse(data, expected_layout=BIG)

    assert header.codec == "topk:0.01" and idx.size == values.size == 31
    np.testing.assert_array_equal(values, v[idx])
    with pytest.raises(wire.WireError, match="dense"):
        wire.decode_sparse(wire.encode(_header(codec="q8", layout=BIG), v))


def test_expected_codec_and_read_header() -> None:
    data = wire.encode(_header(codec="topk:1e-2+q8", layout=BIG), _vector())

    assert wire.read_header(data, expected_codec="topk:0.01+q8").codec == "topk:1e-2+q8"
    with pytest.raises(wire.WireError, match="not the expected 'topk:0.01'"):
        wire.read_header(data, expected_codec="topk:0.01")


def test_default_rng_is_deterministic_per_header() -> None:
    v = _vector()
    a = wire.encode(_header(codec="q4", layout=BIG), v)
    b = wire.encode(_header(codec="q4", layout=BIG), v)
    other_client = wire.encode(_header(codec="q4", layout=BIG, client="client_0002"), v)
    explicit = wire.encode(_header(codec="q4", layout=BIG), v, rng=np.random.default_rng(5))

    assert a == b
    assert _split(a)[1] != _split(other_client)[1]
    assert _split(a)[1] != _split(explicit)[1]


def test_error_feedback_through_encode() -> None:
    v = _vector()
    ef = ErrorFeedback(v.size)

    data = wire.encode(_header(codec="topk:0.1", layout=BIG), v, feedback=ef)
    _, sent = wire.decode(data)

    np.testing.assert_array_equal(sent + ef.residual, v)
    assert np.count_nonzero(ef.residual) == v.size - 301


def test_format_version_1_messages_are_still_read_and_unknown_versions_are_not() -> None:
    v = np.arange(16, dtype=np.float32)
    head, payload = _split(wire.encode(_header(), v))
    del head["delta_from"]

    header, out = wire.decode(_join({**head, "format_version": 1}, payload))

    assert header.delta_from is None
    np.testing.assert_array_equal(out, v)
    for version in (3, True, "2", None):
        with pytest.raises(wire.WireError, match="format_version"):
            wire.decode(_join({**head, "format_version": version}, payload))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"codec": "q3"}, "unknown codec"),
        ({"codec": "topk:" + "9" * 5000}, "unknown codec"),
        ({"round": -1}, "'round' must be >= 0"),
        ({"num_examples": 1.5}, "num_examples"),
        ({"delta_from": 0}, "update cannot carry delta_from"),
        ({"delta_from": "1"}, "delta_from"),
        ({"kind": "gradient"}, "unknown kind"),
        ({"metrics": {"loss": True}}, "metrics"),
        ({"layout": [["w", [2**40]]]}, "exceeds"),
    ],
)
def test_bad_header_fields_are_rejected_with_a_reason(
    change: dict[str, object], reason: str
) -> None:
    head, payload = _split(wire.encode(_header(), np.ones(16, dtype=np.float32)))

    with pytest.raises(wire.WireError, match=reason):
        wire.decode(_join({**head, **change}, payload))


def test_deeply_nested_or_huge_number_headers_are_rejected() -> None:
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"round": ' + b"9" * 10_000 + b"}"):
        with pytest.raises(wire.WireError, match="JSON"):
            wire.decode(wire.MAGIC + struct.pack(">I", len(raw)) + raw)


def test_encode_rejects_bad_headers_naming_the_field() -> None:
    v = np.ones(16, dtype=np.float32)
    with pytest.raises(ValueError, match="codec"):
        wire.encode(_header(codec="zip"), v)
    with pytest.raises(ValueError, match="delta_from"):
        wire.encode(_header(delta_from=1), v)
    with pytest.raises(ValueError, match="does not fit"):
        wire.encode(_header(), np.ones(15, dtype=np.float32))


# --------------------------------------------------------------------------- downlink deltas


def _model_header(**kw: object) -> wire.Header:
    base = dict(
        kind="model",
        campaign="c1",
        round=5,
        base_version=5,
        client="server",
        codec="dense_fp32",
        layout=BIG,
    )
    base.update(kw)
    return wire.Header(**base)  # type: ignore[arg-type]


def test_a_sparse_change_travels_as_an_exact_delta() -> None:
    known = np.random.default_rng(0).uniform(1, 2, size=BIG.num_params).astype(np.float32)
    model = known.copy()
    model[::200] *= np.float32(1.01)  # 16 changed entries; topk:0.01 keeps 31

    data = wire.encode_model_for_client(
        _model_header(), model, known_version=3, known_model=known, delta_codec="topk:0.01"
    )
    header, out = wire.decode_model_for_client(data, known_version=3, known_model=known)

    assert header.delta_from == 3 and header.codec == "topk:0.01"
    assert len(data) < 0.05 * len(wire.encode(_model_header(), model))
    np.testing.assert_array_equal(out.view(np.uint32), model.view(np.uint32))


def test_a_dense_or_inexact_change_travels_whole() -> None:
    known = _vector(seed=1)
    moved = known + np.float32(0.01)
    known_one, inexact = known.copy(), known.copy()
    known_one[0], inexact[0] = 1.0, 1e-8  # 1.0 + (1e-8 - 1.0) is 0.0 in float32

    for model, base, delta_codec in (
        (moved, known, None),  # same codec, same size: the delta is not smaller
        (moved, known, "topk:0.01"),  # smaller but lossy: not the model
        (inexact, known_one, "topk:0.01"),  # one entry changed, but not reversibly
    ):
        data = wire.encode_model_for_client(
            _model_header(), model, known_version=4, known_model=base, delta_codec=delta_codec
        )
        header, out = wire.decode_model_for_client(data, known_version=4, known_model=base)
        assert header.delta_from is None
        np.testing.assert_array_equal(out, model)


def test_a_lossy_downlink_takes_the_smaller_delta() -> None:
    known = _vector(seed=2)
    model = known + _vector(seed=3) * np.float32(1e-3)

    data = wire.encode_model_for_client(
        _model_header(codec="fp16"), model, known_version=4, known_model=known, delta_codec="q8"
    )
    header, out = wire.decode_model_for_client(data, known_version=4, known_model=known)

    assert header.delta_from == 4
    delta = model - known
    assert np.abs(out - model).max() <= (delta.max() - delta.min()) / 255 + 1e-6
    assert len(data) < len(wire.encode(_model_header(codec="fp16"), model))


def test_a_delta_needs_the_version_it_was_made_from() -> None:
    known = np.ones(BIG.num_params, dtype=np.float32)
    model = known.copy()
    model[7] = 2.0
    data = wire.encode_model_for_client(
        _model_header(), model, known_version=3, known_model=known, delta_codec="topk:0.001"
    )

    with pytest.raises(wire.WireError, match="delta from version 3, the client holds None"):
        wire.decode_model_for_client(data)
    with pytest.raises(wire.WireError, match="the client holds 2"):
        wire.decode_model_for_client(data, known_version=2, known_model=known)
    with pytest.raises(ValueError, match="together"):
        wire.encode_model_for_client(_model_header(), model, known_version=3)
    with pytest.raises(ValueError, match="kind"):
        wire.encode_model_for_client(_header(layout=BIG), model)


# --------------------------------------------------------------------------- bounded headers


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"num_examples": 10**15}, "'num_examples' must be <="),
        ({"num_examples": 10**400}, "num_examples|JSON"),
        ({"round": 2**60}, "'round' must be <="),
        ({"base_version": 2**60}, "'base_version' must be <="),
        ({"metrics": {"train_loss": 1e300}}, "train_loss.*exceeds"),
        ({"metrics": {"m" + str(i): 1.0 for i in range(65)}}, "at most 64"),
        ({"metrics": {"x" * 129: 1.0}}, "metric name"),
        ({"metrics": {"": 1.0}}, "metric name"),
    ],
)
def test_header_numbers_beyond_their_bounds_are_rejected(
    change: dict[str, object], reason: str
) -> None:
    head, payload = _split(wire.encode(_header(), np.ones(16, dtype=np.float32)))

    with pytest.raises(wire.WireError, match=reason):
        wire.decode(_join({**head, **change}, payload))


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_header_metrics_are_rejected(constant: bytes) -> None:
    head, payload = _split(wire.encode(_header(), np.ones(16, dtype=np.float32)))
    head = {**head, "payload_bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    raw = json.dumps({**head, "metrics": {"train_loss": 0.0}}).encode()
    raw = raw.replace(b'"train_loss": 0.0', b'"train_loss": ' + constant)

    with pytest.raises(wire.WireError, match="non-finite|not finite"):
        wire.decode(wire.MAGIC + struct.pack(">I", len(raw)) + raw + payload)


def test_the_largest_accepted_counts_survive_weighted_arithmetic() -> None:
    header = _header(num_examples=wire.MAX_NUM_EXAMPLES, metrics={"loss": wire.MAX_METRIC_ABS})
    got, _ = wire.decode(wire.encode(header, np.ones(16, dtype=np.float32)))

    weights = np.array([got.num_examples] * 10**6, dtype=np.float64)
    assert np.isfinite(weights.sum()) and float(weights.sum()) == 10**6 * wire.MAX_NUM_EXAMPLES


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_examples", wire.MAX_NUM_EXAMPLES + 1),
        ("num_examples", -1),
        ("round", -1),
        ("metrics", {"train_loss": float("nan")}),
        ("metrics", {"train_loss": float("inf")}),
    ],
)
def test_encode_refuses_out_of_bounds_header_numbers_naming_the_field(
    field: str, value: object
) -> None:
    with pytest.raises(ValueError, match=field):
        wire.encode(_header(**{field: value}), np.ones(16, dtype=np.float32))


# --------------------------------------------------------------------------- memory before checks


def _tiny_sparse_message(num_params: int) -> bytes:
    """A valid top-k message claiming ``num_params`` parameters but carrying one value."""
    layout = Layout(("w",), ((num_params,),))
    from fl_core.codec.sparse import encode_indices

    payload = (
        encode_indices(np.zeros(1, dtype=np.int64), num_params) + np.ones(1, dtype="<f4").tobytes()
    )  # index 0, value 1.0
    header = _header(codec="topk:1e-09", layout=layout)
    head = header.to_json(payload=payload)
    raw = json.dumps(head).encode()
    return wire.MAGIC + struct.pack(">I", len(raw)) + raw + payload


def test_a_tiny_message_claiming_a_huge_layout_is_refused_before_allocating() -> None:
    import tracemalloc

    data = _tiny_sparse_message(1 << 24)
    assert len(data) < 1024

    tracemalloc.start()
    try:
        with pytest.raises(wire.WireError, match="more than it can justify"):
            wire.decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 4 << 20  # densifying would allocate 64 MiB


def test_the_same_message_decodes_when_the_caller_vouches_for_the_layout() -> None:
    data = _tiny_sparse_message(1 << 20)

    header, vector = wire.decode(data, expected_layout=Layout(("w",), ((1 << 20,),)))
    _, idx, values = wire.decode_sparse(data)

    assert vector.size == 1 << 20 and float(vector.sum()) == 1.0
    assert idx.tolist() == [0] and values.tolist() == [1.0]  # no densifying, no refusal
    assert header.layout.num_params == 1 << 20


def test_a_legitimate_sparse_update_decodes_without_an_expected_layout() -> None:
    n = 100_000
    data = wire.encode(_header(codec="topk:0.01", layout=Layout(("w",), ((n,),))), _vector(n))

    _, vector = wire.decode(data)

    assert vector.size == n and np.count_nonzero(vector) == 1000


@pytest.mark.parametrize("delta", [False, True], ids=["whole", "delta"])
@pytest.mark.parametrize("codec", ["dense_fp32", "fp16", "topk:0.1+fp16"])
def test_a_readdressed_model_is_byte_for_byte_the_client_s_own_encoding(
    codec: str, delta: bool
) -> None:
    known = _vector(seed=3)
    model = known.copy()
    model[::100] += np.float32(0.5)  # a sparse change: the delta candidate can win
    kw: dict[str, object] = (
        {"known_version": 4, "known_model": known, "delta_codec": "topk:0.05"} if delta else {}
    )
    template = wire.encode_model_for_client(_model_header(codec=codec), model, **kw)  # type: ignore[arg-type]

    prefix, payload = wire.readdressed(template, "client_0042")

    own = wire.encode_model_for_client(
        _model_header(codec=codec, client="client_0042"),
        model,
        **kw,  # type: ignore[arg-type]
    )
    assert prefix + bytes(payload) == own
    assert payload.obj is template  # the payload is shared, not copied
    header, out = wire.decode_model_for_client(
        own, known_version=4 if delta else None, known_model=known if delta else None
    )
    assert header.client == "client_0042" and (header.delta_from == 4) == delta
    np.testing.assert_array_equal(out, wire.decode_model_for_client(
        template, known_version=4 if delta else None, known_model=known if delta else None
    )[1])  # fmt: skip


def test_only_a_model_message_is_readdressed_and_only_to_a_named_client() -> None:
    update = wire.encode(_header(), np.zeros(LAYOUT.num_params, dtype=np.float32))
    with pytest.raises(ValueError, match="^message: only a model message can be readdressed$"):
        wire.readdressed(update, "client_0042")
    model = wire.encode(_model_header(), _vector())
    for bad in ("", None, 7):
        with pytest.raises(ValueError, match="^client: a non-empty client id is required$"):
            wire.readdressed(model, bad)  # type: ignore[arg-type]
    prefix, payload = wire.readdressed(model, "x")
    header = wire.read_header(prefix + bytes(payload))
    assert header.client == "x" and header.kind == "model" and header.round == 5
