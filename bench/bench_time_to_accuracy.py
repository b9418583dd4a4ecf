"""Time to accuracy on the simulated clock: synchronous FedAvg against FedBuff, random
against adaptive (Oort) selection, under heterogeneous device and link speeds.

Pre-registered: the arms, the tuning grids, the tuning rule, the seeds and the goal below
are declared before anything runs (written to the result file first). Tuning uses
``bench._common.TUNING_SEEDS`` only; the reported rows use ``REPORTING_SEEDS`` only.

* Campaign: ``params.yaml`` (MNIST 5k, Dirichlet(0.5) over 20 clients, MLP, 3 local epochs,
  FedAvgM with server momentum 0.7) with :data:`FIXED` on top. Simulation: each client
  gets a device/link profile drawn from the seed (cellular_slow 0.3, cellular_fast 0.4,
  wifi 0.3, jitter 0.3); a selected client drops out of a round with probability 0.1.
  Every arm stops at the first server step whose test accuracy is >= :data:`TARGET`, or at
  its cap (:data:`SYNC_CAP` rounds, :data:`FEDBUFF_CAP` steps).
* Every arm has the product's straggler features: over-selection (``selection.overselect``:
  a synchronous round selects ceil(k / 0.9) clients and closes at the k-th arrival), and
  the synchronous grid includes a round deadline (``simulation.deadline_s``).
* Arms: ``sync`` (synchronous FedAvg, random selection), ``fedbuff`` (FedBuff, staleness
  weight 1/sqrt(1+s), updates staler than 10 versions dropped), and both with Oort
  selection (``sync+oort``, ``fedbuff+oort``, which take their base arm's tuned setting).
* Tuning, the same budget for both base arms: 4 settings each (:data:`SYNC_GRID`: clients
  per round x deadline; :data:`FEDBUFF_GRID`: buffer K x concurrency), each run on the 2
  tuning seeds; the setting with the lowest mean simulated time to target is kept (a miss
  counts as infinite; ties go to the first declared).

A row: simulated seconds and rounds to the target, final accuracy and the speed-up against
``sync`` on the same seed, mean ± sample std over the reporting seeds (over the seeds that
reached the target; the row says how many did). Goal declared: FedBuff's mean speed-up
against the tuned synchronous baseline is >= 2.5, with every seed reaching the target.
Figures: ``.fl/bench/results/time_to_accuracy.json`` and ``docs/benchmarks.md`` (generated
by ``python bench/_common.py docs``); none are quoted here.

CPU budget: 16 tuning + 12 reporting campaigns, sized for about 15 minutes on the 2 shared
cores (2 worker processes, ``nice -n 10``). ``--quick`` (target 0.8, small caps, 2 settings
per grid, 1 tuning and 2 reporting seeds; ``time_to_accuracy_quick.json``) is a smoke run::

    nice -n 10 python bench/bench_time_to_accuracy.py [--quick] [--workers 2] [--no-mlflow]
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402  (bench scripts run as files)
    BENCH_HOME,
    REPORTING_SEEDS,
    TUNING_SEEDS,
    check_runs,
    log_mlflow,
    prepare_data,
    preregister,
    run_parallel,
    stat,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]
NAME = "time_to_accuracy"
TARGET = 0.90
SYNC_CAP = 40
FEDBUFF_CAP = 120
GOAL_SPEEDUP = 2.5

FIXED: dict[str, Any] = {
    "data.dataset": "mnist5k",
    "partition.scheme": "dirichlet",
    "partition.num_clients": 20,
    "partition.alpha": 0.5,
    "model.name": "mlp",
    "privacy.level": "off",
    "privacy.client_dp_sgd": False,
    "communication.uplink_codec": "dense_fp32",
    "communication.downlink_codec": "dense_fp32",
    "communication.downlink_delta_codec": None,
    "communication.policy": "fixed",
    "attack.kind": "none",
    "attack.fraction": 0.0,
    "selection.overselect": True,
    "simulation.enabled": True,
    "simulation.cellular_slow": 0.3,
    "simulation.cellular_fast": 0.4,
    "simulation.wifi": 0.3,
    "simulation.jitter": 0.3,
    "simulation.base_availability": 1.0,
    "simulation.diurnal_amplitude": 0.0,
    "simulation.dropout_rate": 0.1,
    "simulation.deadline_s": None,
    "asynchronous.enabled": False,
    "asynchronous.staleness_exponent": 0.5,
    "asynchronous.max_staleness": 10,
    "campaign.fraction": None,
    "campaign.plateau_patience": None,
    "server.strategy": "fedavg",
    "server.optimizer": "sgd",
    "server.lr": 1.0,
    "server.momentum": 0.7,
}
"""Every campaign's settings over ``params.yaml``."""

ARMS: dict[str, dict[str, Any]] = {
    "sync": {"selection.strategy": "random"},
    "sync+oort": {"selection.strategy": "oort"},
    "fedbuff": {"selection.strategy": "random", "asynchronous.enabled": True},
    "fedbuff+oort": {"selection.strategy": "oort", "asynchronous.enabled": True},
}
"""The reported arms; ``+oort`` arms use their base arm's tuned setting."""

SYNC_GRID: tuple[dict[str, Any], ...] = tuple(
    {"campaign.clients_per_round": k, "simulation.deadline_s": d}
    for k in (10, 15)
    for d in (None, 6.0)
)
FEDBUFF_GRID: tuple[dict[str, Any], ...] = tuple(
    {"asynchronous.buffer_size": k, "asynchronous.concurrency": c}
    for k, c in ((5, 10), (8, 12), (10, 15), (10, 20))
)

QUICK: dict[str, Any] = {"target": 0.80, "sync_cap": 8, "fedbuff_cap": 20}


def overrides(
    arm: str, setting: dict[str, Any], *, seed: int, target: float, caps: tuple[int, int]
) -> dict[str, Any]:
    """One campaign's settings: fixed, the arm, its (tuned or candidate) setting."""
    out = {**FIXED, **ARMS[arm], **setting}
    out["campaign.rounds"] = caps[1] if out["asynchronous.enabled"] else caps[0]
    out["campaign.target_accuracy"] = target
    out["campaign.seed"] = seed
    return out


def run_one(key: str, seed: int, cfg_overrides: dict[str, Any], data_dir: str, target: float
            ) -> tuple[str, int, dict[str, Any]]:  # fmt: skip
    """One campaign in a throw-away store (in a worker process)."""
    logging.basicConfig(level=logging.ERROR, force=True)
    from fl_core.config import load_params, with_overrides
    from fl_core.engine import run_campaign
    from fl_core.store import LocalStore

    cfg = with_overrides(load_params(ROOT / "params.yaml"), cfg_overrides)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=BENCH_HOME, prefix="store-") as tmp:
        out = run_campaign(cfg, data_dir=data_dir, store=LocalStore(tmp), progress=False,
                           deploy=False)  # fmt: skip
    acc = [float(h["test_accuracy"]) for h in out.history]
    times = [float(h["sim_time_s"]) for h in out.history]
    hit = next((i for i, a in enumerate(acc) if a >= target), None)
    return (
        key,
        seed,
        {
            "reached": hit is not None,
            "time_to_target_s": None if hit is None else times[hit],
            "rounds_to_target": None if hit is None else hit + 1,
            "rounds": int(out.rounds),
            "final_accuracy": float(out.final_accuracy),
            "sim_time_s": times[-1] if times else None,
            "seconds": time.perf_counter() - started,
        },
    )


def execute(
    plan: dict[str, tuple[dict[str, Any], tuple[int, ...]]],
    *,
    data_dir: Path,
    target: float,
    workers: int,
) -> dict[str, dict[int, dict[str, Any]]]:
    """Run ``plan`` (key -> (overrides without seed, seeds)); results by key and seed."""
    jobs = [
        (key, s, {**cfg, "campaign.seed": s}, str(data_dir), target)
        for key, (cfg, seeds) in plan.items()
        for s in seeds
    ]
    runs: dict[str, dict[int, dict[str, Any]]] = {k: {} for k in plan}
    started = time.perf_counter()
    for done, (key, seed, res) in enumerate(run_parallel(run_one, jobs, workers=workers), 1):
        runs[key][seed] = res
        what = (
            f"target at {res['time_to_target_s']:.0f} sim-s, round {res['rounds_to_target']}"
            if res["reached"]
            else f"target not reached in {res['rounds']} rounds"
        )
        print(
            f"[{done:2d}/{len(jobs)} {time.perf_counter() - started:5.0f}s] {key:<40} seed "
            f"{seed}: {what} ({res['seconds']:.0f}s)",
            flush=True,
        )
    return runs


def tuning_score(by_seed: dict[int, dict[str, Any]]) -> float:
    """Mean simulated time to target over the tuning seeds; a miss counts as infinite."""
    times = [r["time_to_target_s"] for r in by_seed.values()]
    return math.inf if any(t is None for t in times) else statistics.fmean(times)


def pick(grid: tuple[dict[str, Any], ...], scores: list[float]) -> int:
    """Index of the lowest score; ties (and all-infinite) go to the first declared."""
    return min(range(len(grid)), key=lambda i: (scores[i], i))


def summarize(runs: dict[str, dict[int, dict[str, Any]]], settings: dict[str, str]
              ) -> list[dict[str, Any]]:  # fmt: skip
    """One row per arm, mean ± std over the seeds that reached the target; speed-ups
    paired by seed against ``sync``."""
    sync = runs["sync"]
    rows = []
    for arm, by_seed in runs.items():
        seeds = sorted(by_seed)
        hit = [s for s in seeds if by_seed[s]["reached"]]
        paired = [s for s in hit if sync[s]["reached"]]

        def over(values: list[float]) -> Any:
            return stat(values) if values else "-"

        rows.append(
            {
                "arm": arm,
                "setting": settings[arm],
                "reached": f"{len(hit)}/{len(seeds)}",
                "sim s to target": over([by_seed[s]["time_to_target_s"] for s in hit]),
                "rounds to target": over([by_seed[s]["rounds_to_target"] for s in hit]),
                "final accuracy": stat(by_seed[s]["final_accuracy"] for s in seeds),
                "speed-up vs sync": over(
                    [sync[s]["time_to_target_s"] / by_seed[s]["time_to_target_s"] for s in paired]
                ),
            }
        )
    return rows


def goal(rows: list[dict[str, Any]]) -> dict[str, Any]:
    row = next(r for r in rows if r["arm"] == "fedbuff")
    up = row["speed-up vs sync"]
    every = row["reached"].split("/")[0] == row["reached"].split("/")[1]
    sync_every = next(r for r in rows if r["arm"] == "sync")["reached"]
    holds = every and not isinstance(up, str) and up.mean >= GOAL_SPEEDUP
    return {
        "goal": f"FedBuff's mean speed-up vs the tuned synchronous baseline >= {GOAL_SPEEDUP:g}x, "
        "every seed reaching the target",
        "holds": bool(holds),
        "evidence": f"speed-up {up if isinstance(up, str) else format(up, '.2f')}x; FedBuff "
        f"reached {row['reached']}, sync {sync_every}",
    }


def setting_text(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in setting.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (see the docstring)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    target = QUICK["target"] if args.quick else TARGET
    caps = (QUICK["sync_cap"], QUICK["fedbuff_cap"]) if args.quick else (SYNC_CAP, FEDBUFF_CAP)
    sync_grid = SYNC_GRID[::3] if args.quick else SYNC_GRID
    fedbuff_grid = FEDBUFF_GRID[::3] if args.quick else FEDBUFF_GRID
    tuning_seeds = TUNING_SEEDS[:1] if args.quick else TUNING_SEEDS
    seeds = REPORTING_SEEDS[:2] if args.quick else REPORTING_SEEDS
    grids = {"sync": sync_grid, "fedbuff": fedbuff_grid}
    decl: dict[str, Any] = {
        "title": "Time to accuracy: synchronous FedAvg vs FedBuff on the simulated clock",
        "question": f"How much simulated time does each arm need to reach {target:.0%} test "
        "accuracy, each with its best setting found on the tuning seeds?",
        "target_accuracy": target,
        "caps": {"sync_rounds": caps[0], "fedbuff_steps": caps[1]},
        "fixed": FIXED,
        "tuning": {
            "seeds": list(tuning_seeds),
            "grids": grids,
            "rule": "lowest mean simulated time to target over the tuning seeds (miss = inf)",
        },
        "goals_declared": [f"FedBuff mean speed-up vs tuned sync >= {GOAL_SPEEDUP:g}x"],
    }
    configs = {arm: {**ARMS[arm], "setting": "tuned (base arm's)"} for arm in ARMS}
    preregister(NAME, configurations=configs, seeds=seeds, quick=args.quick, **decl)
    data_dir = prepare_data(
        _cfg(overrides("sync", {}, seed=0, target=target, caps=caps)),
        BENCH_HOME / (f"{NAME}_quick" if args.quick else NAME),
    )
    started = time.perf_counter()

    # 1. Tuning, tuning seeds only.
    plan = {
        f"tune {arm} {setting_text(s)}": (
            overrides(arm, s, seed=0, target=target, caps=caps),
            tuple(tuning_seeds),
        )
        for arm, grid in grids.items()
        for s in grid
    }
    tuning = execute(plan, data_dir=data_dir, target=target, workers=args.workers)
    tuned: dict[str, dict[str, Any]] = {}
    notes = []
    for arm, grid in grids.items():
        scores = [tuning_score(tuning[f"tune {arm} {setting_text(s)}"]) for s in grid]
        tuned[arm] = grid[pick(grid, scores)]
        notes.append(
            f"tuning {arm} (seeds {list(tuning_seeds)}, mean sim s to target): "
            + "; ".join(f"{setting_text(s)}: {sc:.0f}" for s, sc in zip(grid, scores, strict=True))
            + f" -> kept {setting_text(tuned[arm])}"
        )
        print(notes[-1], flush=True)

    # 2. Reporting seeds, the tuned settings.
    settings = {arm: tuned[arm.split("+")[0]] for arm in ARMS}
    plan = {
        arm: (overrides(arm, settings[arm], seed=0, target=target, caps=caps), tuple(seeds))
        for arm in ARMS
    }
    runs = execute(plan, data_dir=data_dir, target=target, workers=args.workers)
    check_runs(configs, seeds, runs)
    rows = summarize(runs, {a: setting_text(s) for a, s in settings.items()})
    verdict = goal(rows)
    for row in rows:
        print(" | ".join(str(v) if isinstance(v, str) else f"{v:.3g}" for v in row.values()))
    print(f"goal {verdict['goal']}: {'holds' if verdict['holds'] else 'does not hold'} "
          f"({verdict['evidence']})")  # fmt: skip
    command = "nice -n 10 python bench/bench_time_to_accuracy.py" + (
        " --quick" if args.quick else ""
    )
    path = write_results(
        NAME,
        {
            **decl,
            "command": command,
            "seeds": list(seeds),
            "configurations": configs,
            "tuned": settings,
            "tuning_runs": {k: {str(s): r for s, r in v.items()} for k, v in tuning.items()},
            "notes": [
                "every arm: over-selection on, 10% dropouts; sync's grid includes a deadline",
                "speed-up = sync's sim time to target / the arm's, same seed",
                *notes,
            ],
            "columns": list(rows[0]),
            "rows": rows,
            "runs": {k: {str(s): r for s, r in v.items()} for k, v in runs.items()},
            "goals": [verdict],
            "wall_seconds": time.perf_counter() - started,
        },
        quick=args.quick,
    )
    print(f"results: {path}")
    if not args.no_mlflow:
        run_id = log_mlflow(
            f"bench-{NAME}",
            params={"quick": args.quick, "seeds": list(seeds), "target": target},
            runs=[
                (
                    f"{k}-s{s}",
                    {"arm": k, "seed": s, **settings[k]},
                    {m: float(v) for m, v in r.items() if isinstance(v, int | float)},
                )
                for k, v in runs.items()
                for s, r in v.items()
            ],  # fmt: skip
            files=[path],
        )
        print(f"MLflow run {run_id}")
    return 0


def _cfg(cfg_overrides: dict[str, Any]) -> Any:
    from fl_core.config import load_params, with_overrides

    return with_overrides(load_params(ROOT / "params.yaml"), cfg_overrides)


if __name__ == "__main__":
    sys.exit(main())
