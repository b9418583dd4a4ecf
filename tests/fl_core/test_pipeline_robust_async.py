"""Robust rules, attacks, validation/reputation, simulation (availability, stragglers,
adaptive communication) and asynchronous FedBuff through the round pipeline."""

from pathlib import Path

import numpy as np
import pytest

from fl_core import pipeline, wire
from fl_core.engine import run_campaign
from fl_core.rounds.state import reputation
from fl_core.store import LocalStore
from tests.conftest import tiny_config

ALL_SIX = {"clients_per_round": 6, "rounds": 4}


def _run(tiny_data: Path, tmp_path: Path, name: str, **sections: dict):  # type: ignore[no-untyped-def]
    store = LocalStore(tmp_path / name)
    result = run_campaign(tiny_config(**sections), data_dir=tiny_data, store=store, progress=False)
    return result, store


def test_median_survives_sign_flipping_that_breaks_fedavg(tiny_data: Path, tmp_path: Path) -> None:
    attack = {"kind": "sign_flip", "fraction": 0.34, "scale": 5.0}  # 2 of 6 clients
    no_check = {"norm_outlier_factor": None, "momentum": 0.0}

    fedavg, _ = _run(
        tiny_data,
        tmp_path,
        "avg",
        attack=attack,
        campaign=ALL_SIX,
        server={**no_check, "strategy": "fedavg"},
    )
    median, store = _run(
        tiny_data,
        tmp_path,
        "med",
        attack=attack,
        campaign=ALL_SIX,
        server={**no_check, "strategy": "median"},
    )
    clean, _ = _run(tiny_data, tmp_path, "clean", campaign=ALL_SIX)

    assert fedavg.final_accuracy < 0.3 < clean.final_accuracy - 0.2
    assert median.final_accuracy > clean.final_accuracy - 0.15
    cid = median.campaign_id
    rec = pipeline.load_campaign(store, cid)
    assert len(rec["malicious"]) == 2
    # The attackers' honest updates are kept apart from what they sent.
    for bad in rec["malicious"]:
        assert store.exists(pipeline.round_key(cid, 1, "honest", f"{bad}.flw"))


def test_boosted_updates_are_rejected_as_norm_outliers_and_lose_reputation(
    tiny_data: Path, tmp_path: Path
) -> None:
    result, store = _run(
        tiny_data,
        tmp_path,
        "boost",
        campaign=ALL_SIX,
        attack={"kind": "scaling", "fraction": 0.17, "scale": 100.0},
    )
    cid = result.campaign_id
    bad = pipeline.load_campaign(store, cid)["malicious"]

    report = store.get_json(pipeline.round_key(cid, 1, "validation.json"))
    assert [r["client"] for r in report["rejected"]] == bad
    assert "norm outlier" in report["rejected"][0]["reason"]
    book = reputation(store, cid, 4)
    honest = [c for c in book.clients if c not in bad]
    assert book.score(bad[0], round=5) < min(book.score(c, round=5) for c in honest)


def test_dropouts_overselection_and_the_simulated_clock(tiny_data: Path, tmp_path: Path) -> None:
    sim = {"enabled": True, "dropout_rate": 0.3, "cellular_slow": 0.5, "wifi": 0.5}
    result, store = _run(
        tiny_data,
        tmp_path,
        "sim",
        simulation=sim,
        selection={"overselect": True},
        campaign={"clients_per_round": 3},
    )
    cid = result.campaign_id

    for rnd in (1, 2, 3):
        cohort = store.get_json(pipeline.round_key(cid, rnd, "cohort.json"))
        collected = store.get_json(pipeline.round_key(cid, rnd, "collected.json"))
        assert cohort["target"] == 3 and cohort["num_selected"] > 3  # over-selected
        assert collected["num_received"] <= 3  # closes at the target
        assert set(collected["received"]) | set(collected["missing"]) == set(cohort["cohort"])
    times = [h["sim_time_s"] for h in result.history]
    assert times == sorted(times) and times[0] > 0


def test_adaptive_policy_compresses_slow_links_harder(tiny_data: Path, tmp_path: Path) -> None:
    sim = {"enabled": True, "cellular_slow": 0.5, "cellular_fast": 0.0, "wifi": 0.5}
    comm = {"policy": "adaptive", "slow_participation_every": 1}
    result, store = _run(
        tiny_data,
        tmp_path,
        "adaptive",
        simulation=sim,
        communication=comm,
        campaign={"clients_per_round": 6, "rounds": 2},
    )
    cid = result.campaign_id

    tasks = store.get_json(pipeline.round_key(cid, 1, "manifest.json"))["tasks"]
    by_link = {t["link"]: t for t in tasks.values()}
    assert by_link["slow"]["codec"] == "topk:0.01+q8"
    assert by_link["slow"]["local_epochs"] == 2 * by_link["fast"]["local_epochs"]
    sizes = {c: len(store.get_bytes(pipeline.update_key(cid, 1, c))) for c in tasks}
    slow = [sizes[c] for c, t in tasks.items() if t["link"] == "slow"]
    fast = [sizes[c] for c, t in tasks.items() if t["link"] == "fast"]
    assert max(slow) < min(fast)


def test_fedbuff_aggregates_every_k_arrivals_with_stale_updates(
    tiny_data: Path, tmp_path: Path
) -> None:
    cfg = {"enabled": True, "buffer_size": 2, "concurrency": 4, "max_staleness": 5}
    sim = {"enabled": True, "cellular_slow": 0.5, "wifi": 0.5}
    result, store = _run(
        tiny_data, tmp_path, "async", asynchronous=cfg, simulation=sim, campaign={"rounds": 5}
    )
    cid = result.campaign_id

    staleness = []
    for rnd in range(1, 6):
        collected = store.get_json(pipeline.round_key(cid, rnd, "collected.json"))
        assert collected["num_received"] == 2
        assert len(collected["inflight"]) == 2  # concurrency 4 - buffer 2 still training
        accepted = store.get_json(pipeline.round_key(cid, rnd, "validation.json"))["accepted"]
        staleness += [a["staleness"] for a in accepted]
    assert max(staleness) >= 1  # some updates were computed on an older model version
    assert result.final_accuracy > 0.3
    again, _ = _run(
        tiny_data, tmp_path, "async2", asynchronous=cfg, simulation=sim, campaign={"rounds": 5}
    )
    assert again.model_sha256 == result.model_sha256


@pytest.mark.parametrize(
    "rule",
    [
        "trimmed_mean",
        "krum",
        "multi_krum",
        "centered_clipping",
        "norm_bounding",
        "fltrust",
        "weighted_median",
    ],
)
def test_every_rule_trains_through_the_pipeline(rule: str, tiny_data: Path, tmp_path: Path) -> None:
    result, store = _run(
        tiny_data,
        tmp_path,
        rule,
        campaign={"clients_per_round": 6, "rounds": 4},
        server={"strategy": rule, "num_byzantine": 1, "clip_norm": 5.0},
    )

    assert result.final_accuracy > 0.2
    info = store.get_json(pipeline.round_key(result.campaign_id, 4, "aggregate.json"))
    assert info["strategy"] == rule


def test_oort_selection_keeps_its_state_per_round(tiny_data: Path, tmp_path: Path) -> None:
    result, store = _run(
        tiny_data,
        tmp_path,
        "oort",
        selection={"strategy": "oort"},
        simulation={"enabled": True},
        campaign={"rounds": 3},
    )
    cid = result.campaign_id

    assert store.get_json(pipeline.round_key(cid, 2, "cohort.json"))["strategy"] == "oort"
    assert store.exists(pipeline.round_key(cid, 3, "selector.json"))
    header = wire.read_header(
        store.get_bytes(
            pipeline.update_key(
                cid, 1, store.get_json(pipeline.round_key(cid, 1, "cohort.json"))["cohort"][0]
            )
        )
    )
    assert header.metrics["uplink_mbps"] > 0  # the client reports its link


def test_fltrust_root_set_is_a_random_sample_not_the_first_rows(tiny_data: Path) -> None:
    from fl_core.data.io import read_table

    _, y = read_table(tiny_data / "prepared" / "test.parquet")
    sorted_y = np.sort(y)  # a test table sorted by label, as MNIST 5k's is
    rows = pipeline.root_rows(len(y), tiny_config(server={"root_dataset_size": 30}))

    assert len(set(rows.tolist())) == 30
    assert len(np.unique(sorted_y[rows])) >= 5  # the first 30 rows would be one or two labels
