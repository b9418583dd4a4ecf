"""The in-process engine and the round step functions, on tiny data (digits, 6 clients)."""

from pathlib import Path

import numpy as np
import pytest

from fl_core import pipeline, wire
from fl_core.engine import run_campaign, run_round
from fl_core.store import LocalStore
from tests.conftest import tiny_config


def test_campaign_learns_and_records_every_round(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config()
    store = LocalStore(tmp_path)

    result = run_campaign(cfg, data_dir=tiny_data, store=store, progress=False)

    assert result.rounds == 3 and result.stop_reason == "rounds done (3)"
    accs = [h["test_accuracy"] for h in result.history]
    assert accs[-1] > 0.5 > 0.1  # far above chance (10 classes) after 3 rounds
    assert all(h["num_accepted"] == 4 for h in result.history)
    cid = result.campaign_id
    assert store.exists(pipeline.model_key(cid, 3))
    assert len(store.list(f"campaigns/{cid}/rounds/0002/updates")) == 4


def test_same_seed_same_params_give_identical_model(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config()

    a = run_campaign(cfg, data_dir=tiny_data, store=LocalStore(tmp_path / "a"), progress=False)
    b = run_campaign(cfg, data_dir=tiny_data, store=LocalStore(tmp_path / "b"), progress=False)
    c = run_campaign(
        tiny_config(campaign={"seed": 8}),
        data_dir=tiny_data,
        store=LocalStore(tmp_path / "c"),
        progress=False,
    )

    assert a.model_sha256 == b.model_sha256
    assert a.final_accuracy == b.final_accuracy
    assert c.model_sha256 != a.model_sha256


def test_rerunning_steps_is_idempotent(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config()
    store = LocalStore(tmp_path)
    cid = pipeline.start_campaign(store, cfg, data_dir=tiny_data, campaign_id="idem")
    run_round(store, cid, 1)
    model_before = store.get_bytes(pipeline.model_key(cid, 1))

    # A retried training task skips clients that already uploaded; a cleared aggregate
    # (its outputs deleted) recomputes the same bytes.
    cohort = pipeline.select_clients(store, cid, 1)["cohort"]
    assert pipeline.train_clients(store, cid, 1, cohort)["skipped"] == len(cohort)
    for name in (
        "aggregate.npz",
        "aggregate.json",
        "privatized.npz",
        "privacy.json",
        "server_update.json",
    ):
        (tmp_path / pipeline.round_key(cid, 1, name)).unlink()
    for step in (pipeline.aggregate, pipeline.privatize, pipeline.server_update):
        step(store, cid, 1)

    assert store.get_bytes(pipeline.model_key(cid, 1)) == model_before
    assert pipeline.aggregate(store, cid, 1)["num_aggregated"] == len(cohort)


def test_bad_updates_are_rejected_and_the_round_goes_on(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config()
    store = LocalStore(tmp_path)
    cid = pipeline.start_campaign(store, cfg, data_dir=tiny_data, campaign_id="bad")
    cohort = pipeline.select_clients(store, cid, 1)["cohort"]
    pipeline.dispatch(store, cid, 1)
    pipeline.train_clients(store, cid, 1, cohort)
    pipeline.collect(store, cid, 1)
    corrupt, nan_client, stale = cohort[0], cohort[1], cohort[2]
    data = bytearray(store.get_bytes(pipeline.update_key(cid, 1, corrupt)))
    data[-1] ^= 0x01
    store.put_bytes(pipeline.update_key(cid, 1, corrupt), bytes(data))
    header, vec = wire.decode(store.get_bytes(pipeline.update_key(cid, 1, nan_client)))
    vec = vec.copy()
    vec[5] = np.nan
    store.put_bytes(pipeline.update_key(cid, 1, nan_client), wire.encode(header, vec))
    header, vec = wire.decode(store.get_bytes(pipeline.update_key(cid, 1, stale)))
    stale_header = wire.Header(**{**header.__dict__, "base_version": 7})
    store.put_bytes(pipeline.update_key(cid, 1, stale), wire.encode(stale_header, vec))

    report = pipeline.validate_updates(store, cid, 1)
    agg = pipeline.aggregate(store, cid, 1)

    reasons = {r["client"]: r["reason"] for r in report["rejected"]}
    assert "sha256" in reasons[corrupt]
    assert "non-finite" in reasons[nan_client]
    assert "stale" in reasons[stale]
    assert [a["client"] for a in report["accepted"]] == [cohort[3]]
    assert agg["num_aggregated"] == 1
    assert np.all(
        np.isfinite(store.get_arrays(pipeline.round_key(cid, 1, "aggregate.npz"))["update"])
    )


def test_missing_updates_are_recorded_as_stragglers(tiny_data: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    cid = pipeline.start_campaign(store, tiny_config(), data_dir=tiny_data, campaign_id="s")
    cohort = pipeline.select_clients(store, cid, 1)["cohort"]
    pipeline.dispatch(store, cid, 1)
    pipeline.train_clients(store, cid, 1, cohort[:3])

    out = pipeline.collect(store, cid, 1)

    assert out["missing"] == [cohort[3]] and out["num_received"] == 3


def test_campaign_stops_on_target_accuracy(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(campaign={"rounds": 20, "target_accuracy": 0.5})

    result = run_campaign(cfg, data_dir=tiny_data, store=LocalStore(tmp_path), progress=False)

    assert result.rounds < 20
    assert result.final_accuracy >= 0.5
    assert result.stop_reason.startswith("target accuracy")


def test_cohort_is_seeded_by_round(tiny_data: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    cid = pipeline.start_campaign(store, tiny_config(), data_dir=tiny_data, campaign_id="c")
    cohorts = [tuple(pipeline.select_clients(store, cid, r)["cohort"]) for r in (1, 2, 3, 4)]

    assert all(len(c) == 4 for c in cohorts)
    assert len(set(cohorts)) > 1
    again = LocalStore(tmp_path / "again")
    cid2 = pipeline.start_campaign(again, tiny_config(), data_dir=tiny_data, campaign_id="c")
    assert tuple(pipeline.select_clients(again, cid2, 3)["cohort"]) == cohorts[2]


@pytest.mark.parametrize("name", ["logreg", "cnn"])
def test_other_models_train_too(name: str, tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(model={"name": name, "channels": [4]}, campaign={"rounds": 2})

    result = run_campaign(cfg, data_dir=tiny_data, store=LocalStore(tmp_path), progress=False)

    assert result.final_accuracy > 0.3


def test_stochastic_codecs_are_reproducible_whatever_the_campaign_id(
    tiny_data: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(communication={"uplink_codec": "topk:0.2+q4"}, campaign={"rounds": 2})

    a = run_campaign(cfg, data_dir=tiny_data, store=LocalStore(tmp_path / "a"), progress=False)
    b = run_campaign(cfg, data_dir=tiny_data, store=LocalStore(tmp_path / "b"), progress=False)

    assert a.campaign_id != b.campaign_id
    assert a.model_sha256 == b.model_sha256
