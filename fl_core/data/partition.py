"""Partition a dataset's rows over federated clients.

Every partitioner returns ``list[np.ndarray]``: one sorted int64 array of row indices per
client. The arrays are disjoint and together cover every row exactly once, every client holds at
least ``min_samples`` rows, and the result depends only on the arguments (randomness comes from
``np.random.default_rng(seed)``, never from global state). When a guarantee cannot be met a
``ValueError`` explains which argument to change.

References
----------
.. [McMahan2017] H. B. McMahan, E. Moore, D. Ramage, S. Hampson and B. Agüera y Arcas,
   "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017.
.. [Hsu2019] T.-M. H. Hsu, H. Qi and M. Brown, "Measuring the Effects of Non-Identical Data
   Distribution for Federated Visual Classification", arXiv:1909.06335, 2019.
.. [Yurochkin2019] M. Yurochkin et al., "Bayesian Nonparametric Federated Learning of Neural
   Networks", ICML 2019.
.. [Li2022] Q. Li, Y. Diao, Q. Chen and B. He, "Federated Learning on Non-IID Data Silos: An
   Experimental Study" (NIID-Bench), ICDE 2022.
.. [Zeng2023] D. Zeng et al., "FedLab: A Flexible Federated Learning Framework", JMLR 24(100),
   2023.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "natural_client_names",
    "SCHEMES",
    "dirichlet",
    "iid",
    "natural",
    "partition",
    "quantity_lognormal",
    "shards",
]

logger = logging.getLogger(__name__)

SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shards", "quantity", "natural")

#: How many times a randomised partitioner re-draws before giving up on ``min_samples``.
_MAX_DRAWS = 1000


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_float(name: str, value: Any, *, minimum: float, inclusive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    too_small = number < minimum if inclusive else number <= minimum
    if not math.isfinite(number) or too_small:
        bound = ">=" if inclusive else ">"
        raise ValueError(f"{name} must be finite and {bound} {minimum}, got {value!r}")
    return number


def _check_labels(labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_feasible(n: int, num_clients: int, min_samples: int) -> None:
    if n < num_clients * min_samples:
        raise ValueError(
            f"cannot give num_clients={num_clients} clients at least min_samples={min_samples} "
            f"rows each from only {n} rows; lower num_clients or min_samples"
        )


def _finalize(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


# --------------------------------------------------------------------------------------------
# Partitioners
# --------------------------------------------------------------------------------------------


def iid(n: int, *, num_clients: int, seed: int, min_samples: int = 1) -> list[np.ndarray]:
    """Split ``n`` rows uniformly at random into ``num_clients`` near-equal parts.

    The rows are shuffled and cut into parts whose sizes differ by at most one, the IID
    baseline of [McMahan2017]_.

    Parameters
    ----------
    n
        Number of rows.
    num_clients
        Number of clients (``>= 1``).
    seed
        Seed for ``np.random.default_rng``.
    min_samples
        Minimum rows per client (``>= 1``).

    Returns
    -------
    list[np.ndarray]
        Sorted int64 row indices per client.

    Raises
    ------
    ValueError
        If an argument is invalid or ``n < num_clients * min_samples``.
    """
    n = _check_int("n", n, minimum=0)
    num_clients = _check_int("num_clients", num_clients, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    min_samples = _check_int("min_samples", min_samples, minimum=1)
    _check_feasible(n, num_clients, min_samples)
    rng = np.random.default_rng(seed)
    return _finalize(np.array_split(rng.permutation(n), num_clients))


def dirichlet(
    labels: np.ndarray,
    *,
    num_clients: int,
    alpha: float,
    seed: int,
    min_samples: int = 1,
) -> list[np.ndarray]:
    """Label-distribution skew: per class, client shares drawn from ``Dir(alpha)``.

    For every class the class's rows are shuffled and divided among the clients in
    proportions ``p ~ Dir(alpha * 1)`` ([Hsu2019]_). As in the reference implementations
    ([Yurochkin2019]_, NIID-Bench [Li2022]_, FedLab's ``hetero_dir_partition`` [Zeng2023]_),
    clients that already hold at least ``n / num_clients`` rows get no share of later classes,
    and the whole draw is repeated until every client holds at least ``min_samples`` rows.
    Small ``alpha`` gives strongly skewed clients, large ``alpha`` (e.g. 1000) is close to IID.

    Parameters
    ----------
    labels
        Integer label of each row, shape ``(n,)``.
    num_clients
        Number of clients (``>= 1``).
    alpha
        Dirichlet concentration (``> 0``).
    seed
        Seed for ``np.random.default_rng``.
    min_samples
        Minimum rows per client (``>= 1``).

    Returns
    -------
    list[np.ndarray]
        Sorted int64 row indices per client.

    Raises
    ------
    ValueError
        If an argument is invalid, ``n < num_clients * min_samples`` or no draw out of
        ``1000`` satisfies ``min_samples`` (increase ``alpha`` or lower ``num_clients``).
    """
    y = _check_labels(labels)
    num_clients = _check_int("num_clients", num_clients, minimum=1)
    alpha = _check_float("alpha", alpha, minimum=0.0, inclusive=False)
    seed = _check_int("seed", seed, minimum=0)
    min_samples = _check_int("min_samples", min_samples, minimum=1)
    n = int(y.size)
    _check_feasible(n, num_clients, min_samples)

    rng = np.random.default_rng(seed)
    class_rows = [np.flatnonzero(y == c) for c in np.unique(y)]
    concentration = np.full(num_clients, alpha)
    fair_share = n / num_clients
    for attempt in range(1, _MAX_DRAWS + 1):
        pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for rows in class_rows:
            shuffled = rng.permutation(rows)
            open_clients = sizes < fair_share
            proportions = np.where(open_clients, rng.dirichlet(concentration), 0.0)
            total = proportions.sum()
            if not total > 0.0:  # every open client's share underflowed to zero
                proportions, total = open_clients.astype(np.float64), float(open_clients.sum())
            cuts = (np.cumsum(proportions / total) * shuffled.size).astype(np.int64)[:-1]
            for client, piece in enumerate(np.split(shuffled, cuts)):
                pieces[client].append(piece)
                sizes[client] += piece.size
        if sizes.min() >= min_samples:
            logger.debug("dirichlet partition accepted after %d draw(s)", attempt)
            return _finalize([np.concatenate(p) for p in pieces])
    raise ValueError(
        f"no Dirichlet draw out of {_MAX_DRAWS} gave every one of num_clients={num_clients} "
        f"clients at least min_samples={min_samples} rows with alpha={alpha}; increase alpha "
        "or lower num_clients / min_samples"
    )


def _shards_per_label(counts: np.ndarray, num_shards: int) -> np.ndarray:
    """Give every label one shard, then hand out the rest to the label whose shards are largest.

    This keeps every shard non-empty and the shard sizes as equal as possible (highest-averages
    apportionment, ties broken by label order).
    """
    per_label = np.ones(counts.size, dtype=np.int64)
    heap = [(-float(count), int(i)) for i, count in enumerate(counts) if count > 1]
    heapq.heapify(heap)
    for _ in range(num_shards - counts.size):
        _, i = heapq.heappop(heap)
        per_label[i] += 1
        if per_label[i] < counts[i]:
            heapq.heappush(heap, (-float(counts[i]) / float(per_label[i]), i))
    return per_label


def shards(
    labels: np.ndarray,
    *,
    num_clients: int,
    classes_per_client: int,
    seed: int,
    min_samples: int = 1,
) -> list[np.ndarray]:
    """Pathological non-IID "k classes per client" split with shards ([McMahan2017]_).

    The rows are sorted by label and cut into ``num_clients * classes_per_client`` shards of
    near-equal size, and each client receives ``classes_per_client`` shards chosen at random.
    Unlike the original, a shard never spans two labels: every label first gets a number of
    shards proportional to its size (at least one), and its rows are then divided among its
    own shards. Hence every client holds **at most** ``classes_per_client`` distinct labels
    (fewer when it draws two shards of the same label). The deal of shards to clients is
    re-drawn until every client holds at least ``min_samples`` rows.

    Parameters
    ----------
    labels
        Integer label of each row, shape ``(n,)``.
    num_clients
        Number of clients (``>= 1``).
    classes_per_client
        Shards, hence maximum distinct labels, per client (``>= 1``).
    seed
        Seed for ``np.random.default_rng``.
    min_samples
        Minimum rows per client (``>= 1``).

    Returns
    -------
    list[np.ndarray]
        Sorted int64 row indices per client.

    Raises
    ------
    ValueError
        If an argument is invalid, there are more labels than
        ``num_clients * classes_per_client`` shards (some rows could not be placed), fewer rows
        than shards, or no deal out of ``1000`` satisfies ``min_samples``.
    """
    y = _check_labels(labels)
    num_clients = _check_int("num_clients", num_clients, minimum=1)
    classes_per_client = _check_int("classes_per_client", classes_per_client, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    min_samples = _check_int("min_samples", min_samples, minimum=1)
    n = int(y.size)
    _check_feasible(n, num_clients, min_samples)

    classes, counts = np.unique(y, return_counts=True)
    num_shards = num_clients * classes_per_client
    if classes.size > num_shards:
        raise ValueError(
            f"{classes.size} labels do not fit into num_clients * classes_per_client = "
            f"{num_clients} * {classes_per_client} = {num_shards} shards; increase "
            "classes_per_client or num_clients"
        )
    if n < num_shards:
        raise ValueError(
            f"{n} rows cannot fill num_clients * classes_per_client = {num_shards} shards; "
            "lower classes_per_client or num_clients"
        )

    rng = np.random.default_rng(seed)
    per_label = _shards_per_label(counts, num_shards)
    shard_list: list[np.ndarray] = []
    for label, k in zip(classes, per_label, strict=True):
        rows = rng.permutation(np.flatnonzero(y == label))
        shard_list.extend(np.array_split(rows, int(k)))
    shard_sizes = np.array([s.size for s in shard_list], dtype=np.int64)

    for attempt in range(1, _MAX_DRAWS + 1):
        deal = rng.permutation(num_shards).reshape(num_clients, classes_per_client)
        if shard_sizes[deal].sum(axis=1).min() >= min_samples:
            logger.debug("shards partition accepted after %d deal(s)", attempt)
            return _finalize(
                [np.concatenate([shard_list[s] for s in client_shards]) for client_shards in deal]
            )
    raise ValueError(
        f"no deal of shards out of {_MAX_DRAWS} gave every one of num_clients={num_clients} "
        f"clients at least min_samples={min_samples} rows; lower min_samples or num_clients"
    )


def quantity_lognormal(
    n: int,
    *,
    num_clients: int,
    sigma: float,
    seed: int,
    min_samples: int = 1,
) -> list[np.ndarray]:
    """Quantity skew: IID labels, client sizes proportional to ``lognormal(0, sigma)`` draws.

    Client weights ``w_i ~ LogNormal(0, sigma)`` follow FedLab's unbalanced IID split
    ([Zeng2023]_; quantity skew in NIID-Bench [Li2022]_). Each client first gets
    ``min_samples`` rows, the remaining ``n - num_clients * min_samples`` rows are apportioned
    in proportion to ``w`` (largest remainders), and the shuffled rows are cut to those sizes.
    ``sigma = 0`` gives near-equal sizes; larger ``sigma`` gives more unequal sizes.

    Parameters
    ----------
    n
        Number of rows.
    num_clients
        Number of clients (``>= 1``).
    sigma
        Standard deviation of the log of the client weights (``>= 0``).
    seed
        Seed for ``np.random.default_rng``.
    min_samples
        Minimum rows per client (``>= 1``).

    Returns
    -------
    list[np.ndarray]
        Sorted int64 row indices per client.

    Raises
    ------
    ValueError
        If an argument is invalid or ``n < num_clients * min_samples``.
    """
    n = _check_int("n", n, minimum=0)
    num_clients = _check_int("num_clients", num_clients, minimum=1)
    sigma = _check_float("sigma", sigma, minimum=0.0, inclusive=True)
    seed = _check_int("seed", seed, minimum=0)
    min_samples = _check_int("min_samples", min_samples, minimum=1)
    _check_feasible(n, num_clients, min_samples)

    rng = np.random.default_rng(seed)
    weights = rng.lognormal(mean=0.0, sigma=sigma, size=num_clients)
    spare = n - num_clients * min_samples
    quotas = weights / weights.sum() * spare
    extra = np.floor(quotas).astype(np.int64)
    leftover = spare - int(extra.sum())
    if leftover:
        order = np.argsort(-(quotas - extra), kind="stable")
        extra[order[:leftover]] += 1
    sizes = min_samples + extra
    cuts = np.cumsum(sizes)[:-1]
    return _finalize(np.split(rng.permutation(n), cuts))


def _id_keys(client_ids: Any) -> np.ndarray:
    """Normalise natural client ids to an int64 or str array that sorts deterministically."""
    ids = np.asarray(client_ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"client_ids must be a non-empty 1-D array, got shape {ids.shape}")
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    if ids.dtype.kind in "US":
        return ids.astype(str)
    if ids.dtype.kind == "f":
        if not np.all(np.isfinite(ids)):
            raise ValueError("client_ids contains NaN or infinite values")
        if np.all(ids == np.round(ids)):
            return ids.astype(np.int64)
        return ids.astype(str)
    if ids.dtype.kind == "O":
        values = ids.tolist()
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
            raise ValueError("client_ids contains missing values")
        if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
            return np.asarray(values, dtype=np.int64)
        return np.asarray([str(v) for v in values], dtype=str)
    raise ValueError(f"client_ids has unsupported dtype {ids.dtype}")


def natural(client_ids: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    """Group rows by their natural client id (e.g. a writer or device of LEAF-style data).

    Parameters
    ----------
    client_ids
        Natural client id of each row, shape ``(n,)``; integers or strings.

    Returns
    -------
    tuple[list[str], list[np.ndarray]]
        The distinct ids as strings, sorted deterministically (integer ids numerically, so
        ``"2"`` comes before ``"10"``; string ids lexically), and the sorted int64 row indices
        of each id in the same order.

    Raises
    ------
    ValueError
        If ``client_ids`` is empty, not 1-D or contains missing values.
    """
    keys = _id_keys(client_ids)
    unique, inverse = np.unique(keys, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    cuts = np.cumsum(np.bincount(inverse, minlength=unique.size))[:-1]
    return [str(u) for u in unique.tolist()], _finalize(np.split(order, cuts))


#: Longest natural client id kept as is in a client name (longer ids get a hash suffix).
CLIENT_NAME_MAX_ID = 48


def natural_client_names(ids: Sequence[str]) -> list[str]:
    """Unique, stable, file-name-safe client names for natural client ids.

    An id made only of ``A-Z a-z 0-9 _ . -`` (not starting with ``.``) and at most
    :data:`CLIENT_NAME_MAX_ID` characters long keeps its text: ``client_<id>``. Any other id
    is sanitized and truncated, then gets the first 10 hex digits of the SHA-256 of the
    original id: ``a/b``, ``a b`` and ``a_b`` stay three clients, and so do two long ids that
    share their first characters. The name depends only on the id (stable across runs and
    datasets).

    Parameters
    ----------
    ids
        The distinct natural client ids (as strings), e.g. from :func:`natural`.

    Returns
    -------
    list[str]
        One name per id, in the same order.

    Raises
    ------
    ValueError
        If two distinct ids would still map to the same name (naming both), or an id repeats.
    """
    import hashlib
    import re

    names: list[str] = []
    seen: dict[str, str] = {}
    for raw in ids:
        text = str(raw)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", text)
        if safe == text and len(text) <= CLIENT_NAME_MAX_ID and not text.startswith("."):
            name = f"client_{text}"
        else:
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
            name = f"client_{safe[:CLIENT_NAME_MAX_ID].lstrip('.')}-{digest}"
        if name in seen:
            raise ValueError(
                f"natural client ids {seen[name]!r} and {text!r} map to the same client name "
                f"{name!r}; rename one of them in the client column"
            )
        seen[name] = text
        names.append(name)
    return names


def partition(
    scheme: str,
    *,
    labels: np.ndarray,
    client_ids: np.ndarray | None = None,
    num_clients: int,
    seed: int,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    sigma: float = 1.0,
    min_samples: int = 1,
) -> list[np.ndarray]:
    """Partition rows with the named scheme.

    Parameters
    ----------
    scheme
        One of ``"iid"`` (:func:`iid`), ``"dirichlet"`` (:func:`dirichlet`, uses ``alpha``),
        ``"shards"`` (:func:`shards`, uses ``classes_per_client``), ``"quantity"``
        (:func:`quantity_lognormal`, uses ``sigma``) or ``"natural"`` (:func:`natural`, uses
        ``client_ids``; ``num_clients`` and ``seed`` are then ignored because the number of
        clients is the number of distinct ids, ordered as :func:`natural` orders them).
    labels
        Integer label of each row, shape ``(n,)``.
    client_ids
        Natural client id of each row; required for ``"natural"``.
    num_clients, seed, alpha, classes_per_client, sigma, min_samples
        See the individual partitioners.

    Returns
    -------
    list[np.ndarray]
        Sorted int64 row indices per client: disjoint, complete, each of size
        ``>= min_samples``.

    Raises
    ------
    ValueError
        For an unknown scheme (the message lists the allowed values) or an invalid argument
        (the message names it).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    y = _check_labels(labels)
    num_clients = _check_int("num_clients", num_clients, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    min_samples = _check_int("min_samples", min_samples, minimum=1)

    if scheme == "iid":
        return iid(y.size, num_clients=num_clients, seed=seed, min_samples=min_samples)
    if scheme == "dirichlet":
        return dirichlet(
            y, num_clients=num_clients, alpha=alpha, seed=seed, min_samples=min_samples
        )
    if scheme == "shards":
        return shards(
            y,
            num_clients=num_clients,
            classes_per_client=classes_per_client,
            seed=seed,
            min_samples=min_samples,
        )
    if scheme == "quantity":
        return quantity_lognormal(
            y.size, num_clients=num_clients, sigma=sigma, seed=seed, min_samples=min_samples
        )

    if client_ids is None:
        raise ValueError("client_ids is required for scheme 'natural'")
    ids = np.asarray(client_ids)
    if ids.shape != y.shape:
        raise ValueError(f"client_ids must have shape {y.shape} to match labels, got {ids.shape}")
    names, parts = natural(ids)
    too_small = [name for name, part in zip(names, parts, strict=True) if part.size < min_samples]
    if too_small:
        raise ValueError(
            f"natural clients {too_small[:10]} hold fewer than min_samples={min_samples} rows; "
            "lower min_samples or drop those clients from the data"
        )
    return parts
