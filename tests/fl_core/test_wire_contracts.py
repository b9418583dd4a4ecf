"""Wire-format contracts that mutation testing found unchecked: exact rejection reasons,
the boundaries of every limit (each accepted at the limit, refused past it), fields that
must be optional or must be checked, and the expected layout/codec/size really enforced
by every reader."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest

from fl_core import wire
from fl_core.models import Layout

LAYOUT = Layout(("w",), ((4,),))
OTHER = Layout(("w",), ((5,),))


def _header(**kw: object) -> wire.Header:
    base: dict[str, object] = dict(
        kind="update", campaign="c", round=1, base_version=0, client="a", codec="dense_fp32",
        layout=LAYOUT, num_examples=3, metrics={"train_loss": 0.5},
    )  # fmt: skip
    base.update(kw)
    return wire.Header(**base)  # type: ignore[arg-type]


def _message(
    head: dict[str, object] | None = None, payload: bytes | None = None, **kw: object
) -> bytes:
    """A message with header ``head`` (default: a valid one) made consistent with its payload."""
    if payload is None:
        payload = np.arange(4, dtype="<f4").tobytes()
    if head is None:
        head = _header().to_json(payload=payload)
    head = {
        **head,
        "payload_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        **kw,
    }
    raw = json.dumps(head).encode()
    return wire.MAGIC + struct.pack(">I", len(raw)) + raw + payload


def _raw(head_bytes: bytes, payload: bytes = b"", length: int | None = None) -> bytes:
    size = len(head_bytes) if length is None else length
    return wire.MAGIC + struct.pack(">I", size) + head_bytes + payload


# --------------------------------------------------------------------------- framing


def test_framing_reasons_are_exact() -> None:
    for reader in (wire.decode, wire.message_sizes):
        with pytest.raises(wire.WireError, match=r"^not a FLW1 message \(bad magic\)$"):
            reader(b"FLW2" + bytes(10))
        with pytest.raises(wire.WireError, match="^truncated or oversized header$"):
            reader(_raw(b"{}", length=100))
        with pytest.raises(wire.WireError, match="^truncated or oversized header$"):
            reader(wire.MAGIC + b"\xff\xff\xff\xf0" + bytes(64))  # not a negative length


def test_an_eight_byte_message_has_an_empty_header() -> None:
    data = _raw(b"")

    assert wire.message_sizes(data) == {"header_bytes": 8, "payload_bytes": 0, "total_bytes": 8}
    with pytest.raises(wire.WireError, match="^header is not valid JSON"):
        wire.decode(data)


def test_a_header_of_exactly_the_limit_is_read_and_one_byte_more_is_not() -> None:
    payload = np.arange(4, dtype="<f4").tobytes()
    head = _header().to_json(payload=payload)
    raw = json.dumps(head).encode()
    at_limit = raw + b" " * (wire.MAX_HEADER_BYTES - len(raw))

    header, _ = wire.decode(_raw(at_limit, payload))
    assert header == _header()
    with pytest.raises(wire.WireError, match="^truncated or oversized header$"):
        wire.decode(_raw(at_limit + b" ", payload))


# --------------------------------------------------------------------------- header fields


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"metrics": {"a": True}}, "^header field 'metrics' must map names to numbers$"),
        ({"metrics": {"a": "x"}}, "^header field 'metrics' must map names to numbers$"),
        ({"metrics": [1]}, "^header field 'metrics' must map names to numbers$"),
        ({"delta_from": 1}, r"^an update cannot carry delta_from \(only a model may be a delta\)$"),
        ({"layout": "w"}, "^bad layout: "),
        (
            {"round": 10**60},
            f"^header field 'round' must be <= {wire.MAX_COUNTER}, got {str(10**60)[:40]}$",
        ),
    ],
)
def test_header_field_reasons_are_exact(change: dict[str, object], reason: str) -> None:
    head = {**_header().to_json(payload=b""), **change}

    with pytest.raises(wire.WireError, match=reason):
        wire.decode(_message(head))


def test_a_json_object_is_required_and_nan_is_refused_anywhere() -> None:
    with pytest.raises(wire.WireError, match="^header is not a JSON object$"):
        wire.decode(_raw(b"[1]"))
    raw = json.dumps(_header().to_json(payload=b"")).replace('"round": 1', '"round": NaN').encode()
    with pytest.raises(wire.WireError, match=r"NaN and Infinity are not allowed"):
        wire.decode(_raw(raw))


def test_payload_length_and_checksum_reasons_are_exact() -> None:
    data = _message()
    short = data[:-1]
    with pytest.raises(
        wire.WireError, match=r"^payload has 15 bytes, header says 16 \(truncated\?\)$"
    ):
        wire.decode(short)
    corrupt = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(
        wire.WireError, match=r"^payload sha256 does not match the header \(corrupt\)$"
    ):
        wire.decode(corrupt)


def test_metrics_are_optional_and_64_of_them_are_allowed() -> None:
    head = _header().to_json(payload=b"")
    del head["metrics"]
    header, _ = wire.decode(_message(head))
    assert header.metrics == {}

    many = {f"m{i}": float(i) for i in range(wire.MAX_METRICS)}
    assert wire.decode(wire.encode(_header(metrics=many), np.zeros(4)))[0].metrics == many
    long_name = {"x" * 128: 1.0}
    assert wire.decode(wire.encode(_header(metrics=long_name), np.zeros(4)))[0].metrics == long_name


def test_unknown_codec_names_are_shown_cut_to_64_characters() -> None:
    name = "topk:" + "9" * 100
    head = {**_header().to_json(payload=b""), "codec": name}

    with pytest.raises(wire.WireError) as info:
        wire.decode(_message(head))

    assert str(info.value) == f"unknown codec {name[:64]!r}"


def test_a_layout_of_exactly_max_params_is_read_without_allocating() -> None:
    big = Layout(("w",), ((wire.MAX_PARAMS,),))
    head = {**_header().to_json(payload=b""), "layout": big.to_json()}

    assert wire.read_header(_message(head, payload=b"")).layout.num_params == wire.MAX_PARAMS


# --------------------------------------------------------------------------- encode side


def test_encode_names_bad_numbers_and_accepts_the_bounds() -> None:
    v = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="^num_examples: must be an int in"):
        wire.encode(_header(num_examples=True), v)
    with pytest.raises(ValueError, match="^metrics: metric 'a' must be a number$"):
        wire.encode(_header(metrics={"a": "x"}), v)
    with pytest.raises(ValueError, match=r"^metrics: at most 64 allowed, got 65$"):
        wire.encode(_header(metrics={f"m{i}": 0.0 for i in range(65)}), v)
    with pytest.raises(ValueError, match=r"^metrics: metric name 'xxxx"):
        wire.encode(_header(metrics={"x" * 129: 0.0}), v)
    with pytest.raises(
        ValueError,
        match=rf"^delta_from: must be in \[0, {wire.MAX_COUNTER}\], got {wire.MAX_COUNTER + 1}$",
    ):
        wire.encode(_header(kind="model", delta_from=wire.MAX_COUNTER + 1, num_examples=0), v)

    for delta_from in (0, wire.MAX_COUNTER):
        model = _header(kind="model", delta_from=delta_from, num_examples=0)
        assert wire.decode(wire.encode(model, v))[0].delta_from == delta_from


# --------------------------------------------------------------------------- readers enforce


def test_every_reader_enforces_the_expected_layout_and_codec() -> None:
    data = wire.encode(_header(codec="topk:0.5"), np.arange(4, dtype=np.float32))

    for reader in (wire.decode, wire.decode_sparse, wire.read_header):
        with pytest.raises(wire.WireError, match="layout does not match the global model's layout"):
            reader(data, expected_layout=OTHER)
        with pytest.raises(wire.WireError, match="is not the expected 'dense_fp32'"):
            reader(data, expected_codec="dense_fp32")


def test_decode_model_for_client_enforces_layout_size_and_kind() -> None:
    model = wire.encode(_header(kind="model", num_examples=0), np.arange(4, dtype=np.float32))
    update = wire.encode(_header(), np.arange(4, dtype=np.float32))

    with pytest.raises(wire.WireError, match="layout does not match"):
        wire.decode_model_for_client(model, expected_layout=OTHER)
    with pytest.raises(wire.WireError, match="exceeds the limit of 10"):
        wire.decode_model_for_client(model, max_bytes=10)
    with pytest.raises(wire.WireError, match="^kind is 'update', expected 'model'$"):
        wire.decode_model_for_client(update)


def test_a_delta_model_needs_a_matching_1d_known_model() -> None:
    delta = wire.encode(
        _header(kind="model", num_examples=0, delta_from=2), np.ones(4, dtype=np.float32)
    )

    with pytest.raises(ValueError, match=r"^known_model must be 1-D, got shape \(1, 4\)$"):
        wire.decode_model_for_client(delta, known_version=2, known_model=np.zeros((1, 4)))
    with pytest.raises(wire.WireError, match="^delta has 4 values, the known model has 3$"):
        wire.decode_model_for_client(delta, known_version=2, known_model=np.zeros(3))
    _, full = wire.decode_model_for_client(delta, known_version=2, known_model=np.ones(4))
    np.testing.assert_array_equal(full, np.full(4, 2.0, np.float32))


# --------------------------------------------------------------------------- untrusted layouts


def test_untrusted_layouts_may_expand_to_the_floor_and_to_1024_times_the_message() -> None:
    n_floor = wire.MIN_UNTRUSTED_DENSE_BYTES // 4  # 4 n == the 1 MiB floor exactly
    floor = wire.encode(
        _header(codec="topk:0.0001", layout=Layout(("w",), ((n_floor,),))),
        np.ones(n_floor, dtype=np.float32),
    )
    n_big = 1_000_000
    big = wire.encode(
        _header(codec="topk:0.01", layout=Layout(("w",), ((n_big,),))),
        np.random.default_rng(0).normal(size=n_big).astype(np.float32),
    )
    assert 4 * n_big <= wire.MAX_UNTRUSTED_EXPANSION * len(big)

    assert wire.decode(floor)[1].size == n_floor
    assert wire.decode(big)[1].size == n_big


# --------------------------------------------------------------------------- encoding paths


def test_encode_reasons_are_exact() -> None:
    v = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"^kind: 'gradient' is not allowed; allowed values: "):
        wire.encode(_header(kind="gradient"), v)
    with pytest.raises(ValueError, match=r"^delta_from: only a model message may be a delta, from"):
        wire.encode(_header(delta_from=1), v)
    huge = Layout(("w",), ((wire.MAX_PARAMS + 1,),))
    with pytest.raises(ValueError, match=rf"^layout of {wire.MAX_PARAMS + 1} parameters exceeds"):
        wire.encode(_header(layout=huge), v)


def test_encode_with_error_feedback_draws_from_the_header_when_given_no_rng() -> None:
    from fl_core.codec import ErrorFeedback

    x = np.random.default_rng(0).normal(size=4).astype(np.float32)
    header = _header(codec="q8")

    with_feedback = wire.encode(header, x, feedback=ErrorFeedback(4))

    assert with_feedback == wire.encode(header, x)  # zero residual: the same bytes


def test_encode_model_for_client_uses_the_callers_rng_for_both_candidates() -> None:
    layout = Layout(("w",), ((1000,),))  # enough values that two rngs cannot agree by chance
    header = _header(kind="model", num_examples=0, codec="q8", layout=layout)
    model = np.random.default_rng(1).normal(size=1000).astype(np.float32)

    known = model.copy()
    known[:20] -= np.linspace(0.5, 2.0, 20, dtype=np.float32)  # 20 changed values: a sparse delta

    got = wire.encode_model_for_client(header, model, rng=np.random.default_rng(5))
    again = wire.encode_model_for_client(
        header, model, known_version=0, known_model=known, delta_codec="topk:0.02+q8",
        rng=np.random.default_rng(5),
    )  # fmt: skip

    assert got == wire.encode(header, model, rng=np.random.default_rng(5))
    rng = np.random.default_rng(5)
    wire.encode(header, model, rng=rng)  # the whole model's candidate draws first
    delta_header = wire.Header(**{**header.__dict__, "codec": "topk:0.02+q8", "delta_from": 0})
    assert again == wire.encode(delta_header, model - known, rng=rng)


def test_encode_model_for_client_reasons_are_exact() -> None:
    header = _header(kind="model", num_examples=0)
    model = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="^header: delta_from must be None; pass known_version"):
        wire.encode_model_for_client(_header(kind="model", num_examples=0, delta_from=1), model)
    with pytest.raises(ValueError, match="^known_version and known_model must be given together$"):
        wire.encode_model_for_client(header, model, known_version=1)
    with pytest.raises(ValueError, match=r"^known_model must be 1-D, got shape \(1, 4\)$"):
        wire.encode_model_for_client(header, model, known_version=1, known_model=model[None, :])
    with pytest.raises(ValueError, match="^known_model has 3 values, model has 4$"):
        wire.encode_model_for_client(header, model, known_version=1, known_model=np.zeros(3))


def test_an_overflowing_delta_falls_back_to_the_whole_model_silently() -> None:
    import warnings

    header = _header(kind="model", num_examples=0)
    model = np.full(4, 3e38, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = wire.encode_model_for_client(
            header, model, known_version=0, known_model=np.full(4, -3e38, np.float32)
        )

    assert out == wire.encode(header, model)


def test_a_very_sparse_delta_of_a_large_model_is_checked_against_its_own_layout() -> None:
    n = 2_000_000
    layout = Layout(("w",), ((n,),))
    header = _header(kind="model", num_examples=0, layout=layout)
    old = np.zeros(n, np.float32)
    new = old.copy()
    new[[5, 1_500_000]] = [1.0, -1.0]

    out = wire.encode_model_for_client(
        header, new, known_version=3, known_model=old, delta_codec="topk:0.000001"
    )
    got, full = wire.decode_model_for_client(
        out, known_version=3, known_model=old, expected_layout=layout
    )

    assert got.delta_from == 3
    np.testing.assert_array_equal(full, new)


def test_layout_and_expansion_reasons_are_exact() -> None:
    data = wire.encode(_header(), np.zeros(4, np.float32))
    with pytest.raises(wire.WireError, match="^layout does not match the global model's layout$"):
        wire.decode(data, expected_layout=OTHER)
    n = 1 << 24
    sparse = wire.encode(
        _header(codec="topk:1e-07", layout=Layout(("w",), ((n,),))), np.ones(n, np.float32)
    )
    with pytest.raises(wire.WireError, match="; decode it with expected_layout$"):
        wire.decode(sparse)
