"""Codec contracts that mutation testing found unchecked: the exact rejection reasons, the
choice of the smallest index encoding (ties to the lower tag), the payload-size bound,
boundaries of the top-k and registry limits, and client state that must not alias its input.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from fl_core.codec import ErrorFeedback, TopK, WireError, parse_codec
from fl_core.codec.sparse import INDEX_BITMAP, INDEX_DELTA16, MAX_DIM, encode_indices

# --------------------------------------------------------------------------- reasons


@pytest.mark.parametrize(
    ("name", "payload", "n", "reason"),
    [
        ("dense_fp32", b"abc", 2, "^dense_fp32 payload has 3 bytes, layout needs 8$"),
        ("fp16", b"abc", 2, "^fp16 payload has 3 bytes, layout needs 4$"),
        ("topk:0.5", b"", 4, r"^sparse payload is empty \(no index block\)$"),
        ("topk:0.5", b"\x00\x01", 4, "^u32 index block truncated: payload has 2 bytes, needs 9$"),
        (
            "topk:0.5",
            b"\x01\x01",
            4,
            "^delta16 index block truncated: payload has 2 bytes, needs 5$",
        ),
        ("topk:0.5", b"\x02", 4, "^bitmap index block truncated: payload has 1 bytes, needs 2$"),
        ("topk:0.5", b"\x02\x13" + bytes(8), 4, "^non-zero padding bits after the index bitmap$"),
        ("topk:0.5", b"\x02\x07" + bytes(8), 4,
         "^index bitmap marks 3 entries, the codec keeps 2$"),
        ("q4", np.array([0, 1], "<f4").tobytes() + b"\x00\x10", 3,
         "^non-zero padding bits after the last code$"),
        ("q2", np.array([0, 1], "<f4").tobytes() + b"\x00\x04", 5,
         "^non-zero padding bits after the last code$"),
        ("topk:0.5", b"\x02\x03" + np.array([1, np.inf], "<f4").tobytes(), 4,
         "^top-k values: dense_fp32 payload has non-finite values$"),
        (
            "topk:0.5",
            b"\x00" + np.array([3, 1], "<u4").tobytes() + bytes(8),
            4,
            r"^indices are not strictly increasing \(duplicate or unsorted\)$",
        ),
    ],
)
def test_malformed_payloads_are_rejected_with_their_reason(
    name: str, payload: bytes, n: int, reason: str
) -> None:
    """By :meth:`Codec.check` (what the coordinator validates uploads with, without
    decoding) with the same reason as by decoding, where decoding refuses it."""
    codec = parse_codec(name)
    with pytest.raises(WireError, match=reason):
        codec.check(payload, n)
    try:
        codec.decode(payload, n)
    except WireError as exc:
        assert re.match(reason, str(exc))
    else:  # decodable: refused for what it decodes to
        assert not np.isfinite(codec.decode(payload, n)).all()


def test_non_finite_input_is_refused_naming_the_codec() -> None:
    with pytest.raises(ValueError, match="codec 'topk:0.5' needs finite input"):
        parse_codec("topk:0.5").encode(np.array([1.0, np.inf], np.float32))


def test_fp16_overflow_to_inf_is_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        payload = parse_codec("fp16").encode(np.array([1e6], np.float32))

    assert np.isinf(parse_codec("fp16").decode(payload, 1)[0])


def test_codecs_repr_their_name() -> None:
    assert repr(parse_codec("q8")) == "StochasticQuantizer('q8')"


# --------------------------------------------------------------------------- registry


def test_unknown_codec_names_are_shown_truncated_or_as_given() -> None:
    with pytest.raises(ValueError) as long_name:
        parse_codec("topk:" + "9" * 500)
    with pytest.raises(
        ValueError, match=r"^codec 123 is unknown; allowed forms: dense_fp32, fp16, "
    ):
        parse_codec(123)  # type: ignore[arg-type]

    message = str(long_name.value)
    assert message.startswith("codec 'topk:" + "9" * 59 + "' is unknown; allowed forms: ")
    assert message.endswith("(fraction in (0, 1], e.g. topk:0.01+q8)")
    assert "topk:<fraction>+q2" in message


def test_a_name_of_exactly_64_characters_is_accepted() -> None:
    name = "topk:0." + "1" + "0" * 56
    assert len(name) == 64

    assert parse_codec(name).name == "topk:0.1"
    with pytest.raises(ValueError):
        parse_codec(name + "0")


def test_topk_fraction_one_is_allowed_and_lossless() -> None:
    codec = parse_codec("topk:1")
    x = np.arange(5, dtype=np.float32)

    assert codec.lossless
    np.testing.assert_array_equal(codec.decode(codec.encode(x), 5), x)


# --------------------------------------------------------------------------- index encodings


def _tag(indices: list[int], n: int) -> int:
    return encode_indices(np.array(indices, dtype=np.int64), n)[0]


def test_the_smallest_index_encoding_wins_and_ties_go_to_the_lower_tag() -> None:
    assert _tag([3], 15) == INDEX_DELTA16  # delta16 2 bytes ties the 2-byte bitmap
    assert _tag([0, 10, 20, 30, 40], 80) == INDEX_DELTA16  # 10 = 10: tie
    assert _tag(list(range(0, 160, 20)), 160) == INDEX_DELTA16  # 16 < 20 bytes of bitmap
    assert _tag(list(range(0, 160, 8)), 160) == INDEX_BITMAP  # 20 < 40 bytes


def test_a_gap_of_exactly_65536_does_not_use_16_bit_deltas() -> None:
    n = 70_000
    x = np.zeros(n, np.float32)
    x[[0, 65_537]] = [1.0, 2.0]  # gap 65,536: one more than uint16 holds
    codec = TopK(fraction=2 / n)

    got = codec.decode(codec.encode(x), n)

    np.testing.assert_array_equal(got, x)


def test_the_payload_size_bound_is_attained_by_far_apart_indices() -> None:
    n = 1_000_000
    x = np.zeros(n, np.float32)
    x[[0, 300_000, 700_000]] = [1.0, 2.0, 3.0]
    codec = TopK(fraction=3 / n)

    assert len(codec.encode(x)) == codec.max_payload_size(n) == 1 + 12 + 12


def test_a_layout_of_exactly_max_dim_parameters_decodes_sparsely() -> None:
    codec = TopK(fraction=1e-12)  # one index into 2**32 parameters
    payload = b"\x00" + np.array([MAX_DIM - 1], "<u4").tobytes() + np.ones(1, "<f4").tobytes()

    sparse = codec.decode_sparse(payload, MAX_DIM)

    assert sparse[0].tolist() == [MAX_DIM - 1]
    with pytest.raises(WireError, match=f"^layout of {MAX_DIM + 1} parameters exceeds top-k's"):
        codec.decode_sparse(payload, MAX_DIM + 1)


# --------------------------------------------------------------------------- error feedback


def test_error_feedback_names_the_update_and_the_state_in_its_errors() -> None:
    ef = ErrorFeedback(3)

    with pytest.raises(ValueError, match=r"^update must be 1-D, got shape \(1, 3\)$"):
        ef.compress(np.ones((1, 3), np.float32), "q8", rng=np.random.default_rng(0))
    with pytest.raises(
        ValueError, match="^update has non-finite values; the residual would be poisoned$"
    ):
        ef.compress(np.array([1, np.nan, 0], np.float32), "q8", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="^state: missing key 'residual'$"):
        ef.load_state_dict({})
    with pytest.raises(ValueError, match="^state: residual has non-finite values$"):
        ef.load_state_dict({"residual": np.array([0, np.inf, 0], np.float32)})


def test_loaded_state_does_not_alias_the_callers_array_and_reset_forgets() -> None:
    ef = ErrorFeedback(3)
    state = {"residual": np.array([0.5, -0.5, 0.25], np.float32)}

    ef.load_state_dict(state)
    state["residual"][:] = 9.0

    np.testing.assert_array_equal(ef.residual, [0.5, -0.5, 0.25])
    ef.reset()
    np.testing.assert_array_equal(ef.residual, np.zeros(3, np.float32))
    assert ef.residual.dtype == np.float32


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, 2.0])
def test_topk_fraction_outside_0_1_is_refused_naming_it(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"^fraction must be in \(0, 1\], got "):
        TopK(fraction=fraction)
