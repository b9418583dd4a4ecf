"""Step ``deploy``: promote the registered model to ``champion`` only when it passes the
quality gate and beats the current champion on the same evaluation data (otherwise it stays
``challenger``, with the reason logged), and export the edge artifact (int8 TorchScript)
with its size and accuracy against the float model, logged to MLflow."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fl_core.rounds import layout as L
from fl_core.rounds import state
from fl_core.store import ArtifactStore


def deploy(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Promote (or not) and export the edge model, once."""
    rec = state.load_campaign(store, cid)
    tracking = rec.get("tracking")
    final_key = L.campaign_key(cid, L.REGISTERED_MODEL)
    if not tracking or not store.exists(final_key):
        return {"round": rnd, "deployed": False, "reason": "no registered model"}
    key = L.campaign_key(cid, L.DEPLOY)
    if store.exists(key):
        done: dict[str, Any] = store.get_json(key)
        return done
    from fl_core import tracking as tr
    from fl_core.export import export_edge

    x_test, y_test = state.test_table(rec)
    out = tr.promote_if_better(tracking, store.get_json(final_key), x_test=x_test, y_test=y_test)
    with tempfile.TemporaryDirectory() as tmp:
        edge = export_edge(
            state.spec(rec),
            state.load_model(store, cid, rnd),
            Path(tmp),
            x_eval=x_test,
            y_eval=y_test,
        )
        for path in sorted(Path(tmp).iterdir()):
            store.put_bytes(L.edge_key(cid, path.name), path.read_bytes())
            tr.log_artifact(tracking, path, "edge")
    edge_info = {
        k: edge[k]
        for k in ("kind", "size_bytes", "float_size_bytes", "accuracy_int8", "accuracy_float")
    }
    tr.log_metrics(
        tracking,
        {f"edge_{k}": float(v) for k, v in edge_info.items() if isinstance(v, int | float)},
    )
    out["edge"] = edge_info
    store.put_json(key, out)
    tr.end_run(tracking)
    return out
