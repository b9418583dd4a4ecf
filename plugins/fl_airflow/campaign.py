"""Glue between the DAGs' Params and fl_core: open or resume a campaign for a DAG run."""

from __future__ import annotations

from typing import Any

from fl_airflow.hooks.artifact_store import fl_home, project_root


def open_round(store: Any, params: dict[str, Any]) -> dict[str, Any]:
    """``{"campaign_id", "round"}`` for this run; round 1 without an id opens a campaign.

    Templated conf values may arrive as strings; they are converted and checked here.
    """
    from fl_core import pipeline
    from fl_core.campaigns import config_from_form, open_campaign
    from fl_core.config import load_params

    rnd = int(params.get("round") or 1)
    if rnd < 1:
        raise ValueError(f"round must be >= 1, got {rnd}")
    cid = params.get("campaign_id") or None
    if cid and store.exists(pipeline.campaign_key(cid, "campaign.json")):
        if rnd > 1 and not store.exists(pipeline.round_key(cid, rnd - 1, "metrics.json")):
            raise ValueError(f"campaign {cid}: round {rnd - 1} has not finished")
        return {"campaign_id": cid, "round": rnd}
    if rnd != 1:
        raise ValueError(f"campaign {cid!r} does not exist; only round 1 can start a campaign")
    cfg = config_from_form(load_params(project_root() / "params.yaml"), params)
    cid = open_campaign(
        store,
        cfg,
        project_root=project_root(),
        home=fl_home(),
        campaign_id=cid,
        tags={"fl.orchestrator": "airflow"},
    )
    return {"campaign_id": cid, "round": 1}
