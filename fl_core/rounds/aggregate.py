"""Step ``aggregate``: combine exactly the updates ``validate_updates`` accepted.

Each accepted update is read again and verified against the sha256 recorded at validation
(a replaced or vanished update is rejected here with a reason; the others go on), then
decoded with the layout and codec its task asked for. The rule comes from the registry
(:func:`fl_core.aggregation.aggregator_from_config`): weighted FedAvg by example count,
streaming, sparse updates without densifying; a Byzantine-robust rule; FedBuff with
staleness weights under asynchronous rounds. Under central DP the rule is wrapped by
:class:`fl_core.privacy.aggregator.CentralDP` (clip, unweighted sum); ``privatize`` noises it.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np

from fl_core import wire
from fl_core.aggregation import aggregator_from_config, needs_root_update
from fl_core.aggregation.math import l2_norm
from fl_core.client import TrainSettings, local_train
from fl_core.codec import parse_codec
from fl_core.config import Config
from fl_core.models import Layout
from fl_core.rounds import layout as L
from fl_core.rounds import records as R
from fl_core.rounds import state
from fl_core.rounds.state import read_update
from fl_core.seeding import derive_seed, rng
from fl_core.store import ArtifactStore

logger = logging.getLogger(__name__)

STEP = "aggregate"


def aggregate(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Aggregate round ``rnd``'s accepted updates (idempotent)."""
    arrays_key = L.round_key(cid, rnd, L.AGGREGATE_ARRAYS)
    if store.exists(arrays_key) and (done := R.maybe(store, R.AggregateInfo, cid, rnd)):
        return done.to_dict()
    rec = state.load_campaign(store, cid)
    cfg = state.campaign_config(rec)
    lay = state.model_layout(rec)
    rp = state.privacy(rec)
    validation = R.read(store, R.Validation, cid, rnd, step=STEP)
    codecs = _codecs(store, cid, validation.accepted)
    updates, rejected = _verified(store, cid, lay, validation.accepted, codecs)
    if state.central(rp):
        return _aggregate_central_dp(store, cid, rnd, lay, rp, updates, rejected, arrays_key)
    if not updates:
        raise RuntimeError(f"round {rnd}: every update was rejected; nothing to aggregate")
    if cfg.asynchronous.enabled:
        return _aggregate_fedbuff(store, cid, rnd, cfg, lay, updates, rejected, arrays_key)
    root = (
        _root_update(store, cid, rnd, rec, cfg) if needs_root_update(cfg.server.strategy) else None
    )
    agg = aggregator_from_config(
        cfg.server.strategy,
        dim=lay.num_params,
        server=cfg.server,
        num_updates=len(updates),
        root_update=root,
    )
    previous = L.round_key(cid, rnd - 1, L.RULE_STATE)
    if rnd > 1 and store.exists(previous):
        agg.load_state_dict(store.get_arrays(previous))
    sparse = agg.supports_sparse and all(parse_codec(codecs[u.client]).sparse for u, _ in updates)
    for item, data in updates:
        if sparse:
            _, idx, values = wire.decode_sparse(
                data, expected_layout=lay, expected_codec=codecs[item.client]
            )
            agg.add_sparse(idx, values, weight=item.weight)
        else:
            _, vector = wire.decode(data, expected_layout=lay, expected_codec=codecs[item.client])
            agg.add(vector, weight=item.weight)
    mean = agg.result()
    store.put_arrays(arrays_key, {"update": mean})
    if rule_state := agg.state_dict():  # e.g. centered clipping's center, carried over
        store.put_arrays(L.round_key(cid, rnd, L.RULE_STATE), rule_state)
    scores = [float(v) for v in agg.outlier_scores()]
    record = R.AggregateInfo(
        round=rnd,
        strategy=cfg.server.strategy,
        num_aggregated=agg.count,
        total_examples=int(agg.total_weight),
        update_norm=l2_norm(mean),
        sparse=sparse,
        max_staleness_seen=max(int(u.staleness) for u, _ in updates),
        outlier_scores={u.client: s for (u, _), s in zip(updates, scores, strict=False)},
        rejected_at_read=rejected or None,
    )
    return R.write(store, record, cid, rnd)


def _codecs(store: ArtifactStore, cid: str, accepted: list[R.AcceptedUpdate]) -> dict[str, str]:
    """The codec each accepted update's task asked for (its source round's manifest)."""
    manifests: dict[int, R.Manifest] = {}
    out = {}
    for item in accepted:
        src = int(item.source_round)
        if src not in manifests:
            manifests[src] = R.read(store, R.Manifest, cid, src, step=STEP)
        out[item.client] = str(manifests[src].tasks[item.client]["codec"])
    return out


def _verified(
    store: ArtifactStore,
    cid: str,
    lay: Layout,
    accepted: list[R.AcceptedUpdate],
    codecs: dict[str, str],
) -> tuple[list[tuple[R.AcceptedUpdate, bytes]], list[dict[str, str]]]:
    """The accepted updates' bytes, each equal to what validation checked; the others are
    rejected with a reason (never a crash, never a silent substitution)."""
    out: list[tuple[R.AcceptedUpdate, bytes]] = []
    rejected: list[dict[str, str]] = []
    for item in accepted:
        key = L.update_key(cid, int(item.source_round), item.client)
        if not store.exists(key):
            reason = "accepted update is missing from the store"
        else:
            try:
                data = read_update(store, key, lay)
            except wire.WireError as exc:
                reason = f"accepted update became unreadable: {exc}"
            else:
                if hashlib.sha256(data).hexdigest() == item.sha256:
                    out.append((item, data))
                    continue
                reason = "accepted update changed after validation (sha256 mismatch)"
        logger.error("round %s: %s: %s", item.source_round, item.client, reason)
        rejected.append({"client": item.client, "reason": reason})
    return out, rejected


def _aggregate_central_dp(
    store: ArtifactStore,
    cid: str,
    rnd: int,
    lay: Layout,
    rp: Any,
    updates: list[tuple[R.AcceptedUpdate, bytes]],
    rejected: list[dict[str, str]],
    arrays_key: str,
) -> dict[str, Any]:
    from fl_core.privacy.aggregator import CentralDP

    clip = state.clipper(store, cid, rp, rnd - 1)
    c_norm = float(clip.current_norm) if clip is not None else rp.clipping_norm
    dp = CentralDP(lay.num_params, clipping_norm=c_norm)
    for item, data in updates:
        _, vector = wire.decode(data, expected_layout=lay)
        dp.add(vector, weight=item.weight)
    total = dp.result()
    store.put_arrays(arrays_key, {"sum": total, "norms": np.asarray(dp.norms, dtype=np.float64)})
    record = R.AggregateInfo(
        round=rnd,
        strategy="dp_clipped_sum",
        num_aggregated=len(updates),
        total_examples=int(sum(u.num_examples for u, _ in updates)),
        update_norm=l2_norm(total),
        clipping_norm=c_norm,
        num_clipped=dp.num_clipped,
        rejected_at_read=rejected or None,
    )
    return R.write(store, record, cid, rnd)


def _aggregate_fedbuff(
    store: ArtifactStore,
    cid: str,
    rnd: int,
    cfg: Config,
    lay: Layout,
    updates: list[tuple[R.AcceptedUpdate, bytes]],
    rejected: list[dict[str, str]],
    arrays_key: str,
) -> dict[str, Any]:
    """FedBuff (Nguyen et al., AISTATS 2022): sum of w_i s(staleness_i) u_i over the sum
    of the sample weights w_i, so stale updates also shrink the step (not only their share);
    updates staler than ``max_staleness`` are dropped (all of them: an all-zero update)."""
    from fl_core.aggregation.fedbuff import FedBuffBuffer, staleness_weight

    a = cfg.asynchronous
    buffer = FedBuffBuffer(
        lay.num_params,
        buffer_size=len(updates),
        exponent=a.staleness_exponent,
        max_staleness=a.max_staleness,
    )
    applied: list[dict[str, Any]] = []
    for item, data in updates:  # in arrival order (collect's, then validation's order)
        _, vector = wire.decode(data, expected_layout=lay)
        buffer.add(
            vector,
            weight=item.weight,
            base_version=int(item.source_round) - 1,
            current_version=rnd - 1,
        )
        staleness = rnd - int(item.source_round)
        applied.append(
            {
                "client": item.client,
                "source_round": int(item.source_round),
                "staleness": staleness,
                "weight": float(item.weight),
                "staleness_weight": staleness_weight(
                    staleness, exponent=a.staleness_exponent, max_staleness=a.max_staleness
                ),
            }
        )
    if buffer.count:
        mean = buffer.flush().astype(np.float32)
    else:  # every update was staler than max_staleness: this round moves the model by nothing
        logger.warning("round %d: all %d updates were too stale; empty update", rnd, len(updates))
        mean = np.zeros(lay.num_params, dtype=np.float32)
    store.put_arrays(arrays_key, {"update": mean})
    record = R.AggregateInfo(
        round=rnd,
        strategy="fedbuff",
        num_aggregated=len(updates) - buffer.num_dropped,
        total_examples=int(sum(u.num_examples for u, _ in updates)),
        update_norm=l2_norm(mean),
        max_staleness_seen=max(int(u.staleness) for u, _ in updates),
        num_too_stale=buffer.num_dropped,
        applied=applied,
        outlier_scores={},
        rejected_at_read=rejected or None,
    )
    return R.write(store, record, cid, rnd)


def root_rows(num_rows: int, cfg: Config) -> np.ndarray:
    """Indices of FLTrust's root set in the test table (seeded, the same every round)."""
    n = min(cfg.server.root_dataset_size, num_rows)
    return np.sort(rng(cfg.campaign.seed, "fltrust-root").choice(num_rows, size=n, replace=False))


def _root_update(
    store: ArtifactStore, cid: str, rnd: int, rec: dict[str, Any], cfg: Config
) -> np.ndarray:
    """FLTrust's server update: the server trains on its own small, clean root dataset
    (simulation: ``server.root_dataset_size`` rows of the held-out test set, a seeded random
    sample fixed for the campaign: the test table can be sorted by label)."""
    x, y = state.test_table(rec)
    rows = root_rows(len(y), cfg)
    c = cfg.client
    result = local_train(
        state.spec(rec),
        state.load_model(store, cid, rnd - 1),
        x[rows],
        y[rows],
        settings=TrainSettings(
            local_epochs=c.local_epochs, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum
        ),
        seed=derive_seed(cfg.campaign.seed, rnd, "root"),
    )
    return result.delta
