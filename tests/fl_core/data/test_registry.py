"""`fl init-dataset` and `fl check` on a user's own CSV (real files, real CLI via typer)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fl_core.cli import app
from fl_core.config import load_params

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    rng = np.random.default_rng(0)
    lines = ["f0,f1,diagnosis,site"] + [
        f"{rng.normal():.3f},{rng.normal():.3f},{i % 2},s{i % 3}" for i in range(60)
    ]
    (tmp_path / "mine.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_init_dataset_registers_links_and_selects_it(project: Path) -> None:
    before = (project / "params.yaml").read_text()

    out = CliRunner().invoke(
        app,
        [
            "init-dataset",
            "clinics",
            "--file",
            "mine.csv",
            "--label",
            "diagnosis",
            "--client-column",
            "site",
        ],
    )

    assert out.exit_code == 0, out.output
    link = project / "data/raw/clinics.csv"
    assert link.is_symlink() and link.resolve() == (project / "mine.csv").resolve()
    cfg = load_params(project / "params.yaml")
    assert cfg.data.dataset == "clinics" and cfg.partition.scheme == "natural"
    assert cfg.datasets["clinics"].client_column == "site"
    assert cfg.tracking.registered_model == "fl-clinics-mlp"
    after = (project / "params.yaml").read_text()
    assert "# The single source of truth" in after  # comments kept
    assert "null" in after and after.count("\n") >= before.count("\n")
    assert CliRunner().invoke(app, ["check"]).exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--file", "missing.csv"], "missing.csv not found"),
        (["--file", "mine.csv", "--label", "target"], "label column 'target'"),
        (
            ["--file", "mine.csv", "--label", "diagnosis", "--client-column", "clinic"],
            "client column 'clinic'",
        ),
    ],
)
def test_init_dataset_refuses_bad_input_and_changes_nothing(
    project: Path, args: list[str], message: str
) -> None:
    before = (project / "params.yaml").read_text()

    out = CliRunner().invoke(app, ["init-dataset", "clinics", *args])

    assert out.exit_code == 2 and message in out.output
    assert (project / "params.yaml").read_text() == before
    assert not (project / "data/raw/clinics.csv").exists()


def test_check_names_a_missing_file_and_missing_columns(project: Path) -> None:
    assert (
        CliRunner()
        .invoke(
            app,
            [
                "init-dataset",
                "clinics",
                "--file",
                "mine.csv",
                "--label",
                "diagnosis",
                "--client-column",
                "site",
            ],
        )
        .exit_code
        == 0
    )
    (project / "mine.csv").write_text("f0,label\n1,0\n")

    columns = CliRunner().invoke(app, ["check"])
    (project / "mine.csv").unlink()
    missing = CliRunner().invoke(app, ["check"])

    assert columns.exit_code == 2
    assert "datasets.clinics.label_column: column 'diagnosis'" in columns.output
    assert "datasets.clinics.client_column: column 'site'" in columns.output
    assert missing.exit_code == 2 and "data/raw/clinics.csv not found" in missing.output


def test_prepare_of_a_missing_file_is_one_line_not_a_traceback(project: Path) -> None:
    params = (
        (project / "params.yaml")
        .read_text()
        .replace("dataset: mnist5k", "dataset: file")
        .replace("path: null", "path: nowhere.csv", 1)
    )
    (project / "params.yaml").write_text(params)

    out = CliRunner().invoke(app, ["prepare"])

    assert out.exit_code == 1 and "data.path: file nowhere.csv not found" in out.output
    assert "Traceback" not in out.output
