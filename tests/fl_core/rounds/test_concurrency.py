"""Two real processes running the same step of the same round at once never interleave
into a mixed result: step records are written once (the store's conditional write), and a
client whose training draws unrepeatable DP noise is trained by one run only."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

from fl_core import pipeline
from fl_core.rounds import layout as L
from fl_core.rounds import records as R
from fl_core.store import LocalStore
from tests.conftest import tiny_config

SPAWN = mp.get_context("spawn")


def _steps(root: str, cid: str, names: list[str], barrier: Any, out: Any) -> None:
    store = LocalStore(root)
    barrier.wait(timeout=120)
    results = []
    for name in names:
        if name == "train_clients":
            cohort = pipeline.dispatch(store, cid, 1)["tasks"]
            results.append(pipeline.train_clients(store, cid, 1, sorted(cohort)))
        else:
            results.append(getattr(pipeline, name)(store, cid, 1))
    out.put(results)


def _race(root: Path, cid: str, names: list[str]) -> list[list[dict[str, Any]]]:
    barrier, out = SPAWN.Barrier(2), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_steps, args=(str(root), cid, names, barrier, out)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def test_two_processes_running_the_server_steps_agree_on_one_result(
    tiny_data: Path, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "race")
    cid = pipeline.start_campaign(store, tiny_config(), data_dir=tiny_data, campaign_id="race")
    for name in ("select_clients", "dispatch"):
        getattr(pipeline, name)(store, cid, 1)
    for batch in pipeline.client_batches(store, cid, 1, batch_size=8):
        pipeline.train_clients(store, cid, 1, batch)
    pipeline.collect(store, cid, 1)
    pipeline.validate_updates(store, cid, 1)

    first, second = _race(tmp_path / "race", cid, ["aggregate", "privatize", "server_update"])

    assert first == second  # the same records, whichever process wrote them
    stored = R.read(store, R.ServerUpdateInfo, cid, 1, step="test")
    assert first[2]["model_sha256"] == stored.model_sha256
    # ... and they equal an undisturbed, single-process run.
    alone = LocalStore(tmp_path / "alone")
    pipeline.start_campaign(alone, tiny_config(), data_dir=tiny_data, campaign_id="race")
    from fl_core.engine import run_round

    run_round(alone, cid, 1)
    assert R.read(alone, R.ServerUpdateInfo, cid, 1, step="test").model_sha256 == (
        stored.model_sha256
    )


def test_two_processes_never_both_train_a_client_under_local_dp(
    tiny_data: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(
        privacy={"level": "custom", "mode": "local", "epsilon": 50.0, "delta": 1e-5},
        campaign={"clients_per_round": 6},
    )
    store = LocalStore(tmp_path / "dp")
    cid = pipeline.start_campaign(store, cfg, data_dir=tiny_data, campaign_id="dp-race")
    cohort = pipeline.select_clients(store, cid, 1)["cohort"]

    first, second = _race(tmp_path / "dp", cid, ["train_clients"])

    trained = first[0]["trained"] + second[0]["trained"]
    assert trained == len(cohort)  # each client once, by one process or the other
    # The other process skipped it: already uploaded, or claimed while it trained.
    passed = sum(r[0]["claimed_elsewhere"] + r[0]["skipped"] for r in (first, second))
    assert passed == len(cohort)
    owners = {store.get_json(L.claim_key(cid, 1, c))["pid"] for c in cohort}
    assert 1 <= len(owners) <= 2
