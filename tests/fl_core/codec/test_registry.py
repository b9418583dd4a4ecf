import numpy as np
import pytest

from fl_core.codec import CODEC_FORMS, DenseFp32, TopK, WireError, is_sparse, parse_codec
from fl_core.wire import WireError as WireWireError

ALL = [
    "dense_fp32",
    "fp16",
    "q8",
    "q4",
    "q2",
    "topk:0.01",
    "topk:0.05+fp16",
    "topk:0.1+q8",
    "topk:0.2+q4",
    "topk:0.3+q2",
]


@pytest.mark.parametrize("name", ALL)
def test_every_form_parses_to_a_codec_of_that_canonical_name(name: str) -> None:
    codec = parse_codec(name)

    assert codec.name == name
    assert parse_codec(codec.name) == codec
    assert codec.sparse == name.startswith("topk") == is_sparse(name)
    assert codec.stochastic == ("q" in name.split("+")[-1] and name != "dense_fp32")


def test_equivalent_spellings_share_a_canonical_name() -> None:
    assert parse_codec("topk:1e-2").name == "topk:0.01"
    assert parse_codec("topk:.5+q8").name == "topk:0.5+q8"
    assert parse_codec("topk:1") == TopK(fraction=1.0, values=DenseFp32())


@pytest.mark.parametrize(
    "name",
    [
        "",
        "q3",
        "q16",
        "fp32",
        "topk",
        "topk:",
        "topk:0",
        "topk:1.5",
        "topk:-0.1",
        "topk:nan",
        "topk:inf",
        "topk:0.1+fp32",
        "topk:0.1+topk:0.1",
        " q8",
        "Q8",
        "topk:0.1+q8 ",
        "x" * 500,
    ],
)
def test_bad_names_are_rejected_listing_the_allowed_forms(name: str) -> None:
    with pytest.raises(ValueError, match="codec .* allowed forms: dense_fp32") as info:
        parse_codec(name)

    assert all(form in str(info.value) for form in CODEC_FORMS)


def test_codec_errors_are_the_wire_error() -> None:
    assert WireError is WireWireError
    with pytest.raises(WireWireError):
        parse_codec("dense_fp32").decode(b"\x00" * 3, 1)


@pytest.mark.parametrize("name", ["dense_fp32", "topk:1"])
@pytest.mark.parametrize("n", [0, 1, 7, 4099])
def test_lossless_codecs_round_trip_bit_for_bit(name: str, n: int) -> None:
    rng = np.random.default_rng(n)
    v = rng.normal(size=n).astype(np.float32) * np.float32(1e3)
    if n:
        v[0] = -0.0
    codec = parse_codec(name)

    out = codec.decode(codec.encode(v, rng=rng), n)

    assert codec.lossless
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.view(np.uint32), v.view(np.uint32))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("n", [1, 1000, 2500])
def test_payload_sizes_are_exact_for_fixed_codecs_and_bounded_for_topk(name: str, n: int) -> None:
    codec = parse_codec(name)
    payload = codec.encode(np.random.default_rng(0).normal(size=n), rng=np.random.default_rng(1))

    if codec.sparse:
        assert len(payload) <= codec.max_payload_size(n)
    else:
        assert len(payload) == codec.max_payload_size(n)


@pytest.mark.parametrize("name", [n for n in ALL if n != "dense_fp32"] + ["dense_fp32"])
def test_every_codec_rejects_a_truncated_or_padded_payload(name: str) -> None:
    codec = parse_codec(name)
    n = 3000
    payload = codec.encode(np.random.default_rng(0).normal(size=n), rng=np.random.default_rng(1))

    for bad in (payload[:-1], payload + b"\x00", b""):
        with pytest.raises(WireError, match=r"bytes|truncated|empty|needs"):
            codec.decode(bad, n)


@pytest.mark.parametrize("name", ["q8", "topk:0.1", "topk:0.1+q4"])
def test_lossy_codecs_refuse_non_finite_input_and_stochastic_ones_need_an_rng(name: str) -> None:
    codec = parse_codec(name)
    v = np.ones(10, dtype=np.float32)
    v[3] = np.nan

    with pytest.raises(ValueError, match="vector has non-finite"):
        codec.encode(v, rng=np.random.default_rng(0))
    if codec.stochastic:
        with pytest.raises(ValueError, match="rng"):
            codec.encode(np.ones(10, dtype=np.float32))
    with pytest.raises(ValueError, match="vector must be 1-D"):
        codec.encode(np.ones((2, 5), dtype=np.float32), rng=np.random.default_rng(0))
