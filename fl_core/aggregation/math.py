"""Pure aggregation math on flat float32 vectors (no state, no I/O)."""

from __future__ import annotations

import numpy as np


def l2_norm(vector: np.ndarray) -> float:
    """Euclidean norm, accumulated in float64."""
    v = np.asarray(vector, dtype=np.float64)
    return float(np.sqrt(np.dot(v, v)))


def weighted_mean(vectors: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Reference (non-streaming) weighted mean, for tests and small inputs."""
    if not vectors:
        raise ValueError("weighted_mean needs at least one vector")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
    return (w @ stacked / w.sum()).astype(np.float32)
