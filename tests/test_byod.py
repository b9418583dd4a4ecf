"""Acceptance: bring your own data, end to end, the way the README tells a new user to.

A breast-cancer CSV (scikit-learn's ``load_breast_cancer`` written out with a ``site``
column of messy clinic names, raw unscaled features) is registered with
``fl init-dataset``, then ``.venv/bin/dvc repro``-style ``dvc repro`` runs the real pipeline
in a temporary copy of the repo: named dataset, natural clients with safe unique names,
federated feature scaling, the registered model named after the dataset, the deploy gate,
and the model served by a real ``mlflow models serve`` answering with probabilities.

Services: none to start — real DVC (a temporary git repo), the real MLflow SQLite store and
registry, real Great Expectations, ``mlflow models serve`` on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.test_dvc_pipeline import IGNORE

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SITES = ["Clinic A/North", "clinic a north", "St. Mary's", "clinic_b"]

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _write_cancer_csv(path: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "diagnosis"})
    frame["site"] = np.random.default_rng(0).choice(SITES, size=len(frame))
    frame.to_csv(path, index=False)


@pytest.fixture(scope="module")
def byod(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("byod")
    root = base / "project"
    shutil.copytree(REPO, root, ignore=IGNORE)
    csv = base / "cancer.csv"
    _write_cancer_csv(csv)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["campaign"].update(rounds=20, clients_per_round=4)
    params["tracking"]["experiment"] = "byod"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "FL_HOME": str(root / ".fl"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    init = _run(
        [
            str(root / "bin/fl"),
            "init-dataset",
            "cancer",
            "--file",
            str(csv),
            "--label",
            "diagnosis",
            "--client-column",
            "site",
        ],
        root,
        env,
    )
    assert init.returncode == 0, init.stderr
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"],
    ):
        assert _run(cmd, root, env).returncode == 0
    check = _run([str(root / "bin/fl"), "check"], root, env)
    repro = _run(["dvc", "repro"], root, env)
    assert repro.returncode == 0, repro.stdout + repro.stderr
    summary = _run([str(root / "bin/fl"), "summary"], root, env)
    return {
        "root": root,
        "env": env,
        "csv": csv,
        "check": check,
        "repro": repro,
        "summary": summary,
    }


def test_named_dataset_and_natural_clients_with_safe_unique_names(byod: dict[str, Any]) -> None:
    root = byod["root"]
    assert byod["check"].returncode == 0, byod["check"].stderr
    manifest = json.loads((root / "data/clients/manifest.json").read_text())
    meta = json.loads((root / "data/prepared/meta.json").read_text())

    assert manifest["dataset"] == meta["dataset"] == "cancer"
    ids = [c["client_id"] for c in manifest["clients"]]
    assert len(ids) == len(set(ids)) == len(SITES)
    assert "client_clinic_b" in ids
    assert all("/" not in i and " " not in i and "'" not in i for i in ids)
    assert sum(c["num_examples"] for c in manifest["clients"]) == meta["num_train"]


def test_features_are_scaled_from_client_aggregates(byod: dict[str, Any]) -> None:
    from fl_core.data.io import read_table
    from fl_core.data.scaling import FeatureMoments, combine

    root = byod["root"]
    manifest = json.loads((root / "data/clients/manifest.json").read_text())
    scaling = manifest["feature_scaling"]
    recombined = combine(
        FeatureMoments.from_json(c["feature_moments"]) for c in manifest["clients"]
    )
    x, _ = read_table(root / "data/prepared/train.parquet")

    assert scaling["method"] == "federated_moments" and scaling["num_clients"] == len(SITES)
    np.testing.assert_allclose(scaling["mean"], recombined.mean)
    np.testing.assert_allclose(scaling["mean"], x.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(scaling["std"], x.std(axis=0), rtol=1e-3)


def test_federated_accuracy_is_within_two_points_of_the_centralized_baseline(
    byod: dict[str, Any],
) -> None:
    ev = json.loads((byod["root"] / "metrics/eval.json").read_text())
    train = json.loads((byod["root"] / "metrics/train.json").read_text())

    assert ev["federated_test_accuracy"] > ev["majority_class_accuracy"] + 0.2
    assert ev["accuracy_gap_points"] <= 2.0
    assert train["updates_rejected_total"] == 0
    assert "majority class" in byod["summary"].stdout
    assert "WARNING" not in byod["summary"].stdout


def test_registered_under_the_datasets_name_and_promoted_through_the_gate(
    byod: dict[str, Any],
) -> None:
    from mlflow.tracking import MlflowClient

    root = byod["root"]
    uri = f"sqlite:///{root / '.fl' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    campaign = json.loads((root / "models/campaign.json").read_text())

    assert campaign["campaign_id"].startswith("cancer-mlp-")
    assert [m.name for m in client.search_registered_models()] == ["fl-cancer-mlp"]
    version = client.get_model_version_by_alias("fl-cancer-mlp", "champion")
    assert version.tags["fl.deploy_gate"] == "passed"
    assert version.tags["fl.dataset"] == "cancer"
    assert version.tags["fl.feature_scaling"] == "standard"
    assert campaign["deployed"]["majority_class_accuracy"] < campaign["deployed"]["accuracy"]


def test_editing_the_users_file_reruns_prepare(byod: dict[str, Any]) -> None:
    root, env, csv = byod["root"], byod["env"], byod["csv"]
    assert "Running stage 'prepare'" in byod["repro"].stdout

    text = csv.read_text()
    csv.write_text(text + text.splitlines()[1] + "\n")  # one more row
    status = _run(["dvc", "status", "prepare"], root, env)

    assert status.returncode == 0 and "data/raw" in status.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(port: int, body: dict[str, Any]) -> tuple[int, bytes]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_served_model_takes_raw_features_and_returns_probabilities(byod: dict[str, Any]) -> None:
    import pandas as pd

    root, env = byod["root"], byod["env"]
    frame = pd.read_csv(byod["csv"])
    x = frame.drop(columns=["diagnosis", "site"]).to_numpy(dtype=np.float32)[:50]
    y = frame["diagnosis"].to_numpy()[:50]
    port = _free_port()
    serve_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / '.fl' / 'mlflow.db'}"}
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/fl-cancer-mlp@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=serve_env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                time.sleep(1)
        status, body = _post(port, {"inputs": x.tolist()})
        bad_status, bad_body = _post(port, {"inputs": x[:2, :-1].tolist()})
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    assert status == 200
    out = json.loads(body)["predictions"]
    probabilities = np.asarray(out["probabilities"])
    assert probabilities.shape == (50, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (np.asarray(out["label"]) == y).mean() > 0.9  # raw features, scaled in the model
    assert bad_status == 400
    message = json.loads(bad_body)["message"]
    assert message == 'expected rows of 30 features, got 29; send {"inputs": [[30 numbers], ...]}'
    assert len(bad_body) < 1000
