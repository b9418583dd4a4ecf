"""MLflow tracking and registry for federated campaigns.

One MLflow run per campaign: all params, per-round metrics (``step`` = round), the
convergence plot, the final model (pyfunc from code, explicit signature and pip
requirements) registered with federated metadata tags on the model version. Aliases
(``challenger`` / ``champion``), not stages.

The tracking target is a small dict ``{"uri", "experiment", "run_id"}`` stored in the
campaign record, so any process (an Airflow task, the engine) can log to the same run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from fl_core.models import ModelSpec

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Experiment tag that makes MLflow 3's UI open the experiment on its runs page (classic ML)
#: instead of the GenAI "Traces" page.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

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


#: Attempts per MLflow call (``FL_MLFLOW_RETRIES`` overrides) and the first backoff delay in
#: seconds (``FL_MLFLOW_RETRY_DELAY_S``); the delay doubles per attempt, capped at 30 s, with
#: jitter. A restarted MLflow server (connection refused, 502/503/504, a locked SQLite
#: store) costs a few seconds, not a round's metrics.
DEFAULT_RETRIES = 6
DEFAULT_RETRY_DELAY_S = 1.0
_TRANSIENT_MARKERS = (
    "Max retries exceeded",
    "Connection refused",
    "Connection aborted",
    "Connection reset",
    "RemoteDisconnected",
    "Read timed out",
    "temporarily unavailable",
    "TEMPORARILY_UNAVAILABLE",
    "REQUEST_LIMIT_EXCEEDED",
    "database is locked",
    "error responses",  # urllib3: "too many 503 error responses"
    "Bad Gateway",
    "Service Unavailable",
    "Gateway Timeout",
)


def _transient(exc: BaseException) -> bool:
    """Whether ``exc`` looks like an MLflow server or store that is briefly unavailable."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    try:
        import requests

        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
    except ImportError:  # pragma: no cover - requests comes with mlflow
        pass
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        text = f"{exc.error_code} {exc.message}"
        return any(marker in text for marker in _TRANSIENT_MARKERS)
    return False


def with_retries(what: str, call: Callable[[], T]) -> T:
    """Run ``call`` (one MLflow request), retrying transient failures with exponential
    backoff and jitter; a permanent error (bad request, missing run) is raised at once."""
    attempts = max(1, int(os.environ.get("FL_MLFLOW_RETRIES", DEFAULT_RETRIES)))
    delay = float(os.environ.get("FL_MLFLOW_RETRY_DELAY_S", DEFAULT_RETRY_DELAY_S))
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts or not _transient(exc):
                raise
            wait = min(30.0, delay * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            logger.warning(
                "MLflow %s failed (%s: %s); retry %d/%d in %.1fs",
                what,
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
                attempt,
                attempts - 1,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def _call(uri: str, method: str, *args: Any, **kwargs: Any) -> Any:
    """``MlflowClient(uri).<method>(*args, **kwargs)`` with retries."""
    return with_retries(method, lambda: getattr(_client(uri), method)(*args, **kwargs))


def ensure_experiment(uri: str, name: str, *, artifact_root: str | Path | None = None) -> str:
    """Experiment id for ``name``, created (with a local artifact root if given) if missing,
    tagged as a classic-ML experiment so the MLflow UI opens it on the runs page."""
    exp = _call(uri, "get_experiment_by_name", name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND_TAG) is None:
            _call(uri, "set_experiment_tag", exp.experiment_id, EXPERIMENT_KIND_TAG,
                  EXPERIMENT_KIND)
        return str(exp.experiment_id)
    location = None
    # An embedded store (SQLite) keeps artifacts under FL_HOME; a tracking server manages its
    # own. (Not decided by MLFLOW_TRACKING_URI: mlflow.set_tracking_uri() sets it in-process,
    # and the next experiment's artifacts would land in ./mlruns.)
    if artifact_root is not None and uri.split(":", 1)[0] in ("sqlite", "file"):
        location = Path(artifact_root).resolve().as_uri()
    return str(
        _call(uri, "create_experiment", name, artifact_location=location,
              tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    )


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

    exp_id = ensure_experiment(uri, experiment, artifact_root=artifact_root)
    run = _call(
        uri, "create_run", exp_id, run_name=campaign_id,
        tags={"fl.campaign_id": campaign_id, **(tags or {})},
    )
    items = [
        Param(k, json.dumps(v) if isinstance(v, list | dict) else str(v))
        for k, v in sorted(params.items())
    ]
    for i in range(0, len(items), 100):
        _call(uri, "log_batch", run.info.run_id, params=items[i : i + 100])
    _call(uri, "log_batch", run.info.run_id, tags=[RunTag("mlflow.source.type", "LOCAL")])
    return {"uri": uri, "experiment": experiment, "run_id": run.info.run_id}


def log_round(tracking: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Log one round's metrics with ``step = round``."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    step = int(metrics["round"])
    batch = [Metric(k, float(metrics[k]), ts, step) for k in ROUND_METRICS if k in metrics]
    _call(tracking["uri"], "log_batch", tracking["run_id"], metrics=batch)


def log_metrics(tracking: dict[str, Any], metrics: dict[str, float]) -> None:
    """Log summary metrics (no step)."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    _call(
        tracking["uri"], "log_batch", tracking["run_id"],
        metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
    )


def set_tags(tracking: dict[str, Any], tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    _call(
        tracking["uri"], "log_batch", tracking["run_id"],
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
    )


def end_run(tracking: dict[str, Any], status: str = "FINISHED") -> None:
    _call(tracking["uri"], "set_terminated", tracking["run_id"], status=status)


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
    _call(tracking["uri"], "log_artifact", tracking["run_id"], str(path), artifact_path)


def data_lineage(campaign: dict[str, Any]) -> dict[str, Any]:
    """Partition content hashes used by a campaign and one combined data version."""
    hashes = {c["client_id"]: c["sha256"] for c in campaign["clients"]}
    hashes["test"] = campaign["test"]["sha256"]
    combined = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
    return {"data_version": combined, "partitions": hashes}


def spec_sha256(spec: ModelSpec) -> str:
    """Content hash of a model spec (architecture and feature scaling)."""
    return hashlib.sha256(json.dumps(spec.to_json(), sort_keys=True).encode()).hexdigest()


def find_identical_version(uri: str, name: str, *, model_sha256: str, spec_sha: str) -> Any:
    """The registered version of ``name`` with these exact weights and spec, or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = _call(uri, "search_model_versions", f"name = '{name}'")
    except MlflowException:
        return None
    for v in sorted(versions, key=lambda v: int(v.version)):
        tags = v.tags or {}
        if tags.get("fl.model_sha256") == model_sha256 and tags.get("fl.spec_sha256") == spec_sha:
            return v
    return None


def deploy_gate(campaign: dict[str, Any]) -> dict[str, Any]:
    """The campaign's deploy gate (``deploy`` section; defaults for older records)."""
    from fl_core.config import DeployConfig

    raw = dict(campaign.get("config", {}).get("deploy") or {})
    default = DeployConfig()
    return {
        "min_accuracy": float(raw.get("min_accuracy", default.min_accuracy)),
        "beat_majority": bool(raw.get("beat_majority", default.beat_majority)),
    }


def register_campaign_model(
    tracking: dict[str, Any],
    *,
    campaign: dict[str, Any],
    vector: np.ndarray,
    history: list[dict[str, Any]],
    model_bytes: bytes,
) -> dict[str, Any]:
    """Log the final model to the campaign run, register it, tag it, alias it ``challenger``.

    Identical weights with an identical spec are registered once: when a version with the
    same ``fl.model_sha256`` and ``fl.spec_sha256`` exists (e.g. ``dvc repro`` of the same
    params), that version is reused (``reused: True``) and no new version is created. The
    result carries the campaign's deploy gate for :func:`promote_if_better`.
    """
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from fl_core.models import vector_sha256

    cfg = campaign["config"]
    spec = ModelSpec.from_json(campaign["model_spec"])
    name = cfg["tracking"]["registered_model"]
    lineage = data_lineage(campaign)
    uri = tracking["uri"]
    model_sha = vector_sha256(vector)
    spec_sha = spec_sha256(spec)
    gate = deploy_gate(campaign)
    # Width -1: a request of the wrong width reaches the model, which answers in one line
    # (MLflow's own schema check would echo the whole request back, twice).
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1), "features")]),
        outputs=Schema([
            TensorSpec(np.dtype(np.int64), (-1,), "label"),
            TensorSpec(np.dtype(np.float32), (-1, spec.num_classes), "probabilities"),
        ]),
    )
    code_file = Path(__file__).with_name("mlflow_model_code.py")
    existing = find_identical_version(uri, name, model_sha256=model_sha, spec_sha=spec_sha)
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
        if existing is not None:
            version = str(existing.version)
            set_tags(tracking, {"fl.reused_model_version": f"{name}/{version}"})
            logger.info(
                "model %s... already registered as %s version %s: reused, not registered again",
                model_sha[:12], name, version,
            )
            aliases = set(getattr(existing, "aliases", []) or [])
            if "champion" not in aliases:
                _call(uri, "set_registered_model_alias", name, "challenger", version)
            return {
                "registered_model": name,
                "version": version,
                "model_uri": f"models:/{name}/{version}",
                "reused": True,
                "gate": gate,
            }
        with (
            _fluent_uri(uri),
            mlflow.start_run(run_id=tracking["run_id"]),
            warnings.catch_warnings(),
            _mlflow_prints_as_info(),
        ):
            _quiet_logging_warnings()
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
        "fl.model_sha256": model_sha,
        "fl.spec_sha256": spec_sha,
        "fl.feature_scaling": "standard" if spec.scaled else "none",
        "fl.data_version": lineage["data_version"],
        "fl.partition_hashes": _fit_tag(json.dumps(lineage["partitions"], sort_keys=True)),
        "fl.test_accuracy": f"{final.get('test_accuracy', float('nan')):.6f}",
        "fl.validation_status": str(campaign.get("validation_status", "unknown")),
    }
    for k, v in tags.items():
        _call(uri, "set_model_version_tag", name, version, k, v)
    _call(uri, "set_registered_model_alias", name, "challenger", version)
    logger.info("registered %s version %s (alias challenger)", name, version)
    return {
        "registered_model": name,
        "version": version,
        "model_uri": f"models:/{name}/{version}",
        "reused": False,
        "gate": gate,
    }


class _LogLines(io.TextIOBase):
    """A text stream that turns each written line into an INFO record of ``logger``."""

    def __init__(self) -> None:
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line.strip():
                logger.info("mlflow: %s", line.strip())
        return len(text)

    def flush(self) -> None:
        if self._buffer.strip():
            logger.info("mlflow: %s", self._buffer.strip())
        self._buffer = ""


@contextlib.contextmanager
def _mlflow_prints_as_info() -> Iterator[None]:
    """MLflow ``print``s its registry news ("Successfully registered model", "Created
    version") to stderr, which Airflow files at ERROR level: log them at INFO instead."""
    sink = _LogLines()
    try:
        with contextlib.redirect_stderr(sink):
            yield
    finally:
        sink.flush()


_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def _fluent_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``log_model``, ``pyfunc.load_model``) at ``uri``, then
    restore the environment: ``mlflow.set_tracking_uri`` / ``set_registry_uri`` also export
    ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI``, which would otherwise send every later
    child process (``mlflow models serve``, another campaign) to this store."""
    import mlflow

    saved = {k: os.environ.get(k) for k in _URI_VARS}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _quiet_logging_warnings() -> None:
    """Filter, at its source module, the warning MLflow prints on every model log without an
    input example: the signature is explicit, and an example would copy client data into
    the registry. (The type-hint warning is avoided in :mod:`fl_core.serving`.)"""
    warnings.filterwarnings(
        "ignore", message=r".*An input example was not provided", module=r"mlflow\.pyfunc",
    )


def _fit_tag(text: str, limit: int = 7500) -> str:
    return text if len(text) <= limit else text[: limit - 20] + "...(see artifact)"


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"mlflow=={version('mlflow')}",
        f"numpy=={version('numpy')}",
        f"torch=={version('torch').split('+')[0]}",
    ]


def predicted_labels(predictions: Any) -> np.ndarray:
    """The labels of a served model's output (``{"label", "probabilities"}`` or bare labels)."""
    if isinstance(predictions, dict):
        predictions = predictions["label"]
    return np.asarray(predictions).reshape(-1)


def model_accuracy(model_uri: str, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of an MLflow model (loaded as pyfunc, the way it is served) on (x, y)."""
    import mlflow.pyfunc

    model = with_retries("load_model", lambda: mlflow.pyfunc.load_model(model_uri))
    pred = predicted_labels(model.predict(x.astype(np.float32)))
    return float((pred == y).mean())


def majority_rate(y: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent label in ``y``."""
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    return float(np.bincount(labels).max() / labels.size) if labels.size else 0.0


def gate_failures(
    accuracy: float, *, majority: float, min_accuracy: float, beat_majority: bool
) -> list[str]:
    """Why a model fails the deploy gate (empty: it passes)."""
    reasons = []
    if accuracy < min_accuracy:
        reasons.append(f"accuracy {accuracy:.4f} < deploy.min_accuracy {min_accuracy:.4f}")
    if beat_majority and accuracy <= majority:
        reasons.append(
            f"accuracy {accuracy:.4f} is no better than predicting the majority class "
            f"({majority:.4f})"
        )
    return reasons


def promote_if_better(
    tracking: dict[str, Any],
    registered: dict[str, Any],
    *,
    x_test: np.ndarray,
    y_test: np.ndarray,
    gate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Alias the new version ``champion`` only if it passes the deploy gate and beats the
    current champion on (x_test, y_test); otherwise it stays ``challenger`` and the reason is
    logged (and tagged on the version as ``fl.deploy_gate``).

    The gate (``{"min_accuracy", "beat_majority"}``, the ``deploy`` section) comes from
    ``gate``, else from ``registered["gate"]`` (set by :func:`register_campaign_model`), else
    the defaults of :class:`fl_core.config.DeployConfig`.
    """
    from mlflow.exceptions import MlflowException

    from fl_core.config import DeployConfig

    uri = tracking["uri"]
    name, version = registered["registered_model"], registered["version"]
    rules = gate or registered.get("gate") or {}
    default = DeployConfig()
    min_accuracy = float(rules.get("min_accuracy", default.min_accuracy))
    beat_majority = bool(rules.get("beat_majority", default.beat_majority))
    with _fluent_uri(uri):
        new_acc = model_accuracy(f"models:/{name}/{version}", x_test, y_test)
    majority = majority_rate(y_test)
    try:
        champion = _call(uri, "get_model_version_by_alias", name, "champion")
    except MlflowException:
        champion = None
    champ_acc = None
    if champion is not None and str(champion.version) != str(version):
        with _fluent_uri(uri):
            champ_acc = model_accuracy(f"models:/{name}/{champion.version}", x_test, y_test)
    reasons = gate_failures(
        new_acc, majority=majority, min_accuracy=min_accuracy, beat_majority=beat_majority
    )
    if champ_acc is not None and new_acc <= champ_acc:
        reasons.append(
            f"accuracy {new_acc:.4f} does not beat champion version {champion.version} "
            f"({champ_acc:.4f})"
        )
    promoted = not reasons
    if promoted:
        _call(uri, "set_registered_model_alias", name, "champion", version)
        with contextlib.suppress(MlflowException):  # only if it names this version
            challenger = _call(uri, "get_model_version_by_alias", name, "challenger")
            if str(challenger.version) == str(version):
                _call(uri, "delete_registered_model_alias", name, "challenger")
    else:
        _call(uri, "set_registered_model_alias", name, "challenger", version)
    _call(uri, "set_model_version_tag", name, version, "fl.deploy_eval_accuracy", f"{new_acc:.6f}")
    _call(uri, "set_model_version_tag", name, version, "fl.deploy_gate",
          "passed" if promoted else _fit_tag("; ".join(reasons), 5000))
    out = {
        "deployed": promoted,
        "registered_model": name,
        "version": version,
        "accuracy": new_acc,
        "majority_class_accuracy": majority,
        "gate": {"min_accuracy": min_accuracy, "beat_majority": beat_majority},
        "champion_version": None if champion is None else str(champion.version),
        "champion_accuracy": champ_acc,
        "alias": "champion" if promoted else "challenger",
        "reason": "; ".join(reasons) if reasons else None,
    }
    log_metrics(tracking, {"deploy_eval_accuracy": new_acc})
    set_tags(tracking, {"fl.deploy": _fit_tag(json.dumps(out))})
    if promoted:
        logger.info("deploy: %s version %s -> champion (accuracy %.4f, champion before: %s)",
                    name, version, new_acc, champ_acc)
    else:
        logger.warning("deploy: %s version %s stays challenger: %s", name, version,
                       out["reason"])
    return out
