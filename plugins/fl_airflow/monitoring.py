"""Glue for the monitoring DAG: which champion, which evaluation data, which thresholds.

``clients: simulated``: the champion is evaluated centrally on ``eval_path``.
``clients: remote``: the live edge clients check it on their own fresh data
(:mod:`fl_core.remote_monitoring`): :func:`publish` sends the check, the
``wait_for_reports`` sensor waits, :func:`check` aggregates their reports.
``clients: auto`` (default, or not set): the mode the champion was trained in
(:func:`clients_mode`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fl_airflow.hooks.artifact_store import fl_home, project_root

logger = logging.getLogger(__name__)

MODES = ("auto", "simulated", "remote")


def _config() -> Any:
    from fl_core.config import load_params

    return load_params(project_root() / "params.yaml")


def cooldown_hours() -> float:
    return float(_config().monitoring.cooldown_hours)


def _requested(params: dict[str, Any]) -> str:
    mode = params.get("clients") or "auto"
    if mode not in MODES:
        raise ValueError(f"clients must be one of {MODES}, got {mode!r}")
    return str(mode)


def clients_mode(store: Any, params: dict[str, Any]) -> str:
    """``"simulated"`` or ``"remote"``: ``clients`` of the run's conf when it names one, else
    the champion's training mode (``campaign.clients`` of the campaign that produced it, via
    its ``fl.campaign_id`` tag), so a champion trained by remote devices is checked by them.
    With no champion, or its campaign not in the store: simulated (as before)."""
    mode = _requested(params)
    if mode != "auto":
        return mode
    from fl_core.config import with_overrides
    from fl_core.operations import champion_clients
    from fl_core.tracking import default_tracking_uri

    cfg = _config()
    if params.get("registered_model"):
        cfg = with_overrides(cfg, {"tracking.registered_model": params["registered_model"]})
    name = cfg.tracking.registered_model
    trained = champion_clients(store, default_tracking_uri(fl_home()), name)
    logger.info("clients: auto -> %s (champion of %s trained with clients: %s)",
                trained or "simulated", name, trained)  # fmt: skip
    return trained or "simulated"


def next_task(report: dict[str, Any], decision: dict[str, Any]) -> str | None:
    """The ``decide`` branch: ``alert`` (then retraining) when the decision triggers,
    ``alert_inconclusive`` when the check found no evidence and the decision alerts on it
    (nothing when that run of inconclusive checks was alerted within the cooldown),
    ``alert_suppressed`` when degraded within the cooldown, nothing when healthy."""
    if decision["trigger"]:
        return "alert"
    if decision.get("inconclusive"):
        return "alert_inconclusive" if decision.get("alert", True) else None
    return "alert_suppressed" if not report["healthy"] else None


def publish(store: Any, params: dict[str, Any], *, run_id: str) -> dict[str, Any] | None:
    """Remote mode (:func:`clients_mode`): publish a check of the champion to the live
    clients. None in simulated mode: then :func:`check` evaluates centrally."""
    if clients_mode(store, params) != "remote":
        return None
    import math

    from mlflow.tracking import MlflowClient

    from fl_core.config import with_overrides
    from fl_core.operations import champion
    from fl_core.remote_monitoring import publish_check
    from fl_core.tracking import default_tracking_uri

    cfg = _config()
    if params.get("registered_model"):
        cfg = with_overrides(cfg, {"tracking.registered_model": params["registered_model"]})
    name = cfg.tracking.registered_model
    uri = default_tracking_uri(fl_home())
    version = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(
        name, "champion"
    )
    found = champion(uri, name)
    if found is None:
        raise RuntimeError(f"no champion of {name!r} to monitor")
    vector, tags = found
    ref_acc = float(tags.get("fl.deploy_eval_accuracy", "nan"))
    return publish_check(
        store,
        campaign_id=tags["fl.campaign_id"],
        model=name,
        version=int(version.version),
        vector=vector,
        reference_accuracy=None if math.isnan(ref_acc) else ref_acc,
        run_id=run_id,
        deadline_s=float(params.get("deadline_s") or 600),
    )


def check(
    store: Any, params: dict[str, Any], *, run_id: str, published: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run the health check of the champion on the latest evaluation data (remote mode: from
    the clients' reports on the check ``published``); the report is saved in the artifact
    store under ``monitoring/reports/``. The mode is the one :func:`publish` chose: remote
    when it ``published`` a check."""
    if published or _requested(params) == "remote":
        from fl_core.operations import write_report
        from fl_core.remote_monitoring import collect_check

        if not published:
            raise RuntimeError("remote monitoring: publish_check returned no check")
        cfg = _config()
        report = collect_check(
            store,
            published["check_id"],
            max_accuracy_drop=cfg.monitoring.max_accuracy_drop,
            max_drift=cfg.monitoring.max_drift,
        )
        report["report_key"] = write_report(store, run_id, report)
        return report
    from mlflow.tracking import MlflowClient

    from fl_core.config import with_overrides
    from fl_core.data.io import read_json
    from fl_core.operations import check_champion, write_report
    from fl_core.rounds.state import load_campaign
    from fl_core.tracking import default_tracking_uri

    cfg = _config()
    if params.get("registered_model"):
        cfg = with_overrides(cfg, {"tracking.registered_model": params["registered_model"]})
    uri = default_tracking_uri(fl_home())
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias(cfg.tracking.registered_model, "champion")
    # Drift is measured against the data the champion was trained on.
    campaign = load_campaign(store, champion.tags["fl.campaign_id"])
    data = Path(campaign["data_dir"])
    eval_path = params.get("eval_path") or cfg.monitoring.eval_path
    report = check_champion(
        cfg,
        tracking_uri=uri,
        eval_path=Path(eval_path) if eval_path else data / "prepared" / "test.parquet",
        reference_path=data / "prepared" / "train.parquet",
        meta=read_json(data / "prepared" / "meta.json"),
    )
    report.setdefault("mode", "simulated")
    report["report_key"] = write_report(store, run_id, report)
    return report
