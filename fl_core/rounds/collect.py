"""Step ``collect``: close the round's collection, which updates count and who is missing.

Synchronous: the cohort's updates; with simulation, on the simulated clock the round closes
at the target count (quorum, when over-selected) or the deadline, and later updates are
stragglers. Asynchronous (FedBuff): the ``buffer_size`` earliest arrivals among every client
in flight, whatever model version each trained on; the rest stay in flight. Simulated, the
arrival times are the simulated clock's; remote, the arrival order is the coordinator's
(:func:`fl_core.rounds.remote.fedbuff_plan`), and rounds no later buffer could apply are
closed. The adversary hook (attack simulation only) replaces the attackers' received
messages here; their honest updates are kept apart under ``honest/``.
"""

from __future__ import annotations

import logging
from typing import Any

from fl_core import simulation
from fl_core.config import Config
from fl_core.rounds import layout as L
from fl_core.rounds import records as R
from fl_core.rounds import remote, state
from fl_core.store import ArtifactStore

logger = logging.getLogger(__name__)

STEP = "collect"


def collect(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Write round ``rnd``'s collect record (idempotent)."""
    if (done := R.maybe(store, R.Collected, cid, rnd)) is not None:
        return done.to_dict()
    rec = state.load_campaign(store, cid)
    cfg = state.campaign_config(rec)
    selection = R.read(store, R.Cohort, cid, rnd, step=STEP)
    cohort = R.read(store, R.Manifest, cid, rnd, step=STEP).tasks
    start = state.clock(store, cid, rnd - 1, step=STEP)
    if remote.is_remote(cfg) and cfg.asynchronous.enabled:
        return _collect_remote_fedbuff(store, cid, rnd, cfg, start)
    if remote.is_remote(cfg):
        return _collect_remote(store, cid, rnd, cohort, start)
    arrived = {c: rnd for c in sorted(cohort) if store.exists(L.update_key(cid, rnd, c))}
    durations = {c: state.sim_duration(store, cid, rnd, c) for c in arrived}
    inflight: dict[str, dict[str, Any]] | None = None
    if cfg.asynchronous.enabled:
        pool = {
            c: {"round": int(v["round"]), "arrival": float(v["arrival"])}
            for c, v in state.inflight(store, cid, rnd - 1, step=STEP).items()
        }
        for c in cohort:
            if c in arrived:
                pool[c] = {"round": rnd, "arrival": start + (durations[c] or 0.0)}
        order = sorted(pool, key=lambda c: (pool[c]["arrival"], c))
        received = order[: cfg.asynchronous.buffer_size]
        clock = max([start] + [pool[c]["arrival"] for c in received])
        sources = {c: int(pool[c]["round"]) for c in received}
        inflight = {c: pool[c] for c in order[cfg.asynchronous.buffer_size :]}
        missing = sorted(c for c in cohort if c not in arrived)
    elif cfg.simulation.enabled:
        from fl_core.selection import arrivals

        timing = arrivals(
            {c: durations.get(c) for c in sorted(cohort)},
            quorum=selection.target or None,
            deadline_s=cfg.simulation.deadline_s,
        )
        received, missing = sorted(timing.received), timing.stragglers
        clock, sources = start + timing.duration_s, {c: rnd for c in received}
    else:
        received = sorted(arrived)
        missing = [c for c in sorted(cohort) if c not in arrived]
        clock, sources = start, {c: rnd for c in received}
    if not received and not state.central(state.privacy(rec)):
        raise RuntimeError(f"round {rnd}: no update arrived from a cohort of {len(cohort)}")
    _adversary_hook(store, cid, rnd, cfg, rec, sources)
    record = R.Collected(
        round=rnd,
        received=received,
        missing=missing,
        sources=sources,
        clock_s=clock,
        num_received=len(received),
        num_missing=len(missing),
        inflight=inflight,
    )
    out = R.write(store, record, cid, rnd)
    if missing:
        logger.info("round %d: %d stragglers/dropouts: %s", rnd, len(missing), missing)
    return out


def _adversary_hook(
    store: ArtifactStore,
    cid: str,
    rnd: int,
    cfg: Config,
    rec: dict[str, Any],
    sources: dict[str, int],
) -> None:
    """Evaluation only: the adversary replaces the received attackers' messages."""
    adversary = simulation.adversary(cfg, rec)
    if adversary is None or not adversary.replaces_updates:
        return
    if not adversary.malicious & set(sources):
        return
    messages: dict[str, bytes] = {}
    for client, src in sources.items():
        key = L.update_key(cid, src, client)
        if client in adversary.malicious:
            kept = L.honest_key(cid, src, client)
            if not store.exists(kept):
                store.put_bytes(kept, store.get_bytes(key))
            messages[client] = store.get_bytes(kept)
        else:
            messages[client] = store.get_bytes(key)
    for client, data in adversary.poison(rnd, messages).items():
        store.put_bytes(L.update_key(cid, sources[client], client), data)


def _collect_remote(
    store: ArtifactStore, cid: str, rnd: int, cohort: dict[str, Any], start: float
) -> dict[str, Any]:
    """Close a remote round at the coordinator: what is stored counts, everyone else is a
    straggler (a later upload is refused with 410 and recorded)."""
    status = remote.coordinator(store).close_round(cid, rnd)
    received = sorted(c for c in status.received if c in cohort)
    missing = sorted(c for c in cohort if c not in set(received))
    if not received:
        raise RuntimeError(
            f"round {rnd}: no device delivered an update from a cohort of {len(cohort)} "
            f"(stragglers: {status.stragglers})"
        )
    record = R.Collected(
        round=rnd,
        received=received,
        missing=missing,
        sources={c: rnd for c in received},
        clock_s=start,
        num_received=len(received),
        num_missing=len(missing),
    )
    out = R.write(store, record, cid, rnd)
    if missing:
        logger.info("round %d: %d stragglers: %s", rnd, len(missing), missing)
    return out


def _collect_remote_fedbuff(
    store: ArtifactStore, cid: str, rnd: int, cfg: Config, start: float
) -> dict[str, Any]:
    """FedBuff on the wall clock: round ``rnd``'s buffer is the ``buffer_size`` earliest
    updates the coordinator accepted (its arrival order) among the clients in flight.

    First the rounds no later buffer could apply (too stale, past their deadline, or the
    campaign's last round) are closed at the coordinator, so their late uploads are refused
    (410) and recorded as stragglers; then the buffer is read, so no update is taken that
    the fence would have refused, and every update arrived before it is in the plan."""
    coord = remote.coordinator(store)
    for src, reason in remote.fedbuff_plan(store, cid, rnd, cfg, step=STEP).close.items():
        coord.close_round(cid, src, reason=reason)
    plan = remote.fedbuff_plan(store, cid, rnd, cfg, step=STEP)
    if not plan.received:
        raise RuntimeError(
            f"round {rnd}: no device delivered an update to the buffer "
            f"(in flight: {len(plan.inflight)}, given up: {plan.missing})"
        )
    received = [a.client for a in plan.received]
    record = R.Collected(
        round=rnd,
        received=received,
        missing=sorted(plan.missing),
        sources={a.client: a.source_round for a in plan.received},
        clock_s=start,
        num_received=len(received),
        num_missing=len(plan.missing),
        inflight=plan.inflight,
        arrivals=[a.to_dict() for a in plan.received],
        dropped=plan.dropped or None,
    )
    out = R.write(store, record, cid, rnd)
    logger.info(
        "round %d: buffer %s (arrival order), %d in flight, %d dropped, %d given up",
        rnd, received, len(plan.inflight), len(plan.dropped), len(plan.missing),
    )  # fmt: skip
    return out
