"""Step ``evaluate``: global test metrics, the spread of accuracy over the clients' own data,
training loss, bytes, epsilon spent and simulated time of round ``r``'s model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from fl_core.client import evaluate as eval_model
from fl_core.rounds import records as R
from fl_core.rounds import remote, state
from fl_core.store import ArtifactStore

STEP = "evaluate"


def evaluate(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Write round ``rnd``'s metrics record (idempotent)."""
    if (done := R.maybe(store, R.RoundMetrics, cid, rnd)) is not None:
        return done.to_dict()
    rec = state.load_campaign(store, cid)
    spec = state.spec(rec)
    R.read(store, R.ServerUpdateInfo, cid, rnd, step=STEP)
    validation = R.read(store, R.Validation, cid, rnd, step=STEP)
    privacy = R.read(store, R.PrivacyInfo, cid, rnd, step=STEP)
    collected = R.read(store, R.Collected, cid, rnd, step=STEP)
    vector = state.load_model(store, cid, rnd)
    cfg = state.campaign_config(rec)
    test = {"accuracy": math.nan, "loss": math.nan}
    if Path(rec["test"]["file"]).exists():  # a deployment may have no central test data
        x_test, y_test = state.test_table(rec)
        test = eval_model(spec, vector, x_test, y_test)
    federated: dict[str, Any] = {}
    if remote.is_remote(cfg):
        # The devices' own evaluations (of the model they received this round, v r-1) on
        # their local held-out data: the server reads no client data.
        federated = _federated(store, cid, rnd)
        acc = np.asarray(federated.pop("accuracies") or [math.nan])
    else:
        accs = []
        for path in state.client_files(rec).values():
            x, y = state.table(path)
            accs.append(eval_model(spec, vector, x, y)["accuracy"])
        acc = np.asarray(accs)
    accepted = validation.accepted
    ratio = None
    if accepted and validation.bytes_up:
        # Against dense fp32 payloads of the same updates (4 bytes per parameter).
        dense = 4 * state.model_layout(rec).num_params * len(accepted)
        ratio = dense / sum(int(a.bytes) for a in accepted)
    record = R.RoundMetrics(
        round=rnd,
        test_accuracy=test["accuracy"],
        test_loss=test["loss"],
        client_accuracy_mean=float(acc.mean()),
        client_accuracy_std=float(acc.std()),
        client_accuracy_min=float(acc.min()),
        client_accuracy_p10=float(np.percentile(acc, 10)),
        train_loss=float(
            np.average([a.train_loss for a in accepted], weights=[a.weight for a in accepted])
        )
        if accepted
        else math.nan,
        num_accepted=validation.num_accepted,
        num_rejected=validation.num_rejected,
        bytes_up=validation.bytes_up,
        bytes_down=validation.bytes_down,
        sim_time_s=float(collected.clock_s),
        epsilon=privacy.epsilon,
        uplink_ratio_vs_dense=ratio,
        dp_sgd_epsilon_max=privacy.dp_sgd_epsilon_max,
        **federated,
    )
    return R.write(store, record, cid, rnd)


def _federated(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Example-weighted accuracy and loss over the clients' evaluation reports of round
    ``rnd`` (model version ``rnd - 1``), their spread, and how many clients reported."""
    from fl_core.rounds import remote

    reports = [
        r for r in remote.coordinator(store).evaluations(cid, rnd) if r.model_version == rnd - 1
    ]
    usable = [r for r in reports if "accuracy" in r.metrics and r.num_examples > 0]
    if not usable:
        return {"accuracies": [], "fed_num_clients": 0, "fed_model_version": rnd - 1}
    weights = np.asarray([r.num_examples for r in usable], dtype=np.float64)
    accs = np.asarray([r.metrics["accuracy"] for r in usable], dtype=np.float64)
    losses = [r.metrics.get("loss", math.nan) for r in usable]
    return {
        "accuracies": accs.tolist(),
        "fed_model_version": rnd - 1,
        "fed_num_clients": len(usable),
        "fed_num_examples": int(weights.sum()),
        "fed_accuracy": float(np.average(accs, weights=weights)),
        "fed_loss": float(np.average(losses, weights=weights)),
    }
