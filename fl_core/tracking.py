"""MLflow tracking and registry for federated campaigns.

One MLflow run per campaign: all params, per-round metrics (``step`` = round), the
convergence plot, the final model (pyfunc from code, explicit signature and pip
requirements) registered with federated metadata tags on the model version. Aliases
(``challenger`` / ``champion``), not stages.

The tracking target is a small dict ``{"uri", "experiment", "run_id"}`` stored in the
campaign record, so any process (an Airflow task, the engine) can log to the same run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fl_core.models import ModelSpec

logger = logging.getLogger(__name__)

ROUND_METRICS = (
    "test_accuracy",
    "test_loss",
    "train_loss",
    "client_accuracy_mean",
    "client_accuracy_std",
    "client_accuracy_min",
    "client_accuracy_p10",
    "num_accepted",
    "num_rejected",
    "bytes_up",
    "bytes_down",
    "epsilon",
    "uplink_ratio_vs_dense",
    "sim_time_s",
)


def default_tracking_uri(home: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set (production), else the embedded SQLite store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    path = Path(home).resolve() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(uri: str, name: str, *, artifact_root: str | Path | None = None) -> str:
    """Experiment id for ``name``, created (with a local artifact root if given) if missing."""
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = None
    if artifact_root is not None and not os.environ.get("MLFLOW_TRACKING_URI"):
        location = Path(artifact_root).resolve().as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def start_campaign_run(
    *,
    uri: str,
    experiment: str,
    campaign_id: str,
    params: dict[str, Any],
    tags: dict[str, str] | None = None,
    artifact_root: str | Path | None = None,
) -> dict[str, Any]:
    """Create the campaign's run and log every param; returns the tracking target."""
    from mlflow.entities import Param, RunTag

    client = _client(uri)
    exp_id = ensure_experiment(uri, experiment, artifact_root=artifact_root)
    run = client.create_run(
        exp_id, run_name=campaign_id, tags={"fl.campaign_id": campaign_id, **(tags or {})}
    )
    items = [
        Param(k, json.dumps(v) if isinstance(v, list | dict) else str(v))
        for k, v in sorted(params.items())
    ]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    client.log_batch(run.info.run_id, tags=[RunTag("mlflow.source.type", "LOCAL")])
    return {"uri": uri, "experiment": experiment, "run_id": run.info.run_id}


def log_round(tracking: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Log one round's metrics with ``step = round``."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    step = int(metrics["round"])
    batch = [Metric(k, float(metrics[k]), ts, step) for k in ROUND_METRICS if k in metrics]
    _client(tracking["uri"]).log_batch(tracking["run_id"], metrics=batch)


def log_metrics(tracking: dict[str, Any], metrics: dict[str, float]) -> None:
    """Log summary metrics (no step)."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    _client(tracking["uri"]).log_batch(
        tracking["run_id"], metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()]
    )


def set_tags(tracking: dict[str, Any], tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    _client(tracking["uri"]).log_batch(
        tracking["run_id"], tags=[RunTag(k, str(v)) for k, v in tags.items()]
    )


def end_run(tracking: dict[str, Any], status: str = "FINISHED") -> None:
    _client(tracking["uri"]).set_terminated(tracking["run_id"], status=status)


def plot_convergence(
    history: list[dict[str, Any]],
    path: Path,
    *,
    baseline_accuracy: float | None = None,
    title: str = "",
) -> Path:
    """Test accuracy and loss per round (with the centralized baseline if given) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [h["round"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(rounds, [h["test_accuracy"] for h in history], marker="o", ms=3, label="federated")
    if "client_accuracy_p10" in (history[0] if history else {}):
        ax1.plot(
            rounds, [h["client_accuracy_p10"] for h in history], ls=":", label="client accuracy p10"
        )
    if baseline_accuracy is not None:
        ax1.axhline(baseline_accuracy, color="k", ls="--", label="centralized baseline")
    ax1.set(xlabel="round", ylabel="test accuracy", title="accuracy")
    ax1.legend(loc="lower right")
    ax1.grid(alpha=0.3)
    ax2.plot(rounds, [h["test_loss"] for h in history], marker="o", ms=3, label="test loss")
    ax2.plot(rounds, [h["train_loss"] for h in history], marker=".", ms=3, label="train loss")
    ax2.set(xlabel="round", ylabel="cross-entropy", title="loss")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_artifact(tracking: dict[str, Any], path: Path, artifact_path: str | None = None) -> None:
    _client(tracking["uri"]).log_artifact(tracking["run_id"], str(path), artifact_path)


def data_lineage(campaign: dict[str, Any]) -> dict[str, Any]:
    """Partition content hashes used by a campaign and one combined data version."""
    hashes = {c["client_id"]: c["sha256"] for c in campaign["clients"]}
    hashes["test"] = campaign["test"]["sha256"]
    combined = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
    return {"data_version": combined, "partitions": hashes}


def register_campaign_model(
    tracking: dict[str, Any],
    *,
    campaign: dict[str, Any],
    vector: np.ndarray,
    history: list[dict[str, Any]],
    model_bytes: bytes,
) -> dict[str, Any]:
    """Log the final model to the campaign run, register it, tag it, alias it ``challenger``."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from fl_core.models import vector_sha256

    cfg = campaign["config"]
    spec = ModelSpec.from_json(campaign["model_spec"])
    name = cfg["tracking"]["registered_model"]
    lineage = data_lineage(campaign)
    uri = tracking["uri"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, spec.num_features), "features")]),
        outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,), "label")]),
    )
    code_file = Path(__file__).with_name("mlflow_model_code.py")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.flw"
        weights.write_bytes(model_bytes)
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec.to_json()))
        lineage_file = Path(tmp) / "data_lineage.json"
        lineage_file.write_text(json.dumps(lineage, indent=1, sort_keys=True))
        plot = plot_convergence(
            history, Path(tmp) / "convergence.png", title=campaign["campaign_id"]
        )
        log_artifact(tracking, plot)
        log_artifact(tracking, lineage_file)
        with mlflow.start_run(run_id=tracking["run_id"]):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(code_file),
                artifacts={"weights": str(weights), "spec": str(spec_file)},
                code_paths=[str(Path(__file__).parent)],
                signature=signature,
                pip_requirements=_pip_requirements(),
                registered_model_name=name,
            )
    version = str(info.registered_model_version)
    final = history[-1] if history else {}
    tags = {
        "fl.campaign_id": campaign["campaign_id"],
        "fl.strategy": cfg["server"]["strategy"],
        "fl.server_optimizer": cfg["server"]["optimizer"],
        "fl.rounds": str(len(history)),
        "fl.num_clients": str(len(campaign["clients"])),
        "fl.clients_per_round": str(cfg["campaign"]["clients_per_round"]),
        "fl.seed": str(cfg["campaign"]["seed"]),
        "fl.dataset": str(campaign.get("dataset")),
        "fl.partition": json.dumps(cfg["partition"], sort_keys=True),
        "fl.model": spec.name,
        "fl.model_sha256": vector_sha256(vector),
        "fl.data_version": lineage["data_version"],
        "fl.partition_hashes": _fit_tag(json.dumps(lineage["partitions"], sort_keys=True)),
        "fl.test_accuracy": f"{final.get('test_accuracy', float('nan')):.6f}",
        "fl.validation_status": str(campaign.get("validation_status", "unknown")),
    }
    client = _client(uri)
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    client.set_registered_model_alias(name, "challenger", version)
    logger.info("registered %s version %s (alias challenger)", name, version)
    return {"registered_model": name, "version": version, "model_uri": f"models:/{name}/{version}"}


def _fit_tag(text: str, limit: int = 7500) -> str:
    return text if len(text) <= limit else text[: limit - 20] + "...(see artifact)"


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"mlflow=={version('mlflow')}",
        f"numpy=={version('numpy')}",
        f"torch=={version('torch').split('+')[0]}",
    ]


def model_accuracy(model_uri: str, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of an MLflow model (loaded as pyfunc, the way it is served) on (x, y)."""
    import mlflow.pyfunc

    pred = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(x.astype(np.float32)))
    return float((pred.reshape(-1) == y).mean())


def promote_if_better(
    tracking: dict[str, Any], registered: dict[str, Any], *, x_test: np.ndarray, y_test: np.ndarray
) -> dict[str, Any]:
    """Alias the new version ``champion`` if it beats the current champion on (x_test, y_test)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking["uri"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = _client(uri)
    name, version = registered["registered_model"], registered["version"]
    new_acc = model_accuracy(f"models:/{name}/{version}", x_test, y_test)
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champion = None
    champ_acc = None
    if champion is not None and str(champion.version) != str(version):
        champ_acc = model_accuracy(f"models:/{name}/{champion.version}", x_test, y_test)
    promoted = champ_acc is None or new_acc > champ_acc
    if promoted:
        client.set_registered_model_alias(name, "champion", version)
        client.delete_registered_model_alias(name, "challenger")
    client.set_model_version_tag(name, version, "fl.deploy_eval_accuracy", f"{new_acc:.6f}")
    out = {
        "deployed": promoted,
        "registered_model": name,
        "version": version,
        "accuracy": new_acc,
        "champion_version": None if champion is None else str(champion.version),
        "champion_accuracy": champ_acc,
        "alias": "champion" if promoted else "challenger",
    }
    log_metrics(tracking, {"deploy_eval_accuracy": new_acc})
    set_tags(tracking, {"fl.deploy": json.dumps(out)})
    logger.info(
        "deploy: version %s -> %s (new %.4f vs champion %s)",
        version,
        out["alias"],
        new_acc,
        champ_acc,
    )
    return out
