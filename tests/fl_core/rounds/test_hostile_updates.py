"""Hostile and broken updates through the real round steps (digits, 6 clients): each is
rejected with a reason, the round completes with the others, nothing already accepted is
lost, and no step crashes or silently uses something other than what was checked."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_core import pipeline as steps
from fl_core import rounds, wire
from fl_core.models import Layout
from fl_core.rounds import layout as L
from fl_core.rounds import records as R
from fl_core.rounds import state
from fl_core.rounds.campaign import check_campaign_id
from fl_core.rounds.select import CampaignEnded
from fl_core.rounds.server_update import NonFiniteModel
from fl_core.rounds.state import load_model
from fl_core.rounds.validate import METRIC_BOUNDS, check_update
from fl_core.store import LocalStore
from tests.conftest import tiny_config

ALL_SIX = {"clients_per_round": 6, "rounds": 2}


def _start(tiny_data: Path, tmp_path: Path, **sections: Any) -> tuple[LocalStore, str]:
    store = LocalStore(tmp_path / "store")
    cfg = tiny_config(campaign=ALL_SIX, **sections)
    cid = steps.start_campaign(store, cfg, data_dir=tiny_data, campaign_id="hostile")
    return store, cid


def _run(store: LocalStore, cid: str, rnd: int, *, upto: str) -> None:
    """Run round ``rnd``'s steps in order, up to and including ``upto``."""
    for name in rounds.ROUND_STEPS:
        if name == "train_clients":
            for batch in steps.client_batches(store, cid, rnd, batch_size=8):
                steps.train_clients(store, cid, rnd, batch)
        else:
            rounds.step(name)(store, cid, rnd)
        if name == upto:
            return


def _rewrite(
    store: LocalStore,
    cid: str,
    client: str,
    rnd: int = 1,
    *,
    all_metrics: dict[str, float] | None = None,
    **changes: Any,
) -> None:
    """Replace ``client``'s stored update by a forged message: the header fields in
    ``changes`` (``metrics`` merged; ``all_metrics`` replaces them as a whole), and for
    ``vector`` a raw float32 payload. Built by hand, as a hostile client would, not with our
    encoder (which refuses such values)."""
    key = L.update_key(cid, rnd, client)
    data = store.get_bytes(key)
    (head_len,) = struct.unpack(">I", data[4:8])
    header = json.loads(data[8 : 8 + head_len])
    payload = data[8 + head_len :]
    if "vector" in changes:
        payload = np.asarray(changes.pop("vector"), dtype="<f4").tobytes()
        header.update(payload_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    merged = {**header.get("metrics", {}), **changes.pop("metrics", {})}
    header["metrics"] = merged if all_metrics is None else all_metrics
    header.update(changes)
    head = json.dumps(header).encode()  # allow_nan: NaN/Infinity as a hostile client sends
    store.put_bytes(key, data[:4] + struct.pack(">I", len(head)) + head + payload)


def _weighted_mean(store: LocalStore, cid: str, accepted: list[dict[str, Any]]) -> np.ndarray:
    vectors = [wire.decode(store.get_bytes(L.update_key(cid, 1, a["client"])))[1] for a in accepted]
    weights = np.asarray([a["num_examples"] for a in accepted], dtype=np.float64)
    return (np.stack(vectors).astype(np.float64) * weights[:, None]).sum(0) / weights.sum()


def _reasons(validation: dict[str, Any]) -> dict[str, str]:
    return {r["client"]: r["reason"] for r in validation["rejected"]}


@pytest.mark.parametrize("claimed", [10**15, 10**400])
def test_a_client_claiming_more_examples_than_it_holds_is_rejected(
    tiny_data: Path, tmp_path: Path, claimed: int
) -> None:
    store, cid = _start(tiny_data, tmp_path, server={"momentum": 0.0, "norm_outlier_factor": None})
    _run(store, cid, 1, upto="collect")
    _rewrite(store, cid, "client_0002", num_examples=claimed)

    validation = steps.validate_updates(store, cid, 1)
    info = steps.aggregate(store, cid, 1)

    assert "num_examples" in _reasons(validation)["client_0002"]
    accepted = validation["accepted"]
    assert {a["client"] for a in accepted} == {f"client_{i:04d}" for i in range(6)} - {
        "client_0002"
    }
    # The aggregate is the example-weighted mean of the five honest updates.
    got = store.get_arrays(L.round_key(cid, 1, L.AGGREGATE_ARRAYS))["update"]
    np.testing.assert_allclose(got, _weighted_mean(store, cid, accepted), rtol=1e-5, atol=1e-7)
    assert info["total_examples"] == sum(a["num_examples"] for a in accepted)


def test_an_update_replaced_after_validation_is_rejected_at_aggregate(
    tiny_data: Path, tmp_path: Path
) -> None:
    store, cid = _start(tiny_data, tmp_path)
    _run(store, cid, 1, upto="validate_updates")
    validated = steps.validate_updates(store, cid, 1)
    honest = validated["num_accepted"]
    nan = np.full(load_model(store, cid, 0).shape, np.nan, dtype=np.float32)
    _rewrite(store, cid, "client_0001", vector=nan)

    info = steps.aggregate(store, cid, 1)
    steps.privatize(store, cid, 1)
    steps.server_update(store, cid, 1)
    metrics = steps.evaluate(store, cid, 1)

    assert info["num_aggregated"] == honest - 1
    assert info["rejected_at_read"] == [
        {
            "client": "client_0001",
            "reason": "accepted update changed after validation (sha256 mismatch)",
        }
    ]
    others = [a for a in validated["accepted"] if a["client"] != "client_0001"]
    got = store.get_arrays(L.round_key(cid, 1, L.AGGREGATE_ARRAYS))["update"]
    np.testing.assert_allclose(got, _weighted_mean(store, cid, others), rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(load_model(store, cid, 1)))
    assert np.isfinite(metrics["test_loss"])


@pytest.mark.parametrize(
    "sections",
    [
        {"asynchronous": {"enabled": True, "buffer_size": 3, "concurrency": 6}},
        {
            "privacy": {
                "level": "custom",
                "delta": 1e-3,
                "noise_multiplier": 1.0,
                "clipping_norm": 0.05,
            }
        },
    ],
    ids=["fedbuff", "central_dp"],
)
def test_every_aggregation_path_records_an_update_replaced_after_validation(
    tiny_data: Path, tmp_path: Path, sections: dict[str, Any]
) -> None:
    store, cid = _start(tiny_data, tmp_path, **sections)
    _run(store, cid, 1, upto="validate_updates")
    validated = steps.validate_updates(store, cid, 1)
    victim = validated["accepted"][0]["client"]
    nan = np.full(load_model(store, cid, 0).shape, np.nan, dtype=np.float32)
    _rewrite(store, cid, victim, vector=nan)

    info = steps.aggregate(store, cid, 1)

    assert steps.validate_updates(store, cid, 1) == validated  # a retry keeps its verdict
    assert info["rejected_at_read"] == [
        {"client": victim, "reason": "accepted update changed after validation (sha256 mismatch)"}
    ]
    assert info["num_aggregated"] == validated["num_accepted"] - 1
    arrays = store.get_arrays(L.round_key(cid, 1, L.AGGREGATE_ARRAYS))
    assert all(np.all(np.isfinite(a)) for a in arrays.values())


def test_an_update_deleted_after_collect_or_after_validation_is_a_rejection(
    tiny_data: Path, tmp_path: Path
) -> None:
    store, cid = _start(tiny_data, tmp_path)
    _run(store, cid, 1, upto="collect")
    (Path(store.root) / L.update_key(cid, 1, "client_0003")).unlink()

    validation = steps.validate_updates(store, cid, 1)
    (Path(store.root) / L.update_key(cid, 1, "client_0004")).unlink()
    info = steps.aggregate(store, cid, 1)

    assert _reasons(validation)["client_0003"] == "update disappeared after collect"
    assert info["rejected_at_read"][0]["client"] == "client_0004"
    assert "missing" in info["rejected_at_read"][0]["reason"]
    assert info["num_aggregated"] == 4


def test_oversized_or_unreadable_stored_updates_are_rejected_and_the_bytes_counted(
    tiny_data: Path, tmp_path: Path
) -> None:
    store, cid = _start(tiny_data, tmp_path, server={"norm_outlier_factor": None})
    _run(store, cid, 1, upto="collect")
    limit = state.max_update_bytes(state.model_layout(state.load_campaign(store, cid)))
    store.put_bytes(L.update_key(cid, 1, "client_0001"), b"\0" * (limit + 1))
    store.put_bytes(L.update_key(cid, 1, "client_0002"), b"nonsense")

    validation = steps.validate_updates(store, cid, 1)

    reasons = _reasons(validation)
    assert reasons["client_0001"] == f"update of {limit + 1} bytes exceeds the {limit}-byte limit"
    assert "FLW1" in reasons["client_0002"] or "magic" in reasons["client_0002"]
    assert validation["num_rejected"] == 2 and validation["num_accepted"] == 4
    read = [f"client_{i:04d}" for i in (0, 2, 3, 4, 5)]  # the oversized one is never read
    assert validation["bytes_up"] == sum(
        len(store.get_bytes(L.update_key(cid, 1, c))) for c in read
    )


@pytest.mark.parametrize("metric", [float("nan"), float("inf"), -1.0])
def test_header_metrics_must_be_finite_and_in_bounds(
    tiny_data: Path, tmp_path: Path, metric: float
) -> None:
    store, cid = _start(tiny_data, tmp_path)
    _run(store, cid, 1, upto="collect")
    _rewrite(store, cid, "client_0005", metrics={"train_loss": metric})

    validation = steps.validate_updates(store, cid, 1)

    reason = _reasons(validation)["client_0005"]
    assert "train_loss" in reason or "NaN" in reason or "Infinity" in reason
    assert validation["num_accepted"] == 5


def test_server_update_refuses_a_non_finite_model(tiny_data: Path, tmp_path: Path) -> None:
    store, cid = _start(tiny_data, tmp_path)
    _run(store, cid, 1, upto="privatize")
    key = L.round_key(cid, 1, L.PRIVATIZED)
    update = store.get_arrays(key)["update"]
    update[0] = np.inf
    store.put_arrays(key, {"update": update})

    with pytest.raises(NonFiniteModel, match="non-finite"):
        steps.server_update(store, cid, 1)
    assert not store.exists(L.model_key(cid, 1))


def test_a_step_whose_input_record_is_missing_names_the_step_to_run(
    tiny_data: Path, tmp_path: Path
) -> None:
    store, cid = _start(tiny_data, tmp_path)
    _run(store, cid, 1, upto="collect")

    with pytest.raises(R.MissingRecord, match="aggregate needs the validate_updates record"):
        steps.aggregate(store, cid, 1)
    # ... and it did not run validate_updates behind the caller's back.
    assert not store.exists(R.Validation.key(cid, 1))


def test_each_checking_step_names_itself_and_the_step_to_run_first(
    tiny_data: Path, tmp_path: Path
) -> None:
    store, cid = _start(tiny_data, tmp_path)
    _run(store, cid, 1, upto="dispatch")

    with pytest.raises(R.MissingRecord) as info:
        steps.validate_updates(store, cid, 1)
    assert str(info.value) == (
        "round 1: validate_updates needs the collect record (collected.json); run collect first"
    )
    with pytest.raises(R.MissingRecord) as info:
        steps.privatize(store, cid, 1)
    assert str(info.value) == (
        "round 1: privatize needs the aggregate record (aggregate.json); run aggregate first"
    )
    _run(store, cid, 1, upto="validate_updates")
    (Path(store.root) / L.round_key(cid, 1, L.MANIFEST)).unlink()  # the tasks' record lost
    with pytest.raises(R.MissingRecord, match="^round 1: aggregate needs the dispatch record"):
        steps.aggregate(store, cid, 1)
    (Path(store.root) / L.round_key(cid, 1, L.VALIDATION)).unlink()
    with pytest.raises(
        R.MissingRecord, match="^round 1: validate_updates needs the dispatch record"
    ):
        steps.validate_updates(store, cid, 1)


@pytest.mark.parametrize("bad", ["a/clients/client_0000", "x" * 300, "../up", " lead", "a..b"])
def test_invalid_campaign_ids_are_refused_before_any_write(
    tiny_data: Path, tmp_path: Path, bad: str
) -> None:
    store = LocalStore(tmp_path / "store")

    with pytest.raises(ValueError, match="campaign id"):
        steps.start_campaign(store, tiny_config(), data_dir=tiny_data, campaign_id=bad)
    assert store.list("campaigns") == []
    assert check_campaign_id("tiny-20260101T000000-abc123")


def test_an_ended_campaign_refuses_another_round(tiny_data: Path, tmp_path: Path) -> None:
    store, cid = _start(tiny_data, tmp_path)
    for rnd in (1, 2):
        _run(store, cid, rnd, upto="next_round")
    status = R.read(store, R.CampaignStatus, cid, step="test")

    with pytest.raises(CampaignEnded, match="round 3 is refused"):
        steps.select_clients(store, cid, 3)
    assert not status.proceed and status.last_round == 2
    assert not store.exists(R.Cohort.key(cid, 3))


# --------------------------------------------------------------- check_update, one update

SMALL = Layout(("w",), ((8,),))
TASK: dict[str, Any] = {
    "cid": "c",
    "rnd": 2,
    "client": "k",
    "base_version": 1,
    "layout": SMALL,
    "codec": "dense_fp32",
    "max_norm": 1.0,
    "max_examples": 10,
}


def _update(
    vector: np.ndarray | None = None, *, metrics: dict[str, float] | None = None, **header: Any
) -> bytes:
    fields: dict[str, Any] = {
        "kind": "update",
        "campaign": "c",
        "round": 2,
        "base_version": 1,
        "client": "k",
        "codec": "dense_fp32",
        "layout": SMALL,
        "num_examples": 10,
        "metrics": metrics or {},
        **header,
    }
    values = np.full(8, 0.25, np.float32) if vector is None else vector
    return wire.encode(wire.Header(**fields), values)


def test_an_accepted_update_is_recorded_with_what_later_steps_read() -> None:
    metrics = {
        "train_loss": 0.5,
        "duration_s": 3.0,
        "dp_sgd_epsilon": 1.5,
        "bytes_down": 400.0,
        "uplink_mbps": 2.0,
        "latency_s": 0.1,
    }
    data = _update(metrics=metrics, num_examples=7)

    reason, item = check_update(data, **TASK)

    assert reason is None and item is not None
    assert item == R.AcceptedUpdate(
        client="k",
        source_round=2,
        staleness=0,
        num_examples=7,
        weight=7.0,
        norm=pytest.approx(float(np.linalg.norm(np.full(8, 0.25)))),
        train_loss=0.5,
        duration_s=3.0,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        metrics={"dp_sgd_epsilon": 1.5, "bytes_down": 400.0, "uplink_mbps": 2.0},
    )
    _, bare = check_update(_update(), **TASK)
    assert bare is not None and np.isnan(bare.train_loss) and np.isnan(bare.duration_s)
    assert bare.metrics == {}


@pytest.mark.parametrize(("name", "bounds"), sorted(METRIC_BOUNDS.items()))
def test_a_header_metric_is_accepted_within_its_bounds_inclusive_and_refused_outside(
    name: str, bounds: tuple[float, float]
) -> None:
    lo, hi = bounds
    for value in (lo, hi):
        assert check_update(_update(metrics={name: value}), **TASK)[0] is None, value
    for value in (lo - 1e-3, hi * 1.001):
        reason, item = check_update(_update(metrics={name: value}), **TASK)
        assert item is None
        assert reason == (
            f"header metric {name}={value!r} is not a finite number in [{lo:g}, {hi:g}]"
        )


def test_a_metric_without_declared_bounds_is_bounded_by_1e12() -> None:
    for value in (-1e12, 1e12):
        assert check_update(_update(metrics={"custom": value}), **TASK)[0] is None
    reason, _ = check_update(_update(metrics={"custom": -1.5e12}), **TASK)
    assert (
        reason == "header metric custom=-1500000000000.0 is not a finite number in [-1e+12, 1e+12]"
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_update(kind="model"), "kind is 'model', expected 'update'"),
        (_update(campaign="d"), "header names another campaign, round or client"),
        (_update(round=3), "header names another campaign, round or client"),
        (_update(client="j"), "header names another campaign, round or client"),
        (_update(base_version=0), "stale: computed on version 0, round uses 1"),
        (_update(num_examples=0), "num_examples must be an integer >= 1, got 0"),
        (
            _update(num_examples=11),
            "num_examples 11 exceeds the 10 examples the server knows this client holds",
        ),
        (
            _update(np.full(8, 0.5, np.float32)),
            "update norm 1.414 exceeds server.max_update_norm 1",
        ),
    ],
    ids=["kind", "campaign", "round", "client", "stale", "zero", "too_many", "norm"],
)
def test_check_update_names_why_an_update_is_refused(data: bytes, reason: str) -> None:
    assert check_update(data, **TASK) == (reason, None)


def test_boundaries_that_are_accepted() -> None:
    at_cap = np.zeros(8, np.float32)
    at_cap[0] = 1.0  # norm exactly max_norm
    for data in (_update(at_cap), _update(num_examples=10), _update(num_examples=1)):
        reason, item = check_update(data, **TASK)
        assert reason is None and item is not None


# --------------------------------------------------------------- validate_updates, a round


def test_the_validation_record_names_its_round_and_sums_the_downloads_clients_reported(
    tiny_data: Path, tmp_path: Path
) -> None:
    store, cid = _start(tiny_data, tmp_path)
    _run(store, cid, 1, upto="collect")
    clients = sorted(store.get_json(L.round_key(cid, 1, L.COLLECTED))["received"])
    a, b, c = clients[:3]
    _rewrite(store, cid, a, all_metrics={"train_loss": 0.5, "bytes_down": 1234.0})
    _rewrite(store, cid, b, all_metrics={"train_loss": 0.5, "bytes_down": 5678.0})
    _rewrite(store, cid, c, all_metrics={"train_loss": 0.5})  # reported none: counts 0
    _run(store, cid, 1, upto="validate_updates")

    record = store.get_json(L.round_key(cid, 1, L.VALIDATION))
    expected = sum(
        int(wire.read_header(store.get_bytes(L.update_key(cid, 1, x))).metrics.get("bytes_down", 0))
        for x in (a["client"] for a in record["accepted"])
    )
    assert record["round"] == 1 and record["num_accepted"] == len(clients)
    assert record["bytes_down"] == expected and expected >= 1234 + 5678


def test_an_update_in_another_layout_of_the_same_size_is_rejected(
    tiny_data: Path, tmp_path: Path
) -> None:
    store, cid = _start(tiny_data, tmp_path)
    _run(store, cid, 1, upto="collect")
    client = sorted(store.get_json(L.round_key(cid, 1, L.COLLECTED))["received"])[0]
    data = store.get_bytes(L.update_key(cid, 1, client))
    lay = wire.read_header(data).layout
    turned = Layout(lay.names, tuple(tuple(reversed(s)) for s in lay.shapes))
    assert turned != lay and turned.num_params == lay.num_params
    _rewrite(store, cid, client, layout=turned.to_json())
    _run(store, cid, 1, upto="validate_updates")

    reasons = _reasons(store.get_json(L.round_key(cid, 1, L.VALIDATION)))
    assert list(reasons) == [client] and "layout" in reasons[client]


def test_a_norm_outlier_among_three_accepted_updates_is_rejected(
    tiny_data: Path, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    cfg = tiny_config(
        campaign={"clients_per_round": 3, "rounds": 1},
        server={"norm_outlier_factor": 3.0, "momentum": 0.0},
    )
    cid = steps.start_campaign(store, cfg, data_dir=tiny_data, campaign_id="three")
    _run(store, cid, 1, upto="collect")
    received = sorted(store.get_json(L.round_key(cid, 1, L.COLLECTED))["received"])
    assert len(received) == 3  # the smallest cohort the check runs on
    boosted = received[0]
    _, vector = wire.decode(store.get_bytes(L.update_key(cid, 1, boosted)))
    _rewrite(store, cid, boosted, vector=vector * 100.0)
    _run(store, cid, 1, upto="validate_updates")

    reasons = _reasons(store.get_json(L.round_key(cid, 1, L.VALIDATION)))
    assert list(reasons) == [boosted] and "norm outlier" in reasons[boosted]


@pytest.mark.parametrize("value", [1e12 + 0.5, -1e12 - 0.5])
def test_a_metric_without_its_own_bounds_is_bounded_at_1e12(value: float) -> None:
    reason, item = check_update(_update(metrics={"custom_score": value}), **TASK)
    assert item is None and reason is not None and "custom_score" in reason
    for inside in (1e12, -1e12):
        assert check_update(_update(metrics={"custom_score": inside}), **TASK)[0] is None


def test_check_update_refuses_another_layout_of_the_same_size() -> None:
    other = Layout(("w",), ((2, 4),))
    reason, item = check_update(_update(layout=other), **TASK)
    assert item is None and reason is not None and "layout" in reason
