"""Pure aggregation math on flat float32 vectors (no state, no I/O).

The kernels below take ``updates``: either a stacked ``(n, d)`` matrix, one row per client
update, or a sequence of ``n`` vectors of length ``d`` (a round's buffer, never stacked, so
no second copy of the cohort is made). They walk the columns in blocks small enough to stay
in the CPU cache, so each pass reads the cohort from memory once, and accumulate in float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TypeAlias

import numpy as np

Updates: TypeAlias = "np.ndarray | Sequence[np.ndarray]"
"""A stacked ``(n, d)`` matrix or a sequence of ``n`` vectors of length ``d``."""

BLOCK_COLUMNS = 8192
"""Columns per block: ``n x 8192`` float64 values stay in the L3 cache for n <= 100."""


STREAM_BLOCK = 131072
"""Elements per block when one vector is streamed (no full-size float64 temporary)."""


def l2_norm(vector: np.ndarray) -> float:
    """Euclidean norm, accumulated in float64 block by block."""
    v = np.asarray(vector).reshape(-1)
    total = 0.0
    for start, stop in column_blocks(v.shape[0], STREAM_BLOCK):
        block = v[start:stop].astype(np.float64)
        total += float(np.einsum("i,i->", block, block))
    return math.sqrt(total)


def accumulate(acc: np.ndarray, update: np.ndarray, coefficient: float) -> None:
    """``acc += coefficient * update`` in place (``acc`` float64), block by block: each
    block is cast to float64 into a small cache-resident buffer, then scaled and added."""
    if acc.shape != update.shape or acc.ndim != 1:
        raise ValueError(f"update has shape {update.shape}, expected {acc.shape}")
    tmp = np.empty(min(acc.shape[0], STREAM_BLOCK), dtype=np.float64)
    for start, stop in column_blocks(acc.shape[0], STREAM_BLOCK):
        part = tmp[: stop - start]
        part[...] = update[start:stop]
        part *= coefficient
        acc[start:stop] += part


def weighted_mean(vectors: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Reference (non-streaming) weighted mean, for tests and small inputs."""
    if not vectors:
        raise ValueError("weighted_mean needs at least one vector")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
    return (w @ stacked / w.sum()).astype(np.float32)


# --------------------------------------------------------------------------- cohort layout


def updates_shape(updates: Updates) -> tuple[int, int]:
    """``(n, d)`` of a stacked matrix or a sequence of equal-length vectors.

    Raises
    ------
    ValueError
        If ``updates`` is empty, not 2-D, or its vectors differ in length.
    """
    if isinstance(updates, np.ndarray):
        if updates.ndim != 2 or updates.shape[0] < 1 or updates.shape[1] < 1:
            raise ValueError(f"updates must be a non-empty (n, d) matrix, got {updates.shape}")
        return int(updates.shape[0]), int(updates.shape[1])
    if len(updates) == 0:
        raise ValueError("updates must hold at least one update")
    dim = np.shape(updates[0])
    if len(dim) != 1 or dim[0] < 1:
        raise ValueError(f"each update must be a non-empty vector, got shape {dim}")
    for i, row in enumerate(updates):
        if np.shape(row) != dim:
            raise ValueError(f"updates[{i}] has shape {np.shape(row)}, expected {dim}")
    return len(updates), int(dim[0])


def select_rows(updates: Updates, rows: Sequence[int] | np.ndarray) -> list[np.ndarray]:
    """The chosen updates as a list of vectors (views, no copy)."""
    return [updates[int(i)] for i in rows]


def column_blocks(dim: int, block: int = BLOCK_COLUMNS) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive column blocks covering ``range(dim)``."""
    for start in range(0, dim, block):
        yield start, min(dim, start + block)


def gather_columns(updates: Updates, start: int, stop: int, out: np.ndarray) -> np.ndarray:
    """Copy columns ``start:stop`` of every update into ``out`` (``(n, stop - start)``)."""
    if isinstance(updates, np.ndarray):
        out[...] = updates[:, start:stop]
    else:
        for i, row in enumerate(updates):
            out[i] = row[start:stop]
    return out


def gather_columns_t(updates: Updates, start: int, stop: int, out: np.ndarray) -> np.ndarray:
    """Like :func:`gather_columns` but transposed: ``out`` is ``(stop - start, n)``."""
    if isinstance(updates, np.ndarray):
        out[...] = updates[:, start:stop].T
    else:
        for i, row in enumerate(updates):
            out[:, i] = row[start:stop]
    return out


# --------------------------------------------------------------------------- kernels


def _coefficients(values: Sequence[float] | np.ndarray, n: int, name: str) -> np.ndarray:
    c = np.asarray(values, dtype=np.float64)
    if c.shape != (n,):
        raise ValueError(f"{name} must have one value per update ({n}), got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError(f"{name} must be finite")
    return c


def weighted_sum(updates: Updates, coefficients: Sequence[float] | np.ndarray) -> np.ndarray:
    """``sum_i coefficients[i] * updates[i]`` as float64, one pass over the cohort."""
    n, d = updates_shape(updates)
    c = _coefficients(coefficients, n, "coefficients")
    out = np.empty(d, dtype=np.float64)
    buf = np.empty((n, min(d, BLOCK_COLUMNS)), dtype=np.float64)
    for start, stop in column_blocks(d):
        block = gather_columns(updates, start, stop, buf[:, : stop - start])
        np.einsum("i,ij->j", c, block, out=out[start:stop])
    return out


def weighted_average(updates: Updates, weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Weighted mean of the updates (FedAvg over a stacked cohort), float64-accumulated.

    Equal to :func:`weighted_mean`; reads the cohort once in column blocks.
    """
    n, _ = updates_shape(updates)
    w = _coefficients(weights, n, "weights")
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    return (weighted_sum(updates, w / w.sum())).astype(np.float32)


def _row_pass(updates: Updates, vector: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    n, d = updates_shape(updates)
    if vector is not None and np.shape(vector) != (d,):
        raise ValueError(f"vector has shape {np.shape(vector)}, expected ({d},)")
    sq = np.zeros(n, dtype=np.float64)
    dots = np.zeros(n, dtype=np.float64)
    buf = np.empty((n, min(d, BLOCK_COLUMNS)), dtype=np.float64)
    for start, stop in column_blocks(d):
        block = gather_columns(updates, start, stop, buf[:, : stop - start])
        sq += np.einsum("ij,ij->i", block, block)
        if vector is not None:
            dots += np.einsum("ij,j->i", block, vector[start:stop])
    return sq, dots


def row_sq_norms(updates: Updates) -> np.ndarray:
    """Squared L2 norm of each update (float64, one pass)."""
    return _row_pass(updates, None)[0]


def row_sq_norms_and_dots(updates: Updates, vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared norm of each update and its dot product with ``vector`` (float64, one pass)."""
    return _row_pass(updates, vector)


def distances_to(updates: Updates, center: np.ndarray) -> np.ndarray:
    """Euclidean distance of each update to ``center`` (float64, one pass)."""
    n, d = updates_shape(updates)
    if np.shape(center) != (d,):
        raise ValueError(f"center has shape {np.shape(center)}, expected ({d},)")
    sq = np.zeros(n, dtype=np.float64)
    buf = np.empty((n, min(d, BLOCK_COLUMNS)), dtype=np.float64)
    for start, stop in column_blocks(d):
        block = gather_columns(updates, start, stop, buf[:, : stop - start])
        block -= center[start:stop]
        sq += np.einsum("ij,ij->i", block, block)
    return np.sqrt(sq)


def relative_scores(distances: np.ndarray) -> np.ndarray:
    """Each distance divided by the median distance: about 1 for a typical update.

    A scale-free, finite outlier score. When more than half of the distances are 0 the
    mean distance is the scale instead; all zeros when every distance is 0.
    """
    dist = np.asarray(distances, dtype=np.float64)
    scale = float(np.median(dist)) if dist.size else 0.0
    if scale <= 0:
        scale = float(dist.mean()) if dist.size else 0.0
    if scale <= 0:
        return np.zeros_like(dist)
    return dist / scale
