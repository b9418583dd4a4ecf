"""Steps ``register_round`` (log the round to the campaign's MLflow run) and
``register_model`` (at campaign end, register the model with its federated metadata)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fl_core.rounds import layout as L
from fl_core.rounds import records as R
from fl_core.rounds import state
from fl_core.store import ArtifactStore


def register_round(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Log round ``rnd``'s metrics once (a marker record makes a rerun a no-op)."""
    rec = state.load_campaign(store, cid)
    tracking = rec.get("tracking")
    if not tracking:
        return {"round": rnd, "logged": False}
    from fl_core import tracking as tr

    marker = L.round_key(cid, rnd, L.REGISTERED)
    if not store.exists(marker):
        metrics = R.read(store, R.RoundMetrics, cid, rnd, step="register_round")
        tr.log_round(tracking, metrics.to_dict())
        store.put_json(marker, {"round": rnd})
    return {"round": rnd, "logged": True}


def register_model(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Register the campaign's final model (version ``rnd``) in the MLflow registry, once."""
    rec = state.load_campaign(store, cid)
    tracking = rec.get("tracking")
    if not tracking:
        return {"round": rnd, "logged": False}
    from fl_core import tracking as tr

    out: dict[str, Any] = {"round": rnd, "logged": True}
    final_key = L.campaign_key(cid, L.REGISTERED_MODEL)
    if store.exists(final_key):
        out.update(store.get_json(final_key))
        return out
    R.read(store, R.ServerUpdateInfo, cid, rnd, step="register_model")
    info = tr.register_campaign_model(
        tracking,
        campaign=rec,
        vector=state.load_model(store, cid, rnd),
        history=state.history(store, cid, rnd),
        model_bytes=store.get_bytes(L.model_key(cid, rnd)),
    )
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "bytes_per_client.csv"
        table.write_text(bytes_per_client_csv(store, cid, rnd))
        tr.log_artifact(tracking, table)
    store.put_json(final_key, info)
    out.update(info)
    return out


def bytes_per_client_csv(store: ArtifactStore, cid: str, upto: int) -> str:
    """round,client,bytes_up,bytes_down,codec,status for every delivered update."""
    lines = ["round,client,bytes_up,bytes_down,codec,status"]
    for r in range(1, upto + 1):
        report = R.maybe(store, R.Validation, cid, r)
        if report is None:
            continue
        tasks = R.read(store, R.Manifest, cid, r, step="register_model").tasks
        for item in report.accepted:
            codec = tasks.get(item.client, {}).get("codec", "")
            lines.append(
                f"{r},{item.client},{item.bytes},{int(item.metrics.get('bytes_down', 0))},"
                f"{codec},accepted"
            )
        for bad in report.rejected:
            lines.append(f"{r},{bad['client']},,,,rejected")
    return "\n".join(lines) + "\n"
