"""Poisson sampling of the cohort, the sampling the accountant assumes.

Privacy amplification by subsampling in the RDP / PRV accountants (Mironov et al. 2019;
Zhu & Wang, "Poisson Subsampled Renyi Differential Privacy", ICML 2019) holds for *Poisson*
sampling: every client joins the round independently with probability ``q``. A fixed-size
uniform cohort (``clients_per_round``) is a different mechanism and is not what the
accountant computes, so central DP must select cohorts with :func:`poisson_cohort`.

- The cohort size is random (Binomial(N, q)) and may be 0. An empty round still runs: the
  release is noise only and the round **still spends budget** (the accountant cannot know,
  without looking at private data, that nobody was sampled; skipping would change the
  mechanism).
- Do not over-select or replace dropouts: that raises a client's inclusion probability
  above ``q``. Dropouts and rejected updates are fine (they only lower it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def poisson_cohort(
    client_ids: Sequence[str], *, rate: float, rng: np.random.Generator
) -> list[str]:
    """Each client independently with probability ``rate``; sorted, possibly empty.

    Deterministic for a given ``rng`` state and *set* of ids (one uniform draw per client,
    in sorted-id order).

    Raises
    ------
    ValueError
        Naming ``rate`` if it is outside (0, 1], or ``client_ids`` if ids repeat.
    """
    if isinstance(rate, bool) or not math.isfinite(rate) or not 0 < rate <= 1:
        raise ValueError(f"rate: {rate!r} must be in (0, 1]")
    ids = sorted(client_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("client_ids: contains duplicates")
    draws = rng.random(len(ids))
    return [cid for cid, u in zip(ids, draws, strict=True) if u < rate]
