"""Accountant and budget logic with small step counts (fast): what a persisted state may
hold, how a step composes, the documented presets and every refusal naming its key.

The slow checks (10,000-step published values, PRV comparisons, calibration of each preset)
stay in ``test_accountant.py`` and ``test_settings.py``; this module is what the mutation
group ``accountant`` runs besides them (``tests/mutation.py``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import pytest

from fl_core.privacy.accountant import (
    RDP_ORDERS,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    compute_epsilon,
    epsilon_of_history,
)
from fl_core.privacy.settings import PrivacySettings, ResolvedPrivacy, resolve

Z, Q, DELTA = 1.0, 0.1, 1e-5


def _acct(**kwargs: Any) -> PrivacyAccountant:
    return PrivacyAccountant(
        **{"noise_multiplier": Z, "sampling_rate": Q, "delta": DELTA, **kwargs}
    )


# ----------------------------------------------------------------------------- composition


def test_repeated_steps_are_one_opacus_history_entry_and_a_new_mechanism_another() -> None:
    acct = _acct()
    for r in (1, 2, 3):
        acct.step(r)

    assert acct.history == [(Z, Q, 3)]  # the persisted state stays one entry long
    assert acct.state_dict()["history"] == [[Z, Q, 3]]
    louder = _acct(noise_multiplier=2.0)
    louder.load_state_dict(acct.state_dict())  # past steps keep their own noise
    louder.step(4)
    assert louder.history == [(Z, Q, 3), (2.0, Q, 1)]
    assert louder.rounds_recorded == louder.steps == 4
    assert louder.epsilon() == pytest.approx(
        epsilon_of_history([(Z, Q, 3), (2.0, Q, 1)], delta=DELTA, kind="rdp")
    )
    other_rate = _acct(sampling_rate=0.2)
    other_rate.load_state_dict(acct.state_dict())
    other_rate.step(4)
    assert other_rate.history == [(Z, Q, 3), (Z, 0.2, 1)]


def test_a_history_is_the_composition_of_its_entries() -> None:
    one = epsilon_of_history([(Z, Q, 1)], delta=DELTA, kind="rdp")
    four = compute_epsilon(noise_multiplier=Z, sampling_rate=Q, steps=4, delta=DELTA)

    assert epsilon_of_history([(Z, Q, 1), (Z, Q, 3)], delta=DELTA, kind="rdp") == pytest.approx(
        four
    )
    assert epsilon_of_history([(Z, Q, 1), (2.0, Q, 0)], delta=DELTA, kind="rdp") == one
    assert epsilon_of_history([(Z, Q, 0)], delta=DELTA, kind="rdp") == 0.0
    with pytest.raises(ValueError, match="^delta: "):
        epsilon_of_history([(Z, Q, 1)], delta=0.0, kind="rdp")
    with pytest.raises(ValueError, match="^kind: 'gdp' is not allowed"):
        epsilon_of_history([(Z, Q, 1)], delta=DELTA, kind="gdp")


def test_rdp_searches_large_orders_where_they_tighten_the_bound() -> None:
    from opacus.accountants import RDPAccountant

    default = RDPAccountant()
    default.history = [(20.0, 1.0, 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opacus_default = default.get_epsilon(delta=DELTA)

    ours = compute_epsilon(noise_multiplier=20.0, sampling_rate=1.0, steps=1, delta=DELTA)

    assert max(RDP_ORDERS) >= 1024
    assert ours < opacus_default * 0.99  # Opacus's orders stop at 63, below the optimum


def test_accounting_emits_no_warnings() -> None:
    """Opacus's "optimal order is the largest alpha" hint and numpy's log(0) at sample rate
    1 are silenced: a campaign's log shows none of them."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_epsilon(noise_multiplier=0.2, sampling_rate=0.01, steps=1000, delta=DELTA)
        compute_epsilon(noise_multiplier=1.0, sampling_rate=1.0, steps=2, delta=DELTA, kind="prv")


def test_prv_reports_an_upper_bound_within_its_target_accuracy() -> None:
    from opacus.accountants import PRVAccountant

    fine = PRVAccountant()
    fine.history = [(Z, Q, 5)]
    exact = fine.get_epsilon(delta=DELTA, eps_error=0.001)

    prv = compute_epsilon(noise_multiplier=Z, sampling_rate=Q, steps=5, delta=DELTA, kind="prv")

    assert exact - 0.002 <= prv <= exact + 0.02


# ----------------------------------------------------------------------------- budget


def test_would_exceed_looks_one_round_ahead_without_recording_it() -> None:
    acct = _acct()
    acct.step(1)
    now, ahead = acct.epsilon(), acct.epsilon_if_step()

    assert now < ahead
    assert acct.would_exceed((now + ahead) / 2) is True
    assert acct.would_exceed(ahead * 1.001) is False
    assert acct.steps == 1 and acct.history == [(Z, Q, 1)]
    with pytest.raises(ValueError, match="^target_epsilon: 0 must be a finite number > 0$"):
        acct.would_exceed(0)


def test_a_boolean_is_not_a_rate_or_a_delta() -> None:
    for key, message in (
        ("sampling_rate", r"must be in \(0, 1\]$"),
        ("delta", r"must be in \(0, 1\)$"),
    ):
        with pytest.raises(ValueError, match=f"^{key}: True {message}"):
            _acct(**{key: True})


def test_step_names_a_bad_round() -> None:
    acct = _acct()
    for bad in (0, -1, True, 1.0):
        with pytest.raises(ValueError, match=rf"^rounds_done_marker: {bad!r} must be an integer"):
            acct.step(bad)  # type: ignore[arg-type]
    acct.step(1)
    with pytest.raises(ValueError) as info:
        acct.step(4)
    assert str(info.value) == (
        "rounds_done_marker: round 4 cannot be recorded after round 1; rounds 2..3 are "
        "missing (load the previous round's accountant state first)"
    )
    assert acct.rounds_recorded == 1


def test_state_dict_reports_the_epsilon_spent() -> None:
    acct = _acct()
    acct.step(1)
    acct.step(2)

    state = acct.state_dict()

    assert state == {
        "kind": "rdp",
        "noise_multiplier": Z,
        "sampling_rate": Q,
        "delta": DELTA,
        "history": [[Z, Q, 2]],
        "rounds_recorded": 2,
        "epsilon": acct.epsilon(),
    }
    assert state["epsilon"] == pytest.approx(
        compute_epsilon(noise_multiplier=Z, sampling_rate=Q, steps=2, delta=DELTA)
    )


def _state(**changes: Any) -> dict[str, Any]:
    acct = _acct()
    acct.step(1)
    acct.step(2)
    return {**acct.state_dict(), **changes}


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (_state(kind="prv"), r"^state.kind: 'prv' does not match 'rdp'$"),
        ({"delta": DELTA}, r"^state.kind: None does not match 'rdp'$"),
        (_state(delta=1e-6), r"^state.delta: 1e-06 does not match 1e-05$"),
        (_state(history=None), r"^state.history: expected a list of \[noise, rate, steps\]$"),
        (_state(history=[[Z, Q]]), r"^state.history: entry \[1.0, 0.1\] is not"),
        (_state(history=["abc"]), r"^state.history: entry 'abc' is not"),
        (_state(history=[[0.0, Q, 2]]), r"^state.history noise: 0.0 must be"),
        (_state(history=[[Z, 1.5, 2]]), r"^state.history rate: 1.5 must be in"),
        (_state(history=[[Z, Q, 0]]), r"^state.history: steps 0 must be an integer >= 1$"),
        (_state(history=[[Z, Q, 2.0]]), r"^state.history: steps 2.0 must be an integer"),
        (_state(history=[[Z, Q, True]]), r"^state.history: steps True must be an integer"),
        (_state(rounds_recorded=-1), r"^state.rounds_recorded: -1 must be an integer >= 0$"),
        (_state(rounds_recorded=2.0), r"^state.rounds_recorded: 2.0 must be an integer"),
        (_state(rounds_recorded=True), r"^state.rounds_recorded: True must be an integer"),
        (_state(rounds_recorded=None), r"^state.rounds_recorded: None must be an integer"),
        (
            _state(rounds_recorded=3),
            r"^state.rounds_recorded: 3 does not match the 2 steps in state.history$",
        ),
    ],
)
def test_a_corrupted_state_is_refused_and_leaves_the_accountant_unchanged(
    state: dict[str, Any], message: str
) -> None:
    acct = _acct()
    acct.step(1)

    with pytest.raises(ValueError, match=message):
        acct.load_state_dict(state)

    assert acct.history == [(Z, Q, 1)] and acct.rounds_recorded == 1


def test_an_empty_state_restores_a_fresh_accountant() -> None:
    acct = _acct()
    acct.step(1)

    acct.load_state_dict(_acct().state_dict())

    assert acct.history == [] and acct.rounds_recorded == 0 and acct.epsilon() == 0.0
    assert acct.step(1) is True


def test_calibration_names_its_arguments_and_an_unreachable_target() -> None:
    args: dict[str, Any] = {"target_epsilon": 1.0, "delta": DELTA, "sampling_rate": Q, "steps": 5}
    for key, bad in (
        ("target_epsilon", 0.0),
        ("delta", 1.0),
        ("sampling_rate", 0.0),
        ("kind", "gdp"),
    ):
        with pytest.raises(ValueError, match=f"^{key}: "):
            calibrate_noise_multiplier(**{**args, key: bad})
    with pytest.raises(ValueError) as info:
        calibrate_noise_multiplier(**{**args, "target_epsilon": 1e-4})
    assert str(info.value).startswith(
        "target_epsilon: 0.0001 is too small for 5 steps at sampling rate 0.1 and delta 1e-05 ("
    )


def test_calibration_uses_the_accountants_own_orders_and_precision() -> None:
    """Calibrated with Opacus's default orders (which stop at 63) this one-step budget would
    get a larger noise than it needs; a PRV campaign is calibrated with PRV."""
    z = calibrate_noise_multiplier(target_epsilon=0.18, delta=DELTA, sampling_rate=1.0, steps=1)
    spent = compute_epsilon(noise_multiplier=z, sampling_rate=1.0, steps=1, delta=DELTA)
    assert 0.18 - 0.01 <= spent <= 0.18

    z = calibrate_noise_multiplier(
        target_epsilon=2.0, delta=DELTA, sampling_rate=Q, steps=2, kind="prv"
    )
    spent = compute_epsilon(noise_multiplier=z, sampling_rate=Q, steps=2, delta=DELTA, kind="prv")
    assert 2.0 - 0.05 <= spent <= 2.0


def test_calibration_meets_the_target_within_its_tolerance() -> None:
    for tolerance in (0.01, 0.0005):
        z = calibrate_noise_multiplier(
            target_epsilon=2.0, delta=DELTA, sampling_rate=Q, steps=5, epsilon_tolerance=tolerance
        )
        spent = compute_epsilon(noise_multiplier=z, sampling_rate=Q, steps=5, delta=DELTA)

        assert 2.0 - tolerance <= spent <= 2.0


# ----------------------------------------------------------------------------- settings

SMALL: dict[str, Any] = {"num_clients": 100, "sampling_rate": 0.1, "rounds": 5}


def test_presets_are_the_documented_budgets() -> None:
    from fl_core.privacy import settings

    assert settings.LEVELS == {"low": (8.0, 1e-5), "medium": (3.0, 1e-5), "high": (1.0, 1e-5)}
    assert settings.LEVEL_NAMES == ("off", "low", "medium", "high", "custom")
    assert settings.MODES == ("central", "local")


def test_level_off_carries_the_settings_and_the_default_dp_sgd_delta() -> None:
    s = PrivacySettings(
        clipping_norm=2.5, target_quantile=0.7, clip_lr=0.3, client_dp_sgd=True,
        dp_sgd_noise_multiplier=1.3, dp_sgd_max_grad_norm=0.9, dp_sgd_max_epsilon=4.0,
        accountant="prv",
    )  # fmt: skip

    rp = resolve(s, **SMALL)

    assert rp == ResolvedPrivacy(
        enabled=False, level="off", mode="central", epsilon=None, delta=None,
        noise_multiplier=None, update_noise_multiplier=None, noise_calibrated=False,
        expected_epsilon=None, rounds_within_budget=5, clipping_norm=2.5,
        adaptive_clipping=False, target_quantile=0.7, clip_lr=0.3, clip_count_stddev=None,
        sampling_rate=0.1, num_clients=100, rounds=5, accountant="prv", client_dp_sgd=True,
        dp_sgd_noise_multiplier=1.3, dp_sgd_max_grad_norm=0.9, dp_sgd_delta=1e-5,
        dp_sgd_max_epsilon=4.0,
    )  # fmt: skip
    assert resolve(PrivacySettings(), **SMALL).dp_sgd_delta is None
    with pytest.raises(ValueError, match="^privacy.level: noise_std needs privacy enabled"):
        rp.noise_std()


def test_custom_explicit_noise_carries_every_setting() -> None:
    s = PrivacySettings(
        level="custom", delta=1e-3, noise_multiplier=2.0, clipping_norm=0.5,
        target_quantile=0.6, clip_lr=0.1, client_dp_sgd=True, dp_sgd_noise_multiplier=0.8,
        dp_sgd_max_grad_norm=1.2, dp_sgd_max_epsilon=3.0,
    )  # fmt: skip

    rp = resolve(s, **SMALL)

    expected = compute_epsilon(noise_multiplier=2.0, sampling_rate=0.1, steps=5, delta=1e-3)
    assert rp == ResolvedPrivacy(
        enabled=True, level="custom", mode="central", epsilon=expected, delta=1e-3,
        noise_multiplier=2.0, update_noise_multiplier=2.0, noise_calibrated=False,
        expected_epsilon=expected, rounds_within_budget=5, clipping_norm=0.5,
        adaptive_clipping=False, target_quantile=0.6, clip_lr=0.1, clip_count_stddev=None,
        sampling_rate=0.1, num_clients=100, rounds=5, accountant="rdp", client_dp_sgd=True,
        dp_sgd_noise_multiplier=0.8, dp_sgd_max_grad_norm=1.2, dp_sgd_delta=1e-3,
        dp_sgd_max_epsilon=3.0,
    )  # fmt: skip
    assert rp.expected_cohort_size == pytest.approx(10.0)
    assert rp.noise_std() == pytest.approx(2.0 * 0.5 / 10.0)
    acct = rp.make_accountant()
    assert (acct.noise_multiplier, acct.sampling_rate, acct.delta, acct.kind) == (
        2.0, 0.1, 1e-3, "rdp",
    )  # fmt: skip
    assert rp.make_clipper() is None
    without_dp_sgd = resolve(dataclasses.replace(s, client_dp_sgd=False), **SMALL)
    assert without_dp_sgd.dp_sgd_delta is None


def test_a_budget_of_exactly_what_the_rounds_spend_allows_every_round() -> None:
    """Explicit noise without a target: the budget is what the planned rounds spend, and
    the accountant refuses none of them (the last one lands exactly on the budget)."""
    for kind in ("rdp", "prv"):
        s = PrivacySettings(level="custom", delta=1e-3, noise_multiplier=2.0, accountant=kind)
        rp = resolve(s, num_clients=100, sampling_rate=0.1, rounds=3)
        acct = rp.make_accountant()
        assert acct.kind == kind and rp.epsilon is not None

        for r in (1, 2, 3):
            assert not acct.would_exceed(rp.epsilon), (kind, r)
            acct.step(r)

        assert acct.epsilon() == rp.epsilon
        assert acct.would_exceed(rp.epsilon)


def test_local_mode_accounts_a_client_in_every_round() -> None:
    s = PrivacySettings(level="custom", mode="local", delta=1e-3, noise_multiplier=3.0)

    rp = resolve(s, **SMALL)

    assert rp.expected_epsilon == compute_epsilon(
        noise_multiplier=3.0, sampling_rate=1.0, steps=5, delta=1e-3
    )
    assert rp.make_accountant().sampling_rate == 1.0
    assert rp.sampling_rate == 0.1 and rp.noise_std(0.5) == pytest.approx(1.5)


def test_an_explicit_noise_over_budget_runs_the_rounds_the_budget_allows() -> None:
    z, delta = 1.0, 1e-3
    eps = [
        compute_epsilon(noise_multiplier=z, sampling_rate=0.1, steps=k, delta=delta)
        for k in range(1, 9)
    ]
    for allowed in (1, 2, 5, 7):
        target = (eps[allowed - 1] + eps[allowed]) / 2
        s = PrivacySettings(level="custom", epsilon=target, delta=delta, noise_multiplier=z)

        rp = resolve(s, num_clients=100, sampling_rate=0.1, rounds=8)

        assert rp.rounds_within_budget == allowed
        assert rp.epsilon == target and rp.expected_epsilon == pytest.approx(eps[7])
    for allowed in (3, 8):  # a budget of exactly what k rounds spend allows k rounds
        exact = PrivacySettings(
            level="custom", epsilon=eps[allowed - 1], delta=delta, noise_multiplier=z
        )
        within = resolve(exact, num_clients=100, sampling_rate=0.1, rounds=8).rounds_within_budget
        assert within == allowed
    single = PrivacySettings(level="custom", epsilon=eps[0] / 2, delta=delta, noise_multiplier=z)
    with pytest.raises(ValueError) as info:
        resolve(single, num_clients=100, sampling_rate=0.1, rounds=8)
    assert str(info.value) == (
        f"privacy.noise_multiplier: 1 spends more than epsilon {eps[0] / 2:g} in a single "
        "round; allowed values: a larger noise multiplier (or null to calibrate)"
    )


def test_the_rounds_a_prv_budget_allows_are_counted_with_prv() -> None:
    z, delta, q = 1.0, 1e-3, 0.1
    prv = [
        compute_epsilon(noise_multiplier=z, sampling_rate=q, steps=k, delta=delta, kind="prv")
        for k in (1, 2, 3, 4)
    ]
    target = (prv[1] + prv[2]) / 2  # PRV allows 2 rounds ...
    rdp = compute_epsilon(noise_multiplier=z, sampling_rate=q, steps=2, delta=delta)
    assert rdp > target  # ... RDP, looser, would allow only 1
    s = PrivacySettings(
        level="custom", epsilon=target, delta=delta, noise_multiplier=z, accountant="prv"
    )

    rp = resolve(s, num_clients=100, sampling_rate=q, rounds=4)

    assert rp.rounds_within_budget == 2
    assert rp.expected_epsilon == prv[3]


def test_a_prv_campaign_is_calibrated_with_prv() -> None:
    s = PrivacySettings(level="custom", epsilon=2.0, delta=1e-3, accountant="prv")

    rp = resolve(s, num_clients=100, sampling_rate=0.1, rounds=2)

    assert rp.noise_calibrated and rp.accountant == "prv"
    assert 2.0 - 0.01 <= rp.expected_epsilon <= 2.0  # RDP's larger noise would spend less


def test_adaptive_clipping_uses_the_given_count_noise() -> None:
    s = PrivacySettings(
        level="custom", delta=1e-3, noise_multiplier=0.3, adaptive_clipping=True,
        clip_count_stddev=5.0, target_quantile=0.7, clip_lr=0.3, clipping_norm=0.4,
    )  # fmt: skip

    rp = resolve(s, **SMALL)

    assert rp.clip_count_stddev == 5.0 and rp.adaptive_clipping is True
    assert rp.update_noise_multiplier == pytest.approx((0.3**-2 - (2 * 5.0) ** -2) ** -0.5)
    clipper = rp.make_clipper()
    assert clipper is not None
    assert clipper.current_norm == 0.4
    assert (clipper.target_quantile, clipper.learning_rate) == (0.7, 0.3)
    assert (clipper.count_stddev, clipper.expected_cohort_size) == (5.0, pytest.approx(10.0))
    default = resolve(PrivacySettings(**{**vars(s), "clip_count_stddev": None}), **SMALL)
    assert default.clip_count_stddev == pytest.approx(0.1 * 100 / 20)  # m / 20 > z = 0.3
    with pytest.raises(ValueError) as info:
        resolve(PrivacySettings(**{**vars(s), "clip_count_stddev": 0.1}), **SMALL)
    assert str(info.value) == (
        "privacy.clip_count_stddev: 0.1 must be > noise_multiplier / 2 (0.15); the clipped "
        "count would spend the whole budget"
    )


def test_from_dict_names_unknown_and_missing_keys() -> None:
    rp = resolve(PrivacySettings(), **SMALL)
    raw = rp.to_dict()
    raw.pop("level")
    raw.pop("dp_sgd_max_epsilon")  # has a default: not missing

    with pytest.raises(ValueError) as info:
        ResolvedPrivacy.from_dict({**raw, "extra": 1})

    assert str(info.value) == "privacy: unknown keys ['extra'], missing keys ['level']"
    assert ResolvedPrivacy.from_dict({**raw, "level": "off"}) == rp
    with pytest.raises(ValueError, match=r"^privacy: unknown keys \[\], missing keys \['level'\]$"):
        ResolvedPrivacy.from_dict(raw)
    with pytest.raises(ValueError, match=r"^privacy: unknown keys \['extra'\], missing keys \[\]$"):
        ResolvedPrivacy.from_dict({**raw, "level": "off", "extra": 1})


S = PrivacySettings


@pytest.mark.parametrize(
    ("settings", "campaign", "message"),
    [
        (
            S(level="x"),
            {},
            "privacy.level: 'x' is not allowed; allowed values: 'off', 'low', "
            "'medium', 'high', 'custom'",
        ),
        (S(mode="x"), {}, "privacy.mode: 'x' is not allowed; allowed values: 'central', 'local'"),
        (
            S(accountant="x"),
            {},
            "privacy.accountant: 'x' is not allowed; allowed values: 'rdp', 'prv'",
        ),
        (
            S(level="custom", epsilon=True, delta=1e-3),
            {},
            "privacy.epsilon: True is not allowed; allowed values: a finite number > 0",
        ),
        (
            S(level="custom", epsilon=1.0, delta=1.0),
            {},
            "privacy.delta: 1.0 is not allowed; allowed values: a number in (0, 1)",
        ),
        (
            S(level="custom", epsilon=1.0, delta=True),
            {},
            "privacy.delta: True is not allowed; allowed values: a number in (0, 1)",
        ),
        (
            S(level="custom", epsilon=1.0, delta=0.01),
            {},
            "privacy.delta: 0.01 must be < 1/num_clients (0.01)",
        ),
        (
            S(level="low"),
            {"num_clients": 100_000},
            "privacy.level: preset 'low' has delta "
            "1e-05, which must be < 1/num_clients (1e-05); use privacy.level 'custom' with a "
            "smaller privacy.delta",
        ),
        (
            S(level="custom", epsilon=1.0),
            {},
            "privacy.delta: required when privacy.level is 'custom'",
        ),
        (
            S(level="custom", delta=1e-3),
            {},
            "privacy.epsilon: required when privacy.level is "
            "'custom' (or set privacy.noise_multiplier)",
        ),
        (
            S(level="high", delta=1e-3),
            {},
            "privacy.delta: 0.001 is only allowed with "
            "privacy.level 'custom' (level 'high' means epsilon=1, delta=1e-05)",
        ),
        (
            S(level="custom", delta=1e-3, noise_multiplier=float("inf")),
            {},
            "privacy.noise_multiplier: inf is not allowed; allowed values: a finite number > 0",
        ),
        (
            S(level="medium", target_quantile=0.0),
            {},
            "privacy.target_quantile: 0.0 is not allowed; allowed values: a number in (0, 1)",
        ),
        (
            S(level="medium", dp_sgd_max_epsilon=0.0),
            {},
            "privacy.dp_sgd_max_epsilon: 0.0 is not allowed; allowed values: a finite number > 0",
        ),
        (
            S(epsilon=2.0),
            {},
            "privacy.epsilon: 2.0 is set but privacy.level is 'off' (no DP "
            "would be applied); allowed: privacy.level 'custom', or a preset 'low' | 'medium' | "
            "'high'",
        ),
        (
            S(delta=1e-6),
            {},
            "privacy.delta: 1e-06 is set but privacy.level is 'off' and "
            "privacy.client_dp_sgd is false; allowed: privacy.level 'custom', or client_dp_sgd "
            "true (record-level delta)",
        ),
        (S(mode="local"), {}, "privacy.mode: 'local' needs privacy.level other than 'off'"),
        (
            S(adaptive_clipping=True),
            {},
            "privacy.adaptive_clipping: true needs privacy.level other than 'off'",
        ),
        (
            S(
                level="custom",
                mode="local",
                delta=1e-3,
                noise_multiplier=1.0,
                adaptive_clipping=True,
            ),
            {},
            "privacy.adaptive_clipping: true is only supported "
            "with privacy.mode 'central' (the clipped count is privatized by the server)",
        ),
        (
            S(),
            {"num_clients": True},
            "partition.num_clients: True is not allowed; allowed values: an integer >= 1",
        ),
        (S(), {"num_clients": 10.0}, "partition.num_clients: 10.0 is not allowed"),
        (
            S(),
            {"sampling_rate": True},
            "campaign.fraction: True is not allowed; allowed values: a sampling rate q in (0, 1]",
        ),
        (
            S(),
            {"rounds": True},
            "campaign.rounds: True is not allowed; allowed values: an integer >= 1",
        ),
        (S(), {"rounds": 2.0}, "campaign.rounds: 2.0 is not allowed"),
        (
            S(level="custom", epsilon=1e-3, delta=1e-5),
            {"num_clients": 1000, "sampling_rate": 0.05, "rounds": 30},
            "privacy.epsilon: 0.001 cannot be met: target_epsilon: 0.001 is too small for 30 "
            "steps at sampling rate 0.05 and delta 1e-05 (",
        ),
    ],
)
def test_a_refusal_names_the_key_the_value_and_what_is_allowed(
    settings: PrivacySettings, campaign: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        resolve(settings, **{**SMALL, **campaign})

    assert str(info.value).startswith(message)


def test_boundary_values_that_are_allowed() -> None:
    full = resolve(
        PrivacySettings(level="custom", delta=0.0099, noise_multiplier=5.0),
        num_clients=100,
        sampling_rate=1.0,
        rounds=1,
    )
    assert full.sampling_rate == 1.0 and full.enabled
    assert resolve(PrivacySettings(), num_clients=1, sampling_rate=0.5, rounds=1).num_clients == 1
    assert math.isfinite(full.noise_std())
