"""Tests for :mod:`fl_core.data.validation` (real Great Expectations, real Parquet files)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fl_core.data.validation import (
    MAX_COLUMN_FAILURES,
    READABLE_PARQUET,
    Failure,
    ValidationReport,
    ValidationRules,
    validate_tables,
    write_report,
)

NUM_FEATURES = 6
NUM_ROWS = 12
RULES = ValidationRules(
    num_features=NUM_FEATURES,
    labels=(0, 1, 2),
    feature_min=0.0,
    feature_max=1.0,
    min_samples=5,
)

ORDERED_LIST = "expect_table_columns_to_match_ordered_list"
NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
OF_TYPE = "expect_column_values_to_be_of_type"
ROW_COUNT = "expect_table_row_count_to_be_between"

Columns = dict[str, np.ndarray]


def make_columns(
    num_rows: int = NUM_ROWS, num_features: int = NUM_FEATURES, seed: int = 0
) -> Columns:
    """Columns of a valid table: float32 features in [0, 1), int64 labels in {0, 1, 2}."""
    rng = np.random.default_rng(seed)
    columns: Columns = {
        f"x{i}": rng.random(num_rows, dtype=np.float32) for i in range(num_features)
    }
    columns["label"] = (np.arange(num_rows) % 3).astype(np.int64)
    return columns


def write_table(path: Path, columns: Columns) -> Path:
    pq.write_table(pa.table({name: pa.array(values) for name, values in columns.items()}), path)
    return path


def write_clean_set(root: Path, num_clients: int = 3) -> list[Path]:
    """Client files plus a test set, all valid."""
    paths = [
        write_table(root / f"client_{i:04d}.parquet", make_columns(seed=i))
        for i in range(num_clients)
    ]
    paths.append(write_table(root / "test.parquet", make_columns(seed=99)))
    return paths


def failures_of(report: ValidationReport, path: Path) -> list[Failure]:
    [file_report] = [f for f in report.files if f.file == str(path)]
    return file_report.failures


def test_clean_set_passes(tmp_path: Path) -> None:
    paths = write_clean_set(tmp_path)

    report = validate_tables(paths, rules=RULES)

    assert report.success
    assert report.failures == []
    assert [f.file for f in report.files] == [str(p) for p in paths]
    assert all(f.success and f.num_rows == NUM_ROWS for f in report.files)
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["success"] is True
    assert as_dict["num_files"] == len(paths)
    assert as_dict["num_failures"] == 0
    assert "passed" in report.format()


def _set(column: str, row: int, value: float) -> Callable[[Columns], None]:
    def mutate(columns: Columns) -> None:
        columns[column][row] = value

    return mutate


def _drop(column: str) -> Callable[[Columns], None]:
    def mutate(columns: Columns) -> None:
        del columns[column]

    return mutate


def _add_extra(columns: Columns) -> None:
    columns["extra"] = np.zeros(NUM_ROWS, dtype=np.float32)


def _as_dtype(column: str, dtype: type[np.generic]) -> Callable[[Columns], None]:
    def mutate(columns: Columns) -> None:
        columns[column] = columns[column].astype(dtype)

    return mutate


def _truncate_rows(columns: Columns) -> None:
    for name in list(columns):
        columns[name] = columns[name][:3]


@pytest.mark.parametrize(
    ("mutate", "column", "expectation", "detail_part"),
    [
        pytest.param(_set("x3", 4, np.nan), "x3", NOT_NULL, "row 4: nan", id="nan-x3"),
        pytest.param(_set("x1", 2, np.inf), "x1", BETWEEN, "non-finite", id="inf-x1"),
        pytest.param(_set("x2", 0, 1.5), "x2", BETWEEN, "row 0: 1.5", id="out-of-range-x2"),
        pytest.param(_set("x2", 7, -0.25), "x2", BETWEEN, "row 7: -0.25", id="below-range-x2"),
        pytest.param(_set("label", 1, 7), "label", IN_SET, "row 1: 7", id="label-not-in-set"),
        pytest.param(_drop("x4"), "x4", ORDERED_LIST, "missing column", id="missing-column"),
        pytest.param(_drop("label"), "label", ORDERED_LIST, "missing column", id="missing-label"),
        pytest.param(_add_extra, "extra", ORDERED_LIST, "extra column", id="extra-column"),
        pytest.param(_as_dtype("x5", np.float64), "x5", IN_SET, "float64", id="float64-feature"),
        pytest.param(_as_dtype("label", np.float64), "label", OF_TYPE, "float64", id="float-label"),
        pytest.param(_truncate_rows, None, ROW_COUNT, "observed 3 row(s)", id="too-few-rows"),
    ],
)
def test_corruption_is_caught_and_named(
    tmp_path: Path,
    mutate: Callable[[Columns], None],
    column: str | None,
    expectation: str,
    detail_part: str,
) -> None:
    paths = write_clean_set(tmp_path)
    columns = make_columns(seed=42)
    mutate(columns)
    bad = write_table(tmp_path / "client_0003.parquet", columns)

    report = validate_tables([*paths, bad], rules=RULES)

    assert not report.success
    assert all(f.success for f in report.files if f.file != str(bad))
    [failure] = failures_of(report, bad)  # exactly one failure, and it is in the bad file
    assert failure == Failure(str(bad), column, expectation, failure.detail)
    assert detail_part in failure.detail
    assert report.failures == [failure]

    text = report.format()
    assert "FAILED" in text
    [line] = [line for line in text.splitlines() if "expectation=" in line]
    assert "client_0003.parquet" in line
    assert f"column={column if column is not None else '<table>'}" in line
    assert f"expectation={expectation}" in line

    [failed] = [f for f in report.to_dict()["files"] if not f["success"]]
    assert failed["file"] == str(bad)
    assert failed["failures"] == [
        {"file": str(bad), "column": column, "expectation": expectation, "detail": failure.detail}
    ]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"this is not a parquet file", id="garbage"),
        pytest.param(None, id="truncated"),
    ],
)
def test_unreadable_file_is_a_failure_not_an_exception(
    tmp_path: Path, content: bytes | None
) -> None:
    paths = write_clean_set(tmp_path)
    bad = tmp_path / "client_0003.parquet"
    if content is None:
        full = write_table(tmp_path / "full.parquet", make_columns()).read_bytes()
        content = full[: len(full) // 2]
    bad.write_bytes(content)

    report = validate_tables([*paths, bad], rules=RULES)

    assert not report.success
    [file_report] = [f for f in report.files if f.file == str(bad)]
    assert file_report.num_rows == 0
    [failure] = file_report.failures
    assert (failure.file, failure.column, failure.expectation) == (str(bad), None, READABLE_PARQUET)
    assert "client_0003.parquet" in report.format()
    assert f"expectation={READABLE_PARQUET}" in report.format()
    assert all(f.success for f in report.files if f.file != str(bad))


def test_several_corruptions_in_one_file_are_all_reported(tmp_path: Path) -> None:
    columns = make_columns()
    columns["x0"][1] = np.nan
    columns["x3"][5] = 2.0
    columns["x3"][6] = -np.inf
    columns["label"][0] = -1
    bad = write_table(tmp_path / "client_0000.parquet", columns)

    report = validate_tables([bad], rules=RULES)

    found = {(f.column, f.expectation) for f in report.failures}
    assert found == {("x0", NOT_NULL), ("x3", BETWEEN), ("label", IN_SET)}
    [x3] = [f for f in report.failures if f.column == "x3"]
    assert x3.detail.startswith("2 unexpected value(s)")
    assert "row 5: 2.0" in x3.detail and "row 6: -inf" in x3.detail


def test_infinity_is_caught_without_bounds(tmp_path: Path) -> None:
    rules = ValidationRules(
        num_features=NUM_FEATURES,
        labels=(0, 1, 2),
        feature_min=None,
        feature_max=None,
        min_samples=1,
    )
    columns = make_columns()
    columns["x1"][3] = np.inf
    columns["x2"][4] = -np.inf
    columns["x4"][0] = 3e38  # large but finite float32: fine without bounds
    columns["x5"][0] = -1e6
    path = write_table(tmp_path / "client_0000.parquet", columns)

    report = validate_tables([path], rules=rules)

    assert {(f.column, f.expectation) for f in report.failures} == {
        ("x1", BETWEEN),
        ("x2", BETWEEN),
    }
    assert all("non-finite" in f.detail for f in report.failures)


def test_many_bad_columns_are_capped(tmp_path: Path) -> None:
    num_features = MAX_COLUMN_FAILURES + 5
    rules = ValidationRules(
        num_features=num_features,
        labels=(0, 1, 2),
        feature_min=0.0,
        feature_max=1.0,
        min_samples=1,
    )
    columns = make_columns(num_features=num_features)
    for i in range(num_features):
        columns[f"x{i}"] += 2.0
    path = write_table(tmp_path / "client_0000.parquet", columns)

    report = validate_tables([path], rules=rules)

    failures = report.failures
    assert [f.column for f in failures[:-1]] == [f"x{i}" for i in range(MAX_COLUMN_FAILURES)]
    assert all(f.expectation == BETWEEN for f in failures)
    assert failures[-1].column is None
    assert failures[-1].detail.startswith("5 more column(s) failed: x20, x21, x22, x23, x24")


def test_min_samples_applies_exempts_the_test_set(tmp_path: Path) -> None:
    clients = [
        write_table(tmp_path / f"client_{i:04d}.parquet", make_columns(seed=i)) for i in range(2)
    ]
    test_set = write_table(tmp_path / "test.parquet", make_columns(num_rows=2))
    paths = [*clients, test_set]

    exempt = validate_tables(
        paths, rules=RULES, min_samples_applies=lambda p: p.name != "test.parquet"
    )
    assert exempt.success

    default = validate_tables(paths, rules=RULES)
    assert not default.success
    [failure] = default.failures
    assert (failure.file, failure.column, failure.expectation) == (str(test_set), None, ROW_COUNT)

    # The exemption is only for the row count: a tiny client still fails.
    tiny_client = write_table(tmp_path / "client_0002.parquet", make_columns(num_rows=2))
    report = validate_tables(
        [*paths, tiny_client], rules=RULES, min_samples_applies=lambda p: p.name != "test.parquet"
    )
    assert [(f.file, f.expectation) for f in report.failures] == [(str(tiny_client), ROW_COUNT)]


def test_write_report_round_trips(tmp_path: Path) -> None:
    columns = make_columns()
    columns["x3"][4] = np.nan
    bad = write_table(tmp_path / "client_0000.parquet", columns)
    report = validate_tables([bad], rules=RULES)

    out = tmp_path / "reports" / "validation.json"
    write_report(report, out)

    written = json.loads(out.read_text())
    assert written == report.to_dict()
    assert written["success"] is False
    assert written["num_failed_files"] == 1
    [failure] = written["files"][0]["failures"]
    assert (failure["file"], failure["column"], failure["expectation"]) == (
        str(bad),
        "x3",
        NOT_NULL,
    )


# --------------------------------------------------------------- class rules (manifest)


def _manifest(*label_counts: dict[str, int]) -> dict:
    return {
        "clients": [
            {
                "client_id": f"client_{i}",
                "file": f"client_{i}.parquet",
                "num_examples": sum(c.values()),
                "label_counts": c,
            }
            for i, c in enumerate(label_counts)
        ]
    }


def test_single_class_dataset_fails_unless_allowed(tmp_path: Path) -> None:
    from fl_core.data.validation import check_classes

    kwargs = dict(
        num_classes=1,
        num_train_rows=20,
        clients_dir=tmp_path,
        train_file=tmp_path / "train.parquet",
        min_classes_per_client=1,
    )
    manifest = _manifest({"0": 10}, {"0": 10})

    failed = check_classes(manifest, allow_single_class=False, **kwargs)
    allowed = check_classes(manifest, allow_single_class=True, **kwargs)

    assert [f.expectation for r in failed for f in r.failures] == ["expect_at_least_two_classes"]
    assert allowed == []


def test_single_class_client_fails_when_config_asks_for_two(tmp_path: Path) -> None:
    from fl_core.data.validation import check_classes

    reports = check_classes(
        _manifest({"0": 5, "1": 5}, {"1": 10}),
        num_classes=2,
        num_train_rows=20,
        clients_dir=tmp_path,
        train_file=tmp_path / "t.parquet",
        allow_single_class=False,
        min_classes_per_client=2,
    )

    assert [Path(r.file).name for r in reports] == ["client_1.parquet"]
    assert "client_1 holds 1 class" in reports[0].failures[0].detail


def test_rows_missing_from_the_clients_fail(tmp_path: Path) -> None:
    from fl_core.data.validation import check_classes

    reports = check_classes(
        _manifest({"0": 5, "1": 5}),
        num_classes=2,
        num_train_rows=30,
        clients_dir=tmp_path,
        train_file=tmp_path / "t.parquet",
        allow_single_class=False,
        min_classes_per_client=1,
    )

    assert reports[0].failures[0].expectation == "expect_every_row_assigned"
