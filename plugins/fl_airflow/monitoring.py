"""Glue for the monitoring DAG: which champion, which evaluation data, which thresholds.

``clients: simulated`` (default): the champion is evaluated centrally on ``eval_path``.
``clients: remote``: the live edge clients check it on their own fresh data
(:mod:`fl_core.remote_monitoring`): :func:`publish` sends the check, the
``wait_for_reports`` sensor waits, :func:`check` aggregates their reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fl_airflow.hooks.artifact_store import fl_home, project_root


def _config() -> Any:
    from fl_core.config import load_params

    return load_params(project_root() / "params.yaml")


def cooldown_hours() -> float:
    return float(_config().monitoring.cooldown_hours)


def is_remote(params: dict[str, Any]) -> bool:
    mode = params.get("clients") or "simulated"
    if mode not in ("simulated", "remote"):
        raise ValueError(f"clients must be 'simulated' or 'remote', got {mode!r}")
    return bool(mode == "remote")


def publish(store: Any, params: dict[str, Any], *, run_id: str) -> dict[str, Any] | None:
    """Remote mode: publish a check of the champion to the live clients (None otherwise)."""
    if not is_remote(params):
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
    store under ``monitoring/reports/``."""
    if is_remote(params):
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
    report["report_key"] = write_report(store, run_id, report)
    return report
