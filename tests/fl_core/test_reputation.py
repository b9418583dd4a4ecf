"""Client reputation from rejections and outlier scores."""

from __future__ import annotations

import json

import pytest

from fl_core.reputation import ReputationBook


def test_clean_updates_raise_and_rejections_lower_the_score() -> None:
    book = ReputationBook()
    prior = book.score("new")

    for rnd in range(1, 6):
        book.record("good", round=rnd, accepted=True, outlier_score=1.0)
        book.record("bad", round=rnd, accepted=False, reason="update norm too large")

    assert prior == pytest.approx(0.5)
    assert book.score("good") > 0.8 > prior > 0.1 > book.score("bad")
    assert book.clients["bad"].num_rejected == 5
    assert book.clients["bad"].events[-1]["reason"] == "update norm too large"


def test_outliers_count_as_negative_evidence_in_proportion() -> None:
    book = ReputationBook(outlier_threshold=3.0)

    assert book.outlier_evidence(0.5) == 0.0
    assert book.outlier_evidence(2.0) == pytest.approx(0.5)
    assert book.outlier_evidence(10.0) == 1.0
    assert book.outlier_evidence(float("inf")) == 1.0
    for rnd in range(1, 4):
        book.record("odd", round=rnd, accepted=True, outlier_score=8.0)
    assert book.score("odd") < 0.3 and book.clients["odd"].num_outliers == 3


def test_old_evidence_fades_and_recording_a_round_twice_counts_once() -> None:
    book = ReputationBook(decay=0.5)
    book.record("c", round=1, accepted=False)
    low = book.score("c")

    book.record("c", round=2, accepted=True)
    once = book.score("c")
    book.record("c", round=2, accepted=True)  # a retried step

    assert book.score("c") == once > low
    assert book.clients["c"].num_accepted == 1
    # with no news for many rounds the evidence fades back to the prior
    assert book.score("c", round=40) == pytest.approx(book.score("never-seen"), abs=1e-6)


def test_state_round_trips_through_json() -> None:
    book = ReputationBook(history=2)
    for rnd in range(1, 5):
        book.record("c", round=rnd, accepted=rnd % 2 == 0, outlier_score=1.2)
    restored = ReputationBook(history=2)
    restored.load_state_dict(json.loads(json.dumps(book.state_dict())))

    assert restored.score("c", round=9) == book.score("c", round=9)
    assert len(restored.clients["c"].events) == 2


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="decay"):
        ReputationBook(decay=0.0)
    with pytest.raises(ValueError, match="outlier_threshold"):
        ReputationBook(outlier_threshold=1.0)
    with pytest.raises(ValueError, match="history"):
        ReputationBook(history=0)


def test_score_is_the_beta_mean_of_faded_evidence() -> None:
    book = ReputationBook(decay=0.5, rejection_penalty=2.0, prior_good=1.0, prior_bad=1.0)

    assert book.record("c", round=1, accepted=False) == pytest.approx(1 / 4)  # (0+1)/(2+2)
    # two rounds later the rejection weighs 2 * 0.5**2 = 0.5; a clean update adds 1
    assert book.record("c", round=3, accepted=True) == pytest.approx(2 / 3.5)
    assert book.score("c") == pytest.approx(2 / 3.5)  # as of the last record
    assert book.score("c", round=4) == pytest.approx(1.5 / 2.75)  # both faded by 0.5
    assert book.scores(["c", "new"], round=4) == {"c": pytest.approx(1.5 / 2.75), "new": 0.5}


def test_prior_sets_the_score_of_a_new_client() -> None:
    book = ReputationBook(prior_good=3.0, prior_bad=1.0, rejection_penalty=0.0)

    assert book.score("new") == 0.75
    assert book.record("c", round=1, accepted=False) == 0.75  # no penalty: no evidence
    assert book.clients["c"].num_rejected == 1


def test_outlier_evidence_is_split_until_the_threshold() -> None:
    book = ReputationBook(outlier_threshold=3.0, decay=1.0)

    book.record("c", round=1, accepted=True, outlier_score=2.0)  # half good, half bad
    assert (book.clients["c"].good, book.clients["c"].bad) == (0.5, 0.5)
    assert book.clients["c"].num_outliers == 0
    book.record("c", round=2, accepted=True, outlier_score=3.0)  # at the threshold: outlier
    book.record("c", round=3, accepted=True, outlier_score=2.9)
    assert book.clients["c"].num_outliers == 1 and book.clients["c"].num_accepted == 3
    assert book.outlier_evidence(float("nan")) == 1.0
    assert book.outlier_evidence(1.0) == 0.0


def test_a_retried_round_replaces_a_rejection_or_an_outlier() -> None:
    book = ReputationBook(decay=0.9)
    fresh = ReputationBook(decay=0.9)
    for b in (book, fresh):
        b.record("c", round=1, accepted=True)

    book.record("c", round=2, accepted=False, reason="stale")
    book.record("c", round=2, accepted=True, outlier_score=9.0)
    assert (book.clients["c"].num_rejected, book.clients["c"].num_outliers) == (0, 1)
    book.record("c", round=2, accepted=True, outlier_score=1.0)
    fresh.record("c", round=2, accepted=True, outlier_score=1.0)

    rec, ref = book.clients["c"], fresh.clients["c"]
    assert (rec.num_rejected, rec.num_outliers, rec.num_accepted) == (0, 0, 2)
    assert (rec.good, rec.bad, rec.last_round) == (ref.good, ref.bad, ref.last_round)
    assert [e["round"] for e in rec.events] == [1, 2]


def test_a_late_record_for_an_earlier_round_is_not_faded_and_keeps_the_last_round() -> None:
    book = ReputationBook(decay=0.5)
    book.record("c", round=5, accepted=True)

    book.record("c", round=3, accepted=False)

    rec = book.clients["c"]
    assert (rec.good, rec.bad, rec.last_round) == (1.0, 2.0, 5)


def test_events_keep_the_latest_history_for_audit() -> None:
    book = ReputationBook(history=2)
    for rnd in (1, 2, 3):
        book.record("c", round=rnd, accepted=rnd != 2, outlier_score=1.5, reason=f"r{rnd}")

    events = book.clients["c"].events
    assert [(e["round"], e["accepted"], e["reason"]) for e in events] == [
        (2, False, "r2"),
        (3, True, "r3"),
    ]
    assert events[-1]["outlier_score"] == 1.5
    restored = ReputationBook(history=2)
    restored.load_state_dict(json.loads(json.dumps(book.state_dict())))
    assert restored.clients["c"] == book.clients["c"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decay": 1.5}, r"^decay must be in \(0, 1\], got 1.5$"),
        ({"decay": -0.1}, r"^decay must be in \(0, 1\], got -0.1$"),
        ({"rejection_penalty": -1.0}, r"^rejection_penalty must be >= 0, got -1.0$"),
        ({"rejection_penalty": float("inf")}, r"^rejection_penalty must be >= 0, got inf$"),
        ({"outlier_threshold": float("inf")}, r"^outlier_threshold must be > 1, got inf$"),
        ({"outlier_threshold": 0.5}, r"^outlier_threshold must be > 1, got 0.5$"),
        ({"prior_good": 0.0}, r"^prior_good and prior_bad must be > 0, got 0.0, 1.0$"),
        ({"prior_bad": -1.0}, r"^prior_good and prior_bad must be > 0, got 1.0, -1.0$"),
        ({"prior_bad": 0.0}, r"^prior_good and prior_bad must be > 0, got 1.0, 0.0$"),
        ({"history": 1.5}, r"^history must be an integer >= 1, got 1.5$"),
        ({"history": True}, r"^history must be an integer >= 1, got True$"),
    ],
)
def test_bad_arguments_are_named_in_the_error(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReputationBook(**kwargs)  # type: ignore[arg-type]


def test_boundary_arguments_are_accepted() -> None:
    book = ReputationBook(decay=1.0, rejection_penalty=0.0, history=1)
    book.record("c", round=1, accepted=True)
    book.record("c", round=2, accepted=True)

    assert len(book.clients["c"].events) == 1 and book.clients["c"].good == 2.0


def test_defaults_split_outliers_up_to_three_and_keep_twenty_events() -> None:
    book = ReputationBook(outlier_threshold=1.5)  # any threshold above 1 is allowed
    default = ReputationBook()
    for rnd in range(1, 26):
        default.record("c", round=rnd, accepted=True)

    assert book.outlier_evidence(1.25) == 0.5
    assert default.outlier_evidence(2.0) == 0.5
    assert [e["round"] for e in default.clients["c"].events] == list(range(6, 26))
