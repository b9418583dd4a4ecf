"""Client selection: random and Oort-style, availability, speeds, over-selection."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from fl_core.selection import (
    PROFILES,
    AvailabilityModel,
    ClientStats,
    OortSelector,
    RandomSelector,
    SimulatedClock,
    SpeedProfile,
    arrivals,
    create_selector,
    overselect,
    sample_profiles,
)

CLIENTS = [f"c{i:02d}" for i in range(30)]


def explored_oort(**kwargs: object) -> OortSelector:
    """An Oort selector whose 30 clients all delivered once with identical reports."""
    sel = OortSelector(**kwargs)  # type: ignore[arg-type]
    for c in CLIENTS:
        sel.observe(c, round=1, completed=True, num_examples=100, loss=1.0, duration_s=10.0)
    return sel


def test_random_selector_picks_k_distinct_candidates_deterministically() -> None:
    sel = RandomSelector()

    a = sel.select(CLIENTS, 8, rng=np.random.default_rng(1), round=1)
    b = sel.select(list(reversed(CLIENTS)), 8, rng=np.random.default_rng(1), round=1)

    assert a == b and len(set(a)) == 8 and set(a) <= set(CLIENTS)
    assert sel.select(CLIENTS[:3], 8, rng=np.random.default_rng(1), round=1) == CLIENTS[:3]
    assert sel.select(CLIENTS, 0, rng=np.random.default_rng(1), round=1) == []


@pytest.mark.parametrize("selector", [RandomSelector(), explored_oort()])
def test_unavailable_clients_are_never_chosen(selector: RandomSelector | OortSelector) -> None:
    avail = AvailabilityModel(seed=3, base_availability=0.6, diurnal_amplitude=0.8)

    for rnd in range(1, 40):
        online = avail.available(CLIENTS, rnd)
        chosen = selector.select(online, 10, rng=np.random.default_rng(rnd), round=rnd)
        assert all(avail.is_available(c, rnd) for c in chosen)
        assert len(chosen) == min(10, len(online))


def test_bad_reputation_client_is_chosen_much_less_often() -> None:
    sel = explored_oort()
    sel.set_signals(reputation={"c00": 0.05})
    counts: Counter[str] = Counter()

    for rnd in range(2, 302):
        counts.update(sel.select(CLIENTS, 10, rng=np.random.default_rng(rnd), round=rnd))

    mean_others = np.mean([counts[c] for c in CLIENTS[1:]])
    assert counts["c00"] < 0.2 * mean_others


def test_min_reputation_bans_a_client_for_every_selector() -> None:
    for sel in (RandomSelector(min_reputation=0.3), explored_oort(min_reputation=0.3)):
        sel.set_signals(reputation={"c05": 0.1})
        for rnd in range(2, 40):
            assert "c05" not in sel.select(CLIENTS, 29, rng=np.random.default_rng(rnd), round=rnd)


def test_oort_prefers_fast_high_loss_clients_and_explores_new_ones() -> None:
    sel = OortSelector(preferred_duration_s=20.0)
    for i, c in enumerate(CLIENTS[:20]):
        slow = i < 10
        sel.observe(
            c,
            round=1,
            completed=True,
            num_examples=100,
            loss=1.0,
            duration_s=100.0 if slow else 10.0,
        )
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()

    for rnd in range(2, 102):
        counts.update(sel.select(CLIENTS, 6, rng=np.random.default_rng(rnd), round=rnd))
        reasons.update(sel.last_reasons.values())

    slow_mean = np.mean([counts[c] for c in CLIENTS[:10]])
    fast_mean = np.mean([counts[c] for c in CLIENTS[10:20]])
    assert fast_mean > 5 * slow_mean
    assert all(counts[c] > 0 for c in CLIENTS[20:])  # never-seen clients get explored
    assert reasons["explore"] > 0 and reasons["exploit"] > reasons["explore"]
    assert sel.epsilon(1) == pytest.approx(0.9) and sel.epsilon(1000) == pytest.approx(0.2)


def test_observe_counts_each_round_once_and_state_round_trips_as_json() -> None:
    sel = explored_oort()
    sel.observe("c01", round=2, completed=False)
    sel.observe("c01", round=2, completed=False)  # retried step: ignored
    restored = OortSelector()
    restored.load_state_dict(json.loads(json.dumps(sel.state_dict())))

    assert sel.stats["c01"].times_selected == 2 and sel.stats["c01"].times_completed == 1
    assert restored.stats == sel.stats
    picks = [s.select(CLIENTS, 7, rng=np.random.default_rng(5), round=3) for s in (sel, restored)]
    assert picks[0] == picks[1]


def test_client_stats_completion_rate_and_create_selector() -> None:
    st = ClientStats("a", times_selected=8, times_completed=3)

    assert st.completion_rate == pytest.approx(0.4) and not st.explored
    assert isinstance(create_selector("oort", cutoff=0.9), OortSelector)
    with pytest.raises(ValueError, match="allowed values: random, oort"):
        create_selector("greedy")
    with pytest.raises(ValueError, match="cutoff"):
        OortSelector(cutoff=1.5)
    with pytest.raises(ValueError, match="k must"):
        RandomSelector().select(CLIENTS, -1, rng=np.random.default_rng(0), round=1)


def test_availability_is_deterministic_per_client_and_round() -> None:
    a = AvailabilityModel(seed=11, base_availability=0.7, dropout_rate=0.2)
    b = AvailabilityModel(seed=11, base_availability=0.7, dropout_rate=0.2)
    grid = [(c, r) for c in CLIENTS for r in range(1, 101)]

    online = [a.is_available(c, r) for c, r in grid]
    done = [a.completes(c, r) for c, r in grid]

    assert online == [b.is_available(c, r) for c, r in grid]
    assert np.mean(online) == pytest.approx(0.7, abs=0.03)
    assert np.mean(done) == pytest.approx(0.8, abs=0.03)
    assert online != [
        AvailabilityModel(seed=12, base_availability=0.7).is_available(c, r) for c, r in grid
    ]


def test_diurnal_availability_peaks_at_the_local_peak_hour() -> None:
    model = AvailabilityModel(seed=1, base_availability=1.0, diurnal_amplitude=1.0, peak_hour=2)
    one_zone = model.timezone_offset("c00")

    # round r is at local hour r + offset: find the rounds at the peak and the trough
    peak = round((2 - one_zone) % 24)
    trough = (peak + 12) % 24

    assert model.probability("c00", peak) > 0.99
    assert model.probability("c00", trough) < 0.01
    offsets = {model.timezone_offset(c) for c in CLIENTS}
    assert len(offsets) == len(CLIENTS)  # time zones spread the clients


def test_overselect_covers_dropouts() -> None:
    assert overselect(10, 0.0) == 10
    assert overselect(10, 0.2) == 13
    strict = overselect(10, 0.2, confidence=0.95)
    assert strict > 13
    # the smallest m with P(Binomial(m, 0.8) >= 10) >= 0.95, checked by simulation
    hits = np.random.default_rng(0).binomial(strict, 0.8, size=20000) >= 10
    assert hits.mean() >= 0.94
    with pytest.raises(ValueError, match="dropout_rate"):
        overselect(10, 1.0)
    with pytest.raises(ValueError, match="k must"):
        overselect(0, 0.1)


def test_speed_profiles_time_a_round_and_sample_a_mix() -> None:
    wifi = PROFILES["wifi"]
    t = wifi.round_time(num_examples=1000, bytes_down=10**6, bytes_up=10**6, epochs=2)
    expected = 2 * wifi.latency_s + 8 / wifi.downlink_mbps + 8 / wifi.uplink_mbps + 1.6

    profiles = sample_profiles(
        1000, {"wifi": 0.5, "cellular_slow": 0.5}, np.random.default_rng(0), jitter=0
    )

    assert t == pytest.approx(expected)
    names = Counter(p.name for p in profiles)
    assert set(names) == {"wifi", "cellular_slow"} and abs(names["wifi"] - 500) < 60
    assert profiles == sample_profiles(
        1000, {"wifi": 0.5, "cellular_slow": 0.5}, np.random.default_rng(0), jitter=0
    )
    jittered = sample_profiles(50, {"cellular_fast": 1}, np.random.default_rng(0))
    assert len({p.compute_s_per_example for p in jittered}) == 50
    assert SpeedProfile.from_json(wifi.to_json()) == wifi
    with pytest.raises(ValueError, match="unknown profile 'satellite'"):
        sample_profiles(3, {"satellite": 1.0}, np.random.default_rng(0))


def test_arrivals_close_the_round_at_quorum_or_deadline() -> None:
    durations = {"a": 5.0, "b": 1.0, "c": 9.0, "d": None, "e": 3.0}

    quorum = arrivals(durations, quorum=3)
    deadline = arrivals(durations, deadline_s=4.0)
    everyone = arrivals(durations)

    assert quorum.received == ["b", "e", "a"] and quorum.duration_s == 5.0
    assert quorum.stragglers == ["c", "d"]
    assert deadline.received == ["b", "e"] and deadline.duration_s == 4.0
    assert everyone.received == ["b", "e", "a", "c"] and everyone.duration_s == 9.0
    clock = SimulatedClock()
    clock.advance(quorum.duration_s)
    assert clock.state_dict() == {"now": 5.0}


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize(
    ("k", "dropout", "confidence"),
    [(10, 0.2, 0.95), (10, 0.2, 0.5), (3, 0.5, 0.9), (1, 0.1, 0.99), (25, 0.35, 0.8)],
)
def test_overselect_is_the_smallest_cohort_meeting_the_confidence(
    k: int, dropout: float, confidence: float
) -> None:
    from scipy.stats import binom

    expected = math.ceil(k / (1 - dropout))  # never fewer than the expected count
    while binom.sf(k - 1, expected, 1 - dropout) < confidence:
        expected += 1

    assert overselect(k, dropout, confidence=confidence) == expected


def test_overselect_for_one_client_and_for_almost_no_dropout() -> None:
    assert overselect(1, 0.5) == 2
    assert overselect(10, 1e-12, confidence=0.9) == 10  # P(all 10 deliver) ~ 1
    assert overselect(7, 0.0, confidence=0.99) == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 0.1), r"^k must be an integer >= 1, got 0$"),
        ((2.0, 0.1), r"^k must be an integer >= 1, got 2.0$"),
        ((True, 0.1), r"^k must be an integer >= 1, got True$"),
        ((2, 1.0), r"^dropout_rate must be in \[0, 1\), got 1.0$"),
    ],
)
def test_overselect_names_a_bad_argument(args: tuple[object, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        overselect(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5])
def test_overselect_refuses_a_confidence_outside_zero_one(confidence: float) -> None:
    with pytest.raises(ValueError, match=rf"^confidence must be in \(0, 1\), got {confidence}$"):
        overselect(3, 0.2, confidence=confidence)


def test_speed_profile_times_by_hand() -> None:
    p = SpeedProfile(
        "t", compute_s_per_example=0.5, uplink_mbps=8.0, downlink_mbps=16.0, latency_s=0.25
    )

    assert p.compute_time(100) == 50.0  # one epoch by default
    assert p.compute_time(100, epochs=3) == 150.0
    assert p.transfer_time(1_000_000, upload=True) == 0.25 + 1.0  # 8 Mbit over 8 Mbit/s
    assert p.transfer_time(1_000_000, upload=False) == 0.25 + 0.5
    assert p.round_time(num_examples=10, bytes_down=2_000_000, bytes_up=1_000_000) == (
        0.25 + 1.0 + 5.0 + 0.25 + 1.0
    )


def test_sample_profiles_default_jitter_and_validation() -> None:
    mix = {"wifi": 1.0, "cellular_slow": 0.0}
    drawn = sample_profiles(20, mix, np.random.default_rng(3))

    assert drawn == sample_profiles(20, mix, np.random.default_rng(3), jitter=0.2)
    assert {p.name for p in drawn} == {"wifi"}  # a zero share is allowed: never drawn
    assert sample_profiles(0, mix, np.random.default_rng(3)) == []
    for bad in (-1, 2.5, True):
        with pytest.raises(
            ValueError, match=rf"^num_clients must be an integer >= 0, got {bad!r}$"
        ):
            sample_profiles(bad, mix, np.random.default_rng(0))  # type: ignore[arg-type]
    allowed = ", ".join(PROFILES)
    with pytest.raises(ValueError, match=rf"^mix must name at least one profile of: {allowed}$"):
        sample_profiles(3, {}, np.random.default_rng(0))
    with pytest.raises(ValueError, match=rf"^mix: unknown profile 'lte'; allowed: {allowed}$"):
        sample_profiles(3, {"lte": 1.0}, np.random.default_rng(0))
    for shares in (
        {"wifi": 2.0, "cellular_slow": -1.0},
        {"wifi": float("nan")},
        {"wifi": float("inf")},
        {"wifi": 0.0},
    ):
        with pytest.raises(
            ValueError, match=r"^mix shares must be non-negative with a positive sum$"
        ):
            sample_profiles(3, shares, np.random.default_rng(0))


def test_arrivals_close_at_the_quorum_even_with_a_deadline() -> None:
    timing = arrivals({"a": 1.0, "b": 2.0, "c": 3.0}, quorum=2, deadline_s=10.0)

    assert (timing.received, timing.stragglers, timing.duration_s) == (["a", "b"], ["c"], 2.0)
    one = arrivals({"a": 4.0, "b": 2.0}, quorum=1)
    assert (one.received, one.duration_s) == (["b"], 2.0)


def test_arrivals_close_at_the_last_delivery_when_everybody_makes_the_deadline() -> None:
    timing = arrivals({"a": 1.0, "b": 2.0}, deadline_s=10.0)
    on_time = arrivals({"a": 0.5, "b": 3.0}, deadline_s=3.0)  # exactly at the deadline: in

    assert (timing.received, timing.duration_s) == (["a", "b"], 2.0)
    assert (on_time.received, on_time.stragglers, on_time.duration_s) == (["a", "b"], [], 3.0)
    assert arrivals({"a": 0.25}, deadline_s=0.5).received == ["a"]


def test_arrivals_of_only_dropouts_take_no_time() -> None:
    timing = arrivals({"a": None, "b": float("inf")})

    assert (timing.received, timing.stragglers, timing.duration_s) == ([], ["a", "b"], 0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quorum": 0}, r"^quorum must be an integer >= 1 or None, got 0$"),
        ({"quorum": True}, r"^quorum must be an integer >= 1 or None, got True$"),
        ({"deadline_s": 0.0}, r"^deadline_s must be > 0 or None, got 0.0$"),
        ({"deadline_s": -1.0}, r"^deadline_s must be > 0 or None, got -1.0$"),
    ],
)
def test_arrivals_name_a_bad_argument(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        arrivals({"a": 1.0}, **kwargs)  # type: ignore[arg-type]


def test_simulated_clock_accumulates_and_refuses_bad_steps() -> None:
    clock = SimulatedClock(1.0)

    assert clock.advance(0.0) == 1.0
    assert clock.advance(0.5) == 1.5
    assert clock.advance(2.0) == 3.5
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"^seconds must be a finite number >= 0, got"):
            clock.advance(bad)
    assert clock.now == 3.5


def test_oort_explores_unexplored_clients_in_proportion_to_their_prior() -> None:
    # prior = speed (1 / duration, 1 if unknown) x completion rate x quality x reputation;
    # a client never heard of has prior 1
    sel = OortSelector()
    sel.observe("fast", round=1, completed=True, duration_s=0.5)  # no loss: unexplored
    sel.observe("slow", round=1, completed=True, duration_s=4.0)
    sel.set_signals(quality={"dull": 0.5}, reputation={"shady": 0.5})
    prior = {"new": 1.0, "fast": 2 * 2 / 3, "slow": 0.25 * 2 / 3, "dull": 0.25, "shady": 0.25}
    trials = 4000

    counts = Counter(
        sel.select(list(prior), 1, rng=np.random.default_rng(seed), round=1)[0]
        for seed in range(trials)
    )

    total = sum(prior.values())
    for client, p in prior.items():
        share = p / total
        assert counts[client] / trials == pytest.approx(share, abs=4 * (share / trials) ** 0.5)
    assert set(sel.last_reasons.values()) == {"explore"}


def test_random_selection_gives_its_reason_and_signals_name_the_client() -> None:
    sel = RandomSelector()
    sel.select(CLIENTS, 3, rng=np.random.default_rng(0), round=1)

    assert list(sel.last_reasons.values()) == ["random"] * 3
    with pytest.raises(ValueError, match=r"^reputation\['c01'\] must be in \[0, 1\], got 1.5$"):
        sel.set_signals(reputation={"c01": 1.5})
    with pytest.raises(ValueError, match=r"^quality\['c02'\] must be in \[0, 1\], got -0.5$"):
        sel.set_signals(quality={"c02": -0.5})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("compute_s_per_example", 0.0, r"^compute_s_per_example must be > 0, got 0.0$"),
        ("uplink_mbps", float("inf"), r"^uplink_mbps must be > 0, got inf$"),
        ("downlink_mbps", -1.0, r"^downlink_mbps must be > 0, got -1.0$"),
        ("latency_s", -1.0, r"^latency_s must be >= 0, got -1.0$"),
        ("latency_s", float("inf"), r"^latency_s must be >= 0, got inf$"),
    ],
)
def test_speed_profile_names_a_bad_field(field: str, value: float, message: str) -> None:
    good = {"compute_s_per_example": 1e-3, "uplink_mbps": 1.0, "downlink_mbps": 1.0}
    with pytest.raises(ValueError, match=message):
        SpeedProfile("t", **{**good, "latency_s": 0.0, field: value})


def test_speed_profile_takes_zero_latency() -> None:
    assert SpeedProfile("lan", 1e-3, 100.0, 100.0, 0.0).transfer_time(0, upload=True) == 0.0


def test_sample_profiles_follow_the_shares_and_log_normal_jitter() -> None:
    # the documented model, drawn from an identically seeded generator: a class per client
    # by share, then compute x e^z0, uplink / e^z1, downlink / e^z2 with z ~ N(0, jitter)
    mix = {"cellular_slow": 1.0, "wifi": 3.0}
    names = sorted(mix)
    ref = np.random.default_rng(11)
    picks = ref.choice(2, size=50, p=np.array([1.0, 3.0]) / 4.0)
    z = ref.lognormal(0.0, 0.3, size=(50, 3))

    drawn = sample_profiles(50, mix, np.random.default_rng(11), jitter=0.3)

    for i, p in enumerate(drawn):
        base = PROFILES[names[int(picks[i])]]
        assert p.name == base.name
        assert p.compute_s_per_example == pytest.approx(base.compute_s_per_example * z[i, 0])
        assert p.uplink_mbps == pytest.approx(base.uplink_mbps / z[i, 1])
        assert p.downlink_mbps == pytest.approx(base.downlink_mbps / z[i, 2])
    for bad in (-0.1, float("inf")):
        with pytest.raises(ValueError, match=rf"^jitter must be >= 0, got {bad}$"):
            sample_profiles(3, mix, np.random.default_rng(0), jitter=bad)


def test_observe_records_what_a_delivering_client_reports() -> None:
    sel = RandomSelector()
    sel.observe("c", round=1, completed=True, num_examples=40, loss=0.5, duration_s=3.0)
    sel.observe("c", round=2, completed=True, loss=float("nan"), duration_s=float("inf"))
    sel.observe("c", round=3, completed=False)
    sel.observe("c", round=3, completed=True)  # the same round again: ignored

    st = sel.client("c")
    assert (st.times_selected, st.times_completed, st.last_round) == (3, 2, 2)
    assert (st.num_examples, st.loss, st.duration_s) == (40, 0.5, 3.0)  # non-finite kept out
    assert sel.client("new").completion_rate == 0.5


def test_selectors_start_with_no_ban_and_name_bad_arguments() -> None:
    sel = RandomSelector()
    sel.set_signals(reputation={"c00": 0.0}, quality={"c01": 0.25})

    assert sel.last_reasons == {}
    assert "c00" in sel.select(CLIENTS[:2], 2, rng=np.random.default_rng(0), round=1)
    assert sel.client("c01").quality == 0.25
    with pytest.raises(ValueError, match=r"^min_reputation must be in \[0, 1\], got 2$"):
        RandomSelector(min_reputation=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"exploration": 1.5}, r"^exploration must be in \[0, 1\], got 1.5$"),
        ({"exploration_decay": 0.0}, r"^exploration_decay must be in \(0, 1\], got 0.0$"),
        ({"exploration_decay": 1.5}, r"^exploration_decay must be in \(0, 1\], got 1.5$"),
        ({"min_exploration": -0.1}, r"^min_exploration must be in \[0, 1\], got -0.1$"),
        ({"cutoff": 2.0}, r"^cutoff must be in \[0, 1\], got 2.0$"),
        ({"straggler_penalty": -1.0}, r"^straggler_penalty must be >= 0, got -1.0$"),
        ({"straggler_penalty": float("inf")}, r"^straggler_penalty must be >= 0, got inf$"),
        ({"preferred_duration_s": 0.0}, r"^preferred_duration_s must be > 0, got 0.0$"),
        ({"duration_percentile": 0.0}, r"^duration_percentile must be in \(0, 100\], got 0.0$"),
        ({"duration_percentile": 101}, r"^duration_percentile must be in \(0, 100\], got 101$"),
        ({"staleness_bonus": -0.5}, r"^staleness_bonus must be >= 0, got -0.5$"),
        ({"staleness_bonus": float("nan")}, r"^staleness_bonus must be >= 0, got nan$"),
    ],
)
def test_oort_names_a_bad_argument(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OortSelector(**kwargs)


def test_oort_accepts_boundary_arguments() -> None:
    sel = OortSelector(
        exploration_decay=1.0,
        straggler_penalty=0.0,
        preferred_duration_s=0.5,
        duration_percentile=0.5,
        staleness_bonus=0.0,
    )
    assert sel.epsilon(50) == 0.9  # no decay
    assert OortSelector(duration_percentile=100).duration_percentile == 100.0


def test_oort_epsilon_decays_from_round_one_to_its_floor() -> None:
    sel = OortSelector(exploration=0.8, exploration_decay=0.5, min_exploration=0.1)

    assert [sel.epsilon(r) for r in (1, 2, 3, 4, 5)] == [0.8, 0.4, 0.2, 0.1, 0.1]
    assert OortSelector().straggler_penalty == 2.0


def test_oort_utilities_by_hand() -> None:
    # statistical utility: examples x loss scaled to [0, 1] between the smallest and the
    # 95th percentile; a staleness bonus sqrt(0.1 log(round) / last_round); clients slower
    # than the preferred duration T pay (T / t) ** 2; times completion, quality, reputation
    sel = OortSelector(preferred_duration_s=10.0)
    sel.observe("low", round=1, completed=True, num_examples=10, loss=1.0, duration_s=5.0)
    sel.observe("mid", round=1, completed=True, num_examples=30, loss=1.0, duration_s=5.0)
    sel.observe("high", round=1, completed=True, num_examples=50, loss=1.0, duration_s=20.0)
    sel.observe("zero", round=1, completed=True, num_examples=50, loss=0.0, duration_s=5.0)
    sel.set_signals(quality={"mid": 0.5})

    util = sel.utilities(["low", "mid", "high", "zero", "unseen"], round=4)

    hi = np.percentile([10, 30, 50, 0], 95)
    bonus = np.sqrt(0.1 * np.log(4) / 1)
    rate = 2 / 3
    assert set(util) == {"low", "mid", "high", "zero"}
    assert util["zero"] == pytest.approx((0 + bonus) * rate)
    assert util["low"] == pytest.approx((10 / hi + bonus) * rate)
    assert util["mid"] == pytest.approx((30 / hi + bonus) * rate * 0.5)
    assert util["high"] == pytest.approx((1.0 + bonus) * (10 / 20) ** 2 * rate)


def test_weighted_sampling_uses_zero_weight_clients_only_when_needed() -> None:
    sel = OortSelector(exploration=1.0, min_exploration=1.0)
    sel.set_signals(reputation={"banned": 0.0, "half": 0.5})
    pool = ["banned", "half", "new"]

    for seed in range(30):
        two = sel.select(pool, 2, rng=np.random.default_rng(seed), round=1)
        assert two == ["half", "new"]
        assert sorted(sel.select(pool, 3, rng=np.random.default_rng(seed), round=1)) == pool


def test_availability_dropouts_are_per_client_and_round_at_the_given_rate() -> None:
    avail = AvailabilityModel(seed=7, dropout_rate=0.3)
    clients = [f"c{i}" for i in range(100)]

    grid = np.array([[avail.completes(c, r) for c in clients] for r in range(1, 21)])

    assert grid.mean() == pytest.approx(0.7, abs=0.04)
    assert len({tuple(col) for col in grid.T}) > 90  # clients differ
    assert len({tuple(row) for row in grid}) == 20  # rounds differ
    assert all(AvailabilityModel(seed=7).completes(c, 1) for c in clients)


def test_time_zones_lie_in_a_day_and_only_matter_for_diurnal_availability() -> None:
    diurnal = AvailabilityModel(seed=1, diurnal_amplitude=0.5)
    offsets = [diurnal.timezone_offset(f"c{i}") for i in range(500)]

    assert all(0.0 <= h < 24.0 for h in offsets) and max(offsets) > 23.0
    assert AvailabilityModel(seed=1).timezone_offset("c1") == 0.0
