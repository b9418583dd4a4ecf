"""Byzantine-robust aggregation rules as pure functions over a round's cohort of updates.

Every rule takes ``updates`` (a stacked ``(n, d)`` float matrix, one row per client, or a
sequence of ``n`` vectors of length ``d``; see :mod:`fl_core.aggregation.math`) and returns
a float32 vector of length ``d``. Inputs must be finite (``validate_updates`` rejects the rest).

Speed. Coordinate-wise rules (median, trimmed mean, Bulyan's second stage) copy a block of
columns into a small ``(block, n)`` buffer and sort each row: numpy sorts short float32 rows
with SIMD sorting networks (x86-simd-sort on AVX2 / AVX-512 CPUs), about ten times faster
than ``np.median`` / ``np.partition`` along axis 0 of the big matrix, and the block stays in
cache. Distance-based rules (Krum, Multi-Krum, Bulyan's first stage) get all pairwise
squared distances from one Gram matrix (``|a|^2 + |b|^2 - 2 a.b``) accumulated block by
block in float64 on updates centered on the first one; the centering removes the
cancellation that the identity suffers when the updates are far from the origin relative to
their spread.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Sequence

import numpy as np

from fl_core.aggregation.math import (
    Updates,
    column_blocks,
    distances_to,
    gather_columns,
    gather_columns_t,
    relative_scores,
    row_sq_norms,
    row_sq_norms_and_dots,
    select_rows,
    updates_shape,
    weighted_average,
    weighted_sum,
)

SORT_BLOCK = 4096
"""Columns per sorted block (``4096 x n`` float32, cache-resident for n <= 100)."""

GRAM_BLOCK = 2048
"""Columns per block of the Gram matrix (``n x 2048`` float64)."""

GRAM_BLAS_THREADS: int | None = 1
"""BLAS threads for the Gram products (None: the BLAS default). OpenBLAS's worker threads
stall badly when the cores are shared with other processes (a 100 x 1M Gram matrix took
3-17 s instead of 0.4 s on a busy 2-core machine), so the products run single-threaded."""


def _blas_threads(limit: int | None) -> contextlib.AbstractContextManager[object]:
    """Limit BLAS threads inside the block (threadpoolctl, a scikit-learn dependency)."""
    if limit is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=limit, user_api="blas")


def check_num_byzantine(num_byzantine: int) -> None:
    """Raise ``ValueError`` unless ``num_byzantine`` is an integer >= 0."""
    if isinstance(num_byzantine, bool) or not isinstance(num_byzantine, int | np.integer):
        raise ValueError(f"num_byzantine must be an integer, got {num_byzantine!r}")
    if num_byzantine < 0:
        raise ValueError(f"num_byzantine must be >= 0, got {num_byzantine}")


def _positive_weights(weights: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must have one value per update ({n}), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("weights must be positive and finite")
    return w


# --------------------------------------------------------------------------- median family


def coordinate_median(updates: Updates) -> np.ndarray:
    """Coordinate-wise median (the mean of the two middle values when ``n`` is even).

    Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates", ICML 2018. Ignores any ``f < n / 2`` outlying values per coordinate.
    """
    n, d = updates_shape(updates)
    out = np.empty(d, dtype=np.float32)
    buf = np.empty((min(d, SORT_BLOCK), n), dtype=np.float32)
    lo, hi = (n - 1) // 2, n // 2
    for start, stop in column_blocks(d, SORT_BLOCK):
        block = gather_columns_t(updates, start, stop, buf[: stop - start])
        block.sort(axis=1)
        if lo == hi:
            out[start:stop] = block[:, lo]
        else:
            # the midpoint in float64: two finite float32 values near the limit sum to inf
            out[start:stop] = (block[:, lo].astype(np.float64) + block[:, hi]) * 0.5
    return out


def weighted_coordinate_median(
    updates: Updates, weights: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Coordinate-wise weighted median: per coordinate, the value at which the cumulative
    weight of the sorted values first reaches half of the total (the mean of the two values
    around it when it lands exactly on half, so equal weights give :func:`coordinate_median`).

    The weighted variant of Yin et al. (ICML 2018)'s coordinate-wise median. Note that the
    weights (``num_examples``) are reported by the clients: a Byzantine client that claims a
    huge weight moves this median, so prefer the plain median when weights are not trusted.
    """
    n, d = updates_shape(updates)
    w = _positive_weights(weights, n)
    half = w.sum() / 2
    tol = 1e-12 * w.sum()
    out = np.empty(d, dtype=np.float32)
    buf = np.empty((min(d, SORT_BLOCK), n), dtype=np.float32)
    for start, stop in column_blocks(d, SORT_BLOCK):
        block = gather_columns_t(updates, start, stop, buf[: stop - start])
        order = np.argsort(block, axis=1)
        values = np.take_along_axis(block, order, axis=1)
        cum = np.cumsum(w[order], axis=1)
        j = np.minimum((cum < half - tol).sum(axis=1), n - 1)
        rows = np.arange(stop - start)
        lower = values[rows, j]
        upper = values[rows, np.minimum(j + 1, n - 1)]
        exact = np.abs(cum[rows, j] - half) <= tol
        out[start:stop] = np.where(exact, (lower.astype(np.float64) + upper) * 0.5, lower)
    return out


def trimmed_mean(updates: Updates, *, beta: float) -> np.ndarray:
    """Coordinate-wise trimmed mean: drop the ``floor(beta * n)`` largest and as many
    smallest values of each coordinate, average the rest.

    Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates", ICML 2018 (same cut as ``scipy.stats.trim_mean``).

    Parameters
    ----------
    beta
        Fraction trimmed from each end, ``0 <= beta < 0.5``.
    """
    if not 0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), got {beta}")
    n, d = updates_shape(updates)
    k = int(beta * n)
    if k == 0:
        return weighted_average(updates, np.ones(n))
    out = np.empty(d, dtype=np.float32)
    buf = np.empty((min(d, SORT_BLOCK), n), dtype=np.float32)
    for start, stop in column_blocks(d, SORT_BLOCK):
        block = gather_columns_t(updates, start, stop, buf[: stop - start])
        block.sort(axis=1)
        out[start:stop] = block[:, k : n - k].sum(axis=1, dtype=np.float64) / (n - 2 * k)
    return out


def mean_around_median(updates: Updates, *, num_kept: int) -> np.ndarray:
    """Per coordinate, the mean of the ``num_kept`` values closest to the median.

    The second stage of Bulyan (El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of
    Distributed Learning in Byzantium", ICML 2018). The closest values form a window of the
    sorted values; its start is found with the comparison
    ``s[a] + s[a + num_kept] < 2 * median`` (monotone in ``a``) and its sum from prefix sums.
    """
    n, d = updates_shape(updates)
    if not 1 <= num_kept <= n:
        raise ValueError(f"num_kept must be in [1, {n}], got {num_kept}")
    out = np.empty(d, dtype=np.float32)
    buf = np.empty((min(d, SORT_BLOCK), n), dtype=np.float32)
    lo, hi = (n - 1) // 2, n // 2
    extra = n - num_kept
    for start, stop in column_blocks(d, SORT_BLOCK):
        block = gather_columns_t(updates, start, stop, buf[: stop - start])
        block.sort(axis=1)
        s = block.astype(np.float64)
        twice_median = s[:, lo] + s[:, hi]
        first = (s[:, :extra] + s[:, num_kept:] < twice_median[:, None]).sum(axis=1)
        prefix = np.zeros((stop - start, n + 1), dtype=np.float64)
        np.cumsum(s, axis=1, out=prefix[:, 1:])
        rows = np.arange(stop - start)
        out[start:stop] = (prefix[rows, first + num_kept] - prefix[rows, first]) / num_kept
    return out


# --------------------------------------------------------------------------- Krum family


def pairwise_sq_distances(updates: Updates) -> np.ndarray:
    """All squared Euclidean distances between updates, ``(n, n)`` float64.

    Gram matrix of the updates centered on the first one, accumulated block by block in
    float64 (``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b``, with the centering keeping the three terms
    of the order of the distances themselves).
    """
    n, d = updates_shape(updates)
    ref = updates[0]
    gram = np.zeros((n, n), dtype=np.float64)
    buf = np.empty((n, min(d, GRAM_BLOCK)), dtype=np.float64)
    with _blas_threads(GRAM_BLAS_THREADS):
        for start, stop in column_blocks(d, GRAM_BLOCK):
            block = gather_columns(updates, start, stop, buf[:, : stop - start])
            block -= ref[start:stop]
            gram += block @ block.T
    sq = np.diag(gram)
    dist = sq[:, None] + sq[None, :] - 2.0 * gram
    dist = np.maximum((dist + dist.T) / 2, 0.0)
    np.fill_diagonal(dist, 0.0)
    return dist


def krum_scores(sq_distances: np.ndarray, *, num_byzantine: int) -> np.ndarray:
    """Krum score of each update: the sum of its squared distances to its
    ``max(1, n - num_byzantine - 2)`` nearest other updates.

    Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent", NeurIPS 2017.
    """
    check_num_byzantine(num_byzantine)
    dist = np.asarray(sq_distances, dtype=np.float64)
    n = dist.shape[0]
    if dist.shape != (n, n) or n < 1:
        raise ValueError(f"sq_distances must be a square matrix, got shape {dist.shape}")
    if n == 1:
        return np.zeros(1)
    closest = min(n - 1, max(1, n - num_byzantine - 2))
    others = dist.copy()
    np.fill_diagonal(others, np.inf)
    nearest = np.partition(others, closest - 1, axis=1)[:, :closest]
    scores: np.ndarray = nearest.sum(axis=1)
    return scores


def check_krum_cohort(n: int, num_byzantine: int, rule: str) -> None:
    """Raise ``ValueError`` unless Krum's ``n >= 2f + 3`` holds (Blanchard et al.)."""
    check_num_byzantine(num_byzantine)
    if n < 2 * num_byzantine + 3:
        raise ValueError(
            f"{rule} needs n >= 2 * num_byzantine + 3 updates; got n={n} with "
            f"num_byzantine={num_byzantine} (lower num_byzantine or aggregate more updates)"
        )


def krum_select(
    sq_distances: np.ndarray, *, num_byzantine: int, num_selected: int = 1
) -> np.ndarray:
    """Indices of the ``num_selected`` updates with the lowest Krum scores, best first
    (Blanchard et al., NeurIPS 2017; ``num_selected > 1`` is Multi-Krum's selection)."""
    n = np.shape(sq_distances)[0]
    if not 1 <= num_selected <= n:
        raise ValueError(f"num_selected must be in [1, {n}], got {num_selected}")
    scores = krum_scores(sq_distances, num_byzantine=num_byzantine)
    return np.argsort(scores, kind="stable")[:num_selected]


def krum(updates: Updates, *, num_byzantine: int) -> np.ndarray:
    """The single update with the lowest Krum score (Blanchard et al., NeurIPS 2017).

    Requires ``n >= 2 * num_byzantine + 3``.
    """
    n, _ = updates_shape(updates)
    check_krum_cohort(n, num_byzantine, "krum")
    best = krum_select(pairwise_sq_distances(updates), num_byzantine=num_byzantine)[0]
    return np.array(updates[int(best)], dtype=np.float32)


def multi_krum(
    updates: Updates,
    *,
    num_byzantine: int,
    num_selected: int | None = None,
    weights: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Mean of the ``num_selected`` updates with the lowest Krum scores (Multi-Krum,
    Blanchard et al., NeurIPS 2017).

    Parameters
    ----------
    num_selected
        ``m``; ``n - num_byzantine`` when None.
    weights
        Weights of the selected updates' mean (``num_examples``, as Flower does); the paper's
        plain mean when None.
    """
    n, _ = updates_shape(updates)
    check_krum_cohort(n, num_byzantine, "multi_krum")
    m = n - num_byzantine if num_selected is None else num_selected
    chosen = krum_select(
        pairwise_sq_distances(updates), num_byzantine=num_byzantine, num_selected=m
    )
    w = np.ones(n) if weights is None else _positive_weights(weights, n)
    return weighted_average(select_rows(updates, chosen), w[chosen])


def content_ranks(updates: Updates) -> np.ndarray:
    """Each update's rank in a canonical order of the updates' contents (sha256 of the
    bytes): a tie-break that does not depend on the order the updates arrived in."""
    keys = [
        hashlib.sha256(np.ascontiguousarray(u, dtype=np.float32).tobytes()).digest()
        for u in updates
    ]
    ranks = np.empty(len(keys), dtype=np.intp)
    ranks[np.argsort(np.asarray(keys, dtype=object), kind="stable")] = np.arange(len(keys))
    return ranks


def bulyan_select(
    sq_distances: np.ndarray, *, num_byzantine: int, tiebreak: np.ndarray | None = None
) -> np.ndarray:
    """Bulyan's first stage: ``theta = n - 2 * num_byzantine`` updates chosen by Krum applied
    recursively (each pick removed from the candidates), in the order picked.

    The last candidates are scored on very few neighbours (none at all for the last
    ``2f + 2``), so mutual nearest neighbours tie; a tie goes to the candidate with the
    smallest total distance to the other candidates, then to the lowest ``tiebreak`` rank
    (e.g. :func:`content_ranks`), so the choice does not depend on the order of the updates.

    El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
    Byzantium", ICML 2018.
    """
    dist = np.asarray(sq_distances, dtype=np.float64)
    n = dist.shape[0]
    check_bulyan_cohort(n, num_byzantine)
    rank = np.arange(n) if tiebreak is None else np.asarray(tiebreak)
    remaining = list(range(n))
    chosen: list[int] = []
    for _ in range(n - 2 * num_byzantine):
        sub = dist[np.ix_(remaining, remaining)]
        scores = krum_scores(sub, num_byzantine=num_byzantine)
        tied = np.flatnonzero(np.isclose(scores, scores.min(), rtol=1e-9, atol=0.0))
        # Ties: the candidate closest to all the others, then the tiebreak rank.
        spread = sub.sum(axis=1)
        best = int(min(tied, key=lambda i: (spread[i], rank[remaining[i]])))
        chosen.append(remaining.pop(best))
    return np.asarray(chosen, dtype=np.intp)


def check_bulyan_cohort(n: int, num_byzantine: int) -> None:
    """Raise ``ValueError`` unless Bulyan's ``n >= 4f + 3`` holds (El Mhamdi et al.)."""
    check_num_byzantine(num_byzantine)
    if n < 4 * num_byzantine + 3:
        raise ValueError(
            f"bulyan needs n >= 4 * num_byzantine + 3 updates; got n={n} with "
            f"num_byzantine={num_byzantine} (lower num_byzantine or aggregate more updates)"
        )


def bulyan(updates: Updates, *, num_byzantine: int) -> np.ndarray:
    """Bulyan (El Mhamdi et al., ICML 2018): recursive Krum picks ``theta = n - 2f`` updates,
    then each coordinate is the mean of the ``beta = theta - 2f`` picked values closest to
    their median. Requires ``n >= 4f + 3`` (``f = num_byzantine``).
    """
    n, _ = updates_shape(updates)
    check_bulyan_cohort(n, num_byzantine)
    chosen = bulyan_select(
        pairwise_sq_distances(updates),
        num_byzantine=num_byzantine,
        tiebreak=content_ranks(updates),
    )
    return mean_around_median(
        select_rows(updates, chosen), num_kept=len(chosen) - 2 * num_byzantine
    )


# --------------------------------------------------------------------------- clipping


def clip_factors(norms: np.ndarray, max_norm: float) -> np.ndarray:
    """``min(1, max_norm / norm)`` per update (1 for a zero norm)."""
    norms = np.asarray(norms, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(norms > max_norm, max_norm / np.maximum(norms, 1e-300), 1.0)


def norm_bounding(
    updates: Updates, weights: Sequence[float] | np.ndarray, *, max_norm: float
) -> np.ndarray:
    """Weighted mean of the updates, each first scaled down to an L2 norm of at most
    ``max_norm`` (norm-difference clipping).

    Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?", 2019
    (arXiv:1911.07963).
    """
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a positive finite number, got {max_norm}")
    n, _ = updates_shape(updates)
    w = _positive_weights(weights, n)
    sq = row_sq_norms(updates)
    coeff = w * clip_factors(np.sqrt(sq), max_norm) / w.sum()
    return weighted_sum(updates, coeff).astype(np.float32)


def centered_clipping(
    updates: Updates,
    *,
    center: np.ndarray,
    tau: float,
    iterations: int = 1,
    weights: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Centered clipping: ``v <- v + sum_i w_i clip_tau(x_i - v)``, repeated ``iterations``
    times from ``v = center`` (typically the previous round's aggregate).

    Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization",
    ICML 2021. ``w_i = 1/n`` (the paper) when ``weights`` is None, else normalized weights.
    """
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive finite number, got {tau}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    n, d = updates_shape(updates)
    if np.shape(center) != (d,):
        raise ValueError(f"center has shape {np.shape(center)}, expected ({d},)")
    w = np.full(n, 1.0 / n) if weights is None else _positive_weights(weights, n)
    w = w / w.sum()
    v = np.asarray(center, dtype=np.float64).copy()
    for _ in range(iterations):
        dist = distances_to(updates, v)
        c = w * clip_factors(dist, tau)
        # v + sum c_i (x_i - v) = (1 - sum c) v + sum c_i x_i
        v = (1.0 - c.sum()) * v + weighted_sum(updates, c)
    return v.astype(np.float32)


# --------------------------------------------------------------------------- trust


def fltrust_coefficients(
    sq_norms: np.ndarray, dots: np.ndarray, root_sq_norm: float
) -> tuple[np.ndarray, np.ndarray]:
    """FLTrust's trust scores ``ReLU(cos(g_i, g_0))`` and the coefficients
    ``ts_i * |g_0| / |g_i| / sum_j ts_j`` of the aggregate (zeros if every score is 0)."""
    norms = np.sqrt(np.asarray(sq_norms, dtype=np.float64))
    root_norm = math.sqrt(root_sq_norm)
    denom = norms * root_norm
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(denom > 0, np.asarray(dots, dtype=np.float64) / denom, 0.0)
        trust = np.clip(cos, 0.0, 1.0)
        total = trust.sum()
        coeff = np.where(trust > 0, trust * root_norm / norms, 0.0)
    return trust, (coeff / total if total > 0 else np.zeros_like(coeff))


def fltrust(updates: Updates, root_update: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLTrust: each update is rescaled to the norm of the server's root update ``g_0`` and
    weighted by its trust score ``ReLU(cos(g_i, g_0))``.

    Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
    Bootstrapping", NDSS 2021. Returns ``(aggregate, trust_scores)``; the aggregate is zero
    when no update points the root update's way.
    """
    n, d = updates_shape(updates)
    root = np.asarray(root_update)
    if root.shape != (d,):
        raise ValueError(f"root_update has shape {root.shape}, expected ({d},)")
    root_sq = float(row_sq_norms([root])[0])
    if not (math.isfinite(root_sq) and root_sq > 0):
        raise ValueError("root_update must be finite and non-zero")
    sq, dots = row_sq_norms_and_dots(updates, root)
    trust, coeff = fltrust_coefficients(sq, dots, root_sq)
    return weighted_sum(updates, coeff).astype(np.float32), trust


# --------------------------------------------------------------------------- diagnostics


def outlier_scores(updates: Updates, center: np.ndarray) -> np.ndarray:
    """Distance of each update to ``center`` (e.g. the aggregate) over the median such
    distance: about 1 for a typical update, large for an outlier (for reputation)."""
    return relative_scores(distances_to(updates, center))
