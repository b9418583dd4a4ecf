"""Tests for fl_core.data.partition: every partitioner's guarantees."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fl_core.data.partition import (
    SCHEMES,
    dirichlet,
    iid,
    natural,
    partition,
    quantity_lognormal,
    shards,
)

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, NUM_CLASSES, 2000).astype(np.int64)


@pytest.fixture(scope="module")
def imbalanced_labels() -> np.ndarray:
    counts = [700, 400, 300, 200, 150, 100, 60, 40, 30, 3]
    rows = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(1).permutation(rows).astype(np.int64)


def assert_valid_partition(parts: list[np.ndarray], n: int, min_samples: int = 1) -> None:
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0), "indices must be sorted and unique"
        assert part.size >= min_samples
    combined = np.concatenate(parts)
    assert combined.size == n, "rows must not be duplicated or dropped"
    assert np.array_equal(np.sort(combined), np.arange(n))


def same_partition(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))


def mean_tv_from_global(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    global_dist = np.bincount(labels, minlength=NUM_CLASSES) / labels.size
    distances = [
        0.5 * np.abs(np.bincount(labels[p], minlength=NUM_CLASSES) / p.size - global_dist).sum()
        for p in parts
    ]
    return float(np.mean(distances))


def size_cv(parts: list[np.ndarray]) -> float:
    sizes = np.array([p.size for p in parts], dtype=np.float64)
    return float(sizes.std() / sizes.mean())


RANDOM_SCHEMES = ["iid", "dirichlet", "shards", "quantity"]


@pytest.mark.parametrize("scheme", RANDOM_SCHEMES)
def test_partition_is_disjoint_complete_and_has_num_clients(
    scheme: str, labels: np.ndarray
) -> None:
    # Arrange
    num_clients = 20

    # Act
    parts = partition(scheme, labels=labels, num_clients=num_clients, seed=3)

    # Assert
    assert len(parts) == num_clients
    assert_valid_partition(parts, labels.size)


@pytest.mark.parametrize("scheme", RANDOM_SCHEMES)
def test_partition_is_deterministic_per_seed_and_varies_with_seed(
    scheme: str, labels: np.ndarray
) -> None:
    # Arrange
    kwargs: dict[str, Any] = {"labels": labels, "num_clients": 10}

    # Act
    first = partition(scheme, seed=7, **kwargs)
    again = partition(scheme, seed=7, **kwargs)
    other = partition(scheme, seed=8, **kwargs)

    # Assert
    assert same_partition(first, again)
    assert not same_partition(first, other)


@pytest.mark.parametrize("scheme", RANDOM_SCHEMES)
def test_partition_respects_min_samples(scheme: str, imbalanced_labels: np.ndarray) -> None:
    # Arrange
    min_samples = 40

    # Act
    parts = partition(
        scheme,
        labels=imbalanced_labels,
        num_clients=20,
        seed=0,
        alpha=0.3,
        sigma=2.0,
        min_samples=min_samples,
    )

    # Assert
    assert_valid_partition(parts, imbalanced_labels.size, min_samples=min_samples)


def test_iid_sizes_differ_by_at_most_one() -> None:
    # Arrange / Act
    parts = iid(103, num_clients=10, seed=0)

    # Assert
    assert_valid_partition(parts, 103)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_small_alpha_is_far_more_skewed_than_large_alpha(labels: np.ndarray) -> None:
    # Arrange
    kwargs: dict[str, Any] = {"num_clients": 10, "seed": 0}

    # Act
    skewed = mean_tv_from_global(labels, dirichlet(labels, alpha=0.1, **kwargs))
    moderate = mean_tv_from_global(labels, dirichlet(labels, alpha=1.0, **kwargs))
    near_iid = mean_tv_from_global(labels, dirichlet(labels, alpha=1000.0, **kwargs))

    # Assert
    assert skewed > moderate > near_iid
    assert skewed > 0.5
    assert near_iid < 0.05


def test_dirichlet_large_alpha_is_as_balanced_as_iid(labels: np.ndarray) -> None:
    # Arrange
    iid_tv = mean_tv_from_global(labels, iid(labels.size, num_clients=10, seed=0))

    # Act
    dir_tv = mean_tv_from_global(labels, dirichlet(labels, num_clients=10, alpha=1000, seed=0))

    # Assert
    # Dir(1000) proportions are ~1/num_clients per class, i.e. a near-stratified split, so
    # its label skew is at most that of a uniformly random (IID) split.
    assert dir_tv <= iid_tv + 0.01


def test_dirichlet_raises_when_min_samples_unreachable() -> None:
    # Arrange
    labels = np.repeat(np.arange(2), 30)

    # Act / Assert
    with pytest.raises(ValueError, match="min_samples"):
        dirichlet(labels, num_clients=20, alpha=0.01, seed=0, min_samples=3)


@pytest.mark.parametrize("classes_per_client", [1, 2, 3])
def test_shards_gives_each_client_at_most_k_labels(
    classes_per_client: int, labels: np.ndarray, imbalanced_labels: np.ndarray
) -> None:
    for y in (labels, imbalanced_labels):
        # Act
        parts = shards(y, num_clients=20, classes_per_client=classes_per_client, seed=0)

        # Assert
        assert_valid_partition(parts, y.size)
        assert max(np.unique(y[p]).size for p in parts) <= classes_per_client


def test_shards_is_strongly_non_iid(labels: np.ndarray) -> None:
    # Act
    parts = shards(labels, num_clients=10, classes_per_client=2, seed=0)

    # Assert
    assert mean_tv_from_global(labels, parts) > 0.6


def test_shards_rejects_more_labels_than_shards(labels: np.ndarray) -> None:
    # Act / Assert
    with pytest.raises(ValueError, match="classes_per_client"):
        shards(labels, num_clients=3, classes_per_client=2, seed=0)


def test_quantity_larger_sigma_gives_more_unequal_sizes() -> None:
    # Arrange
    kwargs: dict[str, Any] = {"num_clients": 20, "seed": 0}

    # Act
    flat = quantity_lognormal(2000, sigma=0.0, **kwargs)
    mild = quantity_lognormal(2000, sigma=0.5, **kwargs)
    strong = quantity_lognormal(2000, sigma=2.0, **kwargs)

    # Assert
    for parts in (flat, mild, strong):
        assert_valid_partition(parts, 2000)
    assert size_cv(flat) < 0.01
    assert size_cv(mild) < size_cv(strong)


def test_quantity_keeps_labels_iid(labels: np.ndarray) -> None:
    # Act
    parts = quantity_lognormal(labels.size, num_clients=5, sigma=1.0, seed=0, min_samples=100)

    # Assert
    assert mean_tv_from_global(labels, parts) < 0.15


def test_natural_groups_rows_by_id_in_numeric_order() -> None:
    # Arrange
    client_ids = np.array([10, 2, 2, 10, 1, 2])

    # Act
    names, parts = natural(client_ids)

    # Assert
    assert names == ["1", "2", "10"]
    assert [p.tolist() for p in parts] == [[4], [1, 2, 5], [0, 3]]
    assert all(p.dtype == np.int64 for p in parts)


def test_natural_groups_string_ids() -> None:
    # Arrange
    client_ids = np.array(["bob", "alice", "bob"], dtype=object)

    # Act
    names, parts = natural(client_ids)

    # Assert
    assert names == ["alice", "bob"]
    assert [p.tolist() for p in parts] == [[1], [0, 2]]


def test_partition_natural_uses_client_ids(labels: np.ndarray) -> None:
    # Arrange
    client_ids = np.arange(labels.size) % 7

    # Act
    parts = partition("natural", labels=labels, client_ids=client_ids, num_clients=1, seed=0)

    # Assert
    assert len(parts) == 7
    assert_valid_partition(parts, labels.size)
    assert all(np.all(client_ids[p] == i) for i, p in enumerate(parts))


def test_partition_natural_requires_client_ids(labels: np.ndarray) -> None:
    # Act / Assert
    with pytest.raises(ValueError, match="client_ids"):
        partition("natural", labels=labels, num_clients=3, seed=0)


def test_partition_natural_rejects_clients_below_min_samples() -> None:
    # Arrange
    labels = np.zeros(5, dtype=np.int64)
    client_ids = np.array([0, 0, 0, 0, 1])

    # Act / Assert
    with pytest.raises(ValueError, match="min_samples"):
        partition(
            "natural", labels=labels, client_ids=client_ids, num_clients=2, seed=0, min_samples=2
        )


def test_partition_rejects_unknown_scheme_listing_allowed_values(labels: np.ndarray) -> None:
    # Act / Assert
    with pytest.raises(ValueError, match="iid, dirichlet, shards, quantity, natural"):
        partition("pathological", labels=labels, num_clients=3, seed=0)
    assert SCHEMES == ("iid", "dirichlet", "shards", "quantity", "natural")


@pytest.mark.parametrize(
    ("scheme", "overrides", "argument"),
    [
        ("dirichlet", {"alpha": 0.0}, "alpha"),
        ("dirichlet", {"alpha": -1.0}, "alpha"),
        ("dirichlet", {"alpha": float("nan")}, "alpha"),
        ("iid", {"num_clients": 0}, "num_clients"),
        ("iid", {"num_clients": 2.5}, "num_clients"),
        ("iid", {"seed": -1}, "seed"),
        ("shards", {"classes_per_client": 0}, "classes_per_client"),
        ("quantity", {"sigma": -0.5}, "sigma"),
        ("iid", {"min_samples": 0}, "min_samples"),
        ("iid", {"min_samples": 1000}, "min_samples"),
        ("dirichlet", {"num_clients": 3000}, "num_clients"),
        ("iid", {"labels": np.array([0.5, 1.5])}, "labels"),
    ],
)
def test_partition_rejects_bad_arguments_naming_them(
    scheme: str, overrides: dict[str, Any], argument: str, labels: np.ndarray
) -> None:
    # Arrange
    kwargs: dict[str, Any] = {"labels": labels, "num_clients": 5, "seed": 0}
    kwargs.update(overrides)

    # Act / Assert
    with pytest.raises(ValueError, match=argument):
        partition(scheme, **kwargs)


def test_more_clients_than_rows_raises() -> None:
    # Act / Assert
    with pytest.raises(ValueError, match="num_clients"):
        iid(3, num_clients=4, seed=0)
    with pytest.raises(ValueError, match="num_clients"):
        quantity_lognormal(3, num_clients=4, sigma=1.0, seed=0)


# --------------------------------------------------------------- natural client names


def test_natural_names_keep_distinct_ids_distinct_and_safe() -> None:
    from fl_core.data.partition import natural_client_names

    ids = ["a/b", "a b", "a_b", "x" * 70 + "1", "x" * 70 + "2", "../etc", "7"]

    names = natural_client_names(ids)

    assert len(set(names)) == len(ids)
    assert names[2] == "client_a_b" and names[-1] == "client_7"
    assert all(len(n) <= 80 and "/" not in n and " " not in n for n in names)
    assert not any(n.startswith("client_.") for n in names)
    assert natural_client_names(["a/b"]) == names[:1]  # stable: depends only on the id


def test_natural_partition_of_colliding_ids_loses_no_rows(tmp_path) -> None:
    from fl_core import stages
    from fl_core.config import from_dict
    from fl_core.data.io import read_json

    rng = np.random.default_rng(0)
    path = tmp_path / "raw.csv"
    sites = np.repeat(["a/b", "a b", "a_b", "c"], 15)
    rows = ["f0,f1,label,site"] + [
        f"{rng.normal():.4f},{rng.normal():.4f},{i % 2},{s}" for i, s in enumerate(sites)
    ]
    path.write_text("\n".join(rows) + "\n")
    cfg = from_dict(
        {
            "data": {"dataset": "file", "path": str(path), "client_column": "site"},
            "partition": {"scheme": "natural"},
            "campaign": {"clients_per_round": 2},
        }
    )
    paths = stages.Paths(tmp_path)

    stages.prepare(cfg, paths)
    manifest = stages.partition(cfg, paths)

    assert manifest["num_clients"] == 4
    assert len(list(paths.clients.glob("client_*.parquet"))) == 4
    meta = read_json(paths.prepared / "meta.json")
    assert sum(c["num_examples"] for c in manifest["clients"]) == meta["num_train"]
