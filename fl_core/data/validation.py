"""Validate on-disk tables (client partitions, test set) with Great Expectations.

Every table must follow the contract in :mod:`fl_core.data`: feature columns ``x0 .. x{d-1}``
(float32) followed by an int64 ``label`` column, nothing else. :func:`validate_tables` checks
each file with Great Expectations (GX 1.x, ephemeral context, one pandas data source) and
returns a :class:`ValidationReport` whose failures name the file, the offending original column
(e.g. ``"x17"``) and the GX expectation type.

Design (why the feature checks do not use one expectation per column)
---------------------------------------------------------------------
GX has a fixed per-expectation cost of a few milliseconds (metric-graph construction, and
``table.column_types`` is rebuilt over *all* columns for every type expectation, which is
quadratic in the number of columns). With 784 feature columns, per-column expectations cost
2-7 s per file and per expectation kind, i.e. minutes for 20 files. Instead every file is
validated through three GX batches, each with a constant number of expectations:

1. **The table itself** (the DataFrame as read from Parquet):
   ``ExpectTableColumnsToMatchOrderedList`` (``x0 .. x{d-1}, label``),
   ``ExpectTableRowCountToBeBetween`` (only where ``min_samples_applies(path)``), and on
   ``label`` ``ExpectColumnValuesToBeOfType`` (int64), ``ExpectColumnValuesToNotBeNull`` and
   ``ExpectColumnValuesToBeInSet`` (the label set). Missing and extra columns are named
   individually from the observed column list; if ``label`` is missing, the errors of the
   label expectations are dropped (the missing column is already reported).
2. **A long ("melted") view of the feature values**: one row per cell, a single float64
   ``value`` column, laid out column-major with a plain ``RangeIndex``, so that position ``p``
   is cell ``(row p % n, column p // n)``. GX checks ``value`` with
   ``ExpectColumnValuesToNotBeNull`` (NaN) and ``ExpectColumnValuesToBeBetween``
   (``[feature_min, feature_max]``; a missing bound is replaced by the largest finite float64,
   so +/-inf always fails -- GX, not numpy, decides which cells are bad). The ``COMPLETE``
   result format returns the positions of all unexpected cells, which are decoded back to
   original column names and row numbers. Positions are used rather than GX's
   ``unexpected_index_column_names`` because GX resolves the latter with one ``DataFrame.at``
   lookup per unexpected cell (seconds for a badly corrupted file); positions cost nothing.
3. **A per-column dtype view**: one row per feature column present, holding its dtype name.
   GX checks it with ``ExpectColumnValuesToBeInSet(["float32"])``; unexpected positions map
   back to column names. (``ExpectColumnValuesToBeOfType`` is used for ``label`` only -- 784
   of them would dominate the run time.)

Value checks cover the expected feature columns that are present and numeric; a non-numeric
feature column is reported by the dtype check only. A file that cannot be read as Parquet is
reported as a failure with expectation ``"readable_parquet"``. For one (file, expectation) at
most :data:`MAX_COLUMN_FAILURES` columns are reported individually; the remaining columns are
summarised in one extra failure whose ``column`` is ``None``.

Batches are validated with ``Batch.validate`` (not ``ValidationDefinition.run``, which also
serialises every result into the context's store). Measured on 2 CPU cores, 20 files of
200 rows x 784 features: 6.5-9.5 s in a fresh process (depending on machine load), of which
~3.5 s is importing GX, i.e. ~0.2 s per file; 8-10 s when every cell of every file is out of
range.

Great Expectations is imported lazily (inside the functions) because it is slow to import;
its progress bars are disabled through the context's ``progress_bars`` variable. No logging
is configured here; GX itself emits nothing on these code paths.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuite
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )
    from great_expectations.expectations import Expectation

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_COLUMN_FAILURES",
    "READABLE_PARQUET",
    "Failure",
    "FileReport",
    "ValidationReport",
    "ValidationRules",
    "check_classes",
    "validate_tables",
    "write_report",
]

LABEL_COLUMN = "label"
FEATURE_DTYPE = "float32"
LABEL_DTYPE = "int64"
READABLE_PARQUET = "readable_parquet"
"""Pseudo expectation type used when a file cannot be read as Parquet at all."""
MAX_COLUMN_FAILURES = 20
"""Per file and expectation, at most this many columns get their own :class:`Failure`."""

_MAX_EXAMPLES = 5
_MAX_LISTED_COLUMNS = 20
_FLOAT_LIMIT = float(np.finfo(np.float64).max)
_RESULT_FORMAT: dict[str, Any] = {
    "result_format": "COMPLETE",
    "partial_unexpected_count": _MAX_EXAMPLES,
    "include_unexpected_rows": False,
    "return_unexpected_index_query": False,
}
_FEATURE_NAME = re.compile(r"x(\d+)")


@dataclass(frozen=True, kw_only=True)
class ValidationRules:
    """What a valid table looks like.

    Parameters
    ----------
    num_features : int
        Number ``d`` of feature columns ``x0 .. x{d-1}``.
    labels : tuple of int
        Allowed label values.
    feature_min, feature_max : float or None
        Inclusive bounds on every feature value; ``None`` means unbounded (values must still
        be finite).
    min_samples : int
        Minimum number of rows, for files where the row-count rule applies.
    """

    num_features: int
    labels: tuple[int, ...]
    feature_min: float | None
    feature_max: float | None
    min_samples: int

    @property
    def feature_columns(self) -> list[str]:
        """Expected feature column names, in order."""
        return [f"x{i}" for i in range(self.num_features)]

    @property
    def columns(self) -> list[str]:
        """Expected column names of a table, in order."""
        return [*self.feature_columns, LABEL_COLUMN]


@dataclass(frozen=True)
class Failure:
    """One failed check.

    Parameters
    ----------
    file : str
        Path of the offending file.
    column : str or None
        Offending original column (e.g. ``"x17"``); ``None`` for table-level checks.
    expectation : str
        GX expectation type (e.g. ``"expect_column_values_to_be_between"``) or
        ``"readable_parquet"``.
    detail : str
        Human-readable evidence: unexpected count and examples, or the observed value.
    """

    file: str
    column: str | None
    expectation: str
    detail: str


@dataclass
class FileReport:
    """Validation outcome of one file.

    Parameters
    ----------
    file : str
        Path of the file.
    success : bool
        Whether every check passed.
    num_rows : int
        Number of rows read (0 if the file is unreadable).
    failures : list of Failure
        Failed checks, empty on success.
    """

    file: str
    success: bool
    num_rows: int
    failures: list[Failure] = field(default_factory=list)


@dataclass
class ValidationReport:
    """Validation outcome of a set of files.

    Parameters
    ----------
    files : list of FileReport
        One report per validated file, in input order.
    """

    files: list[FileReport]

    @property
    def success(self) -> bool:
        """Whether every file passed."""
        return all(f.success for f in self.files)

    @property
    def failures(self) -> list[Failure]:
        """All failures of all files, in file order."""
        return [failure for f in self.files for failure in f.failures]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable representation.

        Returns
        -------
        dict
            ``success``, ``num_files``, ``num_failed_files``, ``num_failures`` and ``files``
            (each with ``file``, ``success``, ``num_rows`` and ``failures``).
        """
        return {
            "success": self.success,
            "num_files": len(self.files),
            "num_failed_files": sum(not f.success for f in self.files),
            "num_failures": len(self.failures),
            "files": [
                {
                    "file": f.file,
                    "success": f.success,
                    "num_rows": f.num_rows,
                    "failures": [asdict(failure) for failure in f.failures],
                }
                for f in self.files
            ],
        }

    def format(self) -> str:
        """Return a human-readable multi-line report.

        Returns
        -------
        str
            A summary line, then per file its status and, per failure, one line naming the
            file, the column and the expectation type.
        """
        failed = [f for f in self.files if not f.success]
        if not failed:
            header = f"Data validation passed: {len(self.files)} file(s), no failures."
        else:
            header = (
                f"Data validation FAILED: {len(failed)} of {len(self.files)} file(s) failed, "
                f"{len(self.failures)} failure(s)."
            )
        lines = [header]
        for f in self.files:
            status = "ok" if f.success else "FAILED"
            lines.append(f"  {f.file} ({f.num_rows} rows): {status}")
            for failure in f.failures:
                column = failure.column if failure.column is not None else "<table>"
                lines.append(
                    f"    - file={Path(failure.file).name} column={column} "
                    f"expectation={failure.expectation}: {failure.detail}"
                )
        return "\n".join(lines)


def validate_tables(
    paths: Sequence[Path],
    *,
    rules: ValidationRules,
    min_samples_applies: Callable[[Path], bool] | None = None,
) -> ValidationReport:
    """Validate Parquet tables against the on-disk contract with Great Expectations.

    Parameters
    ----------
    paths : sequence of Path
        Files to validate (client partitions, test set, ...).
    rules : ValidationRules
        Expected schema, label set, feature bounds and minimum row count.
    min_samples_applies : callable, optional
        ``min_samples_applies(path)`` tells whether the minimum-row-count rule applies to
        ``path`` (e.g. ``False`` for the test set). Default: it applies to every file.

    Returns
    -------
    ValidationReport
        One :class:`FileReport` per path; unreadable files are failures, not exceptions.
    """
    validator = _GxValidator(rules)
    reports: list[FileReport] = []
    for raw_path in paths:
        path = Path(raw_path)
        applies = True if min_samples_applies is None else bool(min_samples_applies(path))
        reports.append(validator.validate_file(path, check_row_count=applies))
    report = ValidationReport(files=reports)
    logger.info(
        "validated %d file(s): %d failed, %d failure(s)",
        len(reports),
        sum(not r.success for r in reports),
        len(report.failures),
    )
    return report


def check_classes(
    manifest: Mapping[str, Any],
    *,
    num_classes: int,
    num_train_rows: int,
    clients_dir: Path,
    train_file: Path,
    allow_single_class: bool,
    min_classes_per_client: int,
) -> list[FileReport]:
    """Dataset-level checks on the partition manifest that no single table shows.

    * the dataset has at least two classes, unless ``allow_single_class`` (one class trains
      to a trivial 100%);
    * every client holds at least ``min_classes_per_client`` classes;
    * every client file listed exists, the client ids and files are distinct, and the
      clients' rows add up to the training rows (no client silently merged or dropped).

    Returns
    -------
    list of FileReport
        One report for the training table and one per client file that failed a check
        (expectation names ``expect_at_least_two_classes``,
        ``expect_min_classes_per_client``, ``expect_every_row_assigned``,
        ``expect_unique_clients``).
    """
    train_failures: list[Failure] = []
    if num_classes < 2 and not allow_single_class:
        train_failures.append(Failure(
            str(train_file), LABEL_COLUMN, "expect_at_least_two_classes",
            f"the dataset has {num_classes} class(es): a model would reach a trivial 100%; "
            "set validation.allow_single_class: true if that is intended"))
    clients = list(manifest.get("clients", []))
    total = sum(int(c.get("num_examples", 0)) for c in clients)
    if total != num_train_rows:
        train_failures.append(Failure(
            str(train_file), None, "expect_every_row_assigned",
            f"the clients hold {total} rows, the training table {num_train_rows}"))
    ids = [str(c.get("client_id")) for c in clients]
    files = [str(c.get("file")) for c in clients]
    for what, values in (("client id", ids), ("file", files)):
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            train_failures.append(Failure(
                str(clients_dir / "manifest.json"), None, "expect_unique_clients",
                f"{what}s listed more than once: {', '.join(dupes[:_MAX_EXAMPLES])}"))
    reports = []
    if train_failures:
        reports.append(FileReport(str(train_file), False, num_train_rows, train_failures))
    for c in clients:
        path = clients_dir / str(c.get("file"))
        failures = []
        held = len(c.get("label_counts", {}))
        if held < min_classes_per_client:
            failures.append(Failure(
                str(path), LABEL_COLUMN, "expect_min_classes_per_client",
                f"client {c.get('client_id')} holds {held} class(es); "
                f"validation.min_classes_per_client is {min_classes_per_client}"))
        if failures:
            reports.append(FileReport(str(path), False, int(c.get("num_examples", 0)), failures))
    return reports


def write_report(report: ValidationReport, path: Path) -> None:
    """Write ``report.to_dict()`` as indented JSON, creating parent directories.

    Parameters
    ----------
    report : ValidationReport
        Report to write.
    path : Path
        Destination JSON file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")


class _GxValidator:
    """One ephemeral GX context with the batch definitions and suites for one set of rules."""

    def __init__(self, rules: ValidationRules) -> None:
        import great_expectations as gx
        import great_expectations.expectations as gxe
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.rules = rules
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        source = context.data_sources.add_pandas(name="fl_core_tables")

        def definition(name: str, expectations: list[Expectation]) -> _Definition:
            batches = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(
                name
            )
            return _Definition(batches, gx.ExpectationSuite(name=name, expectations=expectations))

        def table_expectations() -> list[Expectation]:
            return [
                gxe.ExpectTableColumnsToMatchOrderedList(column_list=rules.columns),
                gxe.ExpectColumnValuesToBeOfType(column=LABEL_COLUMN, type_=LABEL_DTYPE),
                gxe.ExpectColumnValuesToNotBeNull(column=LABEL_COLUMN),
                gxe.ExpectColumnValuesToBeInSet(
                    column=LABEL_COLUMN, value_set=[int(v) for v in rules.labels]
                ),
            ]

        self._table = definition("table", table_expectations())
        self._table_min_rows = definition(
            "table_min_rows",
            [
                *table_expectations(),
                gxe.ExpectTableRowCountToBeBetween(min_value=rules.min_samples),
            ],
        )
        low = -_FLOAT_LIMIT if rules.feature_min is None else float(rules.feature_min)
        high = _FLOAT_LIMIT if rules.feature_max is None else float(rules.feature_max)
        self._values = definition(
            "feature_values",
            [
                gxe.ExpectColumnValuesToNotBeNull(column="value"),
                gxe.ExpectColumnValuesToBeBetween(column="value", min_value=low, max_value=high),
            ],
        )
        self._dtypes = definition(
            "feature_dtypes",
            [gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=[FEATURE_DTYPE])],
        )

    def validate_file(self, path: Path, *, check_row_count: bool) -> FileReport:
        """Validate one file; never raises for unreadable data."""
        file = str(path)
        try:
            df = pd.read_parquet(path)
        except (OSError, ValueError, pa.ArrowException) as exc:
            logger.warning("cannot read %s as Parquet: %s", file, exc)
            detail = f"cannot read as Parquet: {type(exc).__name__}: {exc}"
            return FileReport(
                file=file,
                success=False,
                num_rows=0,
                failures=[Failure(file, None, READABLE_PARQUET, detail)],
            )
        df = df.reset_index(drop=True)
        failures: list[Failure] = []
        failures += self._check_table(file, df, check_row_count)
        failures += self._check_dtypes(file, df)
        failures += self._check_values(file, df)
        logger.debug("%s: %d row(s), %d failure(s)", file, len(df), len(failures))
        return FileReport(file=file, success=not failures, num_rows=len(df), failures=failures)

    def _check_table(self, file: str, df: pd.DataFrame, check_row_count: bool) -> list[Failure]:
        definition = self._table_min_rows if check_row_count else self._table
        has_label = LABEL_COLUMN in df.columns
        failures: list[Failure] = []
        for res in _failed(_run(definition, df)):
            kind = _kind(res)
            column = _column(res)
            if column == LABEL_COLUMN and not has_label:
                continue  # already reported as a missing column
            error = _exception_message(res)
            if error is not None:
                failures.append(Failure(file, column, kind, f"could not be evaluated: {error}"))
            elif kind == "expect_table_columns_to_match_ordered_list":
                observed = [str(c) for c in res.result.get("observed_value", list(df.columns))]
                failures += _column_list_failures(file, kind, self.rules.columns, observed)
            elif kind == "expect_table_row_count_to_be_between":
                observed_rows = res.result.get("observed_value", len(df))
                detail = (
                    f"observed {observed_rows} row(s), expected at least {self.rules.min_samples}"
                )
                failures.append(Failure(file, None, kind, detail))
            else:
                failures.append(self._label_failure(file, df, kind, res))
        return failures

    def _label_failure(
        self, file: str, df: pd.DataFrame, kind: str, res: ExpectationValidationResult
    ) -> Failure:
        labels = df[LABEL_COLUMN]
        if kind == "expect_column_values_to_be_of_type":
            observed = res.result.get("observed_value", str(labels.dtype))
            return Failure(file, LABEL_COLUMN, kind, f"dtype {observed}, expected {LABEL_DTYPE}")
        rows = [int(i) for i in res.result.get("unexpected_index_list") or []]
        examples = ", ".join(f"row {r}: {_plain(labels.iloc[r])!r}" for r in rows[:_MAX_EXAMPLES])
        count = int(res.result.get("unexpected_count") or len(rows))
        detail = f"{count} unexpected value(s) of {len(df)}; e.g. {examples}"
        if kind == "expect_column_values_to_be_in_set":
            detail += f"; allowed labels: {list(self.rules.labels)}"
        return Failure(file, LABEL_COLUMN, kind, detail)

    def _check_dtypes(self, file: str, df: pd.DataFrame) -> list[Failure]:
        present = [c for c in self.rules.feature_columns if c in df.columns]
        if not present:
            return []
        dtypes = [str(df[c].dtype) for c in present]
        # Position i of the view describes feature column present[i].
        view = pd.DataFrame({"dtype": pd.Series(dtypes, dtype=object)})
        failures: list[Failure] = []
        for res in _failed(_run(self._dtypes, view)):
            kind = _kind(res)
            error = _exception_message(res)
            if error is not None:
                detail = f"dtype check could not be evaluated: {error}"
                failures.append(Failure(file, None, kind, detail))
                continue
            positions = [int(p) for p in res.result.get("unexpected_index_list") or []]
            details = {
                present[p]: f"dtype {dtypes[p]}, expected {FEATURE_DTYPE}" for p in positions
            }
            failures += _column_failures(file, kind, details)
        return failures

    def _check_values(self, file: str, df: pd.DataFrame) -> list[Failure]:
        columns = [
            c
            for c in self.rules.feature_columns
            if c in df.columns
            and pd.api.types.is_numeric_dtype(df[c].dtype)
            and not pd.api.types.is_complex_dtype(df[c].dtype)
        ]
        n = len(df)
        if not columns or n == 0:
            return []
        # Column-major: position p is (row p % n, column p // n).
        values = df[columns].to_numpy(dtype=np.float64, na_value=np.nan).ravel(order="F")
        view = pd.DataFrame({"value": values})
        failures: list[Failure] = []
        for res in _failed(_run(self._values, view)):
            kind = _kind(res)
            error = _exception_message(res)
            if error is not None:
                failures.append(Failure(file, None, kind, f"could not be evaluated: {error}"))
                continue
            positions = np.sort(
                np.asarray(res.result.get("unexpected_index_list") or [], dtype=np.int64)
            )
            if positions.size == 0:  # failed without positions: report the count only
                count = res.result.get("unexpected_count")
                failures.append(Failure(file, None, kind, f"{count} unexpected value(s)"))
                continue
            col_idx, starts = np.unique(positions // n, return_index=True)
            by_column: dict[str, str] = {}
            for idx, group in zip(col_idx, np.split(positions, starts[1:]), strict=True):
                by_column[columns[int(idx)]] = self._value_detail(kind, group % n, values[group], n)
            failures += _column_failures(file, kind, by_column)
        return failures

    def _value_detail(
        self, kind: str, rows: npt.NDArray[np.int64], bad: npt.NDArray[np.float64], n: int
    ) -> str:
        examples = ", ".join(
            f"row {int(r)}: {float(v)!r}" for r, v in zip(rows[:_MAX_EXAMPLES], bad, strict=False)
        )
        detail = f"{len(rows)} unexpected value(s) of {n}"
        if kind == "expect_column_values_to_be_between":
            low, high = self.rules.feature_min, self.rules.feature_max
            bounds = (
                "the finite range"
                if low is None and high is None
                else f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
            )
            nonfinite = int(np.count_nonzero(~np.isfinite(bad)))
            detail += f" outside {bounds}"
            if nonfinite:
                detail += f" ({nonfinite} non-finite)"
        return f"{detail}; e.g. {examples}"


@dataclass(frozen=True)
class _Definition:
    """A whole-dataframe batch definition and the suite validated on its batches."""

    batches: BatchDefinition[Any]
    suite: ExpectationSuite


def _run(definition: _Definition, df: pd.DataFrame) -> ExpectationSuiteValidationResult:
    """Validate ``df`` with ``definition.suite``.

    ``Batch.validate`` is used rather than ``ValidationDefinition.run``: the latter also
    serialises every result into the context's results store, which takes seconds when a
    corrupted file yields ~10^5 unexpected positions.
    """
    batch = definition.batches.get_batch(batch_parameters={"dataframe": df})
    return batch.validate(definition.suite, result_format=_RESULT_FORMAT)


def _failed(result: ExpectationSuiteValidationResult) -> Iterable[ExpectationValidationResult]:
    return [res for res in result.results if not res.success]


def _plain(value: Any) -> Any:
    """Unwrap a numpy scalar so that its ``repr`` is the plain Python one."""
    return value.item() if isinstance(value, np.generic) else value


def _kind(res: ExpectationValidationResult) -> str:
    """Return the expectation type (e.g. ``"expect_column_values_to_be_between"``) of ``res``."""
    config = res.expectation_config
    return "unknown_expectation" if config is None else str(config.type)


def _column(res: ExpectationValidationResult) -> str | None:
    """Return the column an expectation applies to, ``None`` for table-level expectations."""
    config = res.expectation_config
    column = None if config is None else config.kwargs.get("column")
    return None if column is None else str(column)


def _exception_message(res: ExpectationValidationResult) -> str | None:
    """Return the message of an exception GX caught while evaluating ``res``, if any."""
    info: Mapping[str, Any] = res.exception_info or {}
    candidates = [info] if "raised_exception" in info else list(info.values())
    for candidate in candidates:
        if isinstance(candidate, Mapping) and candidate.get("raised_exception"):
            return str(candidate.get("exception_message") or "unknown error")
    return None


def _column_list_failures(
    file: str, kind: str, expected: list[str], observed: list[str]
) -> list[Failure]:
    missing = [c for c in expected if c not in observed]
    extra = [c for c in observed if c not in expected]
    failures: list[Failure] = []
    failures += _column_failures(file, kind, {c: "missing column" for c in missing})
    failures += _column_failures(file, kind, {c: "unexpected extra column" for c in extra})
    if not failures:
        shown = [(e, o) for e, o in zip(expected, observed, strict=False) if e != o]
        sample = ", ".join(f"expected {e!r} found {o!r}" for e, o in shown[:_MAX_EXAMPLES])
        failures.append(Failure(file, None, kind, f"columns out of order: {sample}"))
    return failures


def _column_failures(file: str, kind: str, details: Mapping[str, str]) -> list[Failure]:
    """One failure per column, the columns beyond :data:`MAX_COLUMN_FAILURES` summarised."""
    names = sorted(details, key=_column_sort_key)
    failures = [Failure(file, c, kind, details[c]) for c in names[:MAX_COLUMN_FAILURES]]
    rest = names[MAX_COLUMN_FAILURES:]
    if rest:
        listed = ", ".join(rest[:_MAX_LISTED_COLUMNS])
        more = (
            f", ... ({len(rest) - _MAX_LISTED_COLUMNS} more)"
            if len(rest) > _MAX_LISTED_COLUMNS
            else ""
        )
        failures.append(
            Failure(file, None, kind, f"{len(rest)} more column(s) failed: {listed}{more}")
        )
    return failures


def _column_sort_key(name: str) -> tuple[int, int, str]:
    match = _FEATURE_NAME.fullmatch(name)
    if match:
        return (0, int(match.group(1)), name)
    return (1 if name == LABEL_COLUMN else 2, 0, name)
