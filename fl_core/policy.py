"""The adaptive communication policy: what each client is asked to do, by its uplink.

A client's link class comes from its uplink bandwidth: the one it measured and reported
(remote devices, in their heartbeats) or its simulated profile's. Slow links get stronger
compression and more local work per round (fewer, smaller uploads); the fixed policy asks
every client for the configured codec.
"""

from __future__ import annotations

from typing import Any

from fl_core.config import Config


def link_class(cfg: Config, uplink_mbps: float | None) -> str:
    """``slow`` / ``medium`` / ``fast`` by uplink bandwidth (unknown: ``medium``)."""
    if uplink_mbps is None:
        return "medium"
    c = cfg.communication
    if uplink_mbps < c.slow_mbps:
        return "slow"
    return "fast" if uplink_mbps >= c.fast_mbps else "medium"


def client_plan(cfg: Config, uplink_mbps: float | None) -> dict[str, Any]:
    """Codec, local epochs and link class for one client."""
    c = cfg.communication
    link = link_class(cfg, uplink_mbps)
    if c.policy != "adaptive":
        return {"codec": c.uplink_codec, "local_epochs": cfg.client.local_epochs, "link": link}
    codec = {"slow": c.slow_codec, "medium": c.medium_codec, "fast": c.fast_codec}[link]
    epochs = cfg.client.local_epochs * (c.slow_epochs_factor if link == "slow" else 1)
    return {"codec": codec, "local_epochs": epochs, "link": link}
