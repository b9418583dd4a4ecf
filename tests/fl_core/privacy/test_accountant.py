"""Accountant: published cross-checks, PRV vs RDP, idempotence, persistence, hard budget."""

from __future__ import annotations

import json
import math

import pytest

from fl_core.privacy.accountant import (
    PrivacyAccountant,
    calibrate_noise_multiplier,
    compute_epsilon,
    epsilon_of_history,
)


@pytest.mark.parametrize(
    ("noise", "rate", "steps", "expected"),
    [
        (1.1, 0.01, 10_000, 5.632),  # the published cross-check values
        (1.2, 120 / 3383, 100, 1.986),
    ],
)
def test_rdp_matches_published_values(
    noise: float, rate: float, steps: int, expected: float
) -> None:
    eps = compute_epsilon(noise_multiplier=noise, sampling_rate=rate, steps=steps, delta=1e-5)

    assert eps == pytest.approx(expected, abs=1e-3)


def test_accountant_steps_reproduce_compute_epsilon() -> None:
    acct = PrivacyAccountant(noise_multiplier=1.2, sampling_rate=120 / 3383, delta=1e-5)

    for r in range(1, 101):
        acct.step(r)

    assert acct.steps == 100
    assert acct.epsilon() == pytest.approx(1.986, abs=1e-3)


@pytest.mark.parametrize(("noise", "rate", "steps"), [(1.2, 120 / 3383, 100), (1.0, 0.02, 50)])
def test_prv_is_not_looser_than_rdp(noise: float, rate: float, steps: int) -> None:
    kwargs = {"noise_multiplier": noise, "sampling_rate": rate, "steps": steps, "delta": 1e-5}

    rdp = compute_epsilon(**kwargs, kind="rdp")  # type: ignore[arg-type]
    prv = compute_epsilon(**kwargs, kind="prv")  # type: ignore[arg-type]

    assert 0 < prv <= rdp


def test_epsilon_grows_with_steps_and_zero_steps_spend_nothing() -> None:
    eps = [
        compute_epsilon(noise_multiplier=1.0, sampling_rate=0.05, steps=s, delta=1e-5)
        for s in (0, 1, 10, 100)
    ]

    assert eps[0] == 0.0
    assert eps == sorted(eps) and len(set(eps)) == 4


def test_step_is_idempotent_per_round() -> None:
    once = PrivacyAccountant(noise_multiplier=1.0, sampling_rate=0.05, delta=1e-5)
    twice = PrivacyAccountant(noise_multiplier=1.0, sampling_rate=0.05, delta=1e-5)
    for r in (1, 2, 3):
        once.step(r)
        twice.step(r)

    assert twice.step(3) is False
    assert twice.step(2) is False
    assert twice.steps == once.steps == 3
    assert twice.epsilon() == once.epsilon()


def test_step_refuses_to_skip_a_round() -> None:
    acct = PrivacyAccountant(noise_multiplier=1.0, sampling_rate=0.05, delta=1e-5)
    acct.step(1)

    with pytest.raises(ValueError, match="^rounds_done_marker: .*missing"):
        acct.step(3)
    fresh = PrivacyAccountant(noise_multiplier=1.0, sampling_rate=0.05, delta=1e-5)
    with pytest.raises(ValueError, match="^rounds_done_marker"):
        fresh.step(5)  # a lost state must not silently restart the count
    with pytest.raises(ValueError, match="^rounds_done_marker"):
        fresh.step(0)


def test_epsilon_if_step_does_not_mutate() -> None:
    acct = PrivacyAccountant(noise_multiplier=1.0, sampling_rate=0.05, delta=1e-5)
    acct.step(1)
    before = acct.epsilon()

    ahead = acct.epsilon_if_step()

    assert acct.epsilon() == before and acct.steps == 1
    acct.step(2)
    assert acct.epsilon() == pytest.approx(ahead)


def test_state_dict_round_trips_through_json() -> None:
    acct = PrivacyAccountant(noise_multiplier=1.0, sampling_rate=0.05, delta=1e-5, kind="prv")
    for r in range(1, 6):
        acct.step(r)
    state = json.loads(json.dumps(acct.state_dict()))

    restored = PrivacyAccountant(noise_multiplier=1.0, sampling_rate=0.05, delta=1e-5, kind="prv")
    restored.load_state_dict(state)

    assert restored.rounds_recorded == 5
    assert restored.history == acct.history
    assert restored.epsilon() == acct.epsilon()
    assert restored.step(5) is False
    assert restored.step(6) is True


def test_load_state_dict_rejects_mismatch_and_inconsistency() -> None:
    acct = PrivacyAccountant(noise_multiplier=1.0, sampling_rate=0.05, delta=1e-5)
    acct.step(1)
    state = acct.state_dict()
    other = PrivacyAccountant(noise_multiplier=1.0, sampling_rate=0.05, delta=1e-6)

    with pytest.raises(ValueError, match="^state.delta"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="^state.rounds_recorded"):
        acct.load_state_dict({**state, "rounds_recorded": 4})


def test_budget_stops_before_the_overshooting_round_and_rerun_is_free() -> None:
    # Arrange: a target strictly between epsilon after k-1 and after k rounds.
    z, q, delta, k = 1.0, 0.1, 1e-5, 6
    eps = [
        compute_epsilon(noise_multiplier=z, sampling_rate=q, steps=s, delta=delta)
        for s in (k - 1, k)
    ]
    target = (eps[0] + eps[1]) / 2
    persisted: dict[int, dict] = {}  # round -> accountant state, as the pipeline stores it

    # Act: each round rebuilds its accountant from the previous round's persisted state.
    last_run = 0
    for r in range(1, 20):
        acct = PrivacyAccountant(noise_multiplier=z, sampling_rate=q, delta=delta)
        if r > 1:
            acct.load_state_dict(json.loads(json.dumps(persisted[r - 1])))
        if acct.would_exceed(target):
            break
        acct.step(r)
        persisted[r] = acct.state_dict()
        last_run = r

    # Assert: round k never ran, the spend is within the target.
    assert last_run == k - 1
    final = PrivacyAccountant(noise_multiplier=z, sampling_rate=q, delta=delta)
    final.load_state_dict(persisted[k - 1])
    assert final.epsilon() <= target
    assert final.epsilon() == pytest.approx(eps[0])
    # Re-running the last round's accounting step (crash + retry) changes nothing.
    assert final.step(k - 1) is False
    assert final.epsilon() == pytest.approx(eps[0])
    # And redoing it from round k-2's state lands on the same state.
    redo = PrivacyAccountant(noise_multiplier=z, sampling_rate=q, delta=delta)
    redo.load_state_dict(persisted[k - 2])
    redo.step(k - 1)
    assert redo.state_dict() == persisted[k - 1]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"sampling_rate": 0.0}, "sampling_rate"),
        ({"sampling_rate": 1.5}, "sampling_rate"),
        ({"delta": 1.0}, "delta"),
        ({"kind": "gdp"}, "kind"),
    ],
)
def test_accountant_arguments_are_validated(kwargs: dict, key: str) -> None:
    args = {"noise_multiplier": 1.0, "sampling_rate": 0.1, "delta": 1e-5, **kwargs}

    with pytest.raises(ValueError, match=f"^{key}"):
        PrivacyAccountant(**args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": 0.0}, r"^noise_multiplier: 0.0 must be a finite number > 0$"),
        ({"noise_multiplier": True}, r"^noise_multiplier: True must be a finite number > 0$"),
        ({"noise_multiplier": float("inf")}, r"^noise_multiplier: inf must be a finite number"),
        ({"sampling_rate": 0.0}, r"^sampling_rate: 0.0 must be in \(0, 1\]$"),
        ({"sampling_rate": 1.5}, r"^sampling_rate: 1.5 must be in \(0, 1\]$"),
        ({"sampling_rate": float("nan")}, r"^sampling_rate: nan must be in \(0, 1\]$"),
        ({"delta": 1.0}, r"^delta: 1.0 must be in \(0, 1\)$"),
        ({"delta": 0.0}, r"^delta: 0.0 must be in \(0, 1\)$"),
        ({"delta": True}, r"^delta: True must be in \(0, 1\)$"),
        ({"steps": -1}, r"^steps: -1 must be an integer >= 0$"),
        ({"steps": 2.0}, r"^steps: 2.0 must be an integer >= 0$"),
        ({"steps": True}, r"^steps: True must be an integer >= 0$"),
        ({"kind": "gdp"}, r"^kind: 'gdp' is not allowed; allowed values: 'rdp', 'prv'$"),
    ],
)
def test_compute_epsilon_names_a_bad_argument(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "noise_multiplier": 1.0,
        "sampling_rate": 0.1,
        "steps": 10,
        "delta": 1e-5,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        compute_epsilon(**args)  # type: ignore[arg-type]


def test_no_steps_spend_nothing_and_full_participation_is_allowed() -> None:
    assert compute_epsilon(noise_multiplier=1.0, sampling_rate=0.1, steps=0, delta=1e-5) == 0.0
    full = compute_epsilon(noise_multiplier=1.0, sampling_rate=1.0, steps=1, delta=1e-5)
    assert 0.0 < full < math.inf
    assert epsilon_of_history([(1.0, 0.1, 0), (1.0, 1.0, 1)], delta=1e-5, kind="rdp") == full


def test_calibration_names_a_bad_steps_count() -> None:
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=rf"^steps: {bad!r} must be an integer >= 1$"):
            calibrate_noise_multiplier(
                target_epsilon=1.0,
                delta=1e-5,
                sampling_rate=0.1,
                steps=bad,  # type: ignore[arg-type]
            )
