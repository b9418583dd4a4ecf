"""Per-client reputation from the history of rejected and outlying updates.

A beta reputation (Josang and Ismail, "The Beta Reputation System", Bled eConference 2002),
as used for federated client selection by Kang et al. ("Incentive Mechanism for Reliable
Federated Learning: A Joint Optimization Approach to Combining Reputation and Contract
Theory", IEEE IoT Journal 2019): each round a client delivers an update adds evidence,
positive for a clean accepted update, negative for a rejection or an outlier; old evidence
fades by ``decay`` per round. The score is the expected trustworthiness
``(good + prior_good) / (good + bad + prior_good + prior_bad)`` in (0, 1).

Outlier scores come from the aggregation rules (``outlier_scores()`` of every robust rule:
distance to the aggregate over the median distance, about 1 for a typical update).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ClientReputation:
    """One client's evidence and its recent events (JSON-able)."""

    good: float = 0.0
    bad: float = 0.0
    last_round: int | None = None
    num_rejected: int = 0
    num_outliers: int = 0
    num_accepted: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)


class ReputationBook:
    """Reputation of every client, updated after each round's validation and aggregation.

    Parameters
    ----------
    decay
        Fraction of the evidence kept per elapsed round (1 = never forget).
    rejection_penalty
        Negative evidence of a rejected update (a clean update adds 1 positive).
    outlier_threshold
        Outlier score (distance over median distance) at and beyond which an accepted update
        counts fully negative; between 1 and the threshold the evidence is split linearly.
    prior_good, prior_bad
        Beta prior: a new client scores ``prior_good / (prior_good + prior_bad)``.
    history
        Recent events kept per client for audit (at least 1).
    """

    def __init__(
        self,
        *,
        decay: float = 0.95,
        rejection_penalty: float = 2.0,
        outlier_threshold: float = 3.0,
        prior_good: float = 1.0,
        prior_bad: float = 1.0,
        history: int = 20,
    ) -> None:
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if not (math.isfinite(rejection_penalty) and rejection_penalty >= 0):
            raise ValueError(f"rejection_penalty must be >= 0, got {rejection_penalty}")
        if not (math.isfinite(outlier_threshold) and outlier_threshold > 1):
            raise ValueError(f"outlier_threshold must be > 1, got {outlier_threshold}")
        if not (prior_good > 0 and prior_bad > 0):
            raise ValueError(f"prior_good and prior_bad must be > 0, got {prior_good}, {prior_bad}")
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be an integer >= 1, got {history!r}")
        self.decay, self.rejection_penalty = decay, rejection_penalty
        self.outlier_threshold = outlier_threshold
        self.prior_good, self.prior_bad = prior_good, prior_bad
        self.history = history
        self.clients: dict[str, ClientReputation] = {}

    def _faded(self, rec: ClientReputation, rnd: int) -> tuple[float, float]:
        if rec.last_round is None or rnd <= rec.last_round:
            return rec.good, rec.bad
        keep = self.decay ** (rnd - rec.last_round)
        return rec.good * keep, rec.bad * keep

    def outlier_evidence(self, outlier_score: float) -> float:
        """Negative evidence in [0, 1] of an accepted update with this outlier score."""
        if not math.isfinite(outlier_score):
            return 1.0
        return min(1.0, max(0.0, (outlier_score - 1.0) / (self.outlier_threshold - 1.0)))

    def record(
        self,
        client: str,
        *,
        round: int,
        accepted: bool,
        outlier_score: float | None = None,
        reason: str | None = None,
    ) -> float:
        """Add one round's evidence about ``client`` and return its new score.

        ``accepted=False`` is a rejection (validation, or exclusion by the rule, with its
        ``reason``); an accepted update with an ``outlier_score`` counts as partly negative.
        Recording the same (client, round) twice replaces the first record (idempotent).
        """
        rec = self.clients.setdefault(client, ClientReputation())
        if rec.events and rec.events[-1]["round"] == round:
            self._undo_last(rec)
        good, bad = self._faded(rec, round)
        if not accepted:
            neg, pos = self.rejection_penalty, 0.0
            rec.num_rejected += 1
        else:
            neg = 0.0 if outlier_score is None else self.outlier_evidence(outlier_score)
            pos = 1.0 - neg
            rec.num_accepted += 1
            rec.num_outliers += int(neg >= 1.0)
        event = {
            "round": round,
            "accepted": accepted,
            "outlier_score": outlier_score,
            "reason": reason,
            "prev": [rec.good, rec.bad, rec.last_round],
        }
        rec.good, rec.bad = good + pos, bad + neg
        rec.last_round = round if rec.last_round is None else max(rec.last_round, round)
        rec.events.append(event)
        if len(rec.events) > self.history:
            del rec.events[: len(rec.events) - self.history]
        return self.score(client, round=round)

    def _undo_last(self, rec: ClientReputation) -> None:
        event = rec.events.pop()
        rec.good, rec.bad, rec.last_round = event["prev"]
        if not event["accepted"]:
            rec.num_rejected -= 1
        else:
            rec.num_accepted -= 1
            score = event["outlier_score"]
            rec.num_outliers -= int(score is not None and self.outlier_evidence(score) >= 1.0)

    def score(self, client: str, *, round: int | None = None) -> float:
        """Expected trustworthiness in (0, 1); the prior mean for an unknown client.

        ``round`` fades the evidence to that round (default: as of the last record)."""
        rec = self.clients.get(client)
        if rec is None:
            return self.prior_good / (self.prior_good + self.prior_bad)
        good, bad = (rec.good, rec.bad) if round is None else self._faded(rec, round)
        return (good + self.prior_good) / (good + bad + self.prior_good + self.prior_bad)

    def scores(self, clients: Iterable[str], *, round: int | None = None) -> dict[str, float]:
        return {c: self.score(c, round=round) for c in clients}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state."""
        return {"clients": {c: asdict(r) for c, r in self.clients.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clients = {c: ClientReputation(**r) for c, r in state["clients"].items()}
