"""Federated monitoring: the live clients check the champion on their fresh local data.

The ``federated_monitoring`` DAG with ``clients: remote`` needs no central labelled data:

1. :func:`publish_check` builds the reference histograms of the champion's training data
   from what its training campaign's clients reported (per-feature counts of their training
   split on a fixed grid, sent with every remote training task; counts only), derives
   ~10 quantile bins per feature from them, and publishes a *monitoring check* to the live
   clients: a one-round task (``kind: "monitor"``) carrying the champion's weights (served by
   the coordinator like a round's model) and the bin edges.
2. Each agent evaluates the champion on the current content of its local data and reports
   accuracy, loss, example count and its counts in those bins (signed, like every request).
3. :func:`collect_check` closes the check and aggregates: example-weighted accuracy (and its
   spread over clients), PSI per feature of the summed counts against the reference
   (:func:`fl_core.monitoring.psi_from_counts`), per-client PSI, then the same health rule
   and thresholds as the central check (:func:`fl_core.monitoring.check_health`).

The server reads no client data: it sees counts, metrics and example counts only.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from typing import Any

import numpy as np

from fl_core import histograms as H
from fl_core.monitoring import check_health, psi_from_counts, psi_level
from fl_core.rounds import layout as L
from fl_core.rounds import records as R
from fl_core.rounds import remote, state
from fl_core.store import ArtifactStore

logger = logging.getLogger(__name__)

__all__ = ["check_id_for", "check_progress", "collect_check", "publish_check", "reference"]

CHECK_ROUND = 1
"""A check is one round of its own (campaign id = check id)."""


def check_id_for(run_id: str) -> str:
    """A check id from a DAG run id: readable, unique, a valid campaign id, the same on a
    retry (so publishing again is a no-op)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-.")[:80] or "run"
    stem = re.sub(r"\.{2,}", ".", stem)
    return f"mon-{stem}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


def reference(store: ArtifactStore, campaign_id: str) -> dict[str, Any]:
    """The campaign's reference histograms: its clients' training-data counts on the
    campaign's grid, summed (each client's latest report)."""
    coord = remote.coordinator(store)
    try:
        reports = coord.histograms(campaign_id)
    finally:
        coord.close()
    if not reports:
        raise ValueError(
            f"campaign {campaign_id} has no reference histograms: none of its clients reported "
            "training-data counts (was it trained with clients: remote?)"
        )
    first = next(iter(reports.values()))
    grid = R.read(store, R.Manifest, campaign_id, first.round, step="monitoring").tasks[
        first.client_id
    ]["histogram"]
    fine = np.sum([np.asarray(h.counts, dtype=np.int64) for h in reports.values()], axis=0)
    return {
        "grid": grid,
        "fine_counts": fine,
        "num_examples": int(sum(h.num_examples for h in reports.values())),
        "clients": sorted(reports),
    }


def publish_check(
    store: ArtifactStore,
    *,
    campaign_id: str,
    model: str,
    version: int,
    vector: np.ndarray,
    reference_accuracy: float | None,
    run_id: str,
    bins: int = 10,
    deadline_s: float = 600.0,
) -> dict[str, Any]:
    """Publish a monitoring check of ``vector`` (the champion, registered ``model`` version
    ``version``, trained by ``campaign_id``) to every live client; idempotent per ``run_id``.

    Returns ``{"check_id", "num_tasks", "version", "deadline_s"}``.
    """
    check_id = check_id_for(run_id)
    rec_key = L.monitoring_check_key(check_id)
    rec = state.load_campaign(store, campaign_id)
    lay = state.model_layout(rec)
    if not store.exists(rec_key):
        ref = reference(store, campaign_id)
        fine_edges = H.grid_edges(ref["grid"])
        edges = H.quantile_edges(ref["fine_counts"], fine_edges, bins=bins)
        ref_counts = [
            H.regroup(ref["fine_counts"][j], fine_edges[j], edges[j]).tolist()
            for j in range(len(edges))
        ]
        vec = np.asarray(vector, dtype=np.float32)
        if vec.shape != (lay.num_params,):
            raise ValueError(
                f"champion has {vec.size} parameters, its campaign's layout {lay.num_params}"
            )
        store.put_bytes(
            L.monitoring_model_key(check_id), state.encode_model(check_id, version, lay, vec)
        )
        store.put_json(
            rec_key,
            {
                "check_id": check_id,
                "run_id": run_id,
                "campaign_id": campaign_id,
                "model": model,
                "version": int(version),
                "reference_accuracy": reference_accuracy,
                "layout": rec["layout"],
                "model_spec": rec["model_spec"],
                "bins": bins,
                "edges": edges,
                "reference_counts": ref_counts,
                "reference_num_examples": ref["num_examples"],
                "reference_clients": ref["clients"],
            },
        )
    coord = remote.coordinator(store)
    try:
        status = None
        try:
            status = coord.round_status(check_id, CHECK_ROUND)
        except KeyError:
            live = [c.client_id for c in coord.live_clients()]
            if not live:  # published empty: closes at once, and the check is inconclusive
                logger.warning("check %s: no live client to check the champion on", check_id)
            status = coord.publish_round(
                check_id,
                CHECK_ROUND,
                base_version=int(version),
                tasks={c: {"kind": "monitor"} for c in live},
                deadline_s=deadline_s,
                model_key=L.monitoring_model_key(check_id),
            )
    finally:
        coord.close()
    logger.info("monitoring check %s published to %d clients", check_id, status.num_tasks)
    return {
        "check_id": check_id,
        "num_tasks": status.num_tasks,
        "version": int(version),
        "deadline_s": deadline_s,
    }


def check_progress(store: ArtifactStore, check_id: str, *, quorum: float = 1.0) -> dict[str, Any]:
    """Reports received, tasks, the quorum count and whether the deadline passed; ``done``
    when the quorum reported or the deadline passed (what the DAG's sensor waits for)."""
    coord = remote.coordinator(store)
    try:
        status = coord.round_status(check_id, CHECK_ROUND)
        received = len(coord.monitoring_reports(check_id, CHECK_ROUND))
    finally:
        coord.close()
    need = max(1, math.ceil(quorum * status.num_tasks - 1e-9)) if status.num_tasks else 0
    return {
        "check_id": check_id,
        "received": received,
        "tasks": status.num_tasks,
        "need": need,
        "deadline_passed": status.deadline_passed,
        "done": received >= need or status.deadline_passed or status.closed,
    }


def collect_check(
    store: ArtifactStore, check_id: str, *, max_accuracy_drop: float, max_drift: float
) -> dict[str, Any]:
    """Close the check and judge the champion from the clients' reports.

    The report has the keys of the central check (``model``, ``version``, ``accuracy``,
    ``reference_accuracy``, ``drift``, ``healthy``, ``reasons``) plus ``federated``: clients
    reported, examples, accuracy spread, clients missing or with invalid data, and each
    client's accuracy, examples and mean PSI.

    When no client reported on the champion's version by the deadline there is no evidence
    either way: the report is *inconclusive* (``healthy`` None, ``verdict``
    ``"inconclusive"``, a ``no_evidence`` reason naming the tasks and the clients missing),
    never healthy and never degraded; the DAG alerts on it and triggers no retraining.
    """
    rec = store.get_json(L.monitoring_check_key(check_id))
    coord = remote.coordinator(store)
    try:
        status = coord.close_round(check_id, CHECK_ROUND)
        reports = [
            r
            for r in coord.monitoring_reports(check_id, CHECK_ROUND)
            if r.model_version == rec["version"]
        ]
    finally:
        coord.close()
    valid = [r for r in reports if r.data_valid and r.num_examples > 0 and r.counts]
    invalid = sorted(r.client_id for r in reports if not r.data_valid)
    ref = [np.asarray(c, dtype=np.int64) for c in rec["reference_counts"]]
    out: dict[str, Any] = {
        "mode": "remote",
        "check_id": check_id,
        "model": rec["model"],
        "version": str(rec["version"]),
        "campaign_id": rec["campaign_id"],
        "reference_accuracy": rec["reference_accuracy"],
    }
    federated: dict[str, Any] = {
        "num_tasks": status.num_tasks,
        "num_clients": len(valid),
        "missing": sorted(set(status.stragglers)),
        "invalid": invalid,
        "reference_num_examples": rec["reference_num_examples"],
    }
    reasons: list[str] = []
    if not reports:
        reason = (
            f"no_evidence: no client reported on check {check_id} of version {rec['version']} "
            f"before its deadline ({status.num_tasks} tasks, missing {federated['missing']})"
            if status.num_tasks
            else f"no_evidence: no live client (no heartbeat within the live window) when "
            f"check {check_id} of version {rec['version']} was published"
        )
        logger.warning("check %s inconclusive: %s", check_id, reason)
        out.update(
            healthy=None,
            verdict="inconclusive",
            reasons=[reason],
            accuracy=None,
            drift=None,
            federated={**federated, "num_clients": 0, "num_examples": 0},
        )
        return out
    if invalid:
        reasons.append(f"fresh data of {len(invalid)} client(s) failed validation: {invalid}")
    if not valid:
        out.update(
            healthy=False,
            verdict="degraded",
            reasons=reasons,
            accuracy=None,
            drift=None,
            federated=federated,
        )
        return out
    weights = np.asarray([r.num_examples for r in valid], dtype=np.float64)
    accs = np.asarray([r.metrics["accuracy"] for r in valid], dtype=np.float64)
    counts = {
        r.client_id: [np.asarray(row, dtype=np.int64) for row in r.counts or []] for r in valid
    }
    current = [np.sum([c[j] for c in counts.values()], axis=0) for j in range(len(ref))]
    psi = np.asarray([psi_from_counts(ref[j], current[j]) for j in range(len(ref))])
    psi_mean = float(psi.mean())
    accuracy = float(np.average(accs, weights=weights))
    drift = {
        "psi_mean": psi_mean,
        "psi_max": float(psi.max()),
        "psi_max_feature": int(psi.argmax()),
        "level": psi_level(psi_mean),
        "label_tv": None,
        "num_features": len(ref),
        "num_reference": int(rec["reference_num_examples"]),
        "num_current": int(weights.sum()),
        "bins": int(rec["bins"]),
    }
    federated.update(
        num_examples=int(weights.sum()),
        accuracy_min=float(accs.min()),
        accuracy_max=float(accs.max()),
        accuracy_std=float(accs.std()),
        loss=float(np.average([r.metrics.get("loss", math.nan) for r in valid], weights=weights)),
        clients={
            r.client_id: {
                "accuracy": float(r.metrics["accuracy"]),
                "num_examples": r.num_examples,
                "psi_mean": float(
                    np.mean(
                        [psi_from_counts(ref[j], counts[r.client_id][j]) for j in range(len(ref))]
                    )
                ),
            }
            for r in valid
        },
    )
    ref_acc = rec["reference_accuracy"]
    health = check_health(
        accuracy=accuracy,
        reference_accuracy=None if ref_acc is None or math.isnan(ref_acc) else float(ref_acc),
        drift=psi_mean,
        max_accuracy_drop=max_accuracy_drop,
        max_drift=max_drift,
    )
    healthy = health.healthy and not reasons
    out.update(
        healthy=healthy,
        verdict="healthy" if healthy else "degraded",
        reasons=reasons + list(health.reasons),
        accuracy=accuracy,
        drift=drift,
        federated=federated,
    )
    logger.info(
        "check %s: %d clients, accuracy %.4f, psi_mean %.4f, healthy=%s",
        check_id,
        len(valid),
        accuracy,
        psi_mean,
        out["healthy"],
    )
    return out
