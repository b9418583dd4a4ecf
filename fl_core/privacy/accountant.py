"""Privacy accounting for the Poisson-subsampled Gaussian mechanism, one step per round.

This module does no privacy math of its own: it keeps the history Opacus's accountants
expect (``[(noise_multiplier, sample_rate, num_steps), ...]``) and asks Opacus for epsilon:

- ``"rdp"``: :class:`opacus.accountants.RDPAccountant`, Renyi DP of the sampled Gaussian
  mechanism (Mironov, Talwar & Zhang, "Renyi Differential Privacy of the Sampled Gaussian
  Mechanism", 2019) converted to (epsilon, delta) with Balle et al., "Hypothesis Testing
  Interpretations and Renyi Differential Privacy", AISTATS 2020, Theorem 21.
- ``"prv"``: :class:`opacus.accountants.PRVAccountant`, numerical composition of privacy
  loss random variables (Gopi, Lee & Wutschitz, "Numerical Composition of Differential
  Privacy", NeurIPS 2021); tighter than RDP, returns its upper bound (eps_error 0.01).

In DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language Models",
ICLR 2018) one *round* is one step: every client is in the cohort independently with
probability ``sampling_rate`` and the clipped sum gets Gaussian noise of std
``noise_multiplier x clipping_norm``.

Crash safety. :class:`PrivacyAccountant` remembers *which* rounds it recorded, so
``step(r)`` twice is ``step(r)`` once, and a step for round ``r`` is refused unless rounds
``1 .. r-1`` are recorded (a lost state cannot silently under-count). Persist
``state_dict()`` with each round and rebuild round ``r``'s accountant from round ``r-1``'s
persisted state.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")

#: RDP orders searched when converting to (epsilon, delta): Opacus's defaults (1.1 .. 63)
#: extended with large orders, which only matter (and only tighten the bound) in the
#: low-noise / high-epsilon regime where Opacus warns that its largest order was optimal.
#: The published cross-check values are unchanged (their optimal orders are interior).
RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)]
    + [float(a) for a in range(12, 64)]
    + [64.0, 80.0, 96.0, 128.0, 192.0, 256.0, 512.0, 1024.0]
)

#: Target accuracy of the PRV accountant's epsilon (it reports the upper bound).
PRV_EPS_ERROR = 0.01

History = list[tuple[float, float, int]]


@contextmanager
def quiet_opacus() -> Iterator[None]:
    """Silence Opacus's tightness hint and numpy's log(0) in the PRV at sample rate 1."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.filterwarnings("ignore", message="Optimal order is the")
        yield


def check_kind(kind: str, *, name: str = "kind") -> None:
    if kind not in ACCOUNTANTS:
        raise ValueError(
            f"{name}: {kind!r} is not allowed; allowed values: "
            + ", ".join(repr(k) for k in ACCOUNTANTS)
        )


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: {value!r} must be a finite number > 0")


def _check_rate(name: str, value: float) -> None:
    if isinstance(value, bool) or not math.isfinite(value) or not 0 < value <= 1:
        raise ValueError(f"{name}: {value!r} must be in (0, 1]")


def _check_delta(name: str, value: float) -> None:
    if isinstance(value, bool) or not math.isfinite(value) or not 0 < value < 1:
        raise ValueError(f"{name}: {value!r} must be in (0, 1)")


def _opacus_accountant(kind: str) -> Any:
    from opacus.accountants import PRVAccountant, RDPAccountant

    return RDPAccountant() if kind == "rdp" else PRVAccountant()


def epsilon_of_history(
    history: Sequence[tuple[float, float, int]], *, delta: float, kind: str
) -> float:
    """Epsilon at ``delta`` of a composition ``[(noise_multiplier, sample_rate, steps), ...]``."""
    check_kind(kind)
    _check_delta("delta", delta)
    history = [(float(z), float(q), int(n)) for z, q, n in history if int(n) > 0]
    if not history:
        return 0.0
    acct = _opacus_accountant(kind)
    acct.history = history
    with quiet_opacus():
        if kind == "rdp":
            eps = acct.get_epsilon(delta=delta, alphas=list(RDP_ORDERS))
        else:
            eps = acct.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR)
    return float(eps)


def compute_epsilon(
    *,
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    kind: str = "rdp",
) -> float:
    """Epsilon at ``delta`` after ``steps`` Poisson-subsampled Gaussian steps.

    Parameters
    ----------
    noise_multiplier
        Noise std divided by the L2 sensitivity (the clipping norm).
    sampling_rate
        Poisson inclusion probability ``q`` of each client (or record), in (0, 1].
    steps
        Number of compositions (rounds); 0 gives 0.
    delta
        Target delta, in (0, 1).
    kind
        ``"rdp"`` or ``"prv"``.
    """
    _check_positive("noise_multiplier", noise_multiplier)
    _check_rate("sampling_rate", sampling_rate)
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        raise ValueError(f"steps: {steps!r} must be an integer >= 0")
    return epsilon_of_history(
        [(noise_multiplier, sampling_rate, int(steps))], delta=delta, kind=kind
    )


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    kind: str = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier (to ``epsilon_tolerance``) spending <= ``target_epsilon``.

    A thin wrapper around :func:`opacus.accountants.utils.get_noise_multiplier` (binary
    search) that uses the same RDP orders / PRV precision as :class:`PrivacyAccountant`, so a
    campaign calibrated for ``steps`` rounds is never refused by its own budget check.

    Raises
    ------
    ValueError
        Naming ``target_epsilon`` when even a noise multiplier of 1e6 overspends.
    """
    from opacus.accountants.utils import get_noise_multiplier

    _check_positive("target_epsilon", target_epsilon)
    _check_delta("delta", delta)
    _check_rate("sampling_rate", sampling_rate)
    check_kind(kind)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: {steps!r} must be an integer >= 1")
    extra: dict[str, Any] = (
        {"alphas": list(RDP_ORDERS)} if kind == "rdp" else {"eps_error": PRV_EPS_ERROR}
    )
    try:
        with quiet_opacus():
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sampling_rate,
                steps=steps,
                accountant=kind,
                epsilon_tolerance=epsilon_tolerance,
                **extra,
            )
    except ValueError as exc:
        raise ValueError(
            f"target_epsilon: {target_epsilon} is too small for {steps} steps at sampling "
            f"rate {sampling_rate} and delta {delta} ({exc})"
        ) from exc
    return float(sigma)


def _compose(history: History, noise_multiplier: float, sampling_rate: float) -> History:
    """``history`` plus one step, merged like Opacus's ``step`` (same (z, q) -> count + 1)."""
    out = list(history)
    if out and out[-1][0] == noise_multiplier and out[-1][1] == sampling_rate:
        z, q, n = out[-1]
        out[-1] = (z, q, n + 1)
    else:
        out.append((noise_multiplier, sampling_rate, 1))
    return out


class PrivacyAccountant:
    """Round-indexed, idempotent, persistable (epsilon, delta) accountant.

    Parameters
    ----------
    noise_multiplier
        The per-round mechanism's noise multiplier (for adaptive clipping: the *combined*
        multiplier of update and clipped-count noise, see
        :func:`fl_core.privacy.clipping.update_noise_multiplier`).
    sampling_rate
        Poisson rate ``q`` of the cohort sampling (1.0 for local DP's worst-case client).
    delta
        The delta at which epsilon is reported.
    kind
        ``"rdp"`` (default) or ``"prv"`` (tighter, ~0.2-1 s per evaluation).

    Examples
    --------
    >>> acct = PrivacyAccountant(noise_multiplier=1.1, sampling_rate=0.01, delta=1e-5)
    >>> if not acct.would_exceed(3.0):
    ...     acct.step(1)  # after round 1's noise was added
    True
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        sampling_rate: float,
        delta: float,
        kind: str = "rdp",
    ) -> None:
        _check_positive("noise_multiplier", noise_multiplier)
        _check_rate("sampling_rate", sampling_rate)
        _check_delta("delta", delta)
        check_kind(kind)
        self.noise_multiplier = float(noise_multiplier)
        self.sampling_rate = float(sampling_rate)
        self.delta = float(delta)
        self.kind = kind
        self._history: History = []
        self._last_round = 0
        self._cache: dict[tuple[tuple[float, float, int], ...], float] = {}

    # ------------------------------------------------------------------ recording

    @property
    def rounds_recorded(self) -> int:
        """Rounds ``1 .. rounds_recorded`` have been recorded (0: none)."""
        return self._last_round

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self._history)

    @property
    def history(self) -> History:
        """A copy of the Opacus-style history ``[(noise_multiplier, sample_rate, steps)]``."""
        return list(self._history)

    def step(self, rounds_done_marker: int) -> bool:
        """Record round ``rounds_done_marker``'s expenditure (exactly once).

        Returns ``True`` when the step was recorded now, ``False`` when that round was
        already recorded (idempotent re-run).

        Raises
        ------
        ValueError
            If the round is < 1, or skips a round (rounds must be recorded as 1, 2, 3, ...).
        """
        r = rounds_done_marker
        if isinstance(r, bool) or not isinstance(r, int | np.integer) or r < 1:
            raise ValueError(f"rounds_done_marker: {r!r} must be an integer >= 1")
        if r <= self._last_round:
            logger.debug("privacy accountant: round %d already recorded", r)
            return False
        if r != self._last_round + 1:
            raise ValueError(
                f"rounds_done_marker: round {r} cannot be recorded after round "
                f"{self._last_round}; rounds {self._last_round + 1}..{r - 1} are missing "
                "(load the previous round's accountant state first)"
            )
        self._history = _compose(self._history, self.noise_multiplier, self.sampling_rate)
        self._last_round = int(r)
        return True

    # ------------------------------------------------------------------ epsilon

    def _epsilon(self, history: History) -> float:
        key = tuple(history)
        if key not in self._cache:
            self._cache[key] = epsilon_of_history(history, delta=self.delta, kind=self.kind)
        return self._cache[key]

    def epsilon(self) -> float:
        """Epsilon spent so far at ``delta``."""
        return self._epsilon(self._history)

    def epsilon_if_step(self) -> float:
        """Epsilon after one more round, without recording it."""
        return self._epsilon(_compose(self._history, self.noise_multiplier, self.sampling_rate))

    def would_exceed(self, target_epsilon: float) -> bool:
        """Whether running one more round would push epsilon above ``target_epsilon``."""
        _check_positive("target_epsilon", target_epsilon)
        return self.epsilon_if_step() > target_epsilon

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: parameters, Opacus history and the rounds recorded.

        ``epsilon`` is informational (recomputed, never trusted, on load).
        """
        return {
            "kind": self.kind,
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "delta": self.delta,
            "history": [[z, q, n] for z, q, n in self._history],
            "rounds_recorded": self._last_round,
            "epsilon": self.epsilon(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; ``kind`` and ``delta`` must match this object.

        The noise multiplier and sampling rate of *future* steps stay this object's own;
        past steps keep theirs (they are in the history).
        """
        if state.get("kind") != self.kind:
            raise ValueError(f"state.kind: {state.get('kind')!r} does not match {self.kind!r}")
        if state.get("delta") != self.delta:
            raise ValueError(f"state.delta: {state.get('delta')!r} does not match {self.delta}")
        raw = state.get("history")
        if not isinstance(raw, list):
            raise ValueError("state.history: expected a list of [noise, rate, steps]")
        history: History = []
        for item in raw:
            if not (isinstance(item, list | tuple) and len(item) == 3):
                raise ValueError(f"state.history: entry {item!r} is not [noise, rate, steps]")
            z, q, n = float(item[0]), float(item[1]), item[2]
            _check_positive("state.history noise", z)
            _check_rate("state.history rate", q)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"state.history: steps {n!r} must be an integer >= 1")
            history.append((z, q, n))
        last = state.get("rounds_recorded")
        if isinstance(last, bool) or not isinstance(last, int) or last < 0:
            raise ValueError(f"state.rounds_recorded: {last!r} must be an integer >= 0")
        if sum(n for _, _, n in history) != last:
            raise ValueError(
                f"state.rounds_recorded: {last} does not match the {sum(n for *_, n in history)}"
                " steps in state.history"
            )
        self._history = history
        self._last_round = last
