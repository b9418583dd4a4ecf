"""Glue between the DAGs' Params and fl_core: open or resume a campaign for a DAG run."""

from __future__ import annotations

from typing import Any

from fl_airflow.hooks.artifact_store import fl_home, project_root


def open_round(store: Any, params: dict[str, Any]) -> dict[str, Any]:
    """``{"campaign_id", "round"}`` for this run; round 1 without an id opens a campaign.

    Templated conf values may arrive as strings; they are converted and checked here.
    """
    from fl_core.campaigns import config_from_form, open_campaign
    from fl_core.config import load_params
    from fl_core.rounds import records
    from fl_core.rounds.campaign import check_campaign_id
    from fl_core.rounds.layout import campaign_record_key

    rnd = int(params.get("round") or 1)
    if rnd < 1:
        raise ValueError(f"round must be >= 1, got {rnd}")
    cid = params.get("campaign_id") or None
    if cid:
        check_campaign_id(cid)
    if cid and store.exists(campaign_record_key(cid)):
        status = records.maybe(store, records.CampaignStatus, cid)
        if rnd > 1 and (status is None or status.last_round < rnd - 1):
            raise ValueError(f"campaign {cid}: round {rnd - 1} has not finished")
        if status is not None and not status.proceed and rnd > status.last_round:
            raise ValueError(
                f"campaign {cid} ended after round {status.last_round} ({status.reason}); "
                f"round {rnd} is refused"
            )
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


def open_retraining(store: Any, conf: dict[str, Any]) -> dict[str, Any]:
    """Open a campaign warm-started from the champion, in the champion's own setting (its
    campaign's config, with this run's overrides); a fresh params.yaml campaign if there is
    no champion."""
    from fl_core.campaigns import config_from_form, open_campaign
    from fl_core.config import from_dict, load_params, with_overrides
    from fl_core.operations import champion
    from fl_core.rounds.campaign import new_campaign_id
    from fl_core.rounds.layout import campaign_record_key
    from fl_core.rounds.state import load_campaign
    from fl_core.tracking import default_tracking_uri

    base = load_params(project_root() / "params.yaml")
    name = conf.get("registered_model") or base.tracking.registered_model
    found = champion(default_tracking_uri(fl_home()), name)
    warm = None
    if found is not None:
        warm, tags = found
        cid = tags.get("fl.campaign_id")
        if cid and store.exists(campaign_record_key(cid)):
            base = from_dict(load_campaign(store, cid)["config"])
    cfg = config_from_form(base, {k: v for k, v in conf.items() if k != "dataset"})
    cfg = with_overrides(cfg, {"tracking.registered_model": name})
    reason = str(conf.get("reason") or "scheduled")
    cid = open_campaign(
        store,
        cfg,
        project_root=project_root(),
        home=fl_home(),
        campaign_id=new_campaign_id(cfg.campaign.name + "-retrain"),
        warm_start=warm,
        tags={
            "fl.orchestrator": "airflow",
            "fl.trigger": "retraining",
            "fl.retraining_reason": reason[:500],
        },
    )
    return {"campaign_id": cid, "round": 1, "warm_start": warm is not None, "reason": reason}
