"""Simulated clients' world: device and network profiles, availability, the simulated
clock, the attacks' update math (evaluation only) and the adaptive communication policy.

Everything is drawn from the campaign seed, so a campaign replays identically. In a real
deployment the same inputs come from the clients' reports (measured bandwidth, latency,
duration) instead of profiles.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fl_core.config import Config
from fl_core.seeding import rng
from fl_core.selection import AvailabilityModel, SpeedProfile, sample_profiles

logger = logging.getLogger(__name__)


def campaign_profiles(cfg: Config, client_ids: list[str]) -> dict[str, dict[str, Any]]:
    """One speed profile per client (JSON), drawn from the configured mix."""
    s = cfg.simulation
    mix = {"cellular_slow": s.cellular_slow, "cellular_fast": s.cellular_fast, "wifi": s.wifi}
    mix = {k: v for k, v in mix.items() if v > 0}
    profiles = sample_profiles(
        len(client_ids), mix, rng(cfg.campaign.seed, "profiles"), jitter=s.jitter
    )
    return {c: p.to_json() for c, p in zip(client_ids, profiles, strict=True)}


def availability(cfg: Config) -> AvailabilityModel:
    s = cfg.simulation
    return AvailabilityModel(
        seed=cfg.campaign.seed,
        base_availability=s.base_availability,
        diurnal_amplitude=s.diurnal_amplitude,
        hours_per_round=s.hours_per_round,
        dropout_rate=s.dropout_rate,
    )


def profile(rec: dict[str, Any], client: str) -> SpeedProfile | None:
    raw = (rec.get("profiles") or {}).get(client)
    return SpeedProfile.from_json(raw) if raw else None


def malicious_clients(cfg: Config, client_ids: list[str]) -> list[str]:
    """The campaign's attackers (a fixed fraction of all clients, drawn from the seed)."""
    if cfg.attack.kind == "none" or cfg.attack.fraction <= 0:
        return []
    from fl_core.simulation.attacks import choose_malicious

    return sorted(
        choose_malicious(
            client_ids, fraction=cfg.attack.fraction, rng=rng(cfg.campaign.seed, "malicious")
        )
    )


def attack_updates(
    cfg: Config, honest: dict[str, np.ndarray], malicious: list[str], *, rnd: int
) -> dict[str, np.ndarray]:
    """The attackers' messages of this round, from every received honest update (an
    omniscient adversary, as in the ALIE paper). Label flipping acts on data instead."""
    from fl_core.simulation.attacks import apply_update_attack

    bad = sorted(c for c in honest if c in set(malicious))
    if not bad or cfg.attack.kind in ("none", "label_flip"):
        return {}
    a = cfg.attack
    r = rng(cfg.campaign.seed, rnd, "attack")
    if a.kind == "alie":
        benign = np.stack(
            [honest[c] for c in sorted(honest) if c not in set(bad)] or [honest[c] for c in bad]
        )
        vec = apply_update_attack(
            "alie", benign, rng=r, num_clients=len(honest), num_byzantine=len(bad)
        )
        return {c: vec for c in bad}
    return {
        c: apply_update_attack(a.kind, honest[c], rng=r, scale=a.scale, noise_std=a.noise_std)
        for c in bad
    }


def link_class(cfg: Config, prof: SpeedProfile | None) -> str:
    """``slow`` / ``medium`` / ``fast`` by the simulated profile's uplink bandwidth."""
    from fl_core.policy import link_class as by_uplink

    return by_uplink(cfg, None if prof is None else prof.uplink_mbps)


def client_plan(cfg: Config, prof: SpeedProfile | None) -> dict[str, Any]:
    """The communication policy (:func:`fl_core.policy.client_plan`) for a simulated client."""
    from fl_core.policy import client_plan as plan

    return plan(cfg, None if prof is None else prof.uplink_mbps)


def participates(cfg: Config, prof: SpeedProfile | None, rnd: int) -> bool:
    """Under the adaptive policy slow clients take part only every N-th round."""
    c = cfg.communication
    if c.policy != "adaptive" or link_class(cfg, prof) != "slow":
        return True
    return rnd % c.slow_participation_every == 0


class SimulatedWorld:
    """The simulated world of one campaign: who is online, who drops out, each client's
    device/link profile and plan, and how long a delivery takes on the simulated clock.

    With ``simulation.enabled`` false every client is online, completes, has no profile
    and takes no simulated time; the plan is the configured (fixed or adaptive) one.
    """

    def __init__(self, cfg: Config, rec: dict[str, Any]) -> None:
        self.cfg = cfg
        self.rec = rec
        self.enabled = cfg.simulation.enabled
        self._availability = availability(cfg) if self.enabled else None

    def candidates(self, ids: list[str], rnd: int) -> list[str]:
        """Clients online and allowed to take part in round ``rnd``."""
        if not self.enabled or self._availability is None:
            return list(ids)
        online = self._availability.available(list(ids), rnd)
        return [c for c in online if participates(self.cfg, self.profile(c), rnd)]

    def completes(self, client: str, rnd: int) -> bool:
        """Whether the client stays online long enough to deliver its update."""
        return self._availability is None or self._availability.completes(client, rnd)

    def profile(self, client: str) -> SpeedProfile | None:
        return profile(self.rec, client)

    def plan(self, client: str) -> dict[str, Any]:
        """Codec, local epochs and link class for the client (the communication policy)."""
        return client_plan(self.cfg, self.profile(client))

    def measured(self, client: str) -> dict[str, float]:
        """What a real client would measure and report of its link."""
        prof = self.profile(client)
        if prof is None:
            return {}
        return {"uplink_mbps": prof.uplink_mbps, "latency_s": prof.latency_s}

    def duration(
        self, client: str, *, num_examples: int, bytes_down: int, bytes_up: int, epochs: int
    ) -> float | None:
        """Simulated seconds from dispatch to delivery (None without a profile)."""
        prof = self.profile(client)
        if prof is None:
            return None
        return float(
            prof.round_time(
                num_examples=num_examples, bytes_down=bytes_down, bytes_up=bytes_up, epochs=epochs
            )
        )
