"""Differential privacy and compression wired through the round pipeline (digits, 6 clients)."""

from pathlib import Path

import numpy as np
import pytest

from fl_core import pipeline, wire
from fl_core.engine import run_campaign, run_round
from fl_core.privacy.accountant import compute_epsilon
from fl_core.store import LocalStore
from tests.conftest import tiny_config

DELTA = 1e-3
Z, Q = 1.0, 0.5  # noise multiplier; Poisson rate = clients_per_round / num_clients = 3 / 6


def dp_config(**campaign: object):  # type: ignore[no-untyped-def]
    # The budget allows exactly 3 rounds at (Z, Q); round 4 would overshoot.
    target = compute_epsilon(noise_multiplier=Z, sampling_rate=Q, steps=3, delta=DELTA) + 1e-3
    return tiny_config(
        privacy={
            "level": "custom",
            "epsilon": target,
            "delta": DELTA,
            "noise_multiplier": Z,
            "clipping_norm": 0.5,
        },
        campaign={"rounds": 10, "clients_per_round": 3, **campaign},
    ), target


def test_campaign_stops_before_the_round_that_would_overshoot(
    tiny_data: Path, tmp_path: Path
) -> None:
    cfg, target = dp_config()
    store = LocalStore(tmp_path)

    result = run_campaign(cfg, data_dir=tiny_data, store=store, progress=False)

    assert result.rounds == 3
    assert result.stop_reason.startswith("privacy budget: round 4")
    eps = [h["epsilon"] for h in result.history]
    assert eps == sorted(eps) and eps[-1] <= target
    assert eps[-1] == pytest.approx(
        compute_epsilon(noise_multiplier=Z, sampling_rate=Q, steps=3, delta=DELTA), rel=1e-9
    )
    with pytest.raises(RuntimeError, match="refused"):
        pipeline.select_clients(store, result.campaign_id, 4)


def test_rerunning_privatize_never_double_counts(tiny_data: Path, tmp_path: Path) -> None:
    cfg, _ = dp_config()
    store = LocalStore(tmp_path)
    cid = pipeline.start_campaign(store, cfg, data_dir=tiny_data, campaign_id="dp")
    run_round(store, cid, 1)
    run_round(store, cid, 2)
    before = pipeline.privatize(store, cid, 2)
    release = store.get_bytes(pipeline.round_key(cid, 2, "privatized.npz"))

    again = pipeline.privatize(store, cid, 2)  # a retry with outputs in place
    for name in ("privacy.json", "accountant.json"):  # a crash after the release was written
        (tmp_path / pipeline.round_key(cid, 2, name)).unlink()
    recomputed = pipeline.privatize(store, cid, 2)

    assert again["epsilon"] == before["epsilon"] == recomputed["epsilon"]
    assert store.get_bytes(pipeline.round_key(cid, 2, "privatized.npz")) == release


def test_central_noise_matches_the_formula(tiny_data: Path, tmp_path: Path) -> None:
    cfg, _ = dp_config()
    store = LocalStore(tmp_path)
    cid = pipeline.start_campaign(store, cfg, data_dir=tiny_data, campaign_id="noise")
    for step in (pipeline.select_clients, pipeline.dispatch):
        step(store, cid, 1)
    for batch in pipeline.client_batches(store, cid, 1, batch_size=8):
        pipeline.train_clients(store, cid, 1, batch)
    pipeline.collect(store, cid, 1)
    pipeline.validate_updates(store, cid, 1)
    info = pipeline.aggregate(store, cid, 1)
    out = pipeline.privatize(store, cid, 1)

    clipped_sum = store.get_arrays(pipeline.round_key(cid, 1, "aggregate.npz"))["sum"]
    release = store.get_arrays(pipeline.round_key(cid, 1, "privatized.npz"))["update"]
    m = Q * 6
    noise = release - clipped_sum / m
    expected = Z * 0.5 / m
    assert out["noise_std"] == pytest.approx(expected)
    # ~2,400 draws: the sample std is within 5% of the formula.
    assert noise.std() == pytest.approx(expected, rel=0.05)
    assert abs(noise.mean()) < 4 * expected / np.sqrt(noise.size)
    norms = store.get_arrays(pipeline.round_key(cid, 1, "aggregate.npz"))["norms"]
    assert info["num_clipped"] == int((norms > 0.5).sum())


def test_local_dp_reports_growing_epsilon(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        privacy={
            "level": "custom",
            "mode": "local",
            "epsilon": 50.0,
            "delta": DELTA,
            "clipping_norm": 1.0,
        },
        campaign={"rounds": 2},
    )

    result = run_campaign(cfg, data_dir=tiny_data, store=LocalStore(tmp_path), progress=False)

    eps = [h["epsilon"] for h in result.history]
    assert 0 < eps[0] < eps[1] <= 50.0


def test_topk_with_error_feedback_end_to_end(tiny_data: Path, tmp_path: Path) -> None:
    dense = run_campaign(
        tiny_config(), data_dir=tiny_data, store=LocalStore(tmp_path / "d"), progress=False
    )
    cfg = tiny_config(communication={"uplink_codec": "topk:0.1+q8", "error_feedback": True})
    store = LocalStore(tmp_path / "s")

    sparse = run_campaign(cfg, data_dir=tiny_data, store=store, progress=False)

    up_dense = sum(h["bytes_up"] for h in dense.history)
    up_sparse = sum(h["bytes_up"] for h in sparse.history)
    assert up_sparse < up_dense / 5  # ~9.5x here: headers weigh on a 2,410-param model
    assert sparse.final_accuracy > 0.3
    cid = sparse.campaign_id
    assert store.get_json(pipeline.round_key(cid, 2, "aggregate.json"))["sparse"] is True
    # Every byte is counted: the logged uplink bytes are the stored messages' lengths.
    stored = sum(len(store.get_bytes(k)) for k in store.list(pipeline.round_key(cid, 2, "updates")))
    assert sparse.history[1]["bytes_up"] == stored
    # A retried client (update lost after upload) re-sends identical bytes: same residual in.
    client = pipeline.select_clients(store, cid, 2)["cohort"][0]
    key = pipeline.update_key(cid, 2, client)
    original = store.get_bytes(key)
    state_key = f"campaigns/{cid}/clients/{client}/state_r0002.npz"
    residual = store.get_arrays(state_key)["residual"]
    (tmp_path / "s" / key).unlink()
    pipeline.train_clients(store, cid, 2, [client])
    header, before = wire.decode_sparse(original)[0], wire.decode_sparse(original)[1:]
    after = wire.decode_sparse(store.get_bytes(key))[1:]
    assert header.codec == "topk:0.1+q8"
    np.testing.assert_array_equal(before[0], after[0])  # same coordinates sent
    np.testing.assert_array_equal(before[1], after[1])  # same quantized values
    np.testing.assert_array_equal(store.get_arrays(state_key)["residual"], residual)
    assert np.abs(residual).sum() > 0  # the residual really holds what top-k dropped


def test_client_with_the_wrong_codec_is_rejected(tiny_data: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    cid = pipeline.start_campaign(store, tiny_config(), data_dir=tiny_data, campaign_id="codec")
    cohort = pipeline.select_clients(store, cid, 1)["cohort"]
    pipeline.dispatch(store, cid, 1)
    pipeline.train_clients(store, cid, 1, cohort)
    pipeline.collect(store, cid, 1)
    header, vec = wire.decode(store.get_bytes(pipeline.update_key(cid, 1, cohort[0])))
    fp16 = wire.Header(**{**header.__dict__, "codec": "fp16"})
    store.put_bytes(pipeline.update_key(cid, 1, cohort[0]), wire.encode(fp16, vec))

    report = pipeline.validate_updates(store, cid, 1)

    assert [r["client"] for r in report["rejected"]] == [cohort[0]]
    assert "codec" in report["rejected"][0]["reason"]


def test_client_dp_sgd_reports_record_level_epsilon(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        privacy={"client_dp_sgd": True, "dp_sgd_noise_multiplier": 1.0}, campaign={"rounds": 1}
    )
    store = LocalStore(tmp_path)

    result = run_campaign(cfg, data_dir=tiny_data, store=store, progress=False)

    out = store.get_json(pipeline.round_key(result.campaign_id, 1, "privacy.json"))
    accepted = store.get_json(pipeline.round_key(result.campaign_id, 1, "validation.json"))[
        "accepted"
    ]
    assert all(a["dp_sgd_epsilon"] > 0 for a in accepted)
    assert out["dp_sgd_epsilon_max"] == max(a["dp_sgd_epsilon"] for a in accepted)


def test_byte_accounting_per_client_and_ratio(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(communication={"uplink_codec": "q8"})
    store = LocalStore(tmp_path)

    result = run_campaign(cfg, data_dir=tiny_data, store=store, progress=False)

    cid = result.campaign_id
    rows = pipeline.bytes_per_client_csv(store, cid, 3).strip().splitlines()[1:]
    assert len(rows) == 12  # 3 rounds x 4 clients
    for row in rows:
        rnd, client, up, *_ = row.split(",")
        assert int(up) == len(store.get_bytes(pipeline.update_key(cid, int(rnd), client)))
    assert 3.0 < result.history[0]["uplink_ratio_vs_dense"] < 4.0  # q8: ~4x minus headers
