"""In-process campaign driver: the same step functions the Airflow DAGs call, in a loop.

Used by ``dvc repro`` (the ``train`` stage), the tests and the benchmarks::

    from fl_core.config import load_params
    from fl_core.engine import run_campaign
    from fl_core.store import LocalStore

    result = run_campaign(load_params("params.yaml"), data_dir="data",
                          store=LocalStore(".fl/artifacts"))
    print(result.final_accuracy, result.model_sha256)
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fl_core import rounds
from fl_core.config import Config
from fl_core.rounds.campaign import start_campaign
from fl_core.rounds.state import history
from fl_core.store import ArtifactStore

logger = logging.getLogger(__name__)


@dataclass
class CampaignResult:
    """What a finished campaign reports."""

    campaign_id: str
    rounds: int
    final_accuracy: float
    best_accuracy: float
    model_sha256: str
    stop_reason: str
    history: list[dict[str, Any]] = field(default_factory=list)
    registered: dict[str, Any] | None = None
    deployed: dict[str, Any] | None = None


def run_round(store: ArtifactStore, cid: str, rnd: int, *, batch_size: int = 8) -> dict[str, Any]:
    """Every step of one round, in the order of :data:`fl_core.rounds.ROUND_STEPS`; returns
    the round's metrics and the stop decision. ``train_clients`` runs once per batch of
    ``batch_size`` clients, as the DAG's mapped tasks do."""
    outputs: dict[str, Any] = {}
    for name in rounds.ROUND_STEPS:
        step = rounds.step(name)
        if name == "train_clients":
            for batch in rounds.step("client_batches")(store, cid, rnd, batch_size=batch_size):
                step(store, cid, rnd, batch)
            continue
        outputs[name] = step(store, cid, rnd)
    return {"metrics": outputs["evaluate"], "decision": outputs["next_round"]}


def run_campaign(
    cfg: Config,
    *,
    data_dir: str | Path,
    store: ArtifactStore,
    tracking: dict[str, Any] | None = None,
    campaign_id: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
    deploy: bool = True,
    validation_status: str = "unknown",
    torch_threads: int | None = 1,
) -> CampaignResult:
    """Run a whole campaign from ``cfg`` on the partitions in ``data_dir``.

    Deterministic given ``cfg`` (seeds) and the data: the same inputs give the same final
    model hash. ``torch_threads=1`` (default) runs the small client models single-threaded,
    about 3x faster than torch's default on this kind of model; None keeps torch's setting.
    With ``tracking`` (see :mod:`fl_core.tracking`) every round is logged to
    MLflow and the final model is registered (and deployed if it beats the champion).
    """
    import torch

    previous_threads = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    try:
        return _run(
            cfg,
            data_dir=data_dir,
            store=store,
            tracking=tracking,
            campaign_id=campaign_id,
            batch_size=batch_size,
            progress=progress,
            deploy=deploy,
            validation_status=validation_status,
        )
    finally:
        torch.set_num_threads(previous_threads)


def _run(
    cfg: Config,
    *,
    data_dir: str | Path,
    store: ArtifactStore,
    tracking: dict[str, Any] | None,
    campaign_id: str | None,
    batch_size: int,
    progress: bool,
    deploy: bool,
    validation_status: str,
) -> CampaignResult:
    cid = start_campaign(
        store,
        cfg,
        data_dir=data_dir,
        campaign_id=campaign_id,
        tracking=tracking,
        validation_status=validation_status,
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=cfg.campaign.rounds,
            desc=f"campaign {cid}",
            unit="round",
            file=sys.stderr,
            dynamic_ncols=True,
        )
    decision: dict[str, Any] = {}
    rnd = 0
    try:
        for rnd in range(1, cfg.campaign.rounds + 1):
            out = run_round(store, cid, rnd, batch_size=batch_size)
            m, decision = out["metrics"], out["decision"]
            logger.info(
                "round %d: test_accuracy=%.4f test_loss=%.4f accepted=%d rejected=%d",
                rnd,
                m["test_accuracy"],
                m["test_loss"],
                m["num_accepted"],
                m["num_rejected"],
            )
            if bar is not None:
                bar.set_postfix(acc=f"{m['test_accuracy']:.4f}", loss=f"{m['test_loss']:.3f}")
                bar.update(1)
            if not decision["continue"]:
                break
    finally:
        if bar is not None:
            bar.close()
    registered = rounds.step("register_model")(store, cid, rnd) if tracking else None
    deployed = rounds.step("deploy")(store, cid, rnd) if (tracking and deploy) else None
    hist = history(store, cid, rnd)
    return CampaignResult(
        campaign_id=cid,
        rounds=rnd,
        final_accuracy=hist[-1]["test_accuracy"],
        best_accuracy=max(h["test_accuracy"] for h in hist),
        model_sha256=rounds.step("server_update")(store, cid, rnd)["model_sha256"],
        stop_reason=str(decision.get("reason")),
        history=hist,
        registered=registered,
        deployed=deployed,
    )
