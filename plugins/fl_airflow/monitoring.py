"""Glue for the monitoring DAG: which champion, which evaluation data, which thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fl_airflow.hooks.artifact_store import fl_home, project_root


def _config() -> Any:
    from fl_core.config import load_params

    return load_params(project_root() / "params.yaml")


def cooldown_hours() -> float:
    return float(_config().monitoring.cooldown_hours)


def check(store: Any, params: dict[str, Any], *, run_id: str) -> dict[str, Any]:
    """Run the health check of the champion on the latest evaluation data; the report is
    saved in the artifact store under ``monitoring/reports/``."""
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
