"""Steps of the monitoring and retraining DAGs (no Airflow here; the DAGs call these).

Monitoring: evaluate the deployed ``champion`` on the latest evaluation data, validate that
data (Great Expectations), measure its drift from the training data (PSI), decide whether
the model is degraded, and trigger retraining at most once per cooldown.
Retraining: a new campaign warm-started from the champion's weights.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fl_core.config import Config
from fl_core.rounds.layout import (
    MONITORING_COOLDOWN,
    MONITORING_INCONCLUSIVE,
    monitoring_report_key,
)
from fl_core.store import ArtifactStore

logger = logging.getLogger(__name__)

COOLDOWN_KEY = MONITORING_COOLDOWN
INCONCLUSIVE_KEY = MONITORING_INCONCLUSIVE


def champion(tracking_uri: str, model_name: str) -> tuple[np.ndarray, dict[str, str]] | None:
    """The champion's parameter vector and version tags from the registry (None if none)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from fl_core import wire
    from fl_core.tracking import _fluent_uri

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(model_name, "champion")
        with tempfile.TemporaryDirectory() as tmp, _fluent_uri(tracking_uri):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{model_name}/{version.version}", dst_path=tmp
            )
            weights = next(Path(local).rglob("weights.flw"))
            _, vector = wire.decode(weights.read_bytes())
            return vector, dict(version.tags)
    except (MlflowException, StopIteration) as exc:
        logger.info("no champion to warm-start from (%s)", exc)
        return None


def champion_clients(store: ArtifactStore, tracking_uri: str, model_name: str) -> str | None:
    """How the champion was trained: ``campaign.clients`` (``"simulated"`` or ``"remote"``)
    of the campaign named by its ``fl.campaign_id`` version tag, read from that campaign's
    record in ``store``. None when there is no champion or its campaign is not in ``store``.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from fl_core.rounds.state import CampaignNotFound, load_campaign

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(model_name, "champion")
    except MlflowException as exc:
        logger.info("no champion of %s (%s)", model_name, exc)
        return None
    cid = version.tags.get("fl.campaign_id")
    if not cid:
        return None
    try:
        rec = load_campaign(store, cid)
    except CampaignNotFound:
        logger.warning("champion %s v%s: campaign %s not in the store", model_name,
                       version.version, cid)  # fmt: skip
        return None
    # The frozen config as the campaign ran it; a record without the field predates remote
    # clients: simulated (the config default).
    return str(((rec.get("config") or {}).get("campaign") or {}).get("clients") or "simulated")


def verdict(report: dict[str, Any]) -> str:
    """``"healthy"``, ``"degraded"`` or ``"inconclusive"`` (``healthy`` is None: no evidence,
    e.g. no client reported on a remote check)."""
    if report.get("healthy") is None:
        return "inconclusive"
    return "healthy" if report["healthy"] else "degraded"


def check_champion(
    cfg: Config,
    *,
    tracking_uri: str,
    eval_path: Path,
    reference_path: Path,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate ``models:/NAME@champion`` on ``eval_path`` and judge its health.

    Degraded when accuracy dropped more than ``monitoring.max_accuracy_drop`` below the
    accuracy measured at deploy time, when the features drifted (mean PSI against
    ``reference_path`` above ``monitoring.max_drift``), or when the data fails validation.
    """
    from mlflow.tracking import MlflowClient

    from fl_core.data.io import read_table
    from fl_core.data.validation import ValidationRules, validate_tables
    from fl_core.monitoring import check_health, drift_statistic
    from fl_core.tracking import model_accuracy

    name = cfg.tracking.registered_model
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    champion = client.get_model_version_by_alias(name, "champion")
    reference_accuracy = float(champion.tags.get("fl.deploy_eval_accuracy", "nan"))
    report = validate_tables(
        [eval_path],
        rules=ValidationRules(
            num_features=int(meta["num_features"]),
            labels=tuple(int(v) for v in meta["labels"]),
            feature_min=meta["feature_min"],
            feature_max=meta["feature_max"],
            min_samples=1,
        ),
    )
    out: dict[str, Any] = {
        "model": name,
        "version": str(champion.version),
        "eval_path": str(eval_path),
        "reference_accuracy": reference_accuracy,
        "validation_failures": [f.__dict__ for f in report.failures],
    }
    reasons: list[str] = []
    if not report.success:
        reasons.append(f"evaluation data failed validation ({len(report.failures)} failures)")
        out.update(healthy=False, verdict="degraded", reasons=reasons, accuracy=None, drift=None)
        return out
    from fl_core.tracking import _fluent_uri

    x, y = read_table(eval_path)
    x_ref, y_ref = read_table(reference_path)
    with _fluent_uri(tracking_uri):  # restores MLFLOW_*_URI: later processes are not redirected
        accuracy = model_accuracy(f"models:/{name}/{champion.version}", x, y)
    drift = drift_statistic(x_ref, x, reference_y=y_ref, current_y=y)
    health = check_health(
        accuracy=accuracy,
        reference_accuracy=None if np.isnan(reference_accuracy) else reference_accuracy,
        drift=float(drift["psi_mean"]),
        max_accuracy_drop=cfg.monitoring.max_accuracy_drop,
        max_drift=cfg.monitoring.max_drift,
    )
    out.update(
        healthy=health.healthy,
        verdict="healthy" if health.healthy else "degraded",
        reasons=list(health.reasons),
        accuracy=accuracy,
        drift=drift,
    )
    return out


def decide_retraining(
    store: ArtifactStore, report: dict[str, Any], *, now_s: float, cooldown_hours: float
) -> dict[str, Any]:
    """Trigger retraining for a degraded model, at most once per cooldown (state in store).

    An inconclusive check (no evidence, :func:`verdict`) triggers nothing and leaves the
    cooldown alone; the decision says ``"inconclusive": True``, and ``"alert"`` says whether
    the DAG alerts on it: the first inconclusive check of a run of them does, then one per
    cooldown while the run lasts (an offline fleet would otherwise page on every scheduled
    check). A conclusive check ends the run, so the next one alerts at once.
    """
    from fl_core.monitoring import Cooldown

    since, alerts = _inconclusive_run(store, cooldown_s=cooldown_hours * 3600.0)
    if verdict(report) == "inconclusive":
        reason = "inconclusive: " + "; ".join(report.get("reasons") or ["no evidence"])
        since = now_s if since is None else since
        alert = alerts.allow(now_s)
        if alert:
            alerts.record(now_s)
            store.put_json(INCONCLUSIVE_KEY, {"since_s": since, **alerts.state_dict()})
        else:
            ago = now_s - (alerts.last_s if alerts.last_s is not None else now_s)
            reason += (
                f" (no evidence for {now_s - since:.0f} s; alerted {ago:.0f} s ago, "
                f"again every {cooldown_hours:g} h while it lasts)"
            )
        return {"trigger": False, "inconclusive": True, "alert": alert, "reason": reason}
    if since is not None:  # evidence again: the next outage alerts at once
        store.put_json(INCONCLUSIVE_KEY, {"since_s": None, "last_s": None, "num_triggers": 0})
    if report["healthy"]:
        return {"trigger": False, "reason": "healthy"}
    cooldown = Cooldown(cooldown_s=cooldown_hours * 3600.0)
    if store.exists(COOLDOWN_KEY):
        cooldown.load_state_dict(store.get_json(COOLDOWN_KEY))
    reason = "; ".join(report["reasons"])
    if not cooldown.allow(now_s):
        return {
            "trigger": False,
            "reason": f"cooldown ({cooldown.remaining(now_s):.0f} s left)",
            "degraded": reason,
        }
    cooldown.record(now_s)
    store.put_json(COOLDOWN_KEY, cooldown.state_dict())
    return {"trigger": True, "reason": reason}


def _inconclusive_run(store: ArtifactStore, *, cooldown_s: float) -> tuple[float | None, Any]:
    """The current run of inconclusive checks: since when (None: no run) and the
    :class:`~fl_core.monitoring.Cooldown` of its alerts. A malformed record is reported and
    treated as none: better one alert too many than none."""
    from fl_core.monitoring import Cooldown

    alerts = Cooldown(cooldown_s=cooldown_s)
    if not store.exists(INCONCLUSIVE_KEY):
        return None, alerts
    try:
        raw = store.get_json(INCONCLUSIVE_KEY)
        since = None if raw["since_s"] is None else float(raw["since_s"])
        if since is not None and not math.isfinite(since):
            raise ValueError(f"since_s is {since}")
        alerts.load_state_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning("ignoring a malformed %s (%s): the check alerts", INCONCLUSIVE_KEY, exc)
        return None, Cooldown(cooldown_s=cooldown_s)
    return since, alerts


def alert_payload(report: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    inconclusive = verdict(report) == "inconclusive"
    event = "federated_monitoring_inconclusive" if inconclusive else "federated_model_degraded"
    return {
        "event": event,
        "model": report.get("model"),
        "version": report.get("version"),
        "verdict": verdict(report),
        "reasons": report.get("reasons"),
        "accuracy": report.get("accuracy"),
        "reference_accuracy": report.get("reference_accuracy"),
        "psi_mean": (report.get("drift") or {}).get("psi_mean"),
        "retraining_triggered": decision.get("trigger"),
        "decision": decision.get("reason"),
    }


def write_report(store: ArtifactStore, run_id: str, report: dict[str, Any]) -> str:
    key = monitoring_report_key(run_id)
    store.put_json(key, json.loads(json.dumps(report, default=str)))
    return key
