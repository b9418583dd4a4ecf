"""The simulated adversary (evaluation only): the round's one hook for attacks.

It enters a round at two points and nowhere else: :meth:`Adversary.poison_data` on an
attacker's examples before local training (label flipping), and :meth:`Adversary.poison`
on the messages received in a round (an omniscient adversary, as in the ALIE paper, that
sees every received update and replaces its own clients' messages). Replacement messages
follow the protocol: same header, same codec as the task asked for.
"""

from __future__ import annotations

import logging

import numpy as np

from fl_core import wire
from fl_core.config import Config
from fl_core.seeding import derive_seed

logger = logging.getLogger(__name__)


class Adversary:
    """The campaign's attackers and what they do.

    Parameters
    ----------
    cfg
        The campaign config (``attack`` section, seed).
    malicious
        The attackers' client ids (drawn once per campaign).
    num_classes
        For label flipping.
    """

    def __init__(self, cfg: Config, malicious: list[str], *, num_classes: int) -> None:
        self.cfg = cfg
        self.malicious = frozenset(malicious)
        self.num_classes = num_classes

    @property
    def replaces_updates(self) -> bool:
        return bool(self.malicious) and self.cfg.attack.kind not in ("none", "label_flip")

    def poison_data(self, client: str, y: np.ndarray) -> np.ndarray:
        """An attacker's labels as it trains on them (label flipping), else ``y``."""
        if client in self.malicious and self.cfg.attack.kind == "label_flip":
            from fl_core.simulation.attacks import flip_labels

            return flip_labels(y, self.num_classes)
        return y

    def poison(self, rnd: int, messages: dict[str, bytes]) -> dict[str, bytes]:
        """The attackers' replacement messages for this round, computed from every received
        (honest) message; only attackers' entries are returned."""
        if not self.replaces_updates or not self.malicious & set(messages):
            return {}
        from fl_core.simulation.world import attack_updates

        honest: dict[str, np.ndarray] = {}
        headers: dict[str, wire.Header] = {}
        for client, data in messages.items():
            try:
                headers[client], honest[client] = wire.decode(data)
            except wire.WireError:
                continue
        attacked = attack_updates(self.cfg, honest, sorted(self.malicious), rnd=rnd)
        out: dict[str, bytes] = {}
        for client, vector in attacked.items():
            header = headers[client]
            codec_rng = np.random.default_rng(
                derive_seed(self.cfg.campaign.seed, rnd, "attack", client)
            )
            out[client] = wire.encode(header, vector.astype(np.float32), rng=codec_rng)
        return out
