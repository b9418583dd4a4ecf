"""MLflow registry behaviour of a finished campaign: deploy gate, no duplicate versions,
probabilities from the served model, one-line width errors, retries.

Services: none to start — the real MLflow SQLite tracking store and registry in tmp_path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_core import tracking as tr
from fl_core.config import Config
from fl_core.engine import run_campaign
from fl_core.store import LocalStore
from tests.conftest import tiny_config


def _campaign(cfg: Config, data: Path, home: Path, cid: str) -> Any:
    uri = f"sqlite:///{home / 'mlflow.db'}"
    tracking = tr.start_campaign_run(
        uri=uri,
        experiment="tests",
        campaign_id=cid,
        params=cfg.flat(),
        artifact_root=home / "mlartifacts",
    )
    return run_campaign(
        cfg,
        data_dir=data,
        store=LocalStore(home / "artifacts"),
        tracking=tracking,
        campaign_id=cid,
        progress=False,
    ), uri


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_gate_keeps_a_model_below_min_accuracy_as_challenger_with_the_reason(
    tiny_data: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(deploy={"min_accuracy": 0.999}, tracking={"registered_model": "fl-gate"})

    result, uri = _campaign(cfg, tiny_data, tmp_path, "gate-1")

    assert result.deployed["deployed"] is False and result.deployed["alias"] == "challenger"
    assert "deploy.min_accuracy 0.9990" in result.deployed["reason"]
    client = _client(uri)
    version = client.get_model_version_by_alias("fl-gate", "challenger")
    assert "deploy.min_accuracy" in version.tags["fl.deploy_gate"]
    with pytest.raises(Exception, match="champion"):
        client.get_model_version_by_alias("fl-gate", "champion")


def test_gate_refuses_a_model_no_better_than_the_majority_class() -> None:
    reasons = tr.gate_failures(0.62, majority=0.62, min_accuracy=0.5, beat_majority=True)

    assert reasons == ["accuracy 0.6200 is no better than predicting the majority class (0.6200)"]
    assert tr.gate_failures(0.9, majority=0.62, min_accuracy=0.5, beat_majority=True) == []


def test_identical_model_reuses_the_version_and_serves_probabilities(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc

    from fl_core.data.io import read_table

    cfg = tiny_config(tracking={"registered_model": "fl-dedupe"})
    first, uri = _campaign(cfg, tiny_data, tmp_path, "dedupe-1")
    second, _ = _campaign(cfg, tiny_data, tmp_path, "dedupe-2")

    assert first.model_sha256 == second.model_sha256
    assert first.registered["reused"] is False and second.registered["reused"] is True
    assert second.registered["version"] == first.registered["version"]
    assert len(_client(uri).search_model_versions("name = 'fl-dedupe'")) == 1
    location = _client(uri).get_experiment_by_name("tests").artifact_location
    assert location == (tmp_path / "mlartifacts").resolve().as_uri()  # not ./mlruns

    assert "MLFLOW_REGISTRY_URI" not in os.environ  # the campaign left no global state
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(key, uri)  # restored after the test
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/fl-dedupe@champion")
    x, y = read_table(tiny_data / "prepared" / "test.parquet")
    out = model.predict(x[:20])
    assert out["probabilities"].shape == (20, 10)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out["probabilities"].argmax(axis=1), out["label"])
    with pytest.raises(Exception) as err:
        model.predict(x[:2, :-1])
    assert str(err.value) == (
        'expected rows of 64 features, got 63; send {"inputs": [[64 numbers], ...]}'
    )


def test_experiment_opens_on_the_runs_page(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    exp_id = tr.ensure_experiment(uri, "kind")

    tags = _client(uri).get_experiment(exp_id).tags
    assert tags[tr.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_transient_mlflow_failures_are_retried_permanent_ones_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("FL_MLFLOW_RETRY_DELAY_S", "0.01")
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("API request failed: Max retries exceeded (Connection refused)")
        return "logged"

    def bad() -> None:
        calls.append(1)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: run 123 not found")

    assert tr.with_retries("log_batch", flaky) == "logged" and len(calls) == 3
    calls.clear()
    with pytest.raises(MlflowException, match="not found"):
        tr.with_retries("log_batch", bad)
    assert len(calls) == 1
