"""Randomness from (campaign seed, round, step, ...), never from the wall clock."""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``parts`` (e.g. round, step, client)."""
    text = ":".join([str(seed), *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def rng(seed: int, *parts: object) -> np.random.Generator:
    """A numpy generator for (seed, *parts)."""
    return np.random.default_rng(derive_seed(seed, *parts))
