"""Privacy settings (the ``privacy`` section), levels, validation and noise calibration.

:class:`PrivacySettings` is what a user writes; :func:`resolve` checks every combination
against the campaign (number of clients, sampling rate, rounds) *before any work starts*,
calibrates the noise multiplier from the target (epsilon, delta) with Opacus's
``get_noise_multiplier`` when none is given, and returns a :class:`ResolvedPrivacy` that the
round pipeline uses as is. Every ``ValueError`` message starts with the dotted key at fault.

Levels
------
``LEVELS`` maps a preset to a user-level (epsilon, delta) for the whole campaign. The
epsilons follow the tiers of Ponomareva et al., "How to DP-fy ML: A Practical Guide to
Machine Learning with Differential Privacy", JAIR 2023: epsilon <= 1 is a
strong formal guarantee, epsilon <= 10 a reasonable one, anything above is weak.

========  =======  =======  ==================================================
level     epsilon  delta    meaning
========  =======  =======  ==================================================
off       -        -        no user-level DP (record-level DP-SGD still possible)
low       8        1e-5     reasonable guarantee, the usual production range
medium    3        1e-5     clearly meaningful guarantee, moderate utility cost
high      1        1e-5     strong guarantee (tier 1), largest utility cost
custom    user     user     explicit ``epsilon`` and ``delta`` (and/or noise)
========  =======  =======  ==================================================

``delta = 1e-5`` is far below ``1/N`` for populations up to thousands of clients (a delta of
``1/N`` would allow releasing one client's data outright); with ``N >= 1e5`` clients the
presets are refused and ``custom`` with a smaller ``delta`` is required.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from fl_core.privacy.accountant import (
    ACCOUNTANTS,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    compute_epsilon,
)
from fl_core.privacy.clipping import AdaptiveClipper, update_noise_multiplier
from fl_core.privacy.noise import gaussian_noise_std

logger = logging.getLogger(__name__)

#: Presets: level -> (epsilon, delta) for the whole campaign (see the module docstring).
LEVELS: dict[str, tuple[float, float]] = {
    "low": (8.0, 1e-5),
    "medium": (3.0, 1e-5),
    "high": (1.0, 1e-5),
}
LEVEL_NAMES: tuple[str, ...] = ("off", *LEVELS, "custom")
MODES: tuple[str, ...] = ("central", "local")

#: Record-level delta of client DP-SGD when user-level DP is off and no delta is given.
DEFAULT_DP_SGD_DELTA = 1e-5

#: Config keys named in errors about :func:`resolve`'s campaign arguments (overridable).
ARGUMENT_KEYS: dict[str, str] = {
    "num_clients": "partition.num_clients",
    "sampling_rate": "campaign.fraction",
    "rounds": "campaign.rounds",
}


@dataclass(frozen=True)
class PrivacySettings:
    """The ``privacy`` section as written by the user.

    Attributes
    ----------
    level
        ``off`` | ``low`` | ``medium`` | ``high`` | ``custom`` (see :data:`LEVELS`).
    mode
        ``central`` (trusted server adds noise to the aggregate, DP-FedAvg) or ``local``
        (each client noises its own update).
    epsilon, delta
        The campaign's target budget; only with ``level: custom``.
    noise_multiplier
        Explicit noise multiplier; ``None`` calibrates it from (epsilon, delta, rounds, q).
    clipping_norm
        Per-client L2 bound (the initial bound with adaptive clipping).
    adaptive_clipping, target_quantile, clip_lr, clip_count_stddev
        Andrew et al. (NeurIPS 2021) quantile tracking; ``clip_count_stddev=None`` uses
        ``max(m / 20, noise_multiplier)`` with ``m`` the expected cohort size.
    accountant
        ``rdp`` or ``prv`` (tighter).
    client_dp_sgd, dp_sgd_noise_multiplier, dp_sgd_max_grad_norm
        Record-level DP-SGD inside each client (Opacus), reported per client.
    dp_sgd_max_epsilon
        Each client's own record-level budget: its DP-SGD epsilon, composed over every round
        it takes part in, never exceeds it (the client declines a task that would).
    """

    level: str = "off"
    mode: str = "central"
    epsilon: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    clipping_norm: float = 1.0
    adaptive_clipping: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    clip_count_stddev: float | None = None
    accountant: str = "rdp"
    client_dp_sgd: bool = False
    dp_sgd_noise_multiplier: float = 1.0
    dp_sgd_max_grad_norm: float = 1.0
    dp_sgd_max_epsilon: float | None = None


@dataclass(frozen=True)
class ResolvedPrivacy:
    """Validated, calibrated privacy parameters of one campaign.

    Attributes
    ----------
    enabled
        Whether user-level DP (central or local) is on.
    epsilon, delta
        The campaign budget (hard limit); ``None`` when disabled.
    noise_multiplier
        ``z`` of the whole per-round mechanism, the value the accountant composes.
    update_noise_multiplier
        The multiplier applied to the updates: ``z`` itself, or less than ``z`` with
        adaptive clipping (the clipped-count noise uses the rest of the budget).
    noise_calibrated
        ``z`` came from calibration (not from ``privacy.noise_multiplier``).
    expected_epsilon
        Epsilon after all ``rounds`` at ``z`` (<= ``epsilon`` when ``rounds_within_budget``
        equals ``rounds``).
    rounds_within_budget
        How many rounds the budget allows (the campaign stops after that many).
    clip_count_stddev
        ``sigma_b`` of the adaptive clipper (``None`` without adaptive clipping).
    dp_sgd_delta
        Record-level delta for client DP-SGD (``None`` when DP-SGD is off).
    """

    enabled: bool
    level: str
    mode: str
    epsilon: float | None
    delta: float | None
    noise_multiplier: float | None
    update_noise_multiplier: float | None
    noise_calibrated: bool
    expected_epsilon: float | None
    rounds_within_budget: int
    clipping_norm: float
    adaptive_clipping: bool
    target_quantile: float
    clip_lr: float
    clip_count_stddev: float | None
    sampling_rate: float
    num_clients: int
    rounds: int
    accountant: str
    client_dp_sgd: bool
    dp_sgd_noise_multiplier: float
    dp_sgd_max_grad_norm: float
    dp_sgd_delta: float | None
    dp_sgd_max_epsilon: float | None = None

    @property
    def expected_cohort_size(self) -> float:
        """``m = q N``, the fixed denominator of the central estimator."""
        return self.sampling_rate * self.num_clients

    @property
    def accountant_sampling_rate(self) -> float:
        """``q`` in central mode; 1.0 in local mode (a client's own, unamplified view)."""
        return self.sampling_rate if self.mode == "central" else 1.0

    def noise_std(self, clipping_norm: float | None = None) -> float:
        """Noise std to add at ``clipping_norm`` (default: the configured one).

        Central: on the fixed-denominator mean, ``z_update C / (q N)``. Local: on each
        client's clipped update, ``z C``.
        """
        if not self.enabled or self.update_noise_multiplier is None:
            raise ValueError("privacy.level: noise_std needs privacy enabled (level is 'off')")
        c = self.clipping_norm if clipping_norm is None else clipping_norm
        if self.mode == "local":
            return self.update_noise_multiplier * c
        return gaussian_noise_std(
            noise_multiplier=self.update_noise_multiplier,
            clipping_norm=c,
            expected_cohort_size=self.expected_cohort_size,
        )

    def make_accountant(self) -> PrivacyAccountant:
        """A fresh accountant for this campaign (load the last round's state into it)."""
        if not self.enabled or self.noise_multiplier is None or self.delta is None:
            raise ValueError("privacy.level: no accountant when privacy is 'off'")
        return PrivacyAccountant(
            noise_multiplier=self.noise_multiplier,
            sampling_rate=self.accountant_sampling_rate,
            delta=self.delta,
            kind=self.accountant,
        )

    def make_clipper(self) -> AdaptiveClipper | None:
        """The adaptive clipper, or ``None`` with fixed clipping."""
        if not (self.enabled and self.adaptive_clipping) or self.clip_count_stddev is None:
            return None
        return AdaptiveClipper(
            initial_norm=self.clipping_norm,
            target_quantile=self.target_quantile,
            learning_rate=self.clip_lr,
            count_stddev=self.clip_count_stddev,
            expected_cohort_size=self.expected_cohort_size,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (for the campaign record and MLflow params)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ResolvedPrivacy:
        """Rebuild from :meth:`to_dict` (resolve once per campaign; calibration is slow)."""
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields}
        required = {f.name for f in fields if f.default is dataclasses.MISSING}
        unknown = sorted(set(raw) - names)
        missing = sorted(required - set(raw))
        if unknown or missing:
            raise ValueError(f"privacy: unknown keys {unknown}, missing keys {missing}")
        return cls(**raw)


# ------------------------------------------------------------------------------ validation


def _fail(key: str, message: str) -> NoReturn:
    raise ValueError(f"{key}: {message}")


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(key, f"{value!r} is not allowed; allowed values: " + ", ".join(map(repr, allowed)))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_positive(key: str, value: Any) -> None:
    if not _is_number(value) or value <= 0:
        _fail(key, f"{value!r} is not allowed; allowed values: a finite number > 0")


def _check_fields(s: PrivacySettings) -> None:
    _check_choice("privacy.level", s.level, LEVEL_NAMES)
    _check_choice("privacy.mode", s.mode, MODES)
    _check_choice("privacy.accountant", s.accountant, ACCOUNTANTS)
    if s.epsilon is not None:
        _check_positive("privacy.epsilon", s.epsilon)
    if s.delta is not None and (not _is_number(s.delta) or not 0 < s.delta < 1):
        _fail("privacy.delta", f"{s.delta!r} is not allowed; allowed values: a number in (0, 1)")
    if s.noise_multiplier is not None:
        _check_positive("privacy.noise_multiplier", s.noise_multiplier)
    _check_positive("privacy.clipping_norm", s.clipping_norm)
    if not _is_number(s.target_quantile) or not 0 < s.target_quantile < 1:
        _fail(
            "privacy.target_quantile",
            f"{s.target_quantile!r} is not allowed; allowed values: a number in (0, 1)",
        )
    _check_positive("privacy.clip_lr", s.clip_lr)
    if s.clip_count_stddev is not None:
        _check_positive("privacy.clip_count_stddev", s.clip_count_stddev)
    _check_positive("privacy.dp_sgd_noise_multiplier", s.dp_sgd_noise_multiplier)
    _check_positive("privacy.dp_sgd_max_grad_norm", s.dp_sgd_max_grad_norm)
    if s.dp_sgd_max_epsilon is not None:
        _check_positive("privacy.dp_sgd_max_epsilon", s.dp_sgd_max_epsilon)


def _check_arguments(
    keys: Mapping[str, str], num_clients: int, sampling_rate: float, rounds: int
) -> None:
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        _fail(
            keys["num_clients"], f"{num_clients!r} is not allowed; allowed values: an integer >= 1"
        )
    if not _is_number(sampling_rate) or not 0 < sampling_rate <= 1:
        _fail(
            keys["sampling_rate"],
            f"{sampling_rate!r} is not allowed; allowed values: a sampling rate q in (0, 1]",
        )
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        _fail(keys["rounds"], f"{rounds!r} is not allowed; allowed values: an integer >= 1")


def _disabled(
    s: PrivacySettings, *, num_clients: int, sampling_rate: float, rounds: int
) -> ResolvedPrivacy:
    for key, value in (("epsilon", s.epsilon), ("noise_multiplier", s.noise_multiplier)):
        if value is not None:
            _fail(
                f"privacy.{key}",
                f"{value!r} is set but privacy.level is 'off' (no DP would be applied); "
                "allowed: privacy.level 'custom', or a preset 'low' | 'medium' | 'high'",
            )
    if s.delta is not None and not s.client_dp_sgd:
        _fail(
            "privacy.delta",
            f"{s.delta!r} is set but privacy.level is 'off' and privacy.client_dp_sgd is false; "
            "allowed: privacy.level 'custom', or client_dp_sgd true (record-level delta)",
        )
    if s.mode != "central":
        _fail("privacy.mode", f"{s.mode!r} needs privacy.level other than 'off'")
    if s.adaptive_clipping:
        _fail("privacy.adaptive_clipping", "true needs privacy.level other than 'off'")
    return ResolvedPrivacy(
        enabled=False,
        level="off",
        mode=s.mode,
        epsilon=None,
        delta=None,
        noise_multiplier=None,
        update_noise_multiplier=None,
        noise_calibrated=False,
        expected_epsilon=None,
        rounds_within_budget=rounds,
        clipping_norm=float(s.clipping_norm),
        adaptive_clipping=False,
        target_quantile=float(s.target_quantile),
        clip_lr=float(s.clip_lr),
        clip_count_stddev=None,
        sampling_rate=float(sampling_rate),
        num_clients=num_clients,
        rounds=rounds,
        accountant=s.accountant,
        client_dp_sgd=s.client_dp_sgd,
        dp_sgd_noise_multiplier=float(s.dp_sgd_noise_multiplier),
        dp_sgd_max_grad_norm=float(s.dp_sgd_max_grad_norm),
        dp_sgd_delta=(float(s.delta or DEFAULT_DP_SGD_DELTA) if s.client_dp_sgd else None),
        dp_sgd_max_epsilon=s.dp_sgd_max_epsilon,
    )


def _max_rounds(
    *, noise_multiplier: float, rate: float, delta: float, kind: str, target: float, rounds: int
) -> int:
    """Largest k <= rounds with epsilon(k) <= target (epsilon is increasing in k)."""
    lo, hi = 0, rounds  # epsilon(lo) <= target < epsilon(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        eps = compute_epsilon(
            noise_multiplier=noise_multiplier, sampling_rate=rate, steps=mid, delta=delta, kind=kind
        )
        if eps <= target:
            lo = mid
        else:
            hi = mid
    return lo


def resolve(
    settings: PrivacySettings,
    *,
    num_clients: int,
    sampling_rate: float,
    rounds: int,
    keys: Mapping[str, str] | None = None,
) -> ResolvedPrivacy:
    """Validate ``settings`` for a campaign and calibrate the noise; fail before any work.

    Parameters
    ----------
    settings
        The user's ``privacy`` section.
    num_clients
        Population size ``N`` (``delta`` must be < 1/N).
    sampling_rate
        Poisson cohort rate ``q`` in (0, 1] (central: the accountant's subsampling rate).
    rounds
        Planned rounds (calibration composes this many steps).
    keys
        Config keys to name in errors about the three campaign arguments (defaults:
        :data:`ARGUMENT_KEYS`).

    Returns
    -------
    ResolvedPrivacy
        With ``noise_multiplier`` calibrated by :func:`opacus.accountants.utils.
        get_noise_multiplier` (to 0.01 in epsilon) when not given. In local mode the
        calibration is for a client that participates in every round (sample rate 1).

    Raises
    ------
    ValueError
        Whose message starts with the dotted key, e.g.
        ``"privacy.delta: 0.1 must be < 1/num_clients (0.05)"``.
    """
    s = settings
    names = {**ARGUMENT_KEYS, **(keys or {})}
    _check_fields(s)
    _check_arguments(names, num_clients, sampling_rate, rounds)
    if s.level == "off":
        return _disabled(s, num_clients=num_clients, sampling_rate=sampling_rate, rounds=rounds)

    if s.level in LEVELS:
        preset_eps, preset_delta = LEVELS[s.level]
        for key, value in (("epsilon", s.epsilon), ("delta", s.delta)):
            if value is not None:
                _fail(
                    f"privacy.{key}",
                    f"{value!r} is only allowed with privacy.level 'custom' (level "
                    f"{s.level!r} means epsilon={preset_eps:g}, delta={preset_delta:g})",
                )
        epsilon: float | None = preset_eps
        delta = preset_delta
        if delta >= 1 / num_clients:
            _fail(
                "privacy.level",
                f"preset {s.level!r} has delta {delta:g}, which must be < 1/num_clients "
                f"({1 / num_clients:.6g}); use privacy.level 'custom' with a smaller privacy.delta",
            )
    else:  # custom
        if s.delta is None:
            _fail("privacy.delta", "required when privacy.level is 'custom'")
        if s.epsilon is None and s.noise_multiplier is None:
            _fail(
                "privacy.epsilon",
                "required when privacy.level is 'custom' (or set privacy.noise_multiplier)",
            )
        epsilon = None if s.epsilon is None else float(s.epsilon)
        delta = float(s.delta)
        if delta >= 1 / num_clients:
            _fail("privacy.delta", f"{delta:g} must be < 1/num_clients ({1 / num_clients:.6g})")
    if s.adaptive_clipping and s.mode != "central":
        _fail(
            "privacy.adaptive_clipping",
            "true is only supported with privacy.mode 'central' (the clipped count is "
            "privatized by the server)",
        )

    kind = s.accountant
    rate = sampling_rate if s.mode == "central" else 1.0
    if s.noise_multiplier is None:
        assert epsilon is not None  # ensured by the level / custom checks above
        try:
            z = calibrate_noise_multiplier(
                target_epsilon=epsilon, delta=delta, sampling_rate=rate, steps=rounds, kind=kind
            )
        except ValueError as exc:
            _fail("privacy.epsilon", f"{epsilon:g} cannot be met: {exc}")
        calibrated = True
        logger.info(
            "privacy: calibrated noise multiplier %.4f for epsilon %s, delta %s, q %s, %d rounds",
            z,
            epsilon,
            delta,
            rate,
            rounds,
        )
    else:
        z = float(s.noise_multiplier)
        calibrated = False
    expected = compute_epsilon(
        noise_multiplier=z, sampling_rate=rate, steps=rounds, delta=delta, kind=kind
    )
    if epsilon is None:
        epsilon = expected
        within = rounds
    elif expected <= epsilon:
        within = rounds
    else:
        within = _max_rounds(
            noise_multiplier=z, rate=rate, delta=delta, kind=kind, target=epsilon, rounds=rounds
        )
        if within == 0:
            _fail(
                "privacy.noise_multiplier",
                f"{z:g} spends more than epsilon {epsilon:g} in a single round; "
                "allowed values: a larger noise multiplier (or null to calibrate)",
            )
        logger.warning(
            "privacy: noise multiplier %.4f spends epsilon %.4f over %d rounds, more than the "
            "budget %.4f; the campaign will stop after %d rounds",
            z,
            expected,
            rounds,
            epsilon,
            within,
        )

    count_stddev: float | None = None
    z_update = z
    if s.adaptive_clipping:
        m = sampling_rate * num_clients
        count_stddev = (
            float(s.clip_count_stddev) if s.clip_count_stddev is not None else max(m / 20, z)
        )
        try:
            z_update = update_noise_multiplier(noise_multiplier=z, count_stddev=count_stddev)
        except ValueError:
            _fail(
                "privacy.clip_count_stddev",
                f"{count_stddev:g} must be > noise_multiplier / 2 ({z / 2:.6g}); the clipped "
                "count would spend the whole budget",
            )

    return ResolvedPrivacy(
        enabled=True,
        level=s.level,
        mode=s.mode,
        epsilon=float(epsilon),
        delta=float(delta),
        noise_multiplier=float(z),
        update_noise_multiplier=float(z_update),
        noise_calibrated=calibrated,
        expected_epsilon=float(expected),
        rounds_within_budget=within,
        clipping_norm=float(s.clipping_norm),
        adaptive_clipping=s.adaptive_clipping,
        target_quantile=float(s.target_quantile),
        clip_lr=float(s.clip_lr),
        clip_count_stddev=count_stddev,
        sampling_rate=float(sampling_rate),
        num_clients=num_clients,
        rounds=rounds,
        accountant=kind,
        client_dp_sgd=s.client_dp_sgd,
        dp_sgd_noise_multiplier=float(s.dp_sgd_noise_multiplier),
        dp_sgd_max_grad_norm=float(s.dp_sgd_max_grad_norm),
        dp_sgd_delta=float(delta) if s.client_dp_sgd else None,
        dp_sgd_max_epsilon=s.dp_sgd_max_epsilon,
    )
