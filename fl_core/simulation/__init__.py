"""The simulated world and the simulated adversary.

Each enters the round through one hook: :func:`world` (availability, dropouts, device and
link profiles, the simulated clock, the adaptive communication plan) and :func:`adversary`
(attacks, evaluation only). Everything is drawn from the campaign seed, so a campaign
replays identically. In a real deployment the same facts come from the clients' reports.
"""

from __future__ import annotations

from typing import Any

from fl_core.config import Config
from fl_core.simulation.adversary import Adversary
from fl_core.simulation.world import (
    SimulatedWorld,
    attack_updates,
    availability,
    campaign_profiles,
    client_plan,
    link_class,
    malicious_clients,
    participates,
    profile,
)


def world(cfg: Config, rec: dict[str, Any]) -> SimulatedWorld:
    """The campaign's world (trivial when ``simulation.enabled`` is false)."""
    return SimulatedWorld(cfg, rec)


def adversary(cfg: Config, rec: dict[str, Any]) -> Adversary | None:
    """The campaign's adversary, or None when there is no attack."""
    malicious = list(rec.get("malicious") or [])
    if not malicious or cfg.attack.kind == "none":
        return None
    return Adversary(cfg, malicious, num_classes=int(rec["model_spec"]["num_classes"]))


__all__ = [
    "Adversary",
    "SimulatedWorld",
    "adversary",
    "attack_updates",
    "availability",
    "campaign_profiles",
    "client_plan",
    "link_class",
    "malicious_clients",
    "participates",
    "profile",
    "world",
]
