"""Invariants checked through the round pipeline, against what the steps stored.

Each test runs real rounds (``fl_core.engine`` / ``fl_core.pipeline`` step functions on
digits) and recomputes a step's output from the records its predecessors stored, with code
written here from the papers and the wire format's specification, not with the functions
under test: the decoders below read payloads byte by byte, the clipping, weighting and
staleness formulas are spelled out. A bug that makes a step and its unit test agree with
each other (an unweighted FedAvg on equal-size clients, a decoder that halves values and an
error-feedback residual computed with that same decoder, a DP sum of unclipped updates that
the noise test then measures against) fails here.
"""

from __future__ import annotations

import json
import math
import struct
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_core import pipeline
from fl_core.engine import run_campaign, run_round
from fl_core.privacy.accountant import compute_epsilon
from fl_core.store import ArtifactStore, LocalStore
from tests.conftest import tiny_config

CHUNK = 1024  # the quantizer's chunk size, from the wire specification


# --------------------------------------------------------------------------- independent decoding


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    assert data[:4] == b"FLW1"
    (hlen,) = struct.unpack(">I", data[4:8])
    return json.loads(data[8 : 8 + hlen]), data[8 + hlen :]


def _dequantize(payload: bytes, n: int, bits: int) -> np.ndarray:
    """``lo[c] + code * step[c]``; codes packed 8 // bits per byte, first in the low bits."""
    m = -(-n // CHUNK)
    lo = np.frombuffer(payload, "<f4", m).astype(np.float64)
    step = np.frombuffer(payload, "<f4", m, 4 * m).astype(np.float64)
    packed = np.frombuffer(payload, np.uint8, offset=8 * m)
    per = 8 // bits
    codes = np.array(
        [(int(packed[i // per]) >> (bits * (i % per))) & ((1 << bits) - 1) for i in range(n)],
        dtype=np.float64,
    )
    chunk = np.arange(n) // CHUNK
    return lo[chunk] + codes * step[chunk]


def _indices(payload: bytes, n: int, k: int) -> tuple[np.ndarray, int]:
    tag = payload[0]
    if tag == 0:
        return np.frombuffer(payload, "<u4", k, 1).astype(np.int64), 1 + 4 * k
    if tag == 1:
        gaps = np.frombuffer(payload, "<u2", k, 1).astype(np.int64)
        return np.cumsum(gaps + 1) - 1, 1 + 2 * k
    assert tag == 2
    size = -(-n // 8)
    bits = np.unpackbits(np.frombuffer(payload, np.uint8, size, 1), bitorder="little")[:n]
    return np.flatnonzero(bits), 1 + size


def decode_independently(data: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """Header and float64 vector of a ``dense_fp32``, ``q8`` or ``topk:<f>[+q8]`` message."""
    head, payload = _split(data)
    n = sum(math.prod(shape) for _, shape in head["layout"])
    codec = head["codec"]
    if codec == "dense_fp32":
        return head, np.frombuffer(payload, "<f4").astype(np.float64)
    if codec == "q8":
        return head, _dequantize(payload, n, 8)
    assert codec.startswith("topk:"), codec
    fraction, _, values_codec = codec[5:].partition("+")
    k = min(n, max(1, math.ceil(Fraction(fraction) * n)))
    idx, used = _indices(payload, n, k)
    out = np.zeros(n, dtype=np.float64)
    if values_codec == "q8":
        out[idx] = _dequantize(payload[used:], k, 8)
    else:
        out[idx] = np.frombuffer(payload[used:], "<f4").astype(np.float64)
    return head, out


def clip(vector: np.ndarray, norm: float) -> np.ndarray:
    """Scale ``vector`` to L2 norm at most ``norm`` (Abadi et al. 2016; McMahan et al. 2018)."""
    length = float(np.sqrt(np.sum(vector.astype(np.float64) ** 2)))
    return vector * min(1.0, norm / length) if length > 0 else vector


def accepted_updates(store: ArtifactStore, cid: str, rnd: int) -> list[tuple[dict, np.ndarray]]:
    """(validation record, independently decoded vector) of each accepted update."""
    accepted = store.get_json(pipeline.round_key(cid, rnd, "validation.json"))["accepted"]
    out = []
    for item in accepted:
        src = int(item.get("source_round", rnd))
        head, vector = decode_independently(
            store.get_bytes(pipeline.update_key(cid, src, item["client"]))
        )
        assert (head["client"], head["round"]) == (item["client"], src)
        out.append((item, vector))
    return out


# ------------------------------------------------------------------ data with unequal clients


@pytest.fixture(scope="session")
def unequal_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digits over 6 clients of very different sizes (quantity skew, sigma 1.5)."""
    from fl_core import stages

    cfg = tiny_config(partition={"scheme": "quantity", "sigma": 1.5, "seed": 3})
    paths = stages.Paths(tmp_path_factory.mktemp("unequal"))
    stages.prepare(cfg, paths)
    stages.partition(cfg, paths)
    return paths.data


# --------------------------------------------------------------------------- FedAvg weights


def test_fedavg_of_unequal_clients_is_the_example_weighted_mean_of_the_stored_updates(
    unequal_data: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(
        partition={"scheme": "quantity", "sigma": 1.5, "seed": 3},
        campaign={"rounds": 2, "clients_per_round": 5},
    )
    store = LocalStore(tmp_path)
    result = run_campaign(cfg, data_dir=unequal_data, store=store, progress=False)
    cid = result.campaign_id
    known = {
        c["client_id"]: c["num_examples"]
        for c in store.get_json(f"campaigns/{cid}/campaign.json")["clients"]
    }

    for rnd in (1, 2):
        updates = accepted_updates(store, cid, rnd)
        stored = store.get_arrays(pipeline.round_key(cid, rnd, "aggregate.npz"))["update"]
        counts = np.array([known[item["client"]] for item, _ in updates], dtype=np.float64)
        vectors = np.stack([v for _, v in updates])
        weighted = counts @ vectors / counts.sum()
        unweighted = vectors.mean(axis=0)

        assert counts.max() > 2 * counts.min()  # the test bed can tell the two apart
        assert [item["num_examples"] for item, _ in updates] == counts.tolist()
        np.testing.assert_allclose(stored, weighted, rtol=1e-5, atol=1e-7)
        assert np.abs(weighted - unweighted).max() > 100 * np.abs(stored - weighted).max()


# --------------------------------------------------------------------------- central DP


DELTA = 1e-3
Z = 1.0
CLIP = 0.05  # small enough that local updates on digits are clipped


def _dp_config(rounds: int = 10) -> tuple[Any, float]:
    q = 3 / 6
    target = compute_epsilon(noise_multiplier=Z, sampling_rate=q, steps=3, delta=DELTA) + 1e-3
    cfg = tiny_config(
        privacy={
            "level": "custom",
            "epsilon": target,
            "delta": DELTA,
            "noise_multiplier": Z,
            "clipping_norm": CLIP,
        },
        campaign={"rounds": rounds, "clients_per_round": 3},
    )
    return cfg, target


def test_dp_pre_noise_sum_is_the_sum_of_the_clipped_stored_updates_and_the_noise_is_calibrated(
    tiny_data: Path, tmp_path: Path
) -> None:
    cfg, target = _dp_config()
    store = LocalStore(tmp_path)
    result = run_campaign(cfg, data_dir=tiny_data, store=store, progress=False)
    cid = result.campaign_id
    m = 0.5 * 6  # expected cohort size q N

    noise, raw_norms = [], []
    for rnd in range(1, result.rounds + 1):
        updates = accepted_updates(store, cid, rnd)
        stored_sum = store.get_arrays(pipeline.round_key(cid, rnd, "aggregate.npz"))["sum"]
        expected = sum((clip(v, CLIP) for _, v in updates), np.zeros_like(stored_sum))
        np.testing.assert_allclose(stored_sum, expected, rtol=1e-5, atol=1e-8)
        raw_norms += [float(np.linalg.norm(v)) for _, v in updates]
        release = store.get_arrays(pipeline.round_key(cid, rnd, "privatized.npz"))["update"]
        noise.append(release - expected / m)

    assert max(raw_norms) > 2 * CLIP  # clipping really had work to do
    draws = np.concatenate(noise)
    calibrated = Z * CLIP / m
    assert draws.std() == pytest.approx(calibrated, rel=0.05)  # ~7,000 draws over 3 rounds
    assert abs(draws.mean()) < 4 * calibrated / math.sqrt(draws.size)
    # and the budget: exactly the rounds it allows, epsilon never past the target
    assert result.rounds == 3 and result.stop_reason.startswith("privacy budget")
    assert result.history[-1]["epsilon"] <= target


def test_dp_budget_refusal_writes_nothing_for_the_refused_round(
    tiny_data: Path, tmp_path: Path
) -> None:
    cfg, target = _dp_config()
    store = LocalStore(tmp_path)
    cid = pipeline.start_campaign(store, cfg, data_dir=tiny_data, campaign_id="budget")
    for rnd in (1, 2, 3):
        run_round(store, cid, rnd)
    spent = store.get_json(pipeline.round_key(cid, 3, "accountant.json"))

    refused = r"round 4 .*epsilon.*refused|round 4 refused: .*epsilon"
    with pytest.raises(RuntimeError, match=refused):
        pipeline.select_clients(store, cid, 4)
    with pytest.raises(RuntimeError, match=refused):
        run_round(store, cid, 4)

    assert store.list(pipeline.round_key(cid, 4)) == []  # no cohort, no update, no spend
    assert store.get_json(pipeline.round_key(cid, 3, "accountant.json")) == spent
    assert pipeline.privacy_budget(store, cid, 3)["epsilon_after_round"] <= target


def test_dp_noise_is_fresh_each_round_and_secret_to_each_campaign(
    tiny_data: Path, tmp_path: Path
) -> None:
    """The noise comes from the campaign's secret seed and the round: two campaigns with the
    same configuration (the same clipped sums) release different noise, and a round's noise
    is independent of the previous round's (noise repeated across rounds, or derivable from
    the public configuration, could be subtracted from the releases)."""
    cfg, _ = _dp_config()
    noise: dict[str, list[np.ndarray]] = {}
    sums: dict[str, np.ndarray] = {}
    for name in ("a", "b"):
        store = LocalStore(tmp_path / name)
        cid = pipeline.start_campaign(store, cfg, data_dir=tiny_data, campaign_id="same")
        noise[name] = []
        for rnd in (1, 2):
            run_round(store, cid, rnd)
            arrays = store.get_arrays(pipeline.round_key(cid, rnd, "aggregate.npz"))
            release = store.get_arrays(pipeline.round_key(cid, rnd, "privatized.npz"))["update"]
            noise[name].append(release - arrays["sum"] / (0.5 * 6))
        sums[name] = store.get_arrays(pipeline.round_key(cid, 1, "aggregate.npz"))["sum"]

    np.testing.assert_array_equal(sums["a"], sums["b"])  # same data, same clipped sum
    for first, second in ((noise["a"][0], noise["b"][0]), (noise["a"][0], noise["a"][1])):
        assert abs(np.corrcoef(first, second)[0, 1]) < 0.15  # ~2,400 draws: |r| ~ 0.02


def _adaptive_config(*, rounds: int) -> Any:
    """Central DP with adaptive clipping (learning rate 0.5), 3 clients a round."""
    return tiny_config(
        privacy={
            "level": "custom",
            "delta": DELTA,
            "noise_multiplier": Z,
            "clipping_norm": CLIP,
            "adaptive_clipping": True,
            "clip_lr": 0.5,
        },
        campaign={"rounds": rounds, "clients_per_round": 3},
    )


def test_the_adaptive_clipping_count_noise_is_fresh_each_round_and_secret_to_each_campaign(
    tiny_data: Path, tmp_path: Path
) -> None:
    """The clipper's private quantile step adds Gaussian noise to the count of updates at or
    below the norm (Andrew et al. 2021). Like the release noise it must come from the
    campaign's secret seed and the round: a count noise derivable from the configuration, or
    repeated across rounds, could be subtracted to learn how many clients were below the
    norm. Recovered here exactly from the recorded norms: the step is
    ``next = norm * exp(-lr * (b - target))`` with ``b = (centred + noise) / m + 1/2``."""
    from fl_core.rounds import state

    cfg = _adaptive_config(rounds=2)
    noise: dict[str, list[float]] = {}
    for name in ("a", "b"):
        store = LocalStore(tmp_path / name)
        cid = pipeline.start_campaign(store, cfg, data_dir=tiny_data, campaign_id="same")
        rp = state.privacy(state.load_campaign(store, cid))
        noise[name] = []
        for rnd in (1, 2):
            run_round(store, cid, rnd)
            norm = store.get_json(pipeline.round_key(cid, rnd, "aggregate.json"))["clipping_norm"]
            released = store.get_json(pipeline.round_key(cid, rnd, "privacy.json"))
            norms = store.get_arrays(pipeline.round_key(cid, rnd, "aggregate.npz"))["norms"]
            centred = float(np.sum(norms <= norm)) - 0.5 * norms.size
            b = rp.target_quantile - math.log(released["next_clipping_norm"] / norm) / rp.clip_lr
            noise[name].append((b - 0.5) * rp.expected_cohort_size - centred)

    (a1, a2), (b1, b2) = noise["a"], noise["b"]
    assert abs(a1 - b1) > 1e-6  # secret to each campaign (same data, same norms)
    assert abs(a1 - a2) > 1e-6 and abs(b1 - b2) > 1e-6  # fresh each round
    assert min(abs(x) for x in (a1, a2, b1, b2)) > 1e-9  # the count is noised at all


def test_adaptive_clipping_clips_each_round_at_the_norm_the_previous_round_released(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Andrew et al. (NeurIPS 2021): round r clips at the norm round r - 1's private quantile
    step produced (round 1 at the configured one), its pre-noise sum is the sum of the
    updates clipped at that norm, and its noise is z_update x that norm / m, with
    z_update^-2 + (2 sigma_b)^-2 = z^-2 (sigma_b = max(m / 20, z) = z here)."""
    cfg = _adaptive_config(rounds=3)
    store = LocalStore(tmp_path)
    result = run_campaign(cfg, data_dir=tiny_data, store=store, progress=False)
    cid = result.campaign_id
    m = 0.5 * 6
    z_update = (Z**-2 - (2 * Z) ** -2) ** -0.5

    used, released = [], [CLIP]
    for rnd in (1, 2, 3):
        agg = store.get_json(pipeline.round_key(cid, rnd, "aggregate.json"))
        priv = store.get_json(pipeline.round_key(cid, rnd, "privacy.json"))
        stored_sum = store.get_arrays(pipeline.round_key(cid, rnd, "aggregate.npz"))["sum"]
        norm = agg["clipping_norm"]
        updates = accepted_updates(store, cid, rnd)
        expected = sum((clip(v, norm) for _, v in updates), np.zeros_like(stored_sum))
        raw_norms = [float(np.linalg.norm(v)) for _, v in updates]

        assert (agg["round"], agg["strategy"]) == (rnd, "dp_clipped_sum")
        assert agg["num_aggregated"] == len(updates)
        assert agg["total_examples"] == sum(int(item["num_examples"]) for item, _ in updates)
        assert agg["num_clipped"] == sum(n > norm for n in raw_norms)
        assert agg["update_norm"] == pytest.approx(float(np.linalg.norm(stored_sum)), rel=1e-5)

        assert norm == released[-1] == priv["clipping_norm"]
        np.testing.assert_allclose(stored_sum, expected, rtol=1e-5, atol=1e-8)
        assert priv["noise_std"] == pytest.approx(z_update * norm / m)
        # the accountant composes the whole mechanism's z once per round
        spent = compute_epsilon(noise_multiplier=Z, sampling_rate=0.5, steps=rnd, delta=DELTA)
        assert priv["epsilon"] == pytest.approx(spent)
        assert (priv["round"], priv["enabled"], priv["mode"]) == (rnd, True, "central")
        assert (priv["delta"], priv["noise_multiplier"], priv["target_epsilon"]) == (
            DELTA,
            Z,
            pytest.approx(
                compute_epsilon(noise_multiplier=Z, sampling_rate=0.5, steps=3, delta=DELTA)
            ),
        )
        used.append(norm)
        released.append(priv["next_clipping_norm"])

    assert len(set(used)) == 3  # the norm moved every round


# --------------------------------------------------------------------------- error feedback


@pytest.mark.parametrize("codec", ["q8", "topk:0.1+q8", "topk:0.05"])
def test_error_feedback_residual_is_the_raw_update_minus_what_the_server_decodes(
    codec: str, tiny_data: Path, tmp_path: Path
) -> None:
    """Round 1 trains every client from the same model with the same seeds whatever the
    codec, so a lossless run's stored update is the raw update the lossy run compressed:
    ``raw == independently decoded payload + stored residual``."""
    campaign = {"rounds": 1}
    dense = LocalStore(tmp_path / "dense")
    lossy = LocalStore(tmp_path / "lossy")
    cfg = tiny_config(campaign=campaign, communication={"uplink_codec": codec})
    a = run_campaign(
        tiny_config(campaign=campaign), data_dir=tiny_data, store=dense, progress=False
    )
    b = run_campaign(cfg, data_dir=tiny_data, store=lossy, progress=False)

    cohort = lossy.get_json(pipeline.round_key(b.campaign_id, 1, "cohort.json"))["cohort"]
    assert cohort == dense.get_json(pipeline.round_key(a.campaign_id, 1, "cohort.json"))["cohort"]
    for client in cohort:
        _, raw = decode_independently(
            dense.get_bytes(pipeline.update_key(a.campaign_id, 1, client))
        )
        head, sent = decode_independently(
            lossy.get_bytes(pipeline.update_key(b.campaign_id, 1, client))
        )
        state = lossy.get_arrays(f"campaigns/{b.campaign_id}/clients/{client}/state_r0001.npz")
        residual = state["residual"].astype(np.float64)

        assert head["codec"] == codec
        assert np.abs(residual).max() > 0  # the codec lost something
        np.testing.assert_allclose(sent + residual, raw, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- FedBuff staleness


def _fedbuff_campaign(
    data_dir: Path,
    tmp_path: Path,
    *,
    concurrency: int,
    max_staleness: int,
    exponent: float,
    rounds: int,
) -> tuple[LocalStore, Any]:
    """A FedBuff campaign (buffer 2) of quantity-skewed clients on mixed links, so updates
    arrive with different staleness; its store and result."""
    cfg = tiny_config(
        partition={"scheme": "quantity", "sigma": 1.5, "seed": 3},
        asynchronous={
            "enabled": True,
            "buffer_size": 2,
            "concurrency": concurrency,
            "max_staleness": max_staleness,
            "staleness_exponent": exponent,
        },
        simulation={"enabled": True, "cellular_slow": 0.5, "wifi": 0.5},
        campaign={"rounds": rounds},
    )
    store = LocalStore(tmp_path)
    return store, run_campaign(cfg, data_dir=data_dir, store=store, progress=False)


def test_fedbuff_applies_staleness_weights_to_the_stored_updates(
    unequal_data: Path, tmp_path: Path
) -> None:
    exponent = 0.5
    store, result = _fedbuff_campaign(
        unequal_data, tmp_path, concurrency=4, max_staleness=5, exponent=exponent, rounds=5
    )
    cid = result.campaign_id

    stale_seen = 0
    for rnd in range(1, result.rounds + 1):
        updates = accepted_updates(store, cid, rnd)
        stored = store.get_arrays(pipeline.round_key(cid, rnd, "aggregate.npz"))["update"]
        total = np.zeros_like(stored, dtype=np.float64)
        weights = 0.0
        for item, vector in updates:
            staleness = (rnd - 1) - (int(item["source_round"]) - 1)
            assert staleness == item["staleness"]
            n = float(item["num_examples"])
            total += n * (1.0 + staleness) ** -exponent * vector
            weights += n
            stale_seen += staleness > 0
        np.testing.assert_allclose(stored, total / weights, rtol=1e-5, atol=1e-7)

    assert stale_seen >= 2  # the round trip exercised stale updates


# --------------------------------------------------------------------------- FLTrust root update


def test_fltrust_aggregate_uses_the_servers_root_training_with_the_campaign_settings(
    tiny_data: Path, tmp_path: Path
) -> None:
    """FLTrust (Cao et al., NDSS 2021): the server trains the round's model on its root rows
    as a client would (the campaign's client settings, a seed derived from the campaign's
    seed and the round); each stored update is rescaled to that root update's norm and
    weighted by ReLU(cos(g_i, g_0)). Settings that differ from every training default make a
    root update trained with other settings, another model or another seed visible."""
    from fl_core.client import TrainSettings, local_train
    from fl_core.rounds import layout as L
    from fl_core.rounds import state
    from fl_core.seeding import derive_seed

    client = {"local_epochs": 2, "batch_size": 16, "lr": 0.08, "momentum": 0.6}
    assert TrainSettings() != TrainSettings(**client)
    cfg = tiny_config(
        server={"strategy": "fltrust", "root_dataset_size": 40},
        client=client,
        campaign={"rounds": 2, "clients_per_round": 4},
    )
    store = LocalStore(tmp_path)
    result = run_campaign(cfg, data_dir=tiny_data, store=store, progress=False)
    cid = result.campaign_id
    rec = state.load_campaign(store, cid)
    x, y = state.test_table(rec)
    rows = pipeline.root_rows(len(y), cfg)

    for rnd in (1, 2):
        _, model = decode_independently(store.get_bytes(L.model_key(cid, rnd - 1)))
        root = local_train(
            state.spec(rec),
            model.astype(np.float32),
            x[rows],
            y[rows],
            settings=TrainSettings(**client),
            seed=derive_seed(cfg.campaign.seed, rnd, "root"),
        ).delta.astype(np.float64)
        updates = [v for _, v in accepted_updates(store, cid, rnd)]
        norms = np.array([np.linalg.norm(v) for v in updates])
        cos = np.array([v @ root for v in updates]) / (norms * np.linalg.norm(root))
        trust = np.maximum(cos, 0.0)
        expected = (
            sum(
                t * np.linalg.norm(root) / n * v
                for t, n, v in zip(trust, norms, updates, strict=True)
            )
            / trust.sum()
        )
        stored = store.get_arrays(pipeline.round_key(cid, rnd, "aggregate.npz"))["update"]

        assert trust.sum() > 0
        np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-6)


def test_fedbuff_drops_updates_staler_than_the_limit_and_records_what_it_applied(
    unequal_data: Path, tmp_path: Path
) -> None:
    """With ``max_staleness`` 1 an update two or more versions stale weighs nothing (not even
    in the denominator); the round record lists every update in arrival order with its
    staleness and weight, and counts the dropped ones. The exponent (1, not the default 0.5)
    is the campaign's."""
    exponent, limit = 1.0, 1
    store, result = _fedbuff_campaign(
        unequal_data, tmp_path, concurrency=5, max_staleness=limit, exponent=exponent, rounds=6
    )
    cid = result.campaign_id

    dropped_seen = kept_stale_seen = 0
    for rnd in range(1, result.rounds + 1):
        updates = accepted_updates(store, cid, rnd)
        stored = store.get_arrays(pipeline.round_key(cid, rnd, "aggregate.npz"))["update"]
        record = store.get_json(pipeline.round_key(cid, rnd, "aggregate.json"))
        total = np.zeros(stored.shape, dtype=np.float64)
        weights, applied, dropped = 0.0, [], 0
        for item, vector in updates:
            staleness = rnd - int(item["source_round"])
            n = float(item["num_examples"])
            factor = 0.0 if staleness > limit else (1.0 + staleness) ** -exponent
            applied.append(
                {
                    "client": item["client"],
                    "source_round": int(item["source_round"]),
                    "staleness": staleness,
                    "weight": n,
                    "staleness_weight": pytest.approx(factor),
                }
            )
            if factor:
                total += n * factor * vector
                weights += n
                kept_stale_seen += staleness > 0
            else:
                dropped += 1
        dropped_seen += dropped

        assert stored.dtype == np.float32
        np.testing.assert_allclose(stored, total / weights, rtol=1e-5, atol=1e-7)
        assert record["round"] == rnd and record["strategy"] == "fedbuff"
        assert record["applied"] == applied
        assert record["num_too_stale"] == dropped
        assert record["num_aggregated"] == len(updates) - dropped
        assert record["total_examples"] == sum(int(i["num_examples"]) for i, _ in updates)
        assert record["max_staleness_seen"] == max(int(i["staleness"]) for i, _ in updates)
        assert record["update_norm"] == pytest.approx(float(np.linalg.norm(stored)), rel=1e-5)

    assert dropped_seen >= 1 and kept_stale_seen >= 1  # both cases happened


def test_fltrust_root_set_is_drawn_without_replacement_from_the_campaign_seed() -> None:
    whole = pipeline.root_rows(50, tiny_config(server={"root_dataset_size": 500}))
    part = pipeline.root_rows(400, tiny_config(server={"root_dataset_size": 300}))
    other_seed = pipeline.root_rows(
        400, tiny_config(server={"root_dataset_size": 300}, campaign={"seed": 8})
    )

    assert whole.tolist() == list(range(50))  # capped at the table, each row once
    assert len(set(part.tolist())) == 300 and part.tolist() == sorted(part.tolist())
    assert part.tolist() != other_seed.tolist()


def test_a_fedbuff_round_whose_every_update_is_too_stale_leaves_the_model_unchanged(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Found by mutation testing: with every buffered update staler than ``max_staleness``
    the aggregate step crashed ("no update is buffered") and the campaign stopped."""
    from fl_core.rounds import layout as L

    cfg = tiny_config(
        asynchronous={"enabled": True, "buffer_size": 1, "concurrency": 5, "max_staleness": 0},
        simulation={"enabled": True, "cellular_slow": 0.5, "wifi": 0.5},
        campaign={"rounds": 6},
    )
    store = LocalStore(tmp_path)
    result = run_campaign(cfg, data_dir=tiny_data, store=store, progress=False)
    cid = result.campaign_id

    empty = []
    for rnd in range(1, result.rounds + 1):
        record = store.get_json(pipeline.round_key(cid, rnd, "aggregate.json"))
        if record["num_aggregated"] == 0:
            stored = store.get_arrays(pipeline.round_key(cid, rnd, "aggregate.npz"))["update"]
            assert record["num_too_stale"] == len(record["applied"]) >= 1
            assert not stored.any() and record["update_norm"] == 0.0
            _, before = decode_independently(store.get_bytes(L.model_key(cid, rnd - 1)))
            _, after = decode_independently(store.get_bytes(L.model_key(cid, rnd)))
            np.testing.assert_array_equal(after, before)  # server momentum 0: no step
            empty.append(rnd)
    assert result.rounds == 6 and empty  # the campaign ran on through such a round
