"""Client selection: uniform random, and adaptive Oort-style selection by utility.

``OortSelector`` follows Lai, Zhu, Madhyastha, Chowdhury, "Oort: Efficient Federated
Learning via Guided Participant Selection", OSDI 2021: a client's utility is its
statistical utility (sample count times reported training loss, normalized, plus a bonus
for clients not seen for a while) times a system factor ``(T / t) ** alpha`` that
penalizes clients slower than the preferred round duration ``T``; a fraction ``epsilon``
of the cohort (decaying over rounds) explores clients never heard from. On top of Oort the
utility is multiplied by the client's availability history (how often it delivered when
selected), a data-quality signal from validation, and its reputation
(:mod:`fl_core.reputation`).

Simulation support: :class:`AvailabilityModel` (random and diurnal availability, seeded and
deterministic per (client, round)), :class:`SpeedProfile` and :func:`sample_profiles`
(compute and network profiles), :func:`arrivals` (who makes the quorum or deadline on the
simulated clock) and :func:`overselect` (cohort size that survives dropouts).

Every selector's randomness comes from the ``rng`` it is given (derive it from the campaign
seed, the round and the step). ``select`` changes nothing but ``last_reasons``; ``observe``
updates the records, at most once per (client, round), so a retried step counts once.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from fl_core.seeding import derive_seed

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- client record


@dataclass
class ClientStats:
    """Running record of one client, as the selector sees it (JSON-able).

    ``quality`` (a data-quality signal from validation) and ``reputation`` are in [0, 1] and
    set by the caller; the rest is updated by :meth:`Selector.observe`.
    """

    client_id: str
    num_examples: int = 0
    loss: float | None = None
    duration_s: float | None = None
    times_selected: int = 0
    times_completed: int = 0
    last_round: int | None = None
    last_observed_round: int | None = None
    quality: float = 1.0
    reputation: float = 1.0

    @property
    def explored(self) -> bool:
        """Whether the client has ever delivered an update (its utility is known)."""
        return self.loss is not None

    @property
    def completion_rate(self) -> float:
        """Laplace-smoothed fraction of selections it delivered: 1/2 for a new client."""
        return (self.times_completed + 1) / (self.times_selected + 2)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ClientStats:
        return cls(**raw)


def _unit_interval(value: float, name: str) -> float:
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


# --------------------------------------------------------------------------- selectors


class Selector(ABC):
    """Base: per-client :class:`ClientStats`, observation, eligibility and state.

    Parameters
    ----------
    min_reputation
        Clients whose reputation is below this are never selected (0 = no ban).
    """

    name: str = "base"

    def __init__(self, *, min_reputation: float = 0.0) -> None:
        self.min_reputation = _unit_interval(min_reputation, "min_reputation")
        self.stats: dict[str, ClientStats] = {}
        self.last_reasons: dict[str, str] = {}

    def client(self, client_id: str) -> ClientStats:
        """The client's record (created on first use)."""
        return self.stats.setdefault(client_id, ClientStats(client_id))

    def observe(
        self,
        client_id: str,
        *,
        round: int,
        completed: bool,
        num_examples: int | None = None,
        loss: float | None = None,
        duration_s: float | None = None,
    ) -> None:
        """Record the outcome of selecting ``client_id`` in ``round``: delivered
        (``completed``, with its reported examples, loss and duration) or dropped out.
        A second observation of the same (client, round) is ignored."""
        st = self.client(client_id)
        if st.last_observed_round == round:
            logger.debug("round %d: %s already observed; ignored", round, client_id)
            return
        st.last_observed_round = round
        st.times_selected += 1
        if not completed:
            return
        st.times_completed += 1
        st.last_round = round
        if num_examples is not None:
            st.num_examples = int(num_examples)
        if loss is not None and math.isfinite(loss):
            st.loss = float(loss)
        if duration_s is not None and math.isfinite(duration_s):
            st.duration_s = float(duration_s)

    def set_signals(
        self,
        *,
        reputation: Mapping[str, float] | None = None,
        quality: Mapping[str, float] | None = None,
    ) -> None:
        """Update clients' reputation and data-quality signals (each in [0, 1])."""
        for cid, value in (reputation or {}).items():
            self.client(cid).reputation = _unit_interval(value, f"reputation[{cid!r}]")
        for cid, value in (quality or {}).items():
            self.client(cid).quality = _unit_interval(value, f"quality[{cid!r}]")

    def eligible(self, candidates: Iterable[str]) -> list[str]:
        """Sorted, de-duplicated candidates not banned by ``min_reputation``."""
        return [
            c
            for c in sorted(set(candidates))
            if c not in self.stats or self.stats[c].reputation >= self.min_reputation
        ]

    def select(
        self, candidates: Iterable[str], k: int, *, rng: np.random.Generator, round: int
    ) -> list[str]:
        """Up to ``k`` distinct clients among ``candidates`` (the clients available this
        round), sorted; fewer if fewer are eligible. ``last_reasons`` tells why each was
        chosen."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be an integer >= 0, got {k!r}")
        pool = self.eligible(candidates)
        size = min(k, len(pool))
        reasons = self._choose(pool, size, rng=rng, round=round) if size else {}
        self.last_reasons = reasons
        return sorted(reasons)

    @abstractmethod
    def _choose(
        self, pool: list[str], k: int, *, rng: np.random.Generator, round: int
    ) -> dict[str, str]:
        """Exactly ``k`` clients of ``pool`` (sorted, ``k <= len(pool)``) with a reason each."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (every client's record)."""
        return {"stats": {c: s.to_json() for c, s in self.stats.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.stats = {c: ClientStats.from_json(s) for c, s in state["stats"].items()}


class RandomSelector(Selector):
    """Uniformly at random without replacement among the eligible candidates (FedAvg's
    selection, McMahan et al., AISTATS 2017)."""

    name = "random"

    def _choose(
        self, pool: list[str], k: int, *, rng: np.random.Generator, round: int
    ) -> dict[str, str]:
        picked = rng.choice(len(pool), size=k, replace=False)
        return {pool[int(i)]: "random" for i in picked}


def _sample(
    rng: np.random.Generator, items: Sequence[str], weights: np.ndarray, k: int
) -> list[str]:
    """``k`` of ``items`` without replacement, with probability proportional to ``weights``
    (zero-weight items only once the positive ones run out)."""
    w = np.where(np.isfinite(weights) & (weights > 0), weights, 0.0)
    positive = np.flatnonzero(w > 0)
    if len(positive) >= k:
        picked = rng.choice(positive, size=k, replace=False, p=w[positive] / w[positive].sum())
        return [items[int(i)] for i in picked]
    rest = np.flatnonzero(w <= 0)
    fill = rng.choice(rest, size=k - len(positive), replace=False)
    return [items[int(i)] for i in (*positive, *fill)]


class OortSelector(Selector):
    """Adaptive selection by Oort utility (Lai et al., OSDI 2021) with availability,
    data-quality and reputation factors.

    Parameters
    ----------
    exploration, exploration_decay, min_exploration
        Fraction ``epsilon`` of the cohort given to never-explored clients in round 1,
        multiplied by ``exploration_decay`` each round, never below ``min_exploration``.
    cutoff
        Exploitation keeps clients whose utility is at least ``cutoff`` times the utility
        of the last client that would fill the exploit slots, then samples them in
        proportion to utility (Oort's 95% confidence cut-off).
    straggler_penalty
        ``alpha`` of the system factor ``(T / t) ** alpha`` for clients slower than ``T``.
    preferred_duration_s
        ``T``; when None, the ``duration_percentile`` of the explored clients' durations.
    staleness_bonus
        The ``0.1`` of Oort's ``sqrt(0.1 * log(round) / last_round)`` bonus.
    min_reputation
        Clients below this reputation are never selected.
    """

    name = "oort"

    def __init__(
        self,
        *,
        exploration: float = 0.9,
        exploration_decay: float = 0.98,
        min_exploration: float = 0.2,
        cutoff: float = 0.95,
        straggler_penalty: float = 2.0,
        preferred_duration_s: float | None = None,
        duration_percentile: float = 80.0,
        staleness_bonus: float = 0.1,
        min_reputation: float = 0.0,
    ) -> None:
        super().__init__(min_reputation=min_reputation)
        self.exploration = _unit_interval(exploration, "exploration")
        if not 0 < exploration_decay <= 1:
            raise ValueError(f"exploration_decay must be in (0, 1], got {exploration_decay}")
        self.exploration_decay = float(exploration_decay)
        self.min_exploration = _unit_interval(min_exploration, "min_exploration")
        self.cutoff = _unit_interval(cutoff, "cutoff")
        if not (math.isfinite(straggler_penalty) and straggler_penalty >= 0):
            raise ValueError(f"straggler_penalty must be >= 0, got {straggler_penalty}")
        self.straggler_penalty = float(straggler_penalty)
        if preferred_duration_s is not None and not preferred_duration_s > 0:
            raise ValueError(f"preferred_duration_s must be > 0, got {preferred_duration_s}")
        self.preferred_duration_s = preferred_duration_s
        if not 0 < duration_percentile <= 100:
            raise ValueError(f"duration_percentile must be in (0, 100], got {duration_percentile}")
        self.duration_percentile = float(duration_percentile)
        if not (math.isfinite(staleness_bonus) and staleness_bonus >= 0):
            raise ValueError(f"staleness_bonus must be >= 0, got {staleness_bonus}")
        self.staleness_bonus = float(staleness_bonus)

    def epsilon(self, round: int) -> float:
        """The exploration fraction of ``round`` (a function of the round: no state)."""
        decayed = self.exploration * self.exploration_decay ** max(0, round - 1)
        return max(self.min_exploration, decayed)

    def utilities(self, clients: Sequence[str], *, round: int) -> dict[str, float]:
        """Utility of each explored client in ``clients`` (unexplored ones are left out)."""
        explored = [self.stats[c] for c in clients if c in self.stats and self.stats[c].explored]
        if not explored:
            return {}
        raw = np.array([st.num_examples * (st.loss or 0.0) for st in explored], dtype=float)
        lo, hi = float(raw.min()), float(np.percentile(raw, 95))
        stat = np.clip((raw - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.ones_like(raw)
        durations = [st.duration_s for st in explored if st.duration_s is not None]
        if self.preferred_duration_s is not None:
            deadline: float | None = self.preferred_duration_s
        elif durations:
            deadline = float(np.percentile(durations, self.duration_percentile))
        else:
            deadline = None
        out: dict[str, float] = {}
        for st, s in zip(explored, stat, strict=True):
            last = max(1, st.last_round or 1)
            util = float(s) + math.sqrt(self.staleness_bonus * math.log(max(round, 1)) / last)
            if deadline is not None and st.duration_s is not None and st.duration_s > deadline:
                util *= (deadline / st.duration_s) ** self.straggler_penalty
            out[st.client_id] = util * st.completion_rate * st.quality * st.reputation
        return out

    def _prior(self, client: str) -> float:
        st = self.stats.get(client)
        if st is None:
            return 1.0
        speed = 1.0 if st.duration_s is None else 1.0 / max(st.duration_s, 1e-9)
        return speed * st.completion_rate * st.quality * st.reputation

    def _choose(
        self, pool: list[str], k: int, *, rng: np.random.Generator, round: int
    ) -> dict[str, str]:
        util = self.utilities(pool, round=round)
        unexplored = [c for c in pool if c not in util]
        explored = [c for c in pool if c in util]
        n_explore = min(len(unexplored), int(_round_half_up(k * self.epsilon(round))))
        n_exploit = min(len(explored), k - n_explore)
        n_explore = k - n_exploit  # fill from the unexplored when too few are explored
        reasons: dict[str, str] = {}
        if n_exploit:
            ranked = sorted(explored, key=lambda c: (-util[c], c))
            bar = self.cutoff * util[ranked[n_exploit - 1]]
            short = [c for c in ranked if util[c] >= bar]
            for c in _sample(rng, short, np.array([util[c] for c in short]), n_exploit):
                reasons[c] = "exploit"
        if n_explore:
            weights = np.array([self._prior(c) for c in unexplored])
            for c in _sample(rng, unexplored, weights, n_explore):
                reasons[c] = "explore"
        return reasons


def _round_half_up(x: float) -> int:
    """``x`` rounded to the nearest integer, halves up (not banker's rounding)."""
    return int(math.floor(x + 0.5))


SELECTORS: dict[str, type[Selector]] = {"random": RandomSelector, "oort": OortSelector}


def create_selector(name: str, **kwargs: Any) -> Selector:
    """The selector registered under ``name`` ("random" or "oort")."""
    try:
        cls = SELECTORS[name]
    except KeyError:
        raise ValueError(
            f"selector {name!r} is unknown; allowed values: {', '.join(SELECTORS)}"
        ) from None
    return cls(**kwargs)


# --------------------------------------------------------------------------- over-selection


def overselect(k: int, dropout_rate: float, *, confidence: float | None = None) -> int:
    """How many clients to select so that ``k`` deliver despite dropouts.

    ``ceil(k / (1 - dropout_rate))`` by default (the expected number suffices); with
    ``confidence``, the smallest ``m`` for which ``Binomial(m, 1 - dropout_rate) >= k``
    with at least that probability.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if not 0 <= dropout_rate < 1:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    if confidence is not None and not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    m = math.ceil(k / (1 - dropout_rate) - 1e-9)
    if confidence is None or dropout_rate == 0:
        return m
    p = 1 - dropout_rate
    while _prob_at_least(m, p, k) < confidence:
        m += 1
    return m


def _prob_at_least(m: int, p: float, k: int) -> float:
    """``P(Binomial(m, p) >= k)`` summed in log space."""
    if k > m:
        return 0.0
    logs = [
        math.lgamma(m + 1)
        - math.lgamma(i + 1)
        - math.lgamma(m - i + 1)
        + i * math.log(p)
        + (m - i) * math.log1p(-p)
        for i in range(k, m + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


# --------------------------------------------------------------------------- availability


class AvailabilityModel:
    """Simulated availability: random, optionally diurnal, deterministic per (client, round).

    A client is online in a round with probability
    ``base * (1 - amplitude + amplitude * (1 + cos(2 pi (h - peak_hour) / 24)) / 2)``,
    where ``h`` is the client's local hour (round ``r`` starts at hour
    ``start_hour + r * hours_per_round``, shifted by a per-client time zone drawn from the
    seed); phones are most available around ``peak_hour`` (idle, charging, on Wi-Fi at
    night). Once selected, it drops out before delivering with probability ``dropout_rate``.

    Parameters
    ----------
    seed
        Campaign seed; every draw is a hash of (seed, client, round), no global state.
    base_availability
        Peak probability of being online.
    diurnal_amplitude
        0 = purely random availability, 1 = nobody online at the opposite of the peak hour.
    """

    def __init__(
        self,
        *,
        seed: int,
        base_availability: float = 0.9,
        diurnal_amplitude: float = 0.0,
        hours_per_round: float = 1.0,
        peak_hour: float = 2.0,
        start_hour: float = 0.0,
        dropout_rate: float = 0.0,
    ) -> None:
        self.seed = int(seed)
        self.base_availability = _unit_interval(base_availability, "base_availability")
        self.diurnal_amplitude = _unit_interval(diurnal_amplitude, "diurnal_amplitude")
        if not (math.isfinite(hours_per_round) and hours_per_round >= 0):
            raise ValueError(f"hours_per_round must be >= 0, got {hours_per_round}")
        self.hours_per_round = float(hours_per_round)
        self.peak_hour, self.start_hour = float(peak_hour), float(start_hour)
        if not 0 <= dropout_rate < 1:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
        self.dropout_rate = float(dropout_rate)

    def _uniform(self, *parts: object) -> float:
        return derive_seed(self.seed, *parts) / float(1 << 63)

    def timezone_offset(self, client: str) -> float:
        """The client's local-time offset in hours, in [0, 24), fixed by the seed."""
        return 24.0 * self._uniform("timezone", client) if self.diurnal_amplitude else 0.0

    def probability(self, client: str, round: int) -> float:
        """Probability that ``client`` is online in ``round``."""
        if not self.diurnal_amplitude:
            return self.base_availability
        hour = self.start_hour + round * self.hours_per_round + self.timezone_offset(client)
        wave = (1 + math.cos(2 * math.pi * (hour - self.peak_hour) / 24.0)) / 2
        return self.base_availability * (1 - self.diurnal_amplitude * (1 - wave))

    def is_available(self, client: str, round: int) -> bool:
        """Whether ``client`` is online (can be selected) in ``round``."""
        return self._uniform("available", client, round) < self.probability(client, round)

    def available(self, clients: Iterable[str], round: int) -> list[str]:
        """The online clients of ``round``, sorted."""
        return sorted(c for c in set(clients) if self.is_available(c, round))

    def completes(self, client: str, round: int) -> bool:
        """Whether a selected ``client`` delivers its update in ``round`` (no dropout)."""
        return self._uniform("completes", client, round) >= self.dropout_rate


# --------------------------------------------------------------------------- speeds


@dataclass(frozen=True)
class SpeedProfile:
    """A device and network class: compute seconds per example and link speeds."""

    name: str
    compute_s_per_example: float
    uplink_mbps: float
    downlink_mbps: float
    latency_s: float

    def __post_init__(self) -> None:
        for field_name in ("compute_s_per_example", "uplink_mbps", "downlink_mbps"):
            value = getattr(self, field_name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{field_name} must be > 0, got {value}")
        if not (math.isfinite(self.latency_s) and self.latency_s >= 0):
            raise ValueError(f"latency_s must be >= 0, got {self.latency_s}")

    def compute_time(self, num_examples: int, *, epochs: int = 1) -> float:
        """Seconds of local training."""
        return self.compute_s_per_example * num_examples * epochs

    def transfer_time(self, num_bytes: int, *, upload: bool) -> float:
        """Seconds to send (``upload``) or receive ``num_bytes``, latency included."""
        mbps = self.uplink_mbps if upload else self.downlink_mbps
        return self.latency_s + 8.0 * num_bytes / (mbps * 1e6)

    def round_time(
        self, *, num_examples: int, bytes_down: int, bytes_up: int, epochs: int = 1
    ) -> float:
        """Seconds on the simulated clock from dispatch to a delivered update."""
        return (
            self.transfer_time(bytes_down, upload=False)
            + self.compute_time(num_examples, epochs=epochs)
            + self.transfer_time(bytes_up, upload=True)
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SpeedProfile:
        return cls(**raw)


PROFILES: dict[str, SpeedProfile] = {
    # low-end phone on a 3G / congested cellular link
    "cellular_slow": SpeedProfile("cellular_slow", 4e-3, 1.0, 5.0, 0.15),
    # mid-range phone on 4G / 5G
    "cellular_fast": SpeedProfile("cellular_fast", 1.5e-3, 10.0, 50.0, 0.05),
    # recent phone or laptop on Wi-Fi
    "wifi": SpeedProfile("wifi", 8e-4, 20.0, 100.0, 0.02),
}


def sample_profiles(
    num_clients: int,
    mix: Mapping[str, float],
    rng: np.random.Generator,
    *,
    jitter: float = 0.2,
) -> list[SpeedProfile]:
    """One speed profile per client, drawn from ``mix`` (profile name -> share).

    Each client's compute time and link speeds are multiplied by independent log-normal
    factors of standard deviation ``jitter`` (0 = every device of a class is identical).
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 0:
        raise ValueError(f"num_clients must be an integer >= 0, got {num_clients!r}")
    if not mix:
        raise ValueError(f"mix must name at least one profile of: {', '.join(PROFILES)}")
    names = sorted(mix)
    for name in names:
        if name not in PROFILES:
            raise ValueError(f"mix: unknown profile {name!r}; allowed: {', '.join(PROFILES)}")
    shares = np.array([mix[n] for n in names], dtype=float)
    if not np.all(np.isfinite(shares)) or np.any(shares < 0) or shares.sum() <= 0:
        raise ValueError("mix shares must be non-negative with a positive sum")
    if not (math.isfinite(jitter) and jitter >= 0):
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    picks = rng.choice(len(names), size=num_clients, p=shares / shares.sum())
    noise = rng.lognormal(0.0, jitter, size=(num_clients, 3)) if jitter else None
    out = []
    for i, pick in enumerate(picks):
        base = PROFILES[names[int(pick)]]
        if noise is not None:
            base = replace(
                base,
                compute_s_per_example=base.compute_s_per_example * float(noise[i, 0]),
                uplink_mbps=base.uplink_mbps / float(noise[i, 1]),
                downlink_mbps=base.downlink_mbps / float(noise[i, 2]),
            )
        out.append(base)
    return out


@dataclass(frozen=True)
class RoundTiming:
    """Who delivered in time on the simulated clock, and when the round closed."""

    received: list[str]
    stragglers: list[str]
    duration_s: float


def arrivals(
    durations: Mapping[str, float | None],
    *,
    quorum: int | None = None,
    deadline_s: float | None = None,
) -> RoundTiming:
    """Close a synchronous round on the simulated clock.

    ``durations`` maps each cohort member to its time to deliver (None or inf for a
    dropout). The round closes at the ``quorum``-th arrival, or at ``deadline_s``, or when
    the last client delivers, whichever comes first; everybody not in by then is a
    straggler. ``received`` is in arrival order.
    """
    if quorum is not None and (isinstance(quorum, bool) or quorum < 1):
        raise ValueError(f"quorum must be an integer >= 1 or None, got {quorum!r}")
    if deadline_s is not None and not deadline_s > 0:
        raise ValueError(f"deadline_s must be > 0 or None, got {deadline_s}")
    finite = {c: float(t) for c, t in durations.items() if t is not None and math.isfinite(t)}
    order = sorted(finite, key=lambda c: (finite[c], c))
    if deadline_s is not None:
        order = [c for c in order if finite[c] <= deadline_s]
    received = order[:quorum] if quorum is not None else order
    if quorum is not None and len(received) >= quorum:
        closed = finite[received[-1]]
    elif deadline_s is not None and len(received) < len(durations):
        closed = deadline_s
    else:
        closed = finite[received[-1]] if received else 0.0
    got = set(received)
    stragglers = sorted(c for c in durations if c not in got)
    return RoundTiming(received=received, stragglers=stragglers, duration_s=closed)


class SimulatedClock:
    """Simulated wall time in seconds (advanced by round durations, never read from the OS)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = float(now)

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0) and return the new time."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds}")
        self.now += float(seconds)
        return self.now

    def state_dict(self) -> dict[str, float]:
        return {"now": self.now}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.now = float(state["now"])
