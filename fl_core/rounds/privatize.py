"""Step ``privatize``: differential privacy on the aggregate, and the accountant's step.

Central: Gaussian noise of std ``z C / (q N)`` on the clipped sum over the expected cohort
size (:func:`fl_core.privacy.aggregator.release`); the accountant records exactly one step
for round ``r`` (its state is saved with the round, built from round ``r - 1``'s, so a rerun
never double-counts); adaptive clipping updates the clipping norm. Local: clients already
noised their updates; the worst-case client's epsilon is accounted. Off: pass-through.
"""

from __future__ import annotations

import logging
from typing import Any

from fl_core.rounds import layout as L
from fl_core.rounds import records as R
from fl_core.rounds import state
from fl_core.seeding import rng
from fl_core.store import ArtifactStore

logger = logging.getLogger(__name__)

STEP = "privatize"


def privatize(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Release round ``rnd``'s (noised) update and account for it (idempotent)."""
    key = L.round_key(cid, rnd, L.PRIVATIZED)
    if store.exists(key) and (done := R.maybe(store, R.PrivacyInfo, cid, rnd)) is not None:
        return done.to_dict()
    rec = state.load_campaign(store, cid)
    rp = state.privacy(rec)
    info = R.read(store, R.AggregateInfo, cid, rnd, step=STEP)
    arrays = store.get_arrays(L.round_key(cid, rnd, L.AGGREGATE_ARRAYS))
    out = R.PrivacyInfo(round=rnd, enabled=bool(rp is not None and rp.enabled))
    if state.central(rp):
        from fl_core.privacy.aggregator import release
        from fl_core.privacy.noise import gaussian_noise_std

        c_norm = float(info.clipping_norm)  # type: ignore[arg-type]
        noised = release(
            arrays["sum"],
            noise_multiplier=float(rp.update_noise_multiplier),
            clipping_norm=c_norm,
            expected_cohort_size=rp.expected_cohort_size,
            rng=rng(rec["noise_seed"], rnd, "noise"),
        )
        store.put_arrays(key, {"update": noised})  # the release first, then the accounting
        clip = state.clipper(store, cid, rp, rnd - 1)
        if clip is not None:
            clip.update(arrays["norms"], rng(rec["noise_seed"], rnd, "clip"))
            store.put_json(L.round_key(cid, rnd, L.CLIPPER), clip.state_dict())
        out.noise_std = gaussian_noise_std(
            noise_multiplier=float(rp.update_noise_multiplier),
            clipping_norm=c_norm,
            expected_cohort_size=rp.expected_cohort_size,
        )
        out.clipping_norm = c_norm
        out.next_clipping_norm = float(clip.current_norm) if clip else c_norm
    else:
        store.put_arrays(key, {"update": arrays["update"]})
    if rp is not None and rp.enabled:
        acct = state.accountant(store, cid, rp, rnd - 1)
        acct.step(rnd)
        store.put_json(L.round_key(cid, rnd, L.ACCOUNTANT), acct.state_dict())
        out.epsilon = float(acct.epsilon())
        out.delta = rp.delta
        out.target_epsilon = rp.epsilon
        out.mode = rp.mode
        out.noise_multiplier = rp.noise_multiplier
    if rp is not None and rp.client_dp_sgd:
        validation = R.read(store, R.Validation, cid, rnd, step=STEP)
        eps = [
            a.metrics["dp_sgd_epsilon"]
            for a in validation.accepted
            if "dp_sgd_epsilon" in a.metrics
        ]
        out.dp_sgd_epsilon_max = max(eps) if eps else None
    result = R.write(store, out, cid, rnd)
    if out.epsilon is not None:
        logger.info(
            "round %d: epsilon spent %.4f of %s (delta %s)", rnd, out.epsilon, rp.epsilon, rp.delta
        )
    return result
