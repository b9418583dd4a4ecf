"""Accuracy under attack: final test accuracy of every aggregation rule under every attack.

Pre-registered: the rules, attacks, settings and goals below are declared before anything
runs (:func:`declaration` is written to the result file first) and every rule x attack cell
is reported, as the mean ± sample std over ``bench._common.REPORTING_SEEDS``; nothing is
picked per attack. There is no tuning: every hyperparameter below is fixed in advance.

* Campaign: ``params.yaml`` (MNIST 5k, Dirichlet(0.5) over 20 clients, MLP) with
  :data:`FIXED` pinned on top: :data:`LOCAL_EPOCHS` (3, ``params.yaml``'s) local epochs
  and :data:`ROUNDS` (20) rounds, the test bed this benchmark was first declared with
  (a session at load 20-30 cut it to 1 epoch x 5 rounds, far from convergence; see
  :data:`SIZE_NOTE`); ``campaign.clients_per_round`` 15 for every rule. A seed
  is the campaign seed: the malicious clients, the cohorts, the initial model and the
  attack randomness; the partition is the same for all.
* Server optimizer: ``server.momentum`` 0.7, lr 1 (``params.yaml``'s FedAvgM, the product's
  default), in every cell. Fixed before any run; not chosen from results.
* ``attack.fraction`` 0.2 (4 of 20 clients malicious); ``server.num_byzantine`` =
  ceil(0.2 x 15) = 3 (Bulyan's n >= 4f + 3 holds). Attacks (``fl_core.attacks``):
  ``sign_flip`` -4 u, ``scaling`` 10 u, ``gaussian`` u + N(0, 0.01^2), ``alie``,
  ``label_flip``; ``clean`` = no attack.
* Rules: ``fedavg``, ``median``, ``trimmed_mean`` (trim 0.2), ``krum``, ``multi_krum``,
  ``bulyan``, ``centered_clipping`` and ``norm_bounding`` (``server.clip_norm`` 3),
  ``fltrust`` (100 root examples); ``server.norm_outlier_factor`` off in every row except
  ``fedavg+validation`` (factor 10, the product's default validation).
* FLTrust's root set: 100 rows drawn (seeded) from the *training* table before it is
  partitioned, so no client holds them and they are not evaluation data. Every rule's
  clients hold the same rows (the other training rows). The engine takes the root set from
  the campaign's test file, so FLTrust cells run on a copy of the data folder whose test
  file is the root set; every cell's final model is then evaluated by this script on the
  real test set (the same function for every cell).

Goals (declared): (a) one robust rule (the same under every attack) ends within 2 points of
clean FedAvg under every attack, mean over seeds; (b) plain FedAvg ends at least 10 points
below clean FedAvg under ``scaling`` and ``alie`` (mean over seeds). The result file says
whether each holds; the figures are in ``.fl/bench/results/robustness.json`` and, through
``python bench/_common.py docs``, in ``docs/benchmarks.md`` (none are quoted here).

CPU budget: 60 cells x 3 seeds (180 campaigns of 20 rounds x 3 epochs; about 14 s each
when the machine is idle, timed on one cell) are sized for about 25 minutes
on the 2 shared cores (longer when others load the machine; the result file records the wall
time) (2 worker processes, one thread each, ``nice -n 10``). ``--quick`` (4 rules x 2
columns, 3 rounds, 2 seeds; ``robustness_quick.json``) is a smoke run, never a headline::

    nice -n 10 python bench/bench_robustness.py [--quick] [--workers 2] [--no-mlflow]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402  (bench scripts run as files)
    BENCH_HOME,
    REPORTING_SEEDS,
    check_runs,
    log_mlflow,
    preregister,
    run_parallel,
    stat,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]
NAME = "robustness"

ATTACKS: tuple[str, ...] = ("sign_flip", "scaling", "gaussian", "alie", "label_flip")
COLUMNS: tuple[str, ...] = ("clean", *ATTACKS)
RULES: tuple[str, ...] = (
    "fedavg", "fedavg+validation", "median", "trimmed_mean", "krum", "multi_krum", "bulyan",
    "centered_clipping", "norm_bounding", "fltrust",
)  # fmt: skip
NON_ROBUST = ("fedavg", "fedavg+validation")
ROUNDS = 20
LOCAL_EPOCHS = 3
SIZE_NOTE = (
    f"test bed: {ROUNDS} rounds x {LOCAL_EPOCHS} local epochs, as first declared; the previous "
    "reported run used 5 rounds x 1 epoch only because the machine was at load 20-30 (a "
    "short horizon, far from convergence); sized back up before this run, from timing one "
    "cell, not from any result"
)
CLIENTS_PER_ROUND = 15
SERVER_MOMENTUM = 0.7
FRACTION = 0.2
ROOT_SIZE = 100
ROOT_SEED = 7
GOAL_MARGIN_POINTS = 2.0
FAIL_DROP_POINTS = 10.0

QUICK_RULES = ("fedavg", "fedavg+validation", "median", "fltrust")
QUICK_COLUMNS = ("clean", "scaling")
QUICK_ROUNDS = 3
QUICK_SEEDS = REPORTING_SEEDS[:2]

FIXED: dict[str, Any] = {
    "data.dataset": "mnist5k",
    "partition.scheme": "dirichlet",
    "partition.num_clients": 20,
    "partition.alpha": 0.5,
    "model.name": "mlp",
    "client.local_epochs": LOCAL_EPOCHS,
    "privacy.level": "off",
    "privacy.client_dp_sgd": False,
    "communication.uplink_codec": "dense_fp32",
    "communication.downlink_codec": "dense_fp32",
    "communication.downlink_delta_codec": None,
    "communication.policy": "fixed",
    "selection.strategy": "random",
    "selection.overselect": False,
    "simulation.enabled": False,
    "asynchronous.enabled": False,
    "campaign.clients_per_round": CLIENTS_PER_ROUND,
    "campaign.fraction": None,
    "campaign.target_accuracy": None,
    "campaign.plateau_patience": None,
    "server.optimizer": "sgd",
    "server.lr": 1.0,
    "server.momentum": SERVER_MOMENTUM,
    "server.num_byzantine": math.ceil(FRACTION * CLIENTS_PER_ROUND - 1e-9),
    "server.trim_fraction": 0.2,
    "server.clip_norm": 3.0,
    "server.root_dataset_size": ROOT_SIZE,
}
"""Every cell's settings over ``params.yaml`` (rounds and seed are added per run)."""

ATTACK_SETTINGS: dict[str, dict[str, Any]] = {
    "clean": {"attack.kind": "none", "attack.fraction": 0.0, "attack.scale": None},
    "sign_flip": {"attack.kind": "sign_flip", "attack.fraction": FRACTION, "attack.scale": 4.0},
    "scaling": {"attack.kind": "scaling", "attack.fraction": FRACTION, "attack.scale": 10.0},
    "gaussian": {
        "attack.kind": "gaussian",
        "attack.fraction": FRACTION,
        "attack.scale": None,
        "attack.noise_std": 0.01,
    },
    "alie": {"attack.kind": "alie", "attack.fraction": FRACTION, "attack.scale": None},
    "label_flip": {"attack.kind": "label_flip", "attack.fraction": FRACTION, "attack.scale": None},
}


def cell_overrides(rule: str, column: str) -> dict[str, Any]:
    """One cell's settings: the fixed ones, the rule (and validation) and the attack."""
    return {
        **FIXED,
        "server.strategy": "fedavg" if rule == "fedavg+validation" else rule,
        "server.norm_outlier_factor": 10.0 if rule == "fedavg+validation" else None,
        **ATTACK_SETTINGS[column],
    }


def configurations(rules: tuple[str, ...], columns: tuple[str, ...]) -> dict[str, Any]:
    """The declared cells: ``"<rule>/<column>"`` -> overrides."""
    return {f"{r}/{c}": cell_overrides(r, c) for r in rules for c in columns}


# --------------------------------------------------------------------------- data


def prepare_data(root: Path) -> tuple[Path, Path]:
    """Prepare MNIST 5k, hold ``ROOT_SIZE`` training rows out as FLTrust's root set, and
    partition the rest. Returns (data dir of every cell, data dir of the FLTrust cells: the
    same clients, its test file the root set)."""
    import numpy as np

    from fl_core import stages
    from fl_core.config import load_params, with_overrides
    from fl_core.data.io import read_table, write_table

    cfg = with_overrides(load_params(ROOT / "params.yaml"), FIXED)
    paths = stages.Paths(root)
    root_dir = root / "fltrust_data"
    stamp = paths.data / "bench_stamp.json"
    want = json.dumps({**cfg.to_dict()["data"], **cfg.to_dict()["partition"],
                       "root": [ROOT_SIZE, ROOT_SEED]}, sort_keys=True)  # fmt: skip
    if stamp.exists() and stamp.read_text() == want:
        return paths.data, root_dir / "data"
    stages.prepare(cfg, paths)
    x, y = read_table(paths.prepared / "train.parquet")
    held = np.random.default_rng(ROOT_SEED).choice(len(y), size=ROOT_SIZE, replace=False)
    keep = np.setdiff1d(np.arange(len(y)), held)
    write_table(paths.prepared / "train.parquet", x[keep], y[keep])
    stages.partition(cfg, paths)
    shutil.rmtree(root_dir, ignore_errors=True)
    fl_paths = stages.Paths(root_dir)
    fl_paths.prepared.mkdir(parents=True)
    shutil.copy(paths.prepared / "meta.json", fl_paths.prepared / "meta.json")
    write_table(fl_paths.prepared / "test.parquet", x[np.sort(held)], y[np.sort(held)])
    fl_paths.clients.symlink_to(paths.clients.resolve(), target_is_directory=True)
    stamp.write_text(want)
    return paths.data, fl_paths.data


# --------------------------------------------------------------------------- runs


def run_cell(
    rule: str, column: str, seed: int, rounds: int, data_dirs: tuple[str, str]
) -> tuple[str, int, dict[str, Any]]:
    """One campaign in a throw-away store (in a worker process); the final model's accuracy
    on the real test set, evaluated here for every cell alike."""
    logging.basicConfig(level=logging.ERROR, force=True)
    from fl_core.client import evaluate as eval_model
    from fl_core.config import load_params, with_overrides
    from fl_core.data.io import read_table
    from fl_core.engine import run_campaign
    from fl_core.rounds import state
    from fl_core.store import LocalStore

    data_dir, fltrust_dir = data_dirs
    overrides = {**cell_overrides(rule, column), "campaign.rounds": rounds, "campaign.seed": seed}
    cfg = with_overrides(load_params(ROOT / "params.yaml"), overrides)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=BENCH_HOME, prefix="store-") as tmp:
        store = LocalStore(tmp)
        out = run_campaign(
            cfg,
            data_dir=fltrust_dir if rule == "fltrust" else data_dir,
            store=store,
            progress=False,
            deploy=False,
        )
        rec = state.load_campaign(store, out.campaign_id)
        x, y = read_table(Path(data_dir) / "prepared" / "test.parquet")
        vector = state.load_model(store, out.campaign_id, out.rounds)
        acc = float(eval_model(state.spec(rec), vector, x, y)["accuracy"])
    return (
        f"{rule}/{column}",
        seed,
        {
            "final_accuracy": acc,
            "engine_final_accuracy": float(out.final_accuracy),
            "rounds": int(out.rounds),
            "num_rejected": int(sum(int(h["num_rejected"]) for h in out.history)),
            "seconds": time.perf_counter() - started,
        },
    )


# --------------------------------------------------------------------------- summary


def summarize(
    runs: dict[str, dict[int, dict[str, Any]]], rules: tuple[str, ...], columns: tuple[str, ...]
) -> list[dict[str, Any]]:
    """One row per rule: final test accuracy (%) per attack, mean ± std over the seeds."""
    return [
        {
            "rule": rule,
            **{
                c: stat(100 * r["final_accuracy"] for r in runs[f"{rule}/{c}"].values())
                for c in columns
            },
        }
        for rule in rules
    ]


def goals(
    runs: dict[str, dict[int, dict[str, Any]]], rules: tuple[str, ...], columns: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The two declared goals, on the means over seeds (losses paired by seed)."""

    def drop(rule: str, column: str) -> Any:
        clean = runs["fedavg/clean"]
        cell = runs[f"{rule}/{column}"]
        return stat(100 * (clean[s]["final_accuracy"] - cell[s]["final_accuracy"]) for s in clean)

    attacked = [c for c in columns if c != "clean"]
    robust = [r for r in rules if r not in NON_ROBUST]
    worst = {r: max(attacked, key=lambda c: drop(r, c).mean) for r in robust}
    uniform = [r for r in robust if drop(r, worst[r]).mean <= GOAL_MARGIN_POINTS]
    closest = min(robust, key=lambda r: drop(r, worst[r]).mean)
    out = [
        {
            "goal": f"one robust rule within {GOAL_MARGIN_POINTS:g} points of clean FedAvg under "
            "every attack (mean over seeds)",
            "holds": bool(uniform),
            "evidence": (
                ", ".join(uniform)
                if uniform
                else f"closest {closest}: worst attack {worst[closest]}, "
                f"{drop(closest, worst[closest]):.1f} points below clean FedAvg"
            ),
        }
    ]
    needed = [c for c in ("scaling", "alie") if c in attacked]
    if needed:
        drops = {c: drop("fedavg", c) for c in needed}
        out.append(
            {
                "goal": f"plain FedAvg >= {FAIL_DROP_POINTS:g} points below clean under "
                "scaling and ALIE (mean over seeds)",
                "holds": all(d.mean >= FAIL_DROP_POINTS for d in drops.values())
                and len(needed) == 2,
                "evidence": ", ".join(f"{c}: {d:.1f} points" for c, d in drops.items()),
            }
        )
    return out


def declaration(rules: tuple[str, ...], columns: tuple[str, ...], rounds: int) -> dict[str, Any]:
    return {
        "title": "Robustness: final test accuracy (%) per rule and attack",
        "question": "How much accuracy does each aggregation rule keep under each attack "
        f"(20% malicious clients, {rounds} rounds, server momentum {SERVER_MOMENTUM})?",
        "rounds": rounds,
        "fixed": FIXED,
        "goals_declared": [
            f"one robust rule within {GOAL_MARGIN_POINTS:g} points of clean FedAvg under every "
            "attack",
            f"plain FedAvg >= {FAIL_DROP_POINTS:g} points below clean under scaling and ALIE",
        ],
        "notes": [
            f"server momentum {SERVER_MOMENTUM} (params.yaml's FedAvgM) in every cell, fixed "
            "before any run; no tuning",
            f"FLTrust root set: {ROOT_SIZE} training rows held out from every client (never "
            "test rows); every final model evaluated by the script on the test set",
            "cells: % test accuracy after the last round, mean ± std over the seeds",
            SIZE_NOTE,
        ],
        "rules": list(rules),
        "attack_columns": list(columns),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 rules x 2 columns, 3 rounds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    rules = QUICK_RULES if args.quick else RULES
    columns = QUICK_COLUMNS if args.quick else COLUMNS
    rounds = QUICK_ROUNDS if args.quick else ROUNDS
    seeds = QUICK_SEEDS if args.quick else REPORTING_SEEDS
    configs = configurations(rules, columns)
    decl = declaration(rules, columns, rounds)
    preregister(NAME, configurations=configs, seeds=seeds, quick=args.quick, **decl)

    BENCH_HOME.mkdir(parents=True, exist_ok=True)
    data_dirs = prepare_data(BENCH_HOME / (f"{NAME}_quick" if args.quick else NAME))
    jobs = [
        (r, c, s, rounds, (str(data_dirs[0]), str(data_dirs[1])))
        for s in seeds
        for r in rules
        for c in columns
    ]
    runs: dict[str, dict[int, dict[str, Any]]] = {k: {} for k in configs}
    started = time.perf_counter()
    for done, (key, seed, res) in enumerate(run_parallel(run_cell, jobs, workers=args.workers), 1):
        runs[key][seed] = res
        print(
            f"[{done:3d}/{len(jobs)} {time.perf_counter() - started:5.0f}s] {key:<30} seed "
            f"{seed}: {100 * res['final_accuracy']:.1f}% ({res['seconds']:.0f}s)",
            flush=True,
        )
    check_runs(configs, seeds, runs)
    rows = summarize(runs, rules, columns)
    verdicts = goals(runs, rules, columns)
    for row in rows:
        print(f"{row['rule']:<20}" + "".join(f"{row[c]:>16.1f}" for c in columns))
    for g in verdicts:
        print(f"goal {g['goal']}: {'holds' if g['holds'] else 'does not hold'} ({g['evidence']})")
    command = "nice -n 10 python bench/bench_robustness.py" + (" --quick" if args.quick else "")
    path = write_results(
        NAME,
        {
            **decl,
            "command": command,
            "seeds": list(seeds),
            "configurations": configs,
            "columns": ["rule", *columns],
            "rows": rows,
            "runs": {k: {str(s): r for s, r in v.items()} for k, v in runs.items()},
            "goals": verdicts,
            "wall_seconds": time.perf_counter() - started,
        },
        quick=args.quick,
    )
    print(f"results: {path}")
    if not args.no_mlflow:
        run_id = log_mlflow(
            f"bench-{NAME}",
            params={"quick": args.quick, "seeds": list(seeds), "rounds": rounds},
            runs=[
                (f"{k}-s{s}", {"cell": k, "seed": s, **configs[k]}, r)
                for k, v in runs.items()
                for s, r in v.items()
            ],
            files=[path],
        )
        print(f"MLflow run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
