"""The on-disk format: Parquet tables, content hashes and JSON metadata.

A *table* is a Parquet file with feature columns ``x0 .. x{d-1}`` (float32) followed by an
integer ``label`` column (int64) and nothing else (no index, no pandas metadata). It is written
with pyarrow directly and fixed writer options, so identical inputs give byte-identical files
(for a given pyarrow version) and therefore identical sha256 hashes, which serve as the data
version in ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "FEATURE_PREFIX",
    "LABEL_COLUMN",
    "file_sha256",
    "read_json",
    "read_table",
    "write_json",
    "write_table",
]

FEATURE_PREFIX = "x"
LABEL_COLUMN = "label"

_COMPRESSION = "zstd"
_COMPRESSION_LEVEL = 3
_HASH_CHUNK_BYTES = 1 << 20


def _feature_names(num_features: int) -> list[str]:
    return [f"{FEATURE_PREFIX}{i}" for i in range(num_features)]


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then atomically move the temporary file onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def file_sha256(path: Path) -> str:
    """Return the sha256 hex digest of the file at ``path``."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_table(path: Path, x: np.ndarray, y: np.ndarray) -> str:
    """Write features ``x`` (n, d) and labels ``y`` (n,) as a table and return its sha256.

    Parameters
    ----------
    path
        Destination ``.parquet`` file; parent directories are created. The file is written to a
        temporary name first and moved into place, so readers never see a partial file.
    x
        Numeric feature matrix of shape ``(n, d)`` with ``d >= 1``; stored as float32.
    y
        Integer labels of shape ``(n,)``; stored as int64.

    Returns
    -------
    str
        The sha256 hex digest of the written file (see :func:`file_sha256`).

    Raises
    ------
    ValueError
        If the shapes or dtypes do not fit the table contract.
    """
    path = Path(path)
    x_arr = np.asarray(x)
    y_arr = np.asarray(y)
    if x_arr.ndim != 2 or x_arr.shape[1] < 1:
        raise ValueError(f"{path}: x must have shape (n, d) with d >= 1, got {x_arr.shape}")
    if y_arr.ndim != 1 or y_arr.shape[0] != x_arr.shape[0]:
        raise ValueError(
            f"{path}: y must have shape ({x_arr.shape[0]},) to match x, got {y_arr.shape}"
        )
    if x_arr.dtype.kind not in "biuf":
        raise ValueError(f"{path}: x must be numeric, got dtype {x_arr.dtype}")
    if y_arr.dtype.kind not in "iu":
        raise ValueError(f"{path}: y must be integer, got dtype {y_arr.dtype}")

    columns_major = np.ascontiguousarray(x_arr.T, dtype=np.float32)
    names = _feature_names(x_arr.shape[1])
    arrays: list[pa.Array] = [
        pa.array(columns_major[i], type=pa.float32()) for i in range(len(names))
    ]
    arrays.append(pa.array(y_arr.astype(np.int64, copy=False), type=pa.int64()))
    fields = [pa.field(name, pa.float32(), nullable=False) for name in names]
    fields.append(pa.field(LABEL_COLUMN, pa.int64(), nullable=False))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    def _write(target: Path) -> None:
        pq.write_table(
            table,
            target,
            compression=_COMPRESSION,
            compression_level=_COMPRESSION_LEVEL,
            use_dictionary=False,
            write_statistics=True,
        )

    _atomic_write(path, _write)
    return file_sha256(path)


def read_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a table written by :func:`write_table`.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``x`` as float32 of shape ``(n, d)`` with columns in numeric order ``x0, x1, ..., x10``
        (not lexical order) and ``y`` as int64 of shape ``(n,)``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not Parquet or its schema is not exactly ``x0..x{d-1}`` (float32) plus
        ``label`` (int64) without nulls. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such table")
    try:
        table = pq.read_table(path)
    except pa.ArrowException as exc:
        raise ValueError(f"{path}: not a readable Parquet file ({exc})") from exc

    names = list(table.schema.names)
    feature_names = [name for name in names if name != LABEL_COLUMN]
    expected = _feature_names(len(feature_names))
    if (
        LABEL_COLUMN not in names
        or len(set(names)) != len(names)
        or not feature_names
        or set(feature_names) != set(expected)
    ):
        raise ValueError(
            f"{path}: expected columns {FEATURE_PREFIX}0..{FEATURE_PREFIX}{{d-1}} and "
            f"{LABEL_COLUMN!r} only, got {names}"
        )
    for name in expected:
        if table.schema.field(name).type != pa.float32():
            raise ValueError(
                f"{path}: column {name!r} must be float32, got {table.schema.field(name).type}"
            )
    if table.schema.field(LABEL_COLUMN).type != pa.int64():
        raise ValueError(
            f"{path}: column {LABEL_COLUMN!r} must be int64, "
            f"got {table.schema.field(LABEL_COLUMN).type}"
        )
    for name in names:
        if table.column(name).null_count:
            raise ValueError(f"{path}: column {name!r} contains nulls")

    x = np.empty((table.num_rows, len(expected)), dtype=np.float32)
    for i, name in enumerate(expected):
        x[:, i] = table.column(name).to_numpy()
    y = np.asarray(table.column(LABEL_COLUMN).to_numpy(), dtype=np.int64)
    return x, y


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON with sorted keys, indent 2 and a trailing newline.

    NumPy scalars and arrays are converted to plain Python values; NaN and infinity are
    rejected (they are not valid JSON). The file is replaced atomically.
    """
    path = Path(path)
    text = json.dumps(obj, sort_keys=True, indent=2, allow_nan=False, default=_json_default)

    def _write(target: Path) -> None:
        target.write_text(text + "\n", encoding="utf-8", newline="\n")

    _atomic_write(path, _write)


def read_json(path: Path) -> Any:
    """Read a JSON file written by :func:`write_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
