"""Step ``select_clients``: this round's cohort.

Uniformly without replacement (seeded) or Oort-style among the clients the world says are
online, over-selected to survive expected dropouts; or Poisson sampling at rate q under
central DP (the accountant's assumption). Refuses a round of an ended campaign and a round
that would push privacy spending past the budget.
"""

from __future__ import annotations

import logging
from typing import Any

from fl_core import simulation
from fl_core.config import Config
from fl_core.rounds import records as R
from fl_core.rounds import remote, state
from fl_core.seeding import rng
from fl_core.store import ArtifactStore

logger = logging.getLogger(__name__)

STEP = "select_clients"


class CampaignEnded(RuntimeError):
    """The campaign already ended; no further round may run."""


def select_clients(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Pick and record round ``rnd``'s cohort (idempotent: a rerun returns the record)."""
    if (done := R.maybe(store, R.Cohort, cid, rnd)) is not None:
        return done.to_dict()
    rec = state.load_campaign(store, cid)
    cfg = state.campaign_config(rec)
    _check_campaign_open(store, cid, rnd)
    if remote.is_remote(cfg):  # enrolled devices with live heartbeats: real availability
        ids = remote.live_clients(store)
    else:
        ids = [c["client_id"] for c in rec["clients"]]
    rp = state.privacy(rec)
    if rp is not None and rp.enabled:
        budget = state.privacy_budget(store, cid, rnd)
        if not budget["allowed"]:
            raise RuntimeError(
                f"round {rnd} refused: it would spend epsilon "
                f"{budget['epsilon_after_round']:.4f} > target {budget['target_epsilon']}"
            )
    if state.central(rp):
        from fl_core.privacy.sampling import poisson_cohort

        cohort = poisson_cohort(
            ids, rate=rp.sampling_rate, rng=rng(cfg.campaign.seed, rnd, "select")
        )
        record = R.Cohort(
            round=rnd,
            cohort=cohort,
            num_selected=len(cohort),
            strategy=f"poisson(q={rp.sampling_rate:.4g})",
        )
    else:
        cohort, strategy, target = _select(store, cid, rnd, rec, cfg, ids)
        record = R.Cohort(
            round=rnd, cohort=cohort, num_selected=len(cohort), strategy=strategy, target=target
        )
    out = R.write(store, record, cid, rnd)
    logger.info(
        "round %d: selected %d of %d clients (%s)", rnd, len(cohort), len(ids), record.strategy
    )
    return out


def _check_campaign_open(store: ArtifactStore, cid: str, rnd: int) -> None:
    """A round after the one that ended the campaign is refused."""
    status = R.maybe(store, R.CampaignStatus, cid)
    if status is not None and not status.proceed and status.last_round < rnd:
        raise CampaignEnded(
            f"campaign {cid} ended after round {status.last_round} ({status.reason}); "
            f"round {rnd} is refused"
        )


def _select(
    store: ArtifactStore, cid: str, rnd: int, rec: dict[str, Any], cfg: Config, ids: list[str]
) -> tuple[list[str], str, int]:
    """Cohort without DP: among the clients online this round (the world), not already
    training (asynchronous), and allowed by the communication policy; random or Oort;
    over-selected to survive the expected dropouts. Returns (cohort, strategy, target)."""
    from fl_core.selection import overselect

    candidates = ids if remote.is_remote(cfg) else simulation.world(cfg, rec).candidates(ids, rnd)
    if cfg.asynchronous.enabled:
        busy = set(state.inflight(store, cid, rnd - 1, step=STEP))
        candidates = [c for c in candidates if c not in busy]
        target = max(0, cfg.asynchronous.concurrency - len(busy))
    elif cfg.campaign.fraction is not None:
        target = max(1, round(cfg.campaign.fraction * len(ids)))
    else:
        target = min(cfg.campaign.clients_per_round, len(ids))
    k = target
    if cfg.selection.overselect and cfg.simulation.dropout_rate > 0 and target:
        k = overselect(target, cfg.simulation.dropout_rate)
    k = min(k, len(candidates))
    selector = state.selector(store, cid, rnd - 1, cfg)
    cohort = (
        sorted(selector.select(candidates, k, rng=rng(cfg.campaign.seed, rnd, "select"), round=rnd))
        if k
        else []
    )
    return cohort, cfg.selection.strategy, target
