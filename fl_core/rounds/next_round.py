"""Step ``next_round``: the round's bookkeeping and the campaign's stop decision.

Bookkeeping: each client's reputation (rejections, the rule's outlier scores) and the
selector's records (completion, loss, duration) as of round ``r``, which ``select_clients``
of round ``r + 1`` reads. Decision: go on, or stop (rounds done, target accuracy, plateau,
or a privacy budget the next round would exceed); an ended campaign refuses more rounds.
"""

from __future__ import annotations

from typing import Any

from fl_core.config import Config
from fl_core.rounds import layout as L
from fl_core.rounds import records as R
from fl_core.rounds import state
from fl_core.store import ArtifactStore

STEP = "next_round"


def next_round(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Record round ``rnd``'s bookkeeping and decide whether the campaign goes on."""
    rec = state.load_campaign(store, cid)
    cfg = state.campaign_config(rec)
    c = cfg.campaign
    R.read(store, R.RoundMetrics, cid, rnd, step=STEP)
    if not state.central(state.privacy(rec)):
        _record_clients(store, cid, rnd, cfg)
    hist = state.history(store, cid, rnd)
    accs = [h["test_accuracy"] for h in hist]
    reason = None
    if c.target_accuracy is not None and accs and accs[-1] >= c.target_accuracy:
        reason = f"target accuracy {c.target_accuracy} reached ({accs[-1]:.4f})"
    elif c.plateau_patience is not None and len(accs) > c.plateau_patience:
        best_before = max(accs[: -c.plateau_patience])
        if max(accs[-c.plateau_patience :]) < best_before + c.plateau_min_delta:
            reason = f"plateau: no gain of {c.plateau_min_delta} in {c.plateau_patience} rounds"
    if reason is None and rnd >= c.rounds:
        reason = f"rounds done ({c.rounds})"
    budget = state.privacy_budget(store, cid, rnd + 1)
    if reason is None and not budget["allowed"]:
        reason = (
            f"privacy budget: round {rnd + 1} would spend epsilon "
            f"{budget['epsilon_after_round']:.4f} > target {budget['target_epsilon']}"
        )
    status = R.CampaignStatus(
        campaign_id=cid,
        last_round=rnd,
        proceed=reason is None,
        reason=reason,
        final_accuracy=accs[-1] if accs else None,
        best_accuracy=max(accs) if accs else None,
        epsilon=hist[-1].get("epsilon") if hist else None,
    )
    return R.write(store, status, cid)


def _record_clients(store: ArtifactStore, cid: str, rnd: int, cfg: Config) -> None:
    """Reputation and the selector's records as of round ``rnd`` (rewritten identically on
    a rerun: both are built from round ``rnd - 1``'s state and this round's records)."""
    validation = R.read(store, R.Validation, cid, rnd, step=STEP)
    info = R.read(store, R.AggregateInfo, cid, rnd, step=STEP)
    scores = info.outlier_scores or {}
    late = {r["client"]: r["reason"] for r in info.rejected_at_read or []}
    accepted = [a for a in validation.accepted if a.client not in late]
    book = state.reputation(store, cid, rnd - 1)
    for bad in validation.rejected:
        book.record(bad["client"], round=rnd, accepted=False, reason=bad["reason"])
    for client, reason in late.items():
        book.record(client, round=rnd, accepted=False, reason=reason)
    for ok in accepted:
        book.record(ok.client, round=rnd, accepted=True, outlier_score=scores.get(ok.client))
    store.put_json(L.round_key(cid, rnd, L.REPUTATION), book.state_dict())
    selector = state.selector(store, cid, rnd - 1, cfg)
    done = {a.client: a for a in accepted}
    for client in R.read(store, R.Manifest, cid, rnd, step=STEP).tasks:
        item = done.get(client)
        selector.observe(
            client,
            round=rnd,
            completed=item is not None,
            num_examples=None if item is None else int(item.num_examples),
            loss=None if item is None else float(item.train_loss),
            duration_s=None if item is None else _duration(store, cid, item),
        )
    store.put_json(L.round_key(cid, rnd, L.SELECTOR), selector.state_dict())


def _duration(store: ArtifactStore, cid: str, item: R.AcceptedUpdate) -> float:
    """A delivered update's duration: simulated when simulating, else the client's report."""
    sim_s = state.sim_duration(store, cid, int(item.source_round), item.client)
    return float(item.duration_s) if sim_s is None else sim_s
