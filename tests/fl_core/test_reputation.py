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
