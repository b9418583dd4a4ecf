"""Tests for fl_core.data.datasets: offline loaders and the train/test split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fl_core.data.datasets import (
    SYNTHETIC_MAX_SAMPLES_PER_DEVICE,
    Dataset,
    load_dataset,
    load_digits,
    load_mnist5k,
    load_synthetic,
    load_table,
    train_test_split,
)


def mean_client_label_tv(ds: Dataset) -> float:
    assert ds.client_ids is not None
    global_dist = np.bincount(ds.y, minlength=ds.num_classes) / ds.y.size
    distances = []
    for client in np.unique(ds.client_ids):
        y = ds.y[ds.client_ids == client]
        dist = np.bincount(y, minlength=ds.num_classes) / y.size
        distances.append(0.5 * np.abs(dist - global_dist).sum())
    return float(np.mean(distances))


def client_feature_mean_spread(ds: Dataset) -> float:
    assert ds.client_ids is not None
    means = [ds.x[ds.client_ids == c].mean() for c in np.unique(ds.client_ids)]
    return float(np.std(means))


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


# --------------------------------------------------------------------------------------------
# Built-in datasets
# --------------------------------------------------------------------------------------------


def test_load_digits_shapes_range_and_classes(digits: Dataset) -> None:
    # Assert
    assert digits.name == "digits"
    assert digits.x.shape == (1797, 64) and digits.x.dtype == np.float32
    assert digits.y.shape == (1797,) and digits.y.dtype == np.int64
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    assert set(np.unique(digits.y).tolist()) == set(range(10))
    assert digits.x.min() == 0.0 and digits.x.max() == 1.0
    assert (digits.feature_min, digits.feature_max) == (0.0, 1.0)
    assert digits.client_ids is None


def test_load_mnist5k_shapes_range_and_classes() -> None:
    # Act
    ds = load_mnist5k()

    # Assert
    assert ds.x.shape == (5000, 784) and ds.x.dtype == np.float32
    assert ds.y.shape == (5000,) and ds.y.dtype == np.int64
    assert ds.input_shape == (1, 28, 28)
    assert ds.num_classes == 10
    assert set(np.unique(ds.y).tolist()) == set(range(10))
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert (ds.feature_min, ds.feature_max) == (0.0, 1.0)


def test_load_dataset_dispatches_by_name() -> None:
    # Act
    ds = load_dataset("synthetic", alpha=0.5, beta=0.5, num_clients=3, seed=0)

    # Assert
    assert ds.name == "synthetic"
    assert load_dataset("digits").x.shape == (1797, 64)


def test_load_dataset_rejects_unknown_name_listing_allowed_values() -> None:
    # Act / Assert
    with pytest.raises(ValueError, match="digits, mnist5k, synthetic, file"):
        load_dataset("cifar10")


def test_dataset_rejects_inconsistent_fields() -> None:
    # Act / Assert
    with pytest.raises(ValueError, match="input_shape"):
        Dataset("t", np.zeros((2, 4), np.float32), np.zeros(2, np.int64), (5,), 2, None, None)
    with pytest.raises(ValueError, match="float32"):
        Dataset("t", np.zeros((2, 4)), np.zeros(2, np.int64), (4,), 2, None, None)
    with pytest.raises(ValueError, match="labels"):
        Dataset("t", np.zeros((2, 4), np.float32), np.array([0, 2]), (4,), 2, None, None)


# --------------------------------------------------------------------------------------------
# Synthetic(alpha, beta)
# --------------------------------------------------------------------------------------------


def test_synthetic_shapes_and_natural_clients() -> None:
    # Act
    ds = load_synthetic(alpha=1.0, beta=1.0, num_clients=12, seed=0)

    # Assert
    assert ds.x.shape[1] == 60 and ds.input_shape == (60,)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    assert ds.num_classes == 10
    assert ds.y.min() >= 0 and ds.y.max() < 10
    assert ds.feature_min is None and ds.feature_max is None
    assert ds.client_ids is not None
    assert np.array_equal(np.unique(ds.client_ids), np.arange(12))
    sizes = np.bincount(ds.client_ids)
    assert sizes.min() >= 50 and sizes.max() <= SYNTHETIC_MAX_SAMPLES_PER_DEVICE


def test_synthetic_custom_dimensions() -> None:
    # Act
    ds = load_synthetic(alpha=0.0, beta=0.0, num_clients=2, num_features=5, num_classes=3, seed=1)

    # Assert
    assert ds.x.shape[1] == 5 and ds.input_shape == (5,)
    assert ds.num_classes == 3 and ds.y.max() < 3


def test_synthetic_is_deterministic_per_seed() -> None:
    # Arrange
    kwargs: dict[str, Any] = {"alpha": 0.5, "beta": 0.5, "num_clients": 8}

    # Act
    first = load_synthetic(seed=4, **kwargs)
    again = load_synthetic(seed=4, **kwargs)
    other = load_synthetic(seed=5, **kwargs)

    # Assert
    assert np.array_equal(first.x, again.x)
    assert np.array_equal(first.y, again.y)
    assert first.client_ids is not None and again.client_ids is not None
    assert np.array_equal(first.client_ids, again.client_ids)
    assert first.x.shape != other.x.shape or not np.array_equal(first.x, other.x)


def test_synthetic_non_iid_labels_differ_across_clients_far_more_than_iid() -> None:
    # Act
    iid = load_synthetic(alpha=0.0, beta=0.0, num_clients=20, seed=0, iid=True)
    non_iid = load_synthetic(alpha=0.0, beta=0.0, num_clients=20, seed=0)
    heterogeneous = load_synthetic(alpha=1.0, beta=1.0, num_clients=20, seed=0)

    # Assert
    assert mean_client_label_tv(iid) < 0.25
    assert mean_client_label_tv(non_iid) > 2 * mean_client_label_tv(iid)
    assert mean_client_label_tv(heterogeneous) > 2 * mean_client_label_tv(iid)


def test_synthetic_larger_beta_spreads_client_feature_means() -> None:
    # Act
    homogeneous = load_synthetic(alpha=0.0, beta=0.0, num_clients=20, seed=0)
    heterogeneous = load_synthetic(alpha=1.0, beta=1.0, num_clients=20, seed=0)

    # Assert
    assert client_feature_mean_spread(heterogeneous) > 3 * client_feature_mean_spread(homogeneous)


@pytest.mark.parametrize(
    ("overrides", "argument"),
    [({"alpha": -1.0}, "alpha"), ({"beta": -0.1}, "beta"), ({"num_clients": 0}, "num_clients")],
)
def test_synthetic_rejects_bad_arguments(overrides: dict[str, Any], argument: str) -> None:
    # Arrange
    kwargs: dict[str, Any] = {"alpha": 0.5, "beta": 0.5, "num_clients": 3, "seed": 0}
    kwargs.update(overrides)

    # Act / Assert
    with pytest.raises(ValueError, match=argument):
        load_synthetic(**kwargs)


# --------------------------------------------------------------------------------------------
# User tables
# --------------------------------------------------------------------------------------------


@pytest.fixture
def user_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "height": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "site": ["b", "a", "b", "a", "c", "c"],
            "weight": [10, 20, 30, 40, 50, 60],
            "outcome": [7, 3, 3, 9, 7, 9],
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_load_table_with_client_column(
    tmp_path: Path, user_frame: pd.DataFrame, suffix: str
) -> None:
    # Arrange
    path = tmp_path / f"patients{suffix}"
    if suffix == ".csv":
        user_frame.to_csv(path, index=False)
    else:
        user_frame.to_parquet(path, index=False)

    # Act
    ds = load_table(path, label_column="outcome", client_column="site")

    # Assert
    assert ds.name == "file"
    assert ds.input_shape == (2,) and ds.x.dtype == np.float32
    assert ds.x[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert ds.x[:, 1].tolist() == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    assert ds.num_classes == 3
    assert ds.y.tolist() == [1, 0, 0, 2, 1, 2]  # 3 -> 0, 7 -> 1, 9 -> 2
    assert ds.client_ids is not None
    assert ds.client_ids.tolist() == ["b", "a", "b", "a", "c", "c"]
    assert ds.feature_min is None and ds.feature_max is None


def test_load_table_without_client_column(tmp_path: Path, user_frame: pd.DataFrame) -> None:
    # Arrange
    path = tmp_path / "t.csv"
    user_frame.drop(columns="site").to_csv(path, index=False)

    # Act
    ds = load_table(path, label_column="outcome", client_column=None)

    # Assert
    assert ds.client_ids is None
    assert ds.x.shape == (6, 2)


def test_load_dataset_file_dispatch(tmp_path: Path, user_frame: pd.DataFrame) -> None:
    # Arrange
    path = tmp_path / "t.csv"
    user_frame.to_csv(path, index=False)

    # Act
    ds = load_dataset("file", path=path, label_column="outcome", client_column="site")

    # Assert
    assert ds.num_examples == 6


@pytest.mark.parametrize(
    ("change", "label_column", "client_column", "message"),
    [
        (lambda f: f.assign(notes=["x"] * 6), "outcome", "site", "notes"),
        (lambda f: f, "outcome", None, "site"),  # string column treated as a feature
        (lambda f: f.drop(columns="outcome"), "outcome", "site", "outcome"),
        (lambda f: f, "outcome", "hospital", "hospital"),
        (lambda f: f.assign(outcome=[0.5, 1, 1, 0, 0, 1]), "outcome", "site", "outcome"),
        (lambda f: f.assign(outcome=["no", "yes"] * 3), "outcome", "site", "outcome"),
        (lambda f: f.assign(height=[1.0, None, 3, 4, 5, 6]), "outcome", "site", "height"),
    ],
    ids=[
        "non-numeric",
        "client-as-feature",
        "missing-label",
        "missing-client",
        "fractional-label",
        "string-label",
        "nan",
    ],
)
def test_load_table_rejects_bad_csv_naming_file_and_column(
    tmp_path: Path,
    user_frame: pd.DataFrame,
    change: Callable[[pd.DataFrame], pd.DataFrame],
    label_column: str,
    client_column: str | None,
    message: str,
) -> None:
    # Arrange
    path = tmp_path / "bad.csv"
    change(user_frame).to_csv(path, index=False)

    # Act / Assert
    with pytest.raises(ValueError, match="bad.csv") as excinfo:
        load_table(path, label_column=label_column, client_column=client_column)
    assert message in str(excinfo.value)


def test_load_table_rejects_unknown_suffix(tmp_path: Path) -> None:
    # Arrange
    path = tmp_path / "data.xlsx"
    path.write_text("")

    # Act / Assert
    with pytest.raises(ValueError, match="data.xlsx"):
        load_table(path, label_column="y", client_column=None)


# --------------------------------------------------------------------------------------------
# Train / test split
# --------------------------------------------------------------------------------------------


def test_split_is_stratified_disjoint_and_complete(digits: Dataset) -> None:
    # Arrange: the single feature is the row number, so rows can be traced
    n = digits.num_examples
    ds = Dataset("t", np.arange(n, dtype=np.float32)[:, None], digits.y, (1,), 10, None, None)

    # Act
    train, test = train_test_split(ds, test_fraction=0.2, seed=0)

    # Assert
    assert test.num_examples == round(0.2 * n)
    rows = np.concatenate([train.x[:, 0], test.x[:, 0]]).astype(np.int64)
    assert np.array_equal(np.sort(rows), np.arange(n))
    assert np.array_equal(digits.y[train.x[:, 0].astype(np.int64)], train.y)
    expected = np.bincount(digits.y) * 0.2
    assert np.all(np.abs(np.bincount(test.y, minlength=10) - expected) <= 1)
    assert train.input_shape == (1,) and train.num_classes == 10


def test_split_is_deterministic_per_seed(digits: Dataset) -> None:
    # Act
    _, first = train_test_split(digits, test_fraction=0.25, seed=1)
    _, again = train_test_split(digits, test_fraction=0.25, seed=1)
    _, other = train_test_split(digits, test_fraction=0.25, seed=2)

    # Assert
    assert np.array_equal(first.x, again.x) and np.array_equal(first.y, again.y)
    assert not np.array_equal(first.x, other.x)


def test_split_within_natural_clients_keeps_every_client() -> None:
    # Arrange
    ds = load_synthetic(alpha=0.5, beta=0.5, num_clients=10, seed=0)
    assert ds.client_ids is not None

    # Act
    train, test = train_test_split(ds, test_fraction=0.3, seed=0)

    # Assert
    assert train.client_ids is not None and test.client_ids is not None
    assert train.num_examples + test.num_examples == ds.num_examples
    for client in np.unique(ds.client_ids):
        total = int((ds.client_ids == client).sum())
        in_test = int((test.client_ids == client).sum())
        assert (train.client_ids == client).sum() > 0
        assert abs(in_test - 0.3 * total) <= 1


def test_split_keeps_single_row_clients_in_train() -> None:
    # Arrange
    ds = Dataset(
        name="t",
        x=np.arange(6, dtype=np.float32).reshape(6, 1),
        y=np.array([0, 1, 0, 1, 0, 1]),
        input_shape=(1,),
        num_classes=2,
        feature_min=None,
        feature_max=None,
        client_ids=np.array(["solo", "pair", "pair", "trio", "trio", "trio"]),
    )

    # Act
    train, _ = train_test_split(ds, test_fraction=0.5, seed=0)

    # Assert
    assert train.client_ids is not None
    assert set(train.client_ids.tolist()) == {"solo", "pair", "trio"}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(digits: Dataset, fraction: float) -> None:
    # Act / Assert
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(digits, test_fraction=fraction, seed=0)


def test_the_readme_sample_request_is_one_mnist5k_digit() -> None:
    import json
    from pathlib import Path

    from fl_core.data.datasets import load_mnist5k

    sample = Path(__file__).resolve().parents[3] / "deploy" / "sample_request.json"
    rows = np.asarray(json.loads(sample.read_text())["inputs"], dtype=np.float32)

    assert rows.shape == (1, 784)
    np.testing.assert_allclose(rows[0], load_mnist5k().x[0], atol=1e-4)
