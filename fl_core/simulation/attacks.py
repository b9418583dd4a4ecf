"""Simulated attacks by malicious clients, to test the robust aggregation rules.

Data poisoning acts on a client's labels (:func:`flip_labels`); model poisoning acts on the
updates (:func:`apply_update_attack`, or :func:`poison_updates` for a whole round):

==============  =============================================================================
``sign_flip``   ``-scale * u`` (Li et al., "RSA: Byzantine-Robust Stochastic Aggregation
                Methods for Distributed Learning from Heterogeneous Datasets", AAAI 2019)
``scaling``     ``scale * u``, boosting (Bhagoji et al., "Analyzing Federated Learning
                through an Adversarial Lens", ICML 2019)
``gaussian``    ``u + N(0, noise_std^2)`` per coordinate (Blanchard et al., NeurIPS 2017)
``alie``        ``mean - z * std`` of the benign updates, coordinate-wise, one vector for all
                attackers (Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing
                Defenses For Distributed Learning", NeurIPS 2019)
==============  =============================================================================

Which clients are malicious is drawn once per campaign with :func:`choose_malicious`.
Every function takes its randomness from the ``rng`` it is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

UPDATE_ATTACKS = ("sign_flip", "scaling", "gaussian", "alie")


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Label flipping: class ``c`` becomes ``num_classes - 1 - c``.

    Fang, Cao, Jia, Gong, "Local Model Poisoning Attacks to Byzantine-Robust Federated
    Learning", USENIX Security 2020 (their label-flipping baseline). Returns a new array of
    the same dtype.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    labels = np.asarray(y)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"y must hold integer class labels, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"y has labels outside [0, {num_classes - 1}]")
    return (num_classes - 1 - labels).astype(labels.dtype)


def choose_malicious(
    clients: Sequence[str], *, fraction: float, rng: np.random.Generator
) -> list[str]:
    """``round(fraction * len(clients))`` clients drawn without replacement, sorted."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    pool = sorted(set(clients))
    count = int(math.floor(fraction * len(pool) + 0.5))
    picked = rng.choice(len(pool), size=count, replace=False)
    return sorted(pool[int(i)] for i in picked)


def alie_z(num_clients: int, num_byzantine: int) -> float:
    """ALIE's ``z_max`` (Baruch et al., NeurIPS 2019): with ``s = floor(n / 2 + 1) - f``
    supporters needed, ``z = Phi^-1((n - s) / n)``."""
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not 0 <= num_byzantine <= num_clients:
        raise ValueError(f"num_byzantine must be in [0, {num_clients}], got {num_byzantine}")
    s = math.floor(num_clients / 2 + 1) - num_byzantine
    q = (num_clients - s) / num_clients
    q = min(max(q, 1e-6), 1 - 1e-6)
    return NormalDist().inv_cdf(q)


def apply_update_attack(
    name: str,
    updates: np.ndarray,
    *,
    rng: np.random.Generator,
    scale: float | None = None,
    noise_std: float = 1.0,
    z: float | None = None,
    num_clients: int | None = None,
    num_byzantine: int | None = None,
) -> np.ndarray:
    """The malicious version of ``updates`` (float32, never in place).

    Parameters
    ----------
    name
        One of ``UPDATE_ATTACKS``.
    updates
        For ``sign_flip``, ``scaling`` and ``gaussian``: the attacker's honest update (a
        vector) or several (an ``(m, d)`` matrix, attacked row by row). For ``alie``: the
        ``(m, d)`` benign updates of the round (or those the colluders computed honestly),
        whose coordinate-wise mean and std the attack uses; returns one vector.
    scale
        ``sign_flip``: magnitude (default 1); ``scaling``: boost factor (default 10).
    noise_std
        ``gaussian``: standard deviation of the added noise.
    z
        ``alie``: how many standard deviations to move; by default ``alie_z(num_clients,
        num_byzantine)``.
    num_clients, num_byzantine
        ``alie``: cohort size ``n`` (default: benign rows + ``num_byzantine``) and number of
        attackers ``f``, for the default ``z``.
    """
    u = np.asarray(updates)
    if u.ndim not in (1, 2) or u.size == 0:
        raise ValueError(f"updates must be a non-empty vector or matrix, got shape {u.shape}")
    if name == "sign_flip":
        s = 1.0 if scale is None else _finite(scale, "scale")
        return (-s * u).astype(np.float32)
    if name == "scaling":
        s = 10.0 if scale is None else _finite(scale, "scale")
        return (s * u).astype(np.float32)
    if name == "gaussian":
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        return (u + rng.normal(0.0, noise_std, size=u.shape)).astype(np.float32)
    if name == "alie":
        if u.ndim != 2:
            raise ValueError("alie needs the (m, d) matrix of benign updates, got a vector")
        if z is None:
            if num_byzantine is None:
                raise ValueError("alie needs z or num_byzantine")
            n = u.shape[0] + num_byzantine if num_clients is None else num_clients
            z = alie_z(n, num_byzantine)
        mean = u.mean(axis=0, dtype=np.float64)
        std = u.std(axis=0, dtype=np.float64)
        return (mean - _finite(z, "z") * std).astype(np.float32)
    raise ValueError(f"name: unknown attack {name!r}; allowed: {', '.join(UPDATE_ATTACKS)}")


def _finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def poison_updates(
    updates: np.ndarray,
    malicious: np.ndarray | Sequence[bool],
    name: str,
    *,
    rng: np.random.Generator,
    scale: float | None = None,
    noise_std: float = 1.0,
    z: float | None = None,
) -> np.ndarray:
    """A round's ``(n, d)`` updates with the rows flagged ``malicious`` replaced by the
    attack ``name``; for ALIE the other rows are the benign ones and ``f`` the flagged count.

    Returns a new float32 matrix; the keyword arguments are those of
    :func:`apply_update_attack`.
    """
    x = np.asarray(updates)
    mask = np.asarray(malicious, dtype=bool)
    if x.ndim != 2 or mask.shape != (x.shape[0],):
        raise ValueError(f"malicious must flag each row of updates {x.shape}, got {mask.shape}")
    out = x.astype(np.float32, copy=True)
    f = int(mask.sum())
    if f == 0:
        return out
    if name == "alie" and f == x.shape[0]:
        raise ValueError("alie needs at least one benign update")
    source = x[~mask] if name == "alie" else x[mask]
    out[mask] = apply_update_attack(
        name,
        source,
        rng=rng,
        scale=scale,
        noise_std=noise_std,
        z=z,
        num_clients=x.shape[0],
        num_byzantine=f,
    )
    return out
