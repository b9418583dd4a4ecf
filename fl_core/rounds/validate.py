"""Step ``validate_updates``: check every received update, reject with a reason.

Checks, in order: size (before the bytes are read), wire format (checksum, layout and codec
the task asked for), kind, campaign/round/client, model version (staleness), example count
(an integer between 1 and what the server knows of the client: its weight can never exceed
that), finite header metrics, finite values, norm cap, and norm outliers against the round's
median (not under central DP). Each accepted update is recorded with the sha256 of the exact
bytes checked: what ``aggregate`` consumes is verified against it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

import numpy as np

from fl_core import wire
from fl_core.aggregation.math import l2_norm
from fl_core.models import Layout
from fl_core.rounds import layout as L
from fl_core.rounds import records as R
from fl_core.rounds import remote, state
from fl_core.rounds.state import read_update
from fl_core.store import ArtifactStore

logger = logging.getLogger(__name__)

STEP = "validate_updates"

#: Header metrics a client reports, with the bounds a sane value lies in.
METRIC_BOUNDS: dict[str, tuple[float, float]] = {
    "train_loss": (0.0, 1e6),
    "duration_s": (0.0, 7 * 24 * 3600.0),
    "dp_sgd_epsilon": (0.0, 1e6),
    "dp_sgd_epsilon_round": (0.0, 1e6),
    "bytes_down": (0.0, float(wire.DEFAULT_MAX_MESSAGE_BYTES)),
    "uplink_mbps": (0.0, 1e6),
    "latency_s": (0.0, 3600.0),
}
_KEPT_METRICS = ("dp_sgd_epsilon", "bytes_down", "uplink_mbps")


def validate_updates(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Write round ``rnd``'s accept/reject record (idempotent)."""
    if (done := R.maybe(store, R.Validation, cid, rnd)) is not None:
        return done.to_dict()
    rec = state.load_campaign(store, cid)
    cfg = state.campaign_config(rec)
    lay = state.model_layout(rec)
    known = remote.known_examples(store) if remote.is_remote(cfg) else state.client_examples(rec)
    collected = R.read(store, R.Collected, cid, rnd, step=STEP)
    manifests: dict[int, R.Manifest] = {}
    accepted: list[R.AcceptedUpdate] = []
    rejected: list[dict[str, str]] = []
    bytes_up = bytes_down = 0
    for client in collected.received:
        src = int(collected.sources[client])
        if src not in manifests:
            manifests[src] = R.read(store, R.Manifest, cid, src, step=STEP)
        task = manifests[src].tasks[client]
        key = L.update_key(cid, src, client)
        if not store.exists(key):
            rejected.append({"client": client, "reason": "update disappeared after collect"})
            continue
        try:
            data = read_update(store, key, lay)
        except wire.WireError as exc:
            rejected.append({"client": client, "reason": str(exc)})
            continue
        bytes_up += len(data)
        reason, item = check_update(
            data,
            cid=cid,
            rnd=src,
            client=client,
            base_version=src - 1,
            layout=lay,
            codec=task["codec"],
            max_norm=cfg.server.max_update_norm,
            max_examples=known.get(client, 0),
        )
        if reason is None and item is not None:
            item.staleness = rnd - src
            accepted.append(item)
            bytes_down += int(item.metrics.get("bytes_down", 0))
        else:
            rejected.append({"client": client, "reason": str(reason)})
    factor = cfg.server.norm_outlier_factor
    # Not under central DP: a threshold relative to the cohort's median lets one client flip
    # others between accepted and rejected, breaking the clipped sum's sensitivity bound.
    if factor is not None and len(accepted) >= 3 and not state.central(state.privacy(rec)):
        median = float(np.median([a.norm for a in accepted]))
        for item in [a for a in accepted if a.norm > factor * median]:
            accepted.remove(item)
            rejected.append(
                {
                    "client": item.client,
                    "reason": f"norm outlier: {item.norm:.4g} > {factor:g} x median {median:.4g}",
                }
            )
    for bad in rejected:
        logger.warning("round %d: rejected update from %s: %s", rnd, bad["client"], bad["reason"])
    record = R.Validation(
        round=rnd,
        accepted=accepted,
        rejected=rejected,
        num_accepted=len(accepted),
        num_rejected=len(rejected),
        bytes_up=bytes_up,
        bytes_down=bytes_down,
    )
    return R.write(store, record, cid, rnd)


def check_update(
    data: bytes,
    *,
    cid: str,
    rnd: int,
    client: str,
    base_version: int,
    layout: Layout,
    codec: str,
    max_norm: float,
    max_examples: int,
) -> tuple[str | None, R.AcceptedUpdate | None]:
    """``(None, accepted item)`` for a valid update, else ``(reason, None)``."""
    try:
        header, vector = wire.decode(data, expected_layout=layout, expected_codec=codec)
    except wire.WireError as exc:
        return str(exc), None
    if header.kind != "update":
        return f"kind is {header.kind!r}, expected 'update'", None
    if (header.campaign, header.round, header.client) != (cid, rnd, client):
        return "header names another campaign, round or client", None
    if header.base_version != base_version:
        return f"stale: computed on version {header.base_version}, round uses {base_version}", None
    n = header.num_examples
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return f"num_examples must be an integer >= 1, got {n!r}", None
    if n > max_examples:
        return (
            f"num_examples {n} exceeds the {max_examples} examples the server knows this "
            "client holds",
            None,
        )
    for name, value in header.metrics.items():
        lo, hi = METRIC_BOUNDS.get(name, (-1e12, 1e12))
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not lo <= value <= hi
        ):
            return (
                f"header metric {name}={value!r} is not a finite number in [{lo:g}, {hi:g}]",
                None,
            )
    if not np.all(np.isfinite(vector)):
        return "update has non-finite values", None
    norm = l2_norm(vector)
    if norm > max_norm:
        return f"update norm {norm:.4g} exceeds server.max_update_norm {max_norm:.4g}", None
    return None, R.AcceptedUpdate(
        client=client,
        source_round=rnd,
        staleness=0,
        num_examples=n,
        weight=float(n),
        norm=norm,
        train_loss=float(header.metrics.get("train_loss", math.nan)),
        duration_s=float(header.metrics.get("duration_s", math.nan)),
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        metrics={k: float(v) for k, v in header.metrics.items() if k in _KEPT_METRICS},
    )
