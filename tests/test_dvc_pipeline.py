"""End to end: `dvc repro` of the real pipeline in a temporary copy of the repo.

Services: none to start — real DVC (a temporary git repo), the real MLflow tracking store and
model registry (SQLite under the copy's FL_HOME), real Great Expectations.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IGNORE = shutil.ignore_patterns(
    ".venv",
    ".fl",
    ".git",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "prepared",
    "clients",
    "models",
    "metrics",
    "plots",
    "reports",
    "dvc.lock",
    "dvc_plots",
    "*.egg-info",
    "mlflow.db",
)

TINY = {
    "data": {"dataset": "digits", "seed": 3},
    "partition": {"scheme": "dirichlet", "num_clients": 6, "alpha": 1.0, "min_samples": 10},
    "model": {"name": "mlp", "hidden": [32]},
    "client": {"local_epochs": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9},
    "server": {"momentum": 0.0},
    "campaign": {"name": "e2e", "rounds": 3, "clients_per_round": 4, "seed": 5},
    "evaluate": {"baseline_epochs": 3},
    "tracking": {"experiment": "e2e", "registered_model": "fl-e2e"},
}

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("repo") / "project"
    shutil.copytree(REPO, root, ignore=IGNORE)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "FL_HOME": str(root / ".fl"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"],
    ):
        assert _run(cmd, root, env).returncode == 0
    return root, env


@pytest.fixture(scope="module")
def first_repro(project: tuple[Path, dict[str, str]]) -> subprocess.CompletedProcess[str]:
    root, env = project
    out = _run(["dvc", "repro"], root, env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_repro_runs_every_stage_and_writes_metrics(
    project: tuple[Path, dict[str, str]], first_repro: subprocess.CompletedProcess[str]
) -> None:
    root, _ = project
    for stage in ("prepare", "partition", "validate", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first_repro.stdout
    train = json.loads((root / "metrics/train.json").read_text())
    ev = json.loads((root / "metrics/eval.json").read_text())
    assert train["rounds"] == 3
    assert 0.5 < ev["federated_test_accuracy"] <= 1.0
    assert ev["baseline_test_accuracy"] > 0.5
    assert (root / "plots/convergence.png").stat().st_size > 1000
    manifest = json.loads((root / "data/clients/manifest.json").read_text())
    assert len(manifest["clients"]) == 6
    assert json.loads((root / "reports/validation.json").read_text())["success"] is True


def test_mlflow_has_the_campaign_run_and_registered_model(
    project: tuple[Path, dict[str, str]], first_repro: subprocess.CompletedProcess[str]
) -> None:
    from mlflow.tracking import MlflowClient

    root, _ = project
    uri = f"sqlite:///{root / '.fl' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["campaign.rounds"] == "3"
    assert run.data.params["partition.scheme"] == "dirichlet"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")]
    assert steps == [1, 2, 3]
    assert "baseline_test_accuracy" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"convergence.png", "data_lineage.json"} <= artifacts

    version = client.get_model_version_by_alias("fl-e2e", "champion")
    tags = version.tags
    assert tags["fl.strategy"] == "fedavg" and tags["fl.rounds"] == "3"
    assert tags["fl.seed"] == "5" and tags["fl.num_clients"] == "6"
    manifest = json.loads((root / "data/clients/manifest.json").read_text())
    hashes = json.loads(tags["fl.partition_hashes"])
    assert {c["client_id"]: c["sha256"] for c in manifest["clients"]}.items() <= hashes.items()

    import mlflow.pyfunc
    import numpy as np

    from fl_core.data.io import read_table

    x, y = read_table(root / "data/prepared/test.parquet")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/fl-e2e@champion")
    accuracy = float((np.asarray(model.predict(x)["label"]) == y).mean())
    ev = json.loads((root / "metrics/eval.json").read_text())
    assert accuracy == pytest.approx(ev["federated_test_accuracy"], abs=1e-6)


def test_second_repro_is_a_noop_and_one_key_reruns_only_its_stage(
    project: tuple[Path, dict[str, str]], first_repro: subprocess.CompletedProcess[str]
) -> None:
    root, env = project
    again = _run(["dvc", "repro"], root, env)
    assert again.returncode == 0, again.stderr
    assert "Running stage" not in again.stdout

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["baseline_epochs"] = 4
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = _run(["dvc", "repro"], root, env)
    assert changed.returncode == 0, changed.stderr
    assert "Running stage 'evaluate'" in changed.stdout
    for stage in ("prepare", "partition", "validate", "train"):
        assert f"Running stage '{stage}'" not in changed.stdout

    metrics = _run(["dvc", "metrics", "show", "--json"], root, env)
    assert metrics.returncode == 0
    assert "federated_test_accuracy" in metrics.stdout
    plots = _run(["dvc", "plots", "show", "-o", str(root / "dvc_plots")], root, env)
    assert plots.returncode == 0, plots.stderr
    page = (root / "dvc_plots" / "index.html").read_text()
    assert "cdn.jsdelivr.net" not in page and "<script src" not in page  # renders offline
    assert "vega-embed@6.29.0" in page and "vegaEmbed(" in page


def test_validate_names_file_column_and_expectation_of_a_corrupted_partition(
    project: tuple[Path, dict[str, str]], first_repro: subprocess.CompletedProcess[str]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, env = project
    victim = root / "data/clients/client_0002.parquet"
    table = pq.read_table(victim)
    col = table.column("x5").to_numpy().copy()
    col[0] = float("nan")
    pq.write_table(table.set_column(5, "x5", pa.array(col, type=pa.float32())), victim)

    out = _run(["fl", "validate"], root, env)

    assert out.returncode == 1
    report = out.stdout + out.stderr
    assert "client_0002.parquet" in report and "x5" in report
    assert "expect_column_values_to_not_be_null" in report


def test_bad_params_key_fails_before_any_work(
    project: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, env = project
    bad = tmp_path / "params.yaml"
    bad.write_text("partition:\n  scheme: by_colour\n")

    out = _run(["fl", "prepare", "--params", str(bad)], tmp_path, env)

    assert out.returncode == 2
    assert "partition.scheme" in out.stderr and "'dirichlet'" in out.stderr
    assert not (tmp_path / "data").exists()
