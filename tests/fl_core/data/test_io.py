"""Tests for fl_core.data.io: the Parquet table format, hashes and JSON metadata."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fl_core.data.io import (
    FEATURE_PREFIX,
    LABEL_COLUMN,
    file_sha256,
    read_json,
    read_table,
    write_json,
    write_table,
)


@pytest.fixture
def table_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 12)).astype(np.float32)  # 12 columns: x10, x11 sort before x2
    y = rng.integers(0, 4, 50).astype(np.int64)
    return x, y


def test_round_trip_is_exact(tmp_path: Path, table_data: tuple[np.ndarray, np.ndarray]) -> None:
    # Arrange
    x, y = table_data
    path = tmp_path / "sub" / "train.parquet"

    # Act
    write_table(path, x, y)
    x_read, y_read = read_table(path)

    # Assert
    assert x_read.dtype == np.float32
    assert y_read.dtype == np.int64
    assert np.array_equal(x_read, x)
    assert np.array_equal(y_read, y)


def test_columns_are_named_in_numeric_order(
    tmp_path: Path, table_data: tuple[np.ndarray, np.ndarray]
) -> None:
    # Arrange
    x, y = table_data
    path = tmp_path / "t.parquet"

    # Act
    write_table(path, x, y)
    schema = pq.read_schema(path)

    # Assert
    assert schema.names == [f"{FEATURE_PREFIX}{i}" for i in range(12)] + [LABEL_COLUMN]
    assert all(schema.field(f"x{i}").type == pa.float32() for i in range(12))
    assert schema.field("label").type == pa.int64()
    assert schema.metadata is None or b"pandas" not in schema.metadata


def test_read_orders_shuffled_columns_numerically(
    tmp_path: Path, table_data: tuple[np.ndarray, np.ndarray]
) -> None:
    # Arrange
    x, y = table_data
    names = sorted(f"x{i}" for i in range(12))  # lexical: x0, x1, x10, x11, x2, ...
    columns = {name: pa.array(x[:, int(name[1:])]) for name in names}
    columns["label"] = pa.array(y)
    path = tmp_path / "lexical.parquet"
    pq.write_table(pa.table(columns), path)

    # Act
    x_read, y_read = read_table(path)

    # Assert
    assert np.array_equal(x_read, x)
    assert np.array_equal(y_read, y)


def test_identical_inputs_give_identical_bytes_and_hash(
    tmp_path: Path, table_data: tuple[np.ndarray, np.ndarray]
) -> None:
    # Arrange
    x, y = table_data
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"

    # Act
    hash_first = write_table(first, x, y)
    hash_second = write_table(second, x.copy(), y.copy())

    # Assert
    assert hash_first == hash_second
    assert first.read_bytes() == second.read_bytes()
    assert hash_first == hashlib.sha256(first.read_bytes()).hexdigest()
    assert hash_first == file_sha256(first)


def test_different_inputs_give_different_hash(
    tmp_path: Path, table_data: tuple[np.ndarray, np.ndarray]
) -> None:
    # Arrange
    x, y = table_data
    changed = y.copy()
    changed[0] += 1

    # Act
    original = write_table(tmp_path / "a.parquet", x, y)
    modified = write_table(tmp_path / "b.parquet", x, changed)

    # Assert
    assert original != modified


def test_write_casts_float64_and_int32(tmp_path: Path) -> None:
    # Arrange
    x = np.array([[0.5, 1.0], [2.0, 3.25]], dtype=np.float64)
    y = np.array([1, 0], dtype=np.int32)
    path = tmp_path / "t.parquet"

    # Act
    write_table(path, x, y)
    x_read, y_read = read_table(path)

    # Assert
    assert x_read.dtype == np.float32 and y_read.dtype == np.int64
    assert np.array_equal(x_read, x.astype(np.float32))
    assert y_read.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("x", "y"),
    [
        (np.zeros(3, dtype=np.float32), np.zeros(3, dtype=np.int64)),
        (np.zeros((3, 2), dtype=np.float32), np.zeros(2, dtype=np.int64)),
        (np.zeros((3, 2), dtype=np.float32), np.zeros(3, dtype=np.float64)),
        (np.zeros((3, 0), dtype=np.float32), np.zeros(3, dtype=np.int64)),
    ],
)
def test_write_rejects_bad_shapes_and_dtypes(tmp_path: Path, x: np.ndarray, y: np.ndarray) -> None:
    # Act / Assert
    with pytest.raises(ValueError, match="t.parquet"):
        write_table(tmp_path / "t.parquet", x, y)


@pytest.mark.parametrize(
    "columns",
    [
        {
            "x0": pa.array([1.0], pa.float32()),
            "foo": pa.array([1.0], pa.float32()),
            "label": pa.array([0], pa.int64()),
        },
        {"x0": pa.array([1.0], pa.float32()), "x1": pa.array([1.0], pa.float32())},
        {
            "x0": pa.array([1.0], pa.float32()),
            "x2": pa.array([1.0], pa.float32()),
            "label": pa.array([0], pa.int64()),
        },
        {"x0": pa.array([1.0], pa.float64()), "label": pa.array([0], pa.int64())},
        {"x0": pa.array([1.0], pa.float32()), "label": pa.array([0.0], pa.float64())},
        {"x0": pa.array([None], pa.float32()), "label": pa.array([0], pa.int64())},
        {"label": pa.array([0], pa.int64())},
    ],
    ids=["extra", "no-label", "gap", "float64", "float-label", "null", "no-features"],
)
def test_read_rejects_wrong_schema_naming_the_file(
    tmp_path: Path, columns: dict[str, pa.Array]
) -> None:
    # Arrange
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(columns), path)

    # Act / Assert
    with pytest.raises(ValueError, match="bad.parquet"):
        read_table(path)


def test_read_rejects_non_parquet_file(tmp_path: Path) -> None:
    # Arrange
    path = tmp_path / "notes.parquet"
    path.write_text("x0,label\n1.0,0\n")

    # Act / Assert
    with pytest.raises(ValueError, match="notes.parquet"):
        read_table(path)


def test_read_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    # Act / Assert
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "missing.parquet")


def test_json_round_trip_sorted_indented_with_trailing_newline(tmp_path: Path) -> None:
    # Arrange
    meta = {
        "num_features": np.int64(64),
        "dataset": "digits",
        "input_shape": [1, 8, 8],
        "feature_min": None,
        "labels": np.arange(3),
    }
    path = tmp_path / "meta.json"

    # Act
    write_json(path, meta)
    text = path.read_text()
    loaded = read_json(path)

    # Assert
    assert text.endswith("}\n")
    assert text.startswith('{\n  "dataset": "digits",\n')
    assert list(loaded) == sorted(loaded)
    assert loaded == {
        "num_features": 64,
        "dataset": "digits",
        "input_shape": [1, 8, 8],
        "feature_min": None,
        "labels": [0, 1, 2],
    }


def test_json_rejects_nan(tmp_path: Path) -> None:
    # Act / Assert
    with pytest.raises(ValueError):
        write_json(tmp_path / "meta.json", {"feature_min": float("nan")})
