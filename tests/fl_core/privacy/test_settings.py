"""resolve(): presets, calibration and every invalid combination naming its key."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest

from fl_core.privacy.accountant import compute_epsilon
from fl_core.privacy.settings import LEVELS, PrivacySettings, ResolvedPrivacy, resolve

CAMPAIGN: dict[str, Any] = {"num_clients": 1000, "sampling_rate": 0.05, "rounds": 30}


def test_off_is_disabled_and_needs_no_accountant() -> None:
    rp = resolve(PrivacySettings(), **CAMPAIGN)

    assert rp.enabled is False and rp.epsilon is None and rp.noise_multiplier is None
    assert rp.make_clipper() is None
    with pytest.raises(ValueError, match="^privacy.level"):
        rp.make_accountant()


def test_custom_target_is_calibrated_close_to_and_within_budget() -> None:
    settings = PrivacySettings(level="custom", epsilon=2.0, delta=1e-5)

    rp = resolve(settings, **CAMPAIGN)

    assert rp.noise_calibrated and rp.noise_multiplier is not None
    spent = compute_epsilon(
        noise_multiplier=rp.noise_multiplier, sampling_rate=0.05, steps=30, delta=1e-5
    )
    assert 2.0 - 0.02 <= spent <= 2.0
    assert rp.expected_epsilon == pytest.approx(spent)
    assert rp.rounds_within_budget == 30
    assert rp.noise_std() == pytest.approx(rp.noise_multiplier * 1.0 / (0.05 * 1000))


def test_calibrated_campaign_runs_every_round_under_its_own_budget_check() -> None:
    rp = resolve(PrivacySettings(level="high"), num_clients=1000, sampling_rate=0.05, rounds=12)
    acct = rp.make_accountant()
    assert rp.epsilon is not None

    for r in range(1, 13):
        assert not acct.would_exceed(rp.epsilon), f"round {r} refused"
        acct.step(r)

    assert acct.epsilon() <= rp.epsilon
    assert acct.would_exceed(rp.epsilon)


def test_levels_are_the_documented_presets_and_stronger_means_more_noise() -> None:
    resolved = {level: resolve(PrivacySettings(level=level), **CAMPAIGN) for level in LEVELS}

    for level, rp in resolved.items():
        assert (rp.epsilon, rp.delta) == LEVELS[level]
    z = {level: rp.noise_multiplier or 0.0 for level, rp in resolved.items()}
    assert 0 < z["low"] < z["medium"] < z["high"]


def test_explicit_noise_with_too_small_budget_limits_the_rounds() -> None:
    settings = PrivacySettings(level="custom", epsilon=1.0, delta=1e-5, noise_multiplier=1.5)

    rp = resolve(settings, **CAMPAIGN)

    assert not rp.noise_calibrated
    assert 0 < rp.rounds_within_budget < 30
    k = rp.rounds_within_budget
    assert compute_epsilon(noise_multiplier=1.5, sampling_rate=0.05, steps=k, delta=1e-5) <= 1
    assert compute_epsilon(noise_multiplier=1.5, sampling_rate=0.05, steps=k + 1, delta=1e-5) > 1


def test_explicit_noise_without_epsilon_budgets_what_it_spends() -> None:
    rp = resolve(PrivacySettings(level="custom", delta=1e-5, noise_multiplier=1.5), **CAMPAIGN)

    assert rp.epsilon == rp.expected_epsilon and rp.rounds_within_budget == 30


def test_adaptive_clipping_splits_the_noise_budget() -> None:
    settings = PrivacySettings(level="medium", adaptive_clipping=True)

    rp = resolve(settings, **CAMPAIGN)

    m = 0.05 * 1000
    assert rp.clip_count_stddev == pytest.approx(max(m / 20, rp.noise_multiplier or 0))
    z, zu, sb = rp.noise_multiplier, rp.update_noise_multiplier, rp.clip_count_stddev
    assert z is not None and zu is not None and sb is not None
    assert zu > z
    assert zu**-2 + (2 * sb) ** -2 == pytest.approx(z**-2)
    clipper = rp.make_clipper()
    assert clipper is not None and clipper.current_norm == rp.clipping_norm


def test_local_mode_calibrates_for_a_client_in_every_round() -> None:
    rp = resolve(PrivacySettings(level="medium", mode="local"), **CAMPAIGN)

    assert rp.accountant_sampling_rate == 1.0
    assert rp.noise_multiplier is not None
    spent = compute_epsilon(
        noise_multiplier=rp.noise_multiplier, sampling_rate=1.0, steps=30, delta=1e-5
    )
    assert 3.0 - 0.02 <= spent <= 3.0
    assert rp.noise_std(2.0) == pytest.approx(rp.noise_multiplier * 2.0)


def test_client_dp_sgd_alone_is_allowed_with_level_off() -> None:
    rp = resolve(PrivacySettings(client_dp_sgd=True, delta=1e-6), **CAMPAIGN)

    assert not rp.enabled and rp.client_dp_sgd and rp.dp_sgd_delta == 1e-6


def test_delta_message_names_the_key_and_the_bound() -> None:
    settings = PrivacySettings(level="custom", epsilon=1.0, delta=0.1)

    with pytest.raises(ValueError) as info:
        resolve(settings, num_clients=20, sampling_rate=0.5, rounds=5)

    assert str(info.value) == "privacy.delta: 0.1 must be < 1/num_clients (0.05)"


S = PrivacySettings
INVALID: list[tuple[PrivacySettings, dict[str, Any], str]] = [
    (S(level="extreme"), {}, "privacy.level"),
    (S(level="medium", mode="hybrid"), {}, "privacy.mode"),
    (S(level="medium", accountant="gdp"), {}, "privacy.accountant"),
    (S(level="custom", epsilon=0.0, delta=1e-5), {}, "privacy.epsilon"),
    (S(level="custom", epsilon=-1.0, delta=1e-5), {}, "privacy.epsilon"),
    (S(level="custom", epsilon=float("nan"), delta=1e-5), {}, "privacy.epsilon"),
    (S(level="custom", epsilon=1.0, delta=0.0), {}, "privacy.delta"),
    (S(level="custom", epsilon=1.0, delta=1e-3), {}, "privacy.delta"),  # >= 1/N
    (S(level="custom", epsilon=1.0), {}, "privacy.delta"),
    (S(level="custom", delta=1e-5), {}, "privacy.epsilon"),
    (S(level="medium", epsilon=1.0), {}, "privacy.epsilon"),
    (S(level="medium", delta=1e-6), {}, "privacy.delta"),
    (S(level="medium"), {"num_clients": 200_000}, "privacy.level"),  # preset delta >= 1/N
    (S(epsilon=1.0), {}, "privacy.epsilon"),  # level off: would silently not apply DP
    (S(noise_multiplier=1.0), {}, "privacy.noise_multiplier"),
    (S(delta=1e-5), {}, "privacy.delta"),
    (S(mode="local"), {}, "privacy.mode"),
    (S(adaptive_clipping=True), {}, "privacy.adaptive_clipping"),
    (S(level="medium", noise_multiplier=0.0), {}, "privacy.noise_multiplier"),
    (S(level="medium", clipping_norm=0.0), {}, "privacy.clipping_norm"),
    (S(level="medium", target_quantile=1.0), {}, "privacy.target_quantile"),
    (S(level="medium", clip_lr=0.0), {}, "privacy.clip_lr"),
    (S(level="medium", clip_count_stddev=-1.0), {}, "privacy.clip_count_stddev"),
    (
        S(level="medium", adaptive_clipping=True, clip_count_stddev=0.1),
        {},
        "privacy.clip_count_stddev",  # 2 * 0.1 <= noise multiplier: no budget left
    ),
    (S(level="medium", mode="local", adaptive_clipping=True), {}, "privacy.adaptive_clipping"),
    (S(level="medium", dp_sgd_noise_multiplier=0.0), {}, "privacy.dp_sgd_noise_multiplier"),
    (S(level="medium", dp_sgd_max_grad_norm=-1.0), {}, "privacy.dp_sgd_max_grad_norm"),
    (S(level="custom", epsilon=1e-3, delta=1e-5), {}, "privacy.epsilon"),  # unreachable
    (
        S(level="custom", epsilon=1.0, delta=1e-5, noise_multiplier=0.05),
        {},
        "privacy.noise_multiplier",  # overspends in a single round
    ),
    (S(level="medium"), {"sampling_rate": 0.0}, "campaign.fraction"),
    (S(level="medium"), {"sampling_rate": 1.5}, "campaign.fraction"),
    (S(level="medium"), {"num_clients": 0}, "partition.num_clients"),
    (S(level="medium"), {"rounds": 0}, "campaign.rounds"),
]


@pytest.mark.parametrize(
    ("settings", "overrides", "key"),
    INVALID,
    ids=[f"{i}-{key}" for i, (_, _, key) in enumerate(INVALID)],
)
def test_invalid_combination_fails_naming_the_key(
    settings: PrivacySettings, overrides: dict[str, Any], key: str
) -> None:
    campaign = {**CAMPAIGN, **overrides}

    with pytest.raises(ValueError, match=f"^{re.escape(key)}: "):
        resolve(settings, **campaign)


def test_argument_keys_can_be_renamed() -> None:
    with pytest.raises(ValueError, match="^privacy.sampling_rate: "):
        resolve(
            PrivacySettings(level="medium"),
            num_clients=100,
            sampling_rate=2.0,
            rounds=5,
            keys={"sampling_rate": "privacy.sampling_rate"},
        )


def test_resolved_round_trips_through_json() -> None:
    rp = resolve(PrivacySettings(level="high", adaptive_clipping=True), **CAMPAIGN)

    again = ResolvedPrivacy.from_dict(json.loads(json.dumps(rp.to_dict())))

    assert again == rp


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PrivacySettings().level = "high"  # type: ignore[misc]
