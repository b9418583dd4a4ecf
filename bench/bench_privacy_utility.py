"""Privacy-utility trade-off of central DP-FedAvg: test accuracy versus epsilon.

Pre-registered: the arms, seeds, noise draws, settings and goal below are declared before
anything runs (written to the result file first) and all are reported. A reporting seed
(``bench._common.REPORTING_SEEDS``) draws a fresh data set *and* the campaign (cohorts,
shuffles, initial model); each DP arm then runs :data:`NOISE_DRAWS` times per seed, each
with its own secret noise seed (``secrets.randbits`` in the campaign record: DP noise must
not be predictable from the config), so a DP row is over seeds x noise draws.

Test bed (fixed in :class:`BenchSettings`)
------------------------------------------
* Data: FedProx **Synthetic-IID** (Li et al., MLSys 2020; one linear labelling rule for all
  devices, per-device feature shift ``B_k ~ N(0, 1)``), 500 natural devices, each device's
  rows randomly capped at 100, 20 % of each device's rows held out as the test set; it goes
  through ``stages.prepare`` / ``stages.partition`` (``dataset: file``, ``natural``).
* Model: multinomial logistic regression. Clients: 5 local epochs of SGD, lr 0.3, batch 16.
  Server: FedAvgM, lr 1.0, momentum 0.9; ``server.norm_outlier_factor`` off in every arm
  (a rejection relative to the cohort's median norm is not covered by the sensitivity).
* Campaign: 20 rounds, expected cohort 100 of 500 (``q = 0.2``; DP: Poisson sampling).
* Privacy: central DP, RDP accountant, delta 1e-5, epsilon 1, 2, 4 and 8 (8 is the goal's;
  noise calibrated for the 20 rounds), adaptive clipping (Andrew et al. 2021: initial norm
  1.0, quantile 0.5).
* Sizes for the CPU budget (:data:`SIZE_NOTE`): earlier versions ran 50 rounds and epsilon
  1, 2, 4, 8 once per seed; a session at load 20-30 cut that to 20 rounds at epsilon 8
  only. This version keeps 20 rounds (50 rounds x 27 campaigns do not fit the budget) and
  declares the trade-off curve's epsilons 1, 2, 4, 8 again; each epsilon costs 2
  campaigns per seed.

How the test bed was chosen (not on the reporting seeds)
--------------------------------------------------------
Earlier sessions chose it on data and campaign seed 42, which is therefore a tuning seed and
never reported: non-IID FedProx Synthetic labels each device with its own rule (a global
model can only memorise devices, which user-level DP rules out); uncapped device sizes make
DP-FedAvg's unweighted clipped mean differ from the example-weighted no-DP mean, which cost
more than the noise; fixed clipping kept the noise at its round-1 scale. The reporting seeds
are fresh data draws on which nothing was chosen.

Goal (declared): at epsilon 8, delta 1e-5, the mean loss of final test accuracy against no
DP (paired by seed) is at most 3 points. Figures: ``.fl/bench/results/privacy_utility.json``
and ``docs/benchmarks.md`` (``python bench/_common.py docs``); none are quoted here.

CPU budget: 3 seeds x (1 no-DP + 2 noise draws x 4 epsilons) = 27 campaigns of about 70 s
each (idle machine, timed on one 3-round campaign), sized for about 16 minutes on the 2
shared cores (longer when others load the machine; the result
file records the wall time) (2 worker processes, ``nice -n 10``). ``--quick`` (100 devices,
5 rounds, epsilon 8, 2 seeds; ``privacy_utility_quick.json``) is a smoke run::

    nice -n 10 python bench/bench_privacy_utility.py [--quick] [--workers 2] [--no-mlflow]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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

NAME = "privacy_utility"
GOAL_EPSILON = 8.0
GOAL_MAX_LOSS_POINTS = 3.0
NOISE_DRAWS = 2
DATA_FILE = "synthetic.parquet"
TUNING_SEED = 42
"""The seed the test bed was chosen on (data and campaign); never reported."""
SIZE_NOTE = (
    "sizes: 20 rounds, epsilon 1, 2, 4, 8; the previous reported run declared epsilon 8 only "
    "because the machine was at load 20-30; the other epsilons (the trade-off curve of "
    "earlier versions) are declared again before this run, from timing, not from any result; "
    "rounds stay 20 (earlier versions' 50 do not fit the CPU budget)"
)


@dataclass(frozen=True)
class BenchSettings:
    """Everything a campaign depends on besides its seed and epsilon."""

    num_clients: int = 500
    max_rows: int = 100
    beta: float = 1.0
    rounds: int = 20
    clients_per_round: int = 100
    epsilons: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    delta: float = 1e-5
    clipping_norm: float = 1.0
    adaptive_clipping: bool = True
    target_quantile: float = 0.5
    accountant: str = "rdp"
    local_epochs: int = 5
    client_lr: float = 0.3
    batch_size: int = 16
    server_lr: float = 1.0
    server_momentum: float = 0.9


QUICK = BenchSettings(num_clients=100, rounds=5, clients_per_round=20, epsilons=(8.0,))


# --------------------------------------------------------------------------------- data


def prepare_data(settings: BenchSettings, seed: int, root: Path) -> Path:
    """Generate seed ``seed``'s federated table and prepare/partition it under ``root``;
    returns the data folder (reused when the settings and seed are unchanged)."""
    import pandas as pd

    from fl_core import stages
    from fl_core.config import from_dict
    from fl_core.data.datasets import load_synthetic

    paths = stages.Paths(root)
    stamp = paths.data / "bench_stamp.json"
    want = {"num_clients": settings.num_clients, "max_rows": settings.max_rows,
            "beta": settings.beta, "seed": seed}  # fmt: skip
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return paths.data
    if seed == TUNING_SEED:
        raise ValueError(f"seed {seed} is the tuning seed; it is never reported")
    ds = load_synthetic(
        alpha=0.0, beta=settings.beta, num_clients=settings.num_clients, seed=seed, iid=True
    )
    assert ds.client_ids is not None  # the generator names its devices
    rng = np.random.default_rng(seed + 1)
    keep = [
        rng.permutation(np.flatnonzero(ds.client_ids == k))[: settings.max_rows]
        for k in range(settings.num_clients)
    ]
    rows = np.sort(np.concatenate(keep))
    frame = pd.DataFrame(ds.x[rows], columns=[f"x{j:02d}" for j in range(ds.x.shape[1])])
    frame["label"] = ds.y[rows]
    frame["client"] = ds.client_ids[rows]
    paths.data.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(paths.data / DATA_FILE, index=False)
    cfg = from_dict({"data": _data_section(paths.data, seed), "partition": {"scheme": "natural"}})
    stages.prepare(cfg, paths)
    stages.partition(cfg, paths)
    stamp.write_text(json.dumps(want))
    return paths.data


def _data_section(data_dir: Path, seed: int) -> dict[str, Any]:
    return {
        "dataset": "file",
        "path": str((data_dir / DATA_FILE).resolve()),
        "client_column": "client",
        "test_fraction": 0.2,
        "seed": seed,
    }


# --------------------------------------------------------------------------------- configs


def arm_config(settings: BenchSettings, data_dir: Path, seed: int, epsilon: float | None) -> Any:
    """One campaign's config: no DP (``epsilon=None``) or central DP at ``epsilon``."""
    from fl_core.config import from_dict

    raw: dict[str, Any] = {
        "data": _data_section(data_dir, seed),
        "partition": {"scheme": "natural"},
        "model": {"name": "logreg"},
        "client": {
            "local_epochs": settings.local_epochs,
            "batch_size": settings.batch_size,
            "lr": settings.client_lr,
            "momentum": 0.0,
        },
        "server": {
            "optimizer": "sgd",
            "lr": settings.server_lr,
            "momentum": settings.server_momentum,
            "norm_outlier_factor": None,
        },
        "campaign": {
            "name": f"bench-privacy-{arm_key(epsilon)}",
            "rounds": settings.rounds,
            "clients_per_round": settings.clients_per_round,
            "seed": seed,
        },
    }
    if epsilon is not None:
        raw["privacy"] = {
            "level": "custom",
            "mode": "central",
            "epsilon": float(epsilon),
            "delta": settings.delta,
            "clipping_norm": settings.clipping_norm,
            "adaptive_clipping": settings.adaptive_clipping,
            "target_quantile": settings.target_quantile,
            "accountant": settings.accountant,
        }
    return from_dict(raw)


def arm_key(epsilon: float | None) -> str:
    return "nodp" if epsilon is None else f"eps{epsilon:g}"


def configurations(settings: BenchSettings) -> dict[str, Any]:
    """The declared arms: key -> what differs (epsilon) and how many noise draws."""
    out: dict[str, Any] = {"nodp": {"epsilon": None, "noise_draws": 1}}
    for eps in settings.epsilons:
        out[arm_key(eps)] = {"epsilon": eps, "delta": settings.delta, "noise_draws": NOISE_DRAWS}
    return out


# --------------------------------------------------------------------------------- runs


def run_arm(
    settings: dict[str, Any], data_dir: str, seed: int, epsilon: float | None, draw: int
) -> tuple[str, int, int, dict[str, Any]]:
    """One campaign in a throw-away store (in a worker process)."""
    logging.basicConfig(level=logging.ERROR, force=True)
    from fl_core.engine import run_campaign
    from fl_core.pipeline import load_campaign
    from fl_core.store import LocalStore

    s = BenchSettings(**{**settings, "epsilons": tuple(settings["epsilons"])})
    cfg = arm_config(s, Path(data_dir), seed, epsilon)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=BENCH_HOME, prefix="store-") as tmp:
        store = LocalStore(tmp)
        out = run_campaign(cfg, data_dir=data_dir, store=store, progress=False, deploy=False)
        privacy = load_campaign(store, out.campaign_id).get("privacy") or {}
    res: dict[str, Any] = {
        "final_accuracy": float(out.final_accuracy),
        "best_accuracy": float(out.best_accuracy),
        "rounds": int(out.rounds),
        "seconds": time.perf_counter() - started,
    }
    if epsilon is not None:
        res["epsilon_spent"] = float(out.history[-1]["epsilon"])
        res["noise_multiplier"] = float(privacy["noise_multiplier"])
    return arm_key(epsilon), seed, draw, res


def summarize(runs: dict[str, dict[int, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One row per arm over seeds x noise draws; loss paired with the same seed's no DP."""
    nodp = {s: draws[0]["final_accuracy"] for s, draws in runs["nodp"].items()}
    rows = []
    for key, by_seed in runs.items():
        cells = [(s, r) for s, draws in sorted(by_seed.items()) for r in draws]
        rows.append(
            {
                "arm": "no DP" if key == "nodp" else f"ε = {key[3:]}",
                "runs (seeds x draws)": f"{len(by_seed)} x {len(cells) // len(by_seed)}",
                "final accuracy": stat(r["final_accuracy"] for _, r in cells),
                "loss vs no DP (points)": stat(
                    100 * (nodp[s] - r["final_accuracy"]) for s, r in cells
                ),
                "ε spent": stat(r["epsilon_spent"] for _, r in cells) if key != "nodp" else "-",
                "noise multiplier": stat(r["noise_multiplier"] for _, r in cells)
                if key != "nodp"
                else "-",
            }
        )
    return rows


def goal(rows: list[dict[str, Any]]) -> dict[str, Any]:
    row = next((r for r in rows if r["arm"] == f"ε = {GOAL_EPSILON:g}"), None)
    text = f"ε {GOAL_EPSILON:g}, δ 1e-5 loses <= {GOAL_MAX_LOSS_POINTS:g} points vs no DP (mean)"
    if row is None:
        return {"goal": text, "holds": False, "evidence": f"ε {GOAL_EPSILON:g} not run"}
    loss = row["loss vs no DP (points)"]
    return {
        "goal": text,
        "holds": bool(loss.mean <= GOAL_MAX_LOSS_POINTS),
        "evidence": f"loss {loss:.2f} points over {row['runs (seeds x draws)']} runs",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 devices, 5 rounds, ε 8")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--epsilons",
        type=float,
        nargs="+",
        default=None,
        help="declare fewer epsilons than the default 1 2 4 8 (a smaller CPU budget; recorded "
        "in the declaration and the command); the goal's epsilon 8 must be among them",
    )
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else BenchSettings()
    if args.epsilons:
        if GOAL_EPSILON not in args.epsilons:
            parser.error(f"--epsilons: the goal's epsilon {GOAL_EPSILON:g} must be declared")
        settings = dataclasses.replace(settings, epsilons=tuple(sorted(set(args.epsilons))))
    seeds = REPORTING_SEEDS[:2] if args.quick else REPORTING_SEEDS
    configs = configurations(settings)
    decl: dict[str, Any] = {
        "title": "Privacy-utility: central DP-FedAvg accuracy vs ε",
        "question": "How many points of test accuracy does central DP cost at each ε?",
        "settings": dataclasses.asdict(settings),
        "tuning_seed_not_reported": TUNING_SEED,
        "goals_declared": [f"ε {GOAL_EPSILON:g}: loss <= {GOAL_MAX_LOSS_POINTS:g} points"],
        "notes": [
            "a seed draws a fresh Synthetic-IID data set and the campaign; each DP arm runs "
            f"{NOISE_DRAWS} times per seed with fresh secret noise",
            "loss = same seed's no-DP final accuracy - the run's, in points",
            f"test bed chosen earlier on seed {TUNING_SEED} (not reported); no search here",
            SIZE_NOTE,
            *(
                [
                    "this run declared epsilon "
                    + ", ".join(f"{e:g}" for e in settings.epsilons)
                    + " only (--epsilons, on the command line before the run, for the CPU "
                    "time left; not from any result): the other epsilons were not run"
                ]
                if args.epsilons
                else []
            ),
        ],
    }
    preregister(NAME, configurations=configs, seeds=seeds, quick=args.quick, **decl)
    root = BENCH_HOME / (f"{NAME}_quick" if args.quick else NAME)
    data_dirs = {s: prepare_data(settings, s, root / f"seed{s}") for s in seeds}
    plain = {**dataclasses.asdict(settings), "epsilons": list(settings.epsilons)}
    jobs = [
        (plain, str(data_dirs[s]), s, cfg["epsilon"], d)
        for s in seeds
        for cfg in configs.values()
        for d in range(cfg["noise_draws"])
    ]
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {k: {} for k in configs}
    started = time.perf_counter()
    for done, (key, seed, draw, res) in enumerate(
        run_parallel(run_arm, jobs, workers=args.workers), 1
    ):
        runs[key].setdefault(seed, []).append(res)
        print(
            f"[{done:2d}/{len(jobs)} {time.perf_counter() - started:5.0f}s] {key:<6} seed {seed} "
            f"draw {draw}: final {res['final_accuracy']:.4f} ({res['seconds']:.0f}s)",
            flush=True,
        )
    check_runs(configs, seeds, runs)
    rows = summarize(runs)
    verdict = goal(rows)
    for row in rows:
        print(" | ".join(str(v) if isinstance(v, str) else f"{v:.4g}" for v in row.values()))
    print(f"goal {verdict['goal']}: {'holds' if verdict['holds'] else 'does not hold'} "
          f"({verdict['evidence']})")  # fmt: skip
    command = (
        "nice -n 10 python bench/bench_privacy_utility.py"
        + (" --quick" if args.quick else "")
        + (" --epsilons " + " ".join(f"{e:g}" for e in settings.epsilons) if args.epsilons else "")
    )
    path = write_results(
        NAME,
        {
            **decl,
            "command": command,
            "seeds": list(seeds),
            "configurations": configs,
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
            params={"quick": args.quick, "seeds": list(seeds), **plain},
            runs=[
                (
                    f"{k}-s{s}-d{d}",
                    {"arm": k, "seed": s, "draw": d},
                    {m: float(x) for m, x in r.items()},
                )
                for k, v in runs.items()
                for s, draws in v.items()
                for d, r in enumerate(draws)
            ],  # fmt: skip
            files=[path],
        )
        print(f"MLflow run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
