"""The ``wait_for_updates`` sensor's quorum and deadline, on a real local artifact store.

The sensor reads the round's manifest (written by ``dispatch``) and counts stored updates:
it is done at quorum, or once its deadline passed with at least one update (``collect``
then records the others as stragglers); an empty cohort needs no wait; it never writes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

CID = "sensor-test"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from fl_core.store import open_store

    monkeypatch.setenv("FL_ARTIFACT_STORE", str(tmp_path / "artifacts"))
    return open_store(str(tmp_path / "artifacts"))


def _manifest(store: Any, clients: list[str], rnd: int = 1) -> None:
    from fl_core.rounds import records
    from fl_core.rounds.layout import model_key

    records.write(
        store,
        records.Manifest(
            round=rnd,
            base_version=rnd - 1,
            model_key=model_key(CID, rnd - 1),
            tasks={c: {"client": c} for c in clients},
            num_tasks=len(clients),
        ),
        CID,
        rnd,
    )


def _arrive(store: Any, client: str, rnd: int = 1) -> None:
    from fl_core.rounds.layout import update_key

    store.put_bytes(update_key(CID, rnd, client), b"update bytes")


def _sensor(**kwargs: Any) -> Any:
    from fl_airflow.sensors.updates import UpdatesArrivedSensor

    return UpdatesArrivedSensor(
        task_id="wait_for_updates", campaign_id=CID, round_num="1", **kwargs
    )


def test_done_at_quorum_rounded_up(store: Any) -> None:
    clients = [f"c{i}" for i in range(5)]
    _manifest(store, clients)
    sensor = _sensor(quorum=0.5, deadline_s=3600)  # 0.5 of 5 -> 3 updates
    seen = [sensor.poke({})]
    for c in clients[:3]:
        _arrive(store, c)
        seen.append(sensor.poke({}))
    assert seen == [False, False, False, True]


def test_full_quorum_waits_for_every_update_before_the_deadline(store: Any) -> None:
    clients = ["a", "b", "c", "d"]
    _manifest(store, clients)
    for c in clients[:3]:
        _arrive(store, c)
    sensor = _sensor(quorum=1.0, deadline_s=3600)
    assert sensor.poke({}) is False
    _arrive(store, "d")
    assert sensor.poke({}) is True


def test_deadline_closes_the_round_with_what_arrived_but_not_with_nothing(store: Any) -> None:
    _manifest(store, ["a", "b", "c", "d"])
    sensor = _sensor(quorum=1.0, deadline_s=0.05)
    assert sensor.poke({}) is False  # starts the clock
    time.sleep(0.1)
    assert sensor.poke({}) is False  # past the deadline, but nothing to aggregate
    _arrive(store, "b")
    assert sensor.poke({}) is True  # past the deadline with one update: the round goes on


def test_an_update_of_another_round_or_client_does_not_count(store: Any) -> None:
    _manifest(store, ["a", "b"])
    _arrive(store, "a", rnd=2)  # a different round
    _arrive(store, "z")  # not in this round's cohort
    sensor = _sensor(quorum=0.5, deadline_s=3600)
    assert sensor.poke({}) is False
    _arrive(store, "a")
    assert sensor.poke({}) is True


def test_empty_cohort_needs_no_wait(store: Any) -> None:
    _manifest(store, [])  # Poisson sampling under DP can draw nobody
    assert _sensor(quorum=1.0, deadline_s=3600).poke({}) is True


def test_the_sensor_never_writes(store: Any, tmp_path: Path) -> None:
    _manifest(store, ["a", "b"])
    _arrive(store, "a")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    _sensor(quorum=1.0, deadline_s=3600).poke({})
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_without_dispatch_it_fails_naming_the_missing_step(store: Any) -> None:
    from fl_core.rounds.records import MissingRecord

    with pytest.raises(MissingRecord, match="dispatch"):
        _sensor(quorum=1.0).poke({})


@pytest.mark.parametrize("quorum", [0, -0.5, 1.5])
def test_a_quorum_outside_zero_one_is_refused(quorum: float) -> None:
    with pytest.raises(ValueError, match=r"quorum must be in \(0, 1\]"):
        _sensor(quorum=quorum)
