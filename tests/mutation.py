"""Mutation testing of the modules where a silent bug costs most (``make mutation``).

Runs mutmut (pinned in the ``dev`` extra) group by group, each group mutating a few modules
and running only the test files that exercise them, in a scratch copy of the project under
``$FL_HOME/mutation/work`` (so no ``mutants/`` folder appears in the checkout), and writes
``$FL_HOME/mutation/report.md`` and one ``<group>.json`` per group: per module, mutants
killed / survived / timed out, the score over non-equivalent mutants, the survivors judged
equivalent (with the reason, from :data:`EQUIVALENT`) and the other survivors with their
diff, to be killed by a new test or judged.

Usage::

    python -m tests.mutation                 # every group
    python -m tests.mutation codec wire      # some groups
    python -m tests.mutation --max-children 1 codec
    python -m tests.mutation --survivors-only codec   # after adding tests: re-test survivors
    python -m tests.mutation --only 'fl_core.rounds.validate*' rounds  # one module first

Not part of ``make test``: a full run takes hours on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Group:
    """Modules mutated together and the test files that exercise them (pytest arguments:
    a ``--deselect=`` entry leaves a slow test out of the group's measurement only)."""

    modules: tuple[str, ...]
    tests: tuple[str, ...]


GROUPS: dict[str, Group] = {
    "codec": Group(
        (
            "fl_core/codec/quantize.py",
            "fl_core/codec/sparse.py",
            "fl_core/codec/feedback.py",
            "fl_core/codec/dense.py",
            "fl_core/codec/registry.py",
            "fl_core/codec/base.py",
        ),
        (
            "tests/fl_core/codec",
            "tests/fl_core/test_wire.py",
            "tests/fl_core/test_wire_properties.py",
        ),
    ),
    "wire": Group(
        ("fl_core/wire.py",),
        (
            "tests/fl_core/test_wire.py",
            "tests/fl_core/test_wire_properties.py",
            "tests/fl_core/test_wire_contracts.py",
        ),
    ),
    "aggregation": Group(
        (
            "fl_core/aggregation/math.py",
            "fl_core/aggregation/robust_math.py",
            "fl_core/aggregation/fedavg.py",
            "fl_core/aggregation/fedbuff.py",
        ),
        ("tests/fl_core/aggregation",),
    ),
    "privacy": Group(
        (
            "fl_core/privacy/noise.py",
            "fl_core/privacy/clipping.py",
            "fl_core/privacy/aggregator.py",
        ),
        (
            "tests/fl_core/privacy/test_noise_and_sampling.py",
            "tests/fl_core/privacy/test_clipping.py",
            "tests/fl_core/privacy/test_central_dp.py",
        ),
    ),
    "accountant": Group(
        ("fl_core/privacy/accountant.py", "fl_core/privacy/settings.py"),
        (
            "tests/fl_core/privacy/test_accountant_budget.py",  # fast: small step counts
            "tests/fl_core/privacy/test_accountant.py",
            "tests/fl_core/privacy/test_settings.py",
            # 8 s of RDP over 10,000 steps for every surviving mutant; the 100-step
            # published value stays (and the 10,000-step one in the normal suite)
            "--deselect=tests/fl_core/privacy/test_accountant.py::"
            "test_rdp_matches_published_values[1.1-0.01-10000-5.632]",
        ),
    ),
    "rounds": Group(
        (
            "fl_core/rounds/aggregate.py",
            "fl_core/rounds/privatize.py",
            "fl_core/rounds/validate.py",
        ),
        (
            "tests/fl_core/test_invariants.py",
            "tests/fl_core/test_pipeline_privacy_codecs.py",
            "tests/fl_core/test_pipeline_robust_async.py",
            "tests/fl_core/rounds/test_hostile_updates.py",
            "tests/test_gaps.py::test_norm_outliers_are_not_rejected_under_central_dp",
        ),
    ),
    "selection": Group(
        ("fl_core/selection.py", "fl_core/reputation.py"),
        ("tests/fl_core/test_selection.py", "tests/fl_core/test_reputation.py"),
    ),
}
"""Every group ``make mutation`` runs, in this order."""

_Q = "fl_core.codec.quantize."
_C = "fl_core.codec."
_P = "fl_core.privacy."
_UNREACHABLE_LOOP = (
    "the guard loop after scaling by C / (norm * slack) is unreachable (pragma: no cover): "
    "its condition never holds"
)
_SLACK = (
    "dividing by the slack scales slightly past C; the guard loop then divides by the slack "
    "until ||clipped|| <= C: the bound holds and the values differ by a few float32 ulps"
)
_W = "fl_core.wire."
_MODEL_NAME = (
    "a 2-D model is refused by encode() of the whole model first, so as_vector's name for "
    "'model' is never shown"
)
_BOTH_OR_NEITHER = "known_version and known_model are checked to be both given or both None above"
_OWN_LENGTH = "max_bytes for a message the function just built: len(candidate) never limits it"
_JSON_DUMPS = (
    "header key order (to_json's fixed order or sorted) and allow_nan (NaN is refused by "
    "_check_header_numbers before dumps) change no header a reader sees"
)
_HEADER_LENGTH = "header lengths are < MAX_HEADER_BYTES (1 MiB): '>i' and '>I' pack the same bytes"
_SEED_FUNCTION = (
    "the seed is any fixed function of the header (documented: same header, same bytes); "
    "taking 9 bytes or little-endian keeps that"
)
_UTF8 = "Python's codec names are case-insensitive: 'UTF-8' is 'utf-8'"
_ONLY_WIRE_ERRORS = (
    "every codec decoder raises WireError itself, which _payload_error returns unchanged "
    "(the branch that reads codec.name, and decode_sparse's 'no sparse decoding', are "
    "unreachable)"
)
_COPY = "a copy flag on astype('<f4') of an array only serialised: the same bytes"
_LOG = "arguments of a debug log call: logging reports formatting errors itself, nothing else"
_COPY_DEFAULT = "astype copies by default: dropping copy=True changes nothing"
_ONE_INDEX = "with k = 1 the strictly-increasing check compares two empty arrays: always true"
_U32_CHOICE = (
    "u32 is only chosen when delta16 is unavailable (a gap >= 65536, so n >= 65536 k); the "
    "bitmap then costs n / 8 >= 8192 k > 5 k bytes: 4 k or 5 k, u32 wins the same way"
)
_K_FOR_ZERO = "for n = 0 both branches return 0 (min(0, max(1, 0)))"
_SELECT_PATHS = "the threshold only picks between two ways (sort, mask) of the same sorted indices"
_FLOAT_MASK = "a float mask set to 1.0 at the kept entries: flatnonzero gives the same indices"
_ARANGE = "np.arange's default integer is int64 on the 64-bit platforms this runs on"
_R0 = "the input is already uint8 (quantize's codes), so the dtype argument changes nothing"
_R1 = "9 // bits == 8 // bits for every allowed bits (8, 4, 2)"
_R2 = "n / per is truthy whenever n > 0; padding a length that needs none gives the same grid"
_R3 = "numpy's reshape treats any negative size as 'infer' (-2 behaves as -1)"
_R4 = "j = 0 ORs grid[:, 0] << 0 into a copy of grid[:, 0]: no change"
_R5 = "float64 codes hold the same small integers; dequantize writes them into float32 unchanged"
_R6 = "a copy flag on an array that is only read or freshly computed: same values"
_R7 = (
    "a float64 grid: bitwise_and casts its uint8 results safely; the codes keep their integer "
    "values"
)
_R8 = "as _28 (dtype dropped: float64)"
_R9 = "m / chunk_size never equals the size, so the padding path runs; it yields the same grid"
_R10 = "a float64 padded grid of float32 values: min, max and step come out identical"
_R11 = "as _13"
_R12 = "an empty float64 array serialises to the same zero bytes as an empty float32 one"
_R13 = "as _10"
_R14 = "empty codes of any dtype pack to zero bytes"
_R15 = "as _15"
_R16 = "spread is already float64 (a float64 max minus a float32 lo)"
_R17 = (
    "a float64 step differs from its float32 rounding by < 2**-24 relative; codes are drawn "
    "against it and decoded with the float32 step: not observable"
)
_R18 = (
    "constant chunks then get an infinite inverse, t = 0 * inf = nan, which casts to code 0 "
    "here: they still decode to lo (platform-dependent cast, not observable on x86-64)"
)
_R19 = (
    "float64 instead of float32 intermediates: the same codes (only more precise); the "
    "float32 path exists for speed"
)
_R20 = "a step equal to float32's tiny takes the float64 path: same codes"
_R21 = "as _41: without where=, only constant chunks divide by zero"
_R22 = "float64 codes are truncated to uint8 by pack_bits: the same codes"
_R23 = "lo.astype(None) is float64, as lo.astype(np.float64)"
_R24 = "step.astype(None) is float64, as step.astype(np.float64)"
_R25 = (
    "lo + code * step of exact float32 factors rounds once to the same float32 whether lo is "
    "float32 or float64"
)
_R26 = "as decode _10 (float64 step)"
_A = "fl_core.aggregation."
_F64_DEFAULT = "numpy's default dtype for zeros / empty / astype(None) is float64, the dtype named"
_INT64_DEFAULT = "np.asarray of a Python int is int64 on the 64-bit platforms this runs on"
_STALENESS_LIST = (
    "a list of Python ints becomes int64; an empty list becomes an empty float64 array, "
    "which load_state_dict reads back as the same empty list"
)
_OWN_STATE_SUM = (
    "the sum state_dict writes is float64 and put_arrays' npz keeps dtypes: asarray leaves it "
    "float64 either way"
)
_OWN_STATE_1D = "state_dict writes stalenesses 1-D; reshape(None) returns a 1-D array unchanged"
_ALWAYS_UNIQUE = (
    "forcing the 'strictly increasing' shortcut off makes every update take the np.unique "
    "duplicate check: same accept/reject, only slower"
)
_INDEX_COPY = "a copy flag on astype(int64) of a local index array: the same indices"
_EINSUM_CASE = "einsum subscripts are case-sensitive labels: 'I,I->' sums the same products"
_STREAM_BLOCK = (
    "the block only regroups the float64 sum of squares (8192 instead of 131072 terms per "
    "partial sum): differences of ~1e-16 relative, far below the float32 values it measures"
)
_ELEMENTWISE_BLOCK = "acc[i] += c * u[i] is elementwise: the block size cannot change any value"
_WEIGHTS_DTYPE = (
    "integer weights stay int64 instead of float64: the sums, comparisons and the float64 "
    "products of w @ stacked are the same"
)
_PROMOTED = "float32 vectors are promoted to float64 by the float64 weights in w @ stacked"
_FLOAT64_CALLERS = (
    "every caller passes float64 (distances_to, np.sqrt of float64 norms, row_sq_norms_and_dots):"
    " asarray's default keeps float64"
)
_EMPTY_SCALE = "an empty input returns an empty float64 array whether the scale is 0 or 1"
_MEDIAN_BUFFER = (
    "with the midpoint computed in float64, a float64 sort buffer holds the same float32 values "
    "in the same order: the same output"
)
_AXIS_DEFAULT = "argsort / take_along_axis default to the last axis, axis 1 of this 2-D block"
_NEVER_N = (
    "j counts cumulative weights below half - tol; the last one is the total (about twice "
    "half), so j < n and the cap n - 1 vs n + 1 never applies"
)
_SQUARE = "krum_scores refuses a non-square matrix right after; shape[0] == shape[1] otherwise"
_STABLE_NAME = "numpy reads the sort kind case-insensitively: 'STABLE' is 'stable'"
_NO_ZERO_DIVISION = (
    "the division by zero this errstate silences cannot happen: the divisor is "
    "np.maximum(norms, 1e-300), or 0/0 (invalid, still silenced) for a zero update"
)
_EQUAL_FACTOR = "at norm == max_norm both branches give max_norm / norm == 1.0 exactly"
_UNIFORM = "uniform weights are renormalised by w / w.sum() on the next line: any constant works"
_CENTER_DTYPE = (
    "a float32 center is promoted exactly to float64 by distances_to and by the first update "
    "of v: the same iterates"
)
_TRIM_BUFFER = (
    "a float64 sort buffer holds the same float32 values in the same order, and the kept "
    "values are summed in float64 either way: the same output"
)
_SAME_FLOAT32_VALUES = (
    "a float64 buffer holds the same float32 values in the same order, and the window sums "
    "run in float64 either way: the same output"
)
_DIGEST_TIES = (
    "sha256 digests tie only for identical updates, which are interchangeable in every result:"
    " the sort kind cannot matter"
)
_DIGEST_BYTES = (
    "equal-length 32-byte digests sort the same as numpy 'S32' strings as as Python bytes"
)
_DIST_DTYPE = (
    "pairwise_sq_distances gives float64 already; an integer matrix stays int64, which "
    "krum_scores converts to float64 and whose spread sums are exact"
)
_SQUARE_INPUT = (
    "shape[0] == shape[1] for the (n, n) matrix it takes (bulyan passes "
    "pairwise_sq_distances'); neither version validates a non-square one"
)
_INTP = "np.intp is int64 on the 64-bit platforms this runs on, as asarray of Python ints"
_TOL_BOUNDARY = (
    "'<' and '<=' differ only when |cum - half| equals fl(1e-12 * total) bit for bit; "
    "half - fl(half - tol) is tol rounded to half's ulp, which 1e-12's 53-bit mantissa never is"
)
_S = "fl_core.selection."
_REP = "fl_core.reputation.xǁReputationBookǁ"
_NO_FADE = "at rnd == last_round the fade factor is decay ** 0 == 1: the same evidence"
_DEL_NOTHING = "with exactly `history` events, del events[:0] deletes nothing"
_SCORE_AFTER_RECORD = (
    "after a record last_round >= round, and score(round=r) for r <= last_round applies no "
    "fading: the same as round=None"
)
_K_LE_M = "overselect never asks for k > m: m starts at ceil(k / p - 1e-9) >= k and only grows"
_CAP = "confidence < 1: a probability capped at 1 or at 2 compares the same against it"
_PROB_TIE = (
    "'<' and '<=' differ only when the computed binomial tail equals the confidence bit for "
    "bit (e.g. P = 0.75 is computed as 0.7499999999999999)"
)
_FALSY = "None is falsy like False: the same branch"
_QUORUM_NONE = "order[:None] is order: the same list when quorum is None"
_STREAM_LABEL = (
    "another fixed label (or none) for the hash of (seed, label, client, round) gives another "
    "stream, as deterministic and as uniform: no test can tell which stream is the right one"
)
_TIE_2_63 = "u >= rate vs u > rate differ only when the 63-bit uniform equals the rate exactly"
_FLOAT_PRODUCTS = "num_examples * (loss or 0.0) is a Python float: np.array infers float64"
_SHARES_DTYPE = "integer shares become int64 instead of float64: shares / shares.sum() is the same"
_RA = "fl_core.rounds.aggregate."
_VERIFIED_BYTES = (
    "the bytes were decoded with this layout at validation and are verified against that "
    "sha256 before decoding here: decoding them without expected_layout gives the same vector"
)
_EMPTY_SCORES = (
    "outlier_scores {} or None: next_round reads `info.outlier_scores or {}`, nothing else reads it"
)
_ROOT_LABEL = (
    "another fixed label (or none) for the root set's generator, still seeded by the "
    "campaign's seed: another sample, as random and as fixed for the campaign"
)
_FLOAT_LIST = "CentralDP.norms is a list of Python floats: np.asarray makes it float64 anyway"
_REPLACE_FALSY = "numpy's choice treats replace=None like replace=False (a falsy flag)"
_RP = "fl_core.privacy.settings.xǁResolvedPrivacyǁ"
_BOOL_DELTA = (
    "True == 1 lies outside (0, 1) and a non-finite value fails the bound check too: the "
    "and/or variant refuses the same values (unlike a rate, where 1 is allowed)"
)
_PRV_KWARGS = (
    "PRVAccountant.get_epsilon takes **kwargs: a misspelt eps_error, or RDP's alphas, are "
    "ignored and its default eps_error is 0.01, PRV_EPS_ERROR's value"
)
_PRV_DEFAULT = "Opacus's PRVAccountant.get_epsilon defaults to eps_error=0.01, PRV_EPS_ERROR"
_ENABLED_IMPLIES = (
    "resolve() sets noise_multiplier, update_noise_multiplier and delta exactly when privacy "
    "is enabled (and a ResolvedPrivacy is only built by resolve or from its to_dict): the "
    "extra None checks cannot change the branch"
)
_STDDEV_IFF_ADAPTIVE = (
    "resolve() sets clip_count_stddev exactly when adaptive clipping is on, and refuses "
    "adaptive clipping with level 'off': the and/or variants take the same branch"
)
_RV = "fl_core.rounds.validate."
_RPV = "fl_core.rounds.privatize."
_WARNING_LOG = (
    "arguments of the warning logged for a rejected update (the rejection itself is in the "
    "validation record): logging reports formatting errors itself, nothing else"
)
_INFO_LOG = (
    "arguments of an info log call (the round's epsilon line): logging reports formatting "
    "errors itself, nothing else"
)
_SECRET_LABEL = (
    "another label of the campaign's secret seed and the round (None, missing or renamed): "
    "the noise stays fresh each round, secret to the campaign and distinct from the other "
    "stream (test_..._count_noise_is_fresh_each_round_and_secret_to_each_campaign and "
    "test_dp_noise_is_fresh_each_round_... kill the seed and round mutants)"
)
_PROMOTED = (
    "numpy promotes the array and the float64 noise to float64 before the float32 cast: "
    "any real input gives the same values as converting it to float64 first"
)
_RESHAPE_NONE = (
    "reshape(None) keeps the shape; every later use (size, isfinite, the sum of the "
    "comparison) runs over all entries: the same count"
)
_ASTYPE_NONE = "astype(None) is astype(float64): the same centred sum"
_ZERO_DRAW = (
    "with count_stddev 0 the draw N(0, 0) is exactly 0.0: the same fraction (the generator "
    "advances one draw, which changes which secret values later draws take, not their law)"
)
_NEG_RESHAPE = "numpy's reshape treats any negative size as 'infer' (-2 behaves as -1)"
_CLIP = "fl_core.privacy.clipping.xǁAdaptiveClipperǁnoisy_fraction_below"
_EQUIVALENT_SPEC: list[tuple[str, tuple[int, ...], str]] = [
    (_P + "noise.x_add_gaussian_noise", (10, 12), _PROMOTED),
    (_RPV + "x_privatize", tuple(range(208, 220)), _INFO_LOG),
    (_RV + "x_validate_updates", tuple(range(159, 173)), _WARNING_LOG),
    (_RPV + "x_privatize", (72, 75, 78, 79, 106, 109, 112, 113), _SECRET_LABEL),
    (_W + "x_readdressed", (13, 50), _HEADER_LENGTH),
    (_W + "x_readdressed", (35, 36, 38, 39, 40, 41), _JSON_DUMPS),
    (_CLIP, (2,), _RESHAPE_NONE),
    (_CLIP, (20,), _ASTYPE_NONE),
    (_CLIP, (25, 32), _ZERO_DRAW),
    (_CLIP, (8,), _NEG_RESHAPE),
    (_P + "accountant.xǁPrivacyAccountantǁstep", (9, 10, 11, 12, 13, 14), _LOG),
    (_P + "settings.x_resolve", (*range(129, 143), 198, 200), _LOG),
    (_P + "accountant.x__check_delta", (2,), _BOOL_DELTA),
    (_P + "accountant.x_epsilon_of_history", (33,), _PRV_DEFAULT),
    (_P + "accountant.x_calibrate_noise_multiplier", (31, 38, 39), _PRV_KWARGS),
    (_RP + "make_accountant", (1, 2), _ENABLED_IMPLIES),
    (_RP + "noise_std", (1,), _ENABLED_IMPLIES),
    (_RP + "make_clipper", (1, 3), _STDDEV_IFF_ADAPTIVE),
    (_RA + "x__aggregate_fedbuff", (14, 16), _VERIFIED_BYTES),
    (_RA + "x__aggregate_central_dp", (24, 26), _VERIFIED_BYTES),
    (_RA + "x__aggregate_central_dp", (41, 43), _FLOAT_LIST),
    (_RA + "x__aggregate_fedbuff", (69, 79), _EMPTY_SCORES),
    (_RA + "x_root_rows", (14, 16, 17, 18), _ROOT_LABEL),
    (_RA + "x_root_rows", (9,), _REPLACE_FALSY),
    (_W + "x_encode_model_for_client", (90, 91, 92, 93, 94, 95), _LOG),
    (_W + "x_encode_model_for_client", (28, 30, 31, 32), _MODEL_NAME),
    (_W + "x_encode_model_for_client", (23,), _BOTH_OR_NEITHER),
    (_W + "x_encode_model_for_client", (83,), _OWN_LENGTH),
    (_W + "x_encode", (46, 47, 49, 50, 52, 53), _JSON_DUMPS),
    (_W + "x_encode", (62,), _HEADER_LENGTH),
    (_W + "x_default_rng", (7, 9), _SEED_FUNCTION),
    (_P + "clipping.x_clip_by_l2", (30, 31, 32, 33, 34, 35), _UNREACHABLE_LOOP),
    (_P + "clipping.x_clip_by_l2", (26,), _SLACK),
    (_W + "x__parse", (39,), _UTF8),
    (_W + "x__payload_error", (1,), _ONLY_WIRE_ERRORS),
    (_W + "x_decode", (29,), _ONLY_WIRE_ERRORS),
    (_W + "x_decode_sparse", (17, 22), _ONLY_WIRE_ERRORS),
    (_C + "dense.xǁDenseFp32ǁencode", (2, 4, 8), _COPY),
    (_C + "feedback.xǁErrorFeedbackǁcompress", (33, 34, 35, 36, 37, 38, 39, 40), _LOG),
    (_C + "feedback.xǁErrorFeedbackǁload_state_dict", (22,), _COPY_DEFAULT),
    (_C + "sparse.x_decode_indices", (35,), _ONE_INDEX),
    (_C + "sparse.x_encode_indices", (13,), _U32_CHOICE),
    (_C + "sparse.xǁTopKǁk_for", (1,), _K_FOR_ZERO),
    (_C + "sparse.xǁTopKǁselect", (17, 18, 19), _SELECT_PATHS),
    (_C + "sparse.xǁTopKǁselect", (24, 26), _FLOAT_MASK),
    (_C + "sparse.xǁTopKǁselect", (6, 8), _ARANGE),
    (_Q + "x_pack_bits", (3, 5), _R0),
    (_Q + "x_pack_bits", (8,), _R1),
    (_Q + "x_pack_bits", (12,), _R2),
    (_Q + "x_pack_bits", (31,), _R3),
    (_Q + "x_pack_bits", (36,), _R4),
    (_Q + "x_unpack_bits", (13,), _R1),
    (_Q + "x_unpack_bits", (16,), _R5),
    (_Q + "x_unpack_bits", (17, 19, 20), _R6),
    (_Q + "x_unpack_bits", (28,), _R7),
    (_Q + "x_unpack_bits", (30,), _R8),
    (_Q + "x_unpack_bits", (43,), _R3),
    (_Q + "x__chunked", (6,), _R9),
    (_Q + "x__chunked", (13,), _R10),
    (_Q + "x__chunked", (15,), _R11),
    (_Q + "x_quantize", (10,), _R12),
    (_Q + "x_quantize", (12,), _R13),
    (_Q + "x_quantize", (15,), _R14),
    (_Q + "x_quantize", (17,), _R15),
    (_Q + "x_quantize", (29,), _R16),
    (_Q + "x_quantize", (33,), _R17),
    (_Q + "x_quantize", (41,), _R18),
    (_Q + "x_quantize", (46, 48, 50, 53, 55, 65, 68, 73, 79, 81), _R19),
    (_Q + "x_quantize", (47,), _R20),
    (_Q + "x_quantize", (63,), _R21),
    (_Q + "x_quantize", (69, 71, 72), _R6),
    (_Q + "x_quantize", (90,), _R22),
    (_Q + "x_quantize", (92,), _R3),
    (_Q + "x_check_scales", (7,), _R23),
    (_Q + "x_check_scales", (10,), _R24),
    (_Q + "xǁStochasticQuantizerǁencode", (21, 23, 26, 28, 30, 33), _R6),
    (_Q + "xǁStochasticQuantizerǁdecode", (10,), _R25),
    (_Q + "xǁStochasticQuantizerǁdecode", (20,), _R26),
    (_A + "fedavg.xǁFedAvgǁ__init__", (4, 6), _F64_DEFAULT),
    (_A + "fedavg.xǁFedAvgǁadd_sparse", (34, 36, 37), _INDEX_COPY),
    (_A + "fedavg.xǁFedAvgǁadd_sparse", (46, 47, 50, 51), _ALWAYS_UNIQUE),
    (_A + "fedavg.xǁFedAvgǁadd_sparse", (66,), _F64_DEFAULT),
    (_A + "fedbuff.xǁFedBuffBufferǁ__init__", (21, 23), _F64_DEFAULT),
    (_A + "fedbuff.xǁFedBuffBufferǁstate_dict", (6, 8), _F64_DEFAULT),
    (_A + "fedbuff.xǁFedBuffBufferǁstate_dict", (18, 20, 24, 26), _INT64_DEFAULT),
    (_A + "fedbuff.xǁFedBuffBufferǁstate_dict", (12, 14), _STALENESS_LIST),
    (_A + "fedbuff.xǁFedBuffBufferǁload_state_dict", (3, 5), _OWN_STATE_SUM),
    (_A + "fedbuff.xǁFedBuffBufferǁload_state_dict", (17,), _OWN_STATE_1D),
    (_A + "fedbuff.xǁFedBuffBufferǁload_state_dict", (22,), _R3),
    (_A + "math.x_l2_norm", (5,), _R3),
    (_A + "math.x_l2_norm", (11,), _STREAM_BLOCK),
    (_A + "math.x_l2_norm", (14,), _F64_DEFAULT),
    (_A + "math.x_l2_norm", (25,), _EINSUM_CASE),
    (_A + "math.x_accumulate", (8, 10), _F64_DEFAULT),
    (_A + "math.x_accumulate", (19,), _ELEMENTWISE_BLOCK),
    (_A + "math.x_weighted_mean", (7, 9), _WEIGHTS_DTYPE),
    (_A + "math.x_weighted_mean", (22, 24), _PROMOTED),
    (_A + "math.x_distances_to", (9, 11, 14, 16), _F64_DEFAULT),
    (_A + "math.x_distances_to", (43,), _EINSUM_CASE),
    (_A + "math.x__row_pass", (11, 13, 16, 18, 21, 23), _F64_DEFAULT),
    (_A + "math.x__row_pass", (48, 59), _EINSUM_CASE),
    (_A + "math.x_relative_scores", (3, 5), _FLOAT64_CALLERS),
    (_A + "math.x_relative_scores", (11, 18), _EMPTY_SCALE),
    (_A + "robust_math.x__positive_weights", (3, 5), _WEIGHTS_DTYPE),
    (_A + "robust_math.x_coordinate_median", (10, 12), _MEDIAN_BUFFER),
    (_A + "robust_math.x_coordinate_median", (45,), _F64_DEFAULT),
    (_A + "robust_math.x_trimmed_mean", (26, 28), _TRIM_BUFFER),
    (_A + "robust_math.x_mean_around_median", (15, 17, 48), _SAME_FLOAT32_VALUES),
    (_A + "robust_math.x_mean_around_median", (58, 60), _F64_DEFAULT),
    (_A + "robust_math.x_content_ranks", (14, 16, 22), _DIGEST_TIES),
    (_A + "robust_math.x_content_ranks", (18, 20), _DIGEST_BYTES),
    (_A + "robust_math.x_bulyan_select", (3, 5), _DIST_DTYPE),
    (_A + "robust_math.x_bulyan_select", (7,), _SQUARE_INPUT),
    (_A + "robust_math.x_bulyan_select", (61, 63), _INTP),
    (_A + "robust_math.x_weighted_coordinate_median", (21, 23), _MEDIAN_BUFFER),
    (_A + "robust_math.x_weighted_coordinate_median", (46, 54), _AXIS_DEFAULT),
    (_A + "robust_math.x_weighted_coordinate_median", (71,), _NEVER_N),
    (_A + "robust_math.x_weighted_coordinate_median", (89,), _TOL_BOUNDARY),
    (_A + "robust_math.x_weighted_coordinate_median", (99,), _F64_DEFAULT),
    (_A + "robust_math.x_krum_select", (4,), _SQUARE),
    (_A + "robust_math.x_krum_select", (20,), _STABLE_NAME),
    (_A + "robust_math.x_clip_factors", (3, 5), _FLOAT64_CALLERS),
    (_A + "robust_math.x_clip_factors", (6,), _NO_ZERO_DIVISION),
    (_A + "robust_math.x_clip_factors", (15,), _EQUAL_FACTOR),
    (_A + "robust_math.x_centered_clipping", (27, 28), _UNIFORM),
    (_A + "robust_math.x_centered_clipping", (38, 40), _CENTER_DTYPE),
    (_A + "robust_math.x_fltrust_coefficients", (4, 6, 30, 32), _FLOAT64_CALLERS),
    (_A + "robust_math.x_fltrust_coefficients", (11, 13), _NO_ZERO_DIVISION),
    (_REP + "_faded", (3,), _NO_FADE),
    (_REP + "record", (64,), _DEL_NOTHING),
    (_REP + "record", (67, 69), _SCORE_AFTER_RECORD),
    (_S + "x__prob_at_least", (2,), _K_LE_M),
    (_S + "x__prob_at_least", (36,), _CAP),
    (_S + "x_overselect", (41,), _PROB_TIE),
    (_S + "xǁSpeedProfileǁround_time", (5,), _FALSY),
    (_S + "xǁRandomSelectorǁ_choose", (4,), _FALSY),
    (_S + "x_arrivals", (29,), _QUORUM_NONE),
    (_S + "x_sample_profiles", (20, 22), _SHARES_DTYPE),
    (_S + "xǁAvailabilityModelǁcompletes", (1, 4, 7, 8), _STREAM_LABEL),
    (_S + "xǁAvailabilityModelǁcompletes", (9,), _TIE_2_63),
    (_S + "xǁAvailabilityModelǁtimezone_offset", (5, 7, 9, 10), _STREAM_LABEL),
    (_S + "xǁSelectorǁobserve", (4, 5, 6, 7, 8, 9, 10, 11), _LOG),
    (_S + "x__sample", (21, 37), _FALSY),
    (_S + "xǁOortSelectorǁutilities", (7, 9), _FLOAT_PRODUCTS),
    (_S + "xǁAvailabilityModelǁis_available", (1, 4, 7, 8), _STREAM_LABEL),
    (_S + "xǁAvailabilityModelǁis_available", (9,), _TIE_2_63),
]

EQUIVALENT: dict[str, str] = {
    f"{function}__mutmut_{n}": reason
    for function, numbers, reason in _EQUIVALENT_SPEC
    for n in numbers
}
"""Survivors judged equivalent after reading them: mutant name -> why no test can kill it.
Filled from the reports; see docs/benchmarks.md's sibling notes in the closing report."""

MAX_DIFFS = 60
"""Survivors per group shown with their diff in the report (``mutmut show`` is slow); the
others are listed by name (``mutmut show NAME`` in a rerun's work folder gives the diff)."""

_RESULT = re.compile(r"^\s*(?P<name>\S+): (?P<status>.+?)\s*$")


def _module_of(mutant: str) -> str:
    """``fl_core.codec.quantize.x_pack_bits__mutmut_3`` -> ``fl_core.codec.quantize``."""
    return re.split(r"\.x[_\u01c1]", mutant, maxsplit=1)[0]


def _mutmut(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["GIT_PYTHON_REFRESH"] = "quiet"
    # mutmut forks each mutant's worker from a process that already ran torch: an OpenMP
    # thread team in the parent leaves the child waiting forever at its first parallel op
    # (seen in gdb: gomp_team_barrier_wait_end), with no CPU time for mutmut's limit to stop.
    env["OMP_NUM_THREADS"] = "1"
    mutmut = shutil.which("mutmut") or str(Path(sys.executable).with_name("mutmut"))
    return subprocess.run(
        [mutmut, *args], cwd=work, env=env, text=True, capture_output=True, check=False
    )


def _prepare(work: Path, group: Group) -> None:
    """A fresh copy of the package, the tests and pyproject.toml with this group's config."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in ("fl_core", "tests"):
        shutil.copytree(
            ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__", ".hypothesis")
        )
    text = (ROOT / "pyproject.toml").read_text()
    text = re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[|\Z)", "", text)
    config = {
        "source_paths": ["fl_core"],
        "only_mutate": list(group.modules),
        "pytest_add_cli_args_test_selection": list(group.tests),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q", "-x"],
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in config.items()]
    (work / "pyproject.toml").write_text(text.rstrip() + "\n" + "\n".join(lines) + "\n")
    tomllib.loads((work / "pyproject.toml").read_text())  # still valid TOML


_KILLED = {1, 3, 36, -24, 24, 152, 255}
"""mutmut's exit codes of a killed or timed-out mutant (``mutmut.stats``)."""


def _refresh_tests(work: Path) -> None:
    """Copy the checkout's tests into a work folder (mutmut keeps every earlier verdict)."""
    for dest in (work / "tests", work / "mutants" / "tests"):
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(
            ROOT / "tests", dest, ignore=shutil.ignore_patterns("__pycache__", ".hypothesis")
        )


def _reset_survivors(work: Path) -> int:
    """Refresh the work folder's tests from the checkout and mark every survivor not judged
    equivalent (and every mutant whose worker hung or crashed) untested, so the next
    ``mutmut run`` tests only those against the current tests."""
    _refresh_tests(work)
    count = 0
    for meta in (work / "mutants").rglob("*.py.meta"):
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        for key, code in codes.items():
            # an unjudged survivor, or a worker that hung or crashed (killed by a signal)
            if code is not None and code not in _KILLED and key not in EQUIVALENT:
                codes[key] = None
                count += 1
        meta.write_text(json.dumps(data, indent=4))
    return count


def run_group(
    name: str,
    group: Group,
    out: Path,
    max_children: int,
    *,
    survivors_only: bool = False,
    only: tuple[str, ...] = (),
) -> dict[str, object]:
    """Run mutmut for one group; returns (and writes) its per-module summary.

    ``survivors_only`` reuses the group's work folder from the last run (kept under
    ``$FL_HOME/mutation/work-<group>``) and tests only its survivors against the current
    tests; the other verdicts stand (tests were only added, the mutated code is the same).
    ``only`` (mutant name patterns, e.g. ``fl_core.rounds.validate*``) reuses the work
    folder with the current tests and (re-)tests just the matching mutants: a partial run
    can then spend its time on one module first.
    """
    work = out / f"work-{name}"  # one per group: groups may run in parallel
    if (survivors_only or only) and not (work / "mutants").is_dir():
        raise SystemExit(f"no earlier run of group {name} in {work}; run it first")
    if survivors_only:
        print(f">> mutation group {name}: {_reset_survivors(work)} survivors to re-test")
    elif only:
        _refresh_tests(work)
    else:
        _prepare(work, group)
    print(f">> mutation group {name}: {', '.join(group.modules)}", flush=True)
    run = _mutmut(work, "run", "--max-children", str(max_children), *only)
    (out / f"{name}.log").write_text(run.stdout[-20000:] + run.stderr[-20000:])
    return summarize(name, work, out, run.returncode)


def summarize(name: str, work: Path, out: Path, exit_code: int | None) -> dict[str, object]:
    """Per-module summary of a group's work folder (also mid-run: ``--snapshot``), written
    to ``<group>.json``; mutants not checked yet are counted as pending, outside the score."""
    listing = _mutmut(work, "results", "--all", "true").stdout
    statuses: dict[str, str] = {}
    for line in listing.splitlines():
        if match := _RESULT.match(line):
            statuses[match["name"]] = match["status"]
    survivors = [m for m, s in statuses.items() if s == "survived"]
    unjudged = [m for m in survivors if m not in EQUIVALENT]
    diffs = {m: _mutmut(work, "show", m).stdout[-1500:] for m in unjudged[:MAX_DIFFS]}
    modules: dict[str, dict[str, object]] = {}
    for module in sorted({_module_of(m) for m in statuses}):
        mine = {m: s for m, s in statuses.items() if _module_of(m) == module}
        counts = Counter(mine.values())
        equivalent = {m: EQUIVALENT[m] for m in mine if m in EQUIVALENT and mine[m] == "survived"}
        killed = counts.get("killed", 0) + counts.get("timeout", 0)
        pending = counts.get("not checked", 0)
        # a mutant no test reaches counts as not killed
        judged = len(mine) - len(equivalent) - pending
        modules[module] = {
            "mutants": len(mine),
            "status": dict(counts),
            "equivalent": equivalent,
            "survived": {
                m: diffs.get(m, s)
                for m, s in mine.items()
                if s not in ("killed", "timeout", "not checked") and m not in equivalent
            },
            "score": round(killed / judged, 4) if judged else None,
        }
    summary: dict[str, object] = {"group": name, "exit_code": exit_code, "modules": modules}
    (out / f"{name}.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary  # the work folder stays for --survivors-only (the next full run clears it)


def rescore(summary: dict[str, Any]) -> dict[str, Any]:
    """Apply the current :data:`EQUIVALENT` judgements to a stored group summary."""
    for info in summary["modules"].values():
        pending = {**info["survived"], **info["equivalent"]}
        info["equivalent"] = {m: EQUIVALENT[m] for m in pending if m in EQUIVALENT}
        info["survived"] = {m: d for m, d in pending.items() if m not in EQUIVALENT}
        killed = info["status"].get("killed", 0) + info["status"].get("timeout", 0)
        judged = info["mutants"] - len(info["equivalent"]) - info["status"].get("not checked", 0)
        info["score"] = round(killed / judged, 4) if judged else None
    return summary


def write_report(out: Path) -> Path:
    """``report.md`` from every ``<group>.json`` under ``out`` (rescored with the current
    :data:`EQUIVALENT`)."""
    rows = [
        "# Mutation testing",
        "",
        "| module | mutants | killed | survived | equivalent | pending | score "
        "(killed / non-equivalent) |",
        "|---|---|---|---|---|---|---|",
    ]
    details: list[str] = []
    for path in sorted(out.glob("*.json")):
        summary = rescore(json.loads(path.read_text()))
        path.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
        for module, info in summary["modules"].items():
            status = info["status"]
            score = "n/a" if info["score"] is None else f"{100 * info['score']:.1f}%"
            killed = status.get("killed", 0) + status.get("timeout", 0)
            rows.append(
                f"| {module} | {info['mutants']} | {killed} | {len(info['survived'])} | "
                f"{len(info['equivalent'])} | {status.get('not checked', 0)} | {score} |"
            )
            for mutant, reason in info["equivalent"].items():
                details.append(f"- equivalent `{mutant}`: {reason}")
            for mutant, diff in info["survived"].items():
                details.append(f"- survived `{mutant}`:\n\n```diff\n{diff.strip()}\n```")
    report = out / "report.md"
    report.write_text("\n".join(rows + ["", "## Survivors", ""] + details) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", help=f"some of {', '.join(GROUPS)} (default: all)")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="rescore and rewrite report")
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="summarize the groups' work folders as they are now (e.g. during a run)",
    )
    parser.add_argument(
        "--survivors-only",
        action="store_true",
        help="re-test only the last run's survivors against the current tests",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="(re-)test only the mutants matching PATTERN in the last run's work folder",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown groups {unknown}; allowed: {', '.join(GROUPS)}")
    fl_home = Path(os.environ.get("FL_HOME", ROOT / ".fl"))
    out = fl_home / "mutation"
    out.mkdir(parents=True, exist_ok=True)
    for name in args.groups if args.snapshot else []:
        summarize(name, out / f"work-{name}", out, None)
    skip = args.report_only or args.snapshot
    for name in [] if skip else args.groups or list(GROUPS):
        summary = run_group(
            name,
            GROUPS[name],
            out,
            args.max_children,
            survivors_only=args.survivors_only,
            only=tuple(args.only),
        )
        modules: dict[str, dict[str, object]] = summary["modules"]  # type: ignore[assignment]
        for module, info in modules.items():
            print(f"   {module}: score {info['score']} {info['status']}", flush=True)
    print(f">> report: {write_report(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
