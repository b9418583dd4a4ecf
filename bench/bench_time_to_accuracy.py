"""Time to accuracy on the simulated clock: synchronous FedAvg against FedBuff, random
against adaptive (Oort) selection, under heterogeneous device and link speeds.

The campaign is ``params.yaml`` (MNIST 5k, Dirichlet(0.5) over 20 clients, MLP, 3 local
epochs, FedAvgM with server momentum 0.7) with the benchmark's settings pinned on top (see
:func:`base_overrides`):

* ``simulation.enabled``: each client gets a device/link profile drawn from the seed with
  shares cellular_slow 0.3, cellular_fast 0.4, wifi 0.3 and jitter 0.3
  (``fl_core.selection.PROFILES``: the slow profile is 5x slower per example than Wi-Fi and
  has a 20x slower uplink, 1 against 20 Mbit/s); always available, no dropouts, no
  deadline. Simulated time of a client = download + local training + upload (the MLP's
  159k float32 parameters, ~0.64 MB each way).
* target: ``--target`` test accuracy (default 0.90; the same MLP reaches ~0.93 after 20
  synchronous rounds). Every run has ``campaign.target_accuracy`` set, so it stops at the
  first round (server step) whose test accuracy is >= the target, and a round cap.
* runs (``RUNS``):

  - ``sync``: synchronous FedAvg, 10 random clients per round; a round closes when its
    slowest client delivers;
  - ``sync+oort``: the same with Oort selection (utility from loss, speed, availability);
  - ``fedbuff``: FedBuff (``asynchronous.enabled``), buffer K = 10 (each server step
    averages as many updates as a synchronous round), concurrency 15 (clients training at
    once; 5 of the 20 stay idle, so selection still matters), staleness weight
    1 / sqrt(1 + s), updates staler than 10 versions dropped; random selection of the idle
    clients; a round is one server step on the K earliest arrivals;
  - ``fedbuff+oort``: the same with Oort selection.

  Every run uses the same server optimizer (``server.momentum`` 0.7, lr 1, as
  ``params.yaml``). K and the concurrency were chosen from this sweep (FedBuff, random
  selection, 5 seeds, median / worst speed-up against ``sync``): K=5, C=10: 2.74x / 0.68x
  (noisy 5-update steps, one seed needed 90 steps); K=5, C=20: never reached 0.90 in 200
  steps (the slow clients' updates always arrive more than 10 versions stale and are
  dropped, and the model drifts to chance accuracy); K=8, C=12: 2.86x / 2.21x; K=10, C=15:
  3.71x / 2.46x; K=10, C=20: 5.14x / 2.61x (but then every idle client is always
  selected, so Oort changes nothing). With server momentum 0 for every run, sync needs
  108 s instead of 67 s (median) and FedBuff K=5, C=10 gets 4.96x / 3.74x.

For each run: simulated seconds to the target (``sim_time_s`` of the first round whose
``test_accuracy`` >= target), rounds to the target, final accuracy (at the stop), and the
speed-up against ``sync`` of the same seed. Several seeds (``--seeds``; a seed also draws
the device profiles and the cohorts) are run and the speed-ups summarized by their median.
Goal checked: FedBuff reaches the target in at most 1/2.5 of synchronous FedAvg's simulated
time (speed-up >= 2.5).

Outputs under ``.fl/bench/time_to_accuracy/``: ``time_to_accuracy.csv``,
``time_to_accuracy.json`` (settings, per-round accuracy and simulated time of every run),
``accuracy_vs_time.png``. Logged to MLflow (``fl_core.tracking.default_tracking_uri(.fl)``,
experiment ``bench-time-to-accuracy``): one parent run with the summary and the files, one
child run per run with ``test_accuracy`` and ``sim_time_s`` per round.

Usage (from the repository root, in the project's venv)::

    python bench/bench_time_to_accuracy.py --quick   # sync vs fedbuff, one seed, < 1 min
    python bench/bench_time_to_accuracy.py           # 4 runs x 5 seeds, ~5 min
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import time
import uuid
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import code_version  # noqa: E402  (shared bench scaffolding; scripts run as files)

OUT = ROOT / ".fl" / "bench" / "time_to_accuracy"
EXPERIMENT = "bench-time-to-accuracy"
GOAL_SPEEDUP = 2.5

SYNC_CLIENTS = 10
BUFFER_SIZE = 10
CONCURRENCY = 15
SERVER_MOMENTUM = 0.7  # params.yaml's FedAvgM, the same for every run
STALENESS_EXPONENT = 0.5
MAX_STALENESS = 10
SYNC_ROUND_CAP = 60
FEDBUFF_ROUND_CAP = 200

# name -> overrides on top of base_overrides
RUNS: dict[str, dict[str, Any]] = {
    "sync": {"selection.strategy": "random"},
    "sync+oort": {"selection.strategy": "oort"},
    "fedbuff": {"selection.strategy": "random", "asynchronous.enabled": True},
    "fedbuff+oort": {"selection.strategy": "oort", "asynchronous.enabled": True},
}
QUICK_RUNS = ("sync", "fedbuff")


@dataclass
class RunResult:
    run: str
    seed: int
    overrides: dict[str, Any]
    reached: bool = False
    time_to_target_s: float | None = None
    rounds_to_target: int | None = None
    rounds: int = 0
    final_accuracy: float | None = None
    best_accuracy: float | None = None
    sim_time_s: float | None = None
    stop_reason: str = ""
    accuracy: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


def base_overrides(seed: int, target: float) -> dict[str, Any]:
    """The benchmark's fixed settings, pinned over ``params.yaml``."""
    return {
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
        "selection.overselect": False,
        "simulation.enabled": True,
        "simulation.cellular_slow": 0.3,
        "simulation.cellular_fast": 0.4,
        "simulation.wifi": 0.3,
        "simulation.jitter": 0.3,
        "simulation.base_availability": 1.0,
        "simulation.diurnal_amplitude": 0.0,
        "simulation.dropout_rate": 0.0,
        "simulation.deadline_s": None,
        "asynchronous.enabled": False,
        "asynchronous.buffer_size": BUFFER_SIZE,
        "asynchronous.concurrency": CONCURRENCY,
        "asynchronous.staleness_exponent": STALENESS_EXPONENT,
        "asynchronous.max_staleness": MAX_STALENESS,
        "campaign.clients_per_round": SYNC_CLIENTS,
        "campaign.fraction": None,
        "campaign.target_accuracy": target,
        "campaign.plateau_patience": None,
        "campaign.seed": seed,
        "server.strategy": "fedavg",
        "server.optimizer": "sgd",
        "server.lr": 1.0,
        "server.momentum": SERVER_MOMENTUM,
    }


def run_overrides(name: str, seed: int, target: float, extra: dict[str, Any]) -> dict[str, Any]:
    """A run's overrides; ``extra`` (from the command line) applies to every run."""
    out = {**base_overrides(seed, target), **RUNS[name], **extra}
    out["campaign.rounds"] = FEDBUFF_ROUND_CAP if out["asynchronous.enabled"] else SYNC_ROUND_CAP
    return out


# --------------------------------------------------------------------------- workers


def prepare_data(root: Path) -> Path:
    """Prepare and partition the benchmark's data once under ``root``; returns data_dir."""
    from fl_core import stages
    from fl_core.config import load_params, with_overrides

    cfg = with_overrides(load_params(ROOT / "params.yaml"), base_overrides(42, 0.9))
    paths = stages.Paths(root)
    stages.prepare(cfg, paths)
    stages.partition(cfg, paths)
    return paths.data


def run_one(name: str, seed: int, target: float, overrides: dict[str, Any], data_dir: str,
            store_dir: str, keep_store: bool) -> RunResult:
    """One campaign (runs in a worker process)."""
    logging.basicConfig(level=logging.ERROR, force=True)
    from fl_core.config import load_params, with_overrides
    from fl_core.engine import run_campaign
    from fl_core.store import LocalStore

    res = RunResult(run=name, seed=seed, overrides=overrides)
    start = time.perf_counter()
    store_path = Path(store_dir)
    try:
        cfg = with_overrides(load_params(ROOT / "params.yaml"), overrides)
        out = run_campaign(cfg, data_dir=data_dir, store=LocalStore(store_path),
                           progress=False, deploy=False)
        res.accuracy = [float(h["test_accuracy"]) for h in out.history]
        res.times = [float(h["sim_time_s"]) for h in out.history]
        res.rounds = out.rounds
        res.final_accuracy = float(out.final_accuracy)
        res.best_accuracy = float(out.best_accuracy)
        res.sim_time_s = res.times[-1] if res.times else None
        res.stop_reason = out.stop_reason
        hit = next((i for i, a in enumerate(res.accuracy) if a >= target), None)
        if hit is not None:
            res.reached = True
            res.rounds_to_target = hit + 1
            res.time_to_target_s = res.times[hit]
    except Exception as exc:  # a failing run is reported, the others go on
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        if not keep_store:
            shutil.rmtree(store_path, ignore_errors=True)
    res.seconds = time.perf_counter() - start
    return res


def run_all(jobs: list[tuple[str, int]], target: float, extra: dict[str, Any], *,
            data_dir: Path, workers: int, keep_stores: bool) -> list[RunResult]:
    results: list[RunResult] = []
    start = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures: list[Future[RunResult]] = []
        for name, seed in jobs:
            store = OUT / "stores" / f"{name.replace('+', '_')}-s{seed}-{uuid.uuid4().hex[:6]}"
            futures.append(pool.submit(run_one, name, seed, target,
                                       run_overrides(name, seed, target, extra), str(data_dir),
                                       str(store), keep_stores))
        for done, fut in enumerate(as_completed(futures), start=1):
            r = fut.result()
            results.append(r)
            what = f"ERROR {r.error}" if r.error else (
                f"target at {r.time_to_target_s:.0f} sim-s, round {r.rounds_to_target}"
                if r.reached else f"target NOT reached in {r.rounds} rounds")
            print(f"[{done:2d}/{len(jobs)} {time.perf_counter() - start:5.0f}s] "
                  f"{r.run:<13} seed {r.seed}: {what}  ({r.seconds:.0f}s)",
                  file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        (OUT / "stores").rmdir()  # only when empty (not with --keep-stores)
    order = {(n, s): i for i, (n, s) in enumerate(jobs)}
    return sorted(results, key=lambda r: order[(r.run, r.seed)])


# --------------------------------------------------------------------------- reporting


def speedups(results: list[RunResult]) -> dict[tuple[str, int], float | None]:
    """Per (run, seed): sync's time to target over this run's (None if either missed)."""
    sync = {r.seed: r.time_to_target_s for r in results if r.run == "sync"}
    out: dict[tuple[str, int], float | None] = {}
    for r in results:
        base, own = sync.get(r.seed), r.time_to_target_s
        out[(r.run, r.seed)] = base / own if base is not None and own is not None and own > 0 \
            else None
    return out


def num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_text(results: list[RunResult], ups: dict[tuple[str, int], float | None]) -> str:
    head = (f"{'run':<13} {'seed':>4} {'sim s to target':>15} {'rounds to target':>16} "
            f"{'final acc':>9} {'rounds run':>10} {'sim s run':>9} {'speed-up':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        if r.error:
            lines.append(f"{r.run:<13} {r.seed:>4} ERROR {r.error}")
            continue
        up = ups.get((r.run, r.seed))
        lines.append(
            f"{r.run:<13} {r.seed:>4} {num(r.time_to_target_s, '.1f'):>15} "
            f"{num(r.rounds_to_target, 'd'):>16} {num(r.final_accuracy, '.4f'):>9} "
            f"{r.rounds:>10} {num(r.sim_time_s, '.1f'):>9} "
            f"{(num(up, '.2f') + 'x') if up is not None else '-':>8}")
    return "\n".join(lines)


def summary_text(results: list[RunResult], ups: dict[tuple[str, int], float | None],
                 runs: list[str]) -> tuple[list[str], dict[str, Any]]:
    lines = []
    summary: dict[str, Any] = {}
    for name in runs:
        rs = [r for r in results if r.run == name]
        times = [r.time_to_target_s for r in rs if r.time_to_target_s is not None]
        vals = [u for u in (ups.get((name, r.seed)) for r in rs) if u is not None]
        med = statistics.median(vals) if vals else None
        summary[name] = {"median_time_to_target_s": statistics.median(times) if times else None,
                         "reached": f"{len(times)}/{len(rs)}", "speedups": vals,
                         "median_speedup": med}
        lines.append(f"{name:<13} reached {len(times)}/{len(rs)}; median sim s to target "
                     f"{num(summary[name]['median_time_to_target_s'], '.1f')}; speed-up vs "
                     f"sync: median {num(med, '.2f')}x "
                     f"(per seed {', '.join(f'{u:.2f}x' for u in vals) or '-'})")
    fb = summary.get("fedbuff", {}).get("speedups") or []
    met_all = bool(fb) and all(u >= GOAL_SPEEDUP for u in fb) and len(fb) == len(
        [r for r in results if r.run == "fedbuff"])
    med = summary.get("fedbuff", {}).get("median_speedup")
    summary["goal_met_every_seed"] = met_all
    summary["goal_met_median"] = med is not None and med >= GOAL_SPEEDUP
    if "fedbuff" in summary and "sync" in summary:
        lines.append(f"goal: FedBuff reaches the target in <= 1/{GOAL_SPEEDUP} of sync FedAvg's "
                     f"simulated time (speed-up >= {GOAL_SPEEDUP}x): median "
                     f"{'MET' if summary['goal_met_median'] else 'NOT MET'}, every seed "
                     f"{'MET' if met_all else 'NOT MET'}")
    return lines, summary


def plot(results: list[RunResult], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"sync": "tab:blue", "sync+oort": "tab:cyan", "fedbuff": "tab:red",
              "fedbuff+oort": "tab:orange"}
    seeds = sorted({r.seed for r in results})
    styles: list[Any] = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]
    fig, ax = plt.subplots(figsize=(9, 5))
    for r in results:
        if not r.accuracy:
            continue
        ax.plot(r.times, r.accuracy, color=colors.get(r.run, "k"), lw=1.3,
                ls=styles[seeds.index(r.seed) % len(styles)], marker=".", ms=3,
                label=f"{r.run} (seed {r.seed})")
        if r.time_to_target_s is not None:
            ax.plot([r.time_to_target_s], [r.accuracy[(r.rounds_to_target or 1) - 1]],
                    marker="o", color=colors.get(r.run, "k"), ms=6)
    ax.axhline(target, color="k", ls="--", lw=0.8, label=f"target {target:.2f}")
    ax.set(xlabel="simulated time (s)", ylabel="test accuracy",
           title="MNIST 5k, 20 clients (30% slow / 40% fast cellular / 30% Wi-Fi)")
    ax.set_ylim(max(0.0, min((min(r.accuracy) for r in results if r.accuracy),
                             default=0.0) - 0.02), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: list[RunResult], ups: dict[tuple[str, int], float | None],
                  meta: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "time_to_accuracy.csv"
    json_path = out / "time_to_accuracy.json"
    png_path = out / "accuracy_vs_time.png"
    fields = ["run", "seed", "reached", "time_to_target_s", "rounds_to_target",
              "final_accuracy", "best_accuracy", "rounds", "sim_time_s", "speedup_vs_sync",
              "stop_reason", "error"]
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in results:
            row = {k: v for k, v in asdict(r).items() if k in fields}
            row["speedup_vs_sync"] = ups.get((r.run, r.seed))
            writer.writerow(row)
    payload = {**meta, "results": [{**asdict(r), "speedup_vs_sync": ups.get((r.run, r.seed))}
                                   for r in results]}
    json_path.write_text(json.dumps(payload, indent=2))
    plot(results, meta["target_accuracy"], png_path)
    return [csv_path, json_path, png_path]


def log_mlflow(results: list[RunResult], ups: dict[tuple[str, int], float | None],
               meta: dict[str, Any], summary: dict[str, Any], files: list[Path]) -> str:
    """One parent run (summary metrics, files), one child run per campaign."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from fl_core import tracking as tr

    uri = tr.default_tracking_uri(ROOT / ".fl")
    exp_id = tr.ensure_experiment(uri, EXPERIMENT, artifact_root=ROOT / ".fl" / "mlartifacts")
    client = MlflowClient(tracking_uri=uri)
    parent = client.create_run(exp_id, run_name=f"tta-{time.strftime('%Y%m%dT%H%M%S')}",
                               tags={"bench": "time_to_accuracy"})
    pid = parent.info.run_id
    params = {k: v for k, v in meta.items() if not isinstance(v, dict | list)}
    client.log_batch(pid, params=[Param(k, str(v)[:500]) for k, v in sorted(params.items())])
    ts = int(time.time() * 1000)
    metrics = []
    for name, s in summary.items():
        if not isinstance(s, dict):
            continue
        key = name.replace("+", "_")
        if s["median_time_to_target_s"] is not None:
            metrics.append(Metric(f"{key}.median_time_to_target_s",
                                  float(s["median_time_to_target_s"]), ts, 0))
        if s["median_speedup"] is not None:
            metrics.append(Metric(f"{key}.median_speedup", float(s["median_speedup"]), ts, 0))
    if metrics:
        client.log_batch(pid, metrics=metrics)
    client.set_tag(pid, "goal_met_median", str(summary.get("goal_met_median")))
    for path in files:
        client.log_artifact(pid, str(path))
    for r in results:
        child = client.create_run(exp_id, run_name=f"{r.run}/seed{r.seed}",
                                  tags={"mlflow.parentRunId": pid, "run": r.run})
        cid = child.info.run_id
        client.log_batch(cid, params=[Param(k, str(v)) for k, v in sorted(r.overrides.items())],
                         tags=[RunTag("error", r.error or ""), RunTag("stop_reason",
                                                                       r.stop_reason[:500])])
        series = [Metric("test_accuracy", a, ts, i + 1) for i, a in enumerate(r.accuracy)]
        series += [Metric("sim_time_s", t, ts, i + 1) for i, t in enumerate(r.times)]
        extra = {"time_to_target_s": r.time_to_target_s, "rounds_to_target": r.rounds_to_target,
                 "final_accuracy": r.final_accuracy,
                 "speedup_vs_sync": ups.get((r.run, r.seed)), "seconds": r.seconds}
        series += [Metric(k, float(v), ts, 0) for k, v in extra.items() if v is not None]
        for i in range(0, len(series), 500):
            client.log_batch(cid, metrics=series[i:i + 500])
        client.set_terminated(cid, "FAILED" if r.error else "FINISHED")
    client.set_terminated(pid)
    return pid


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"runs {', '.join(QUICK_RUNS)}, first seed only")
    parser.add_argument("--target", type=float, default=0.90, help="target test accuracy")
    parser.add_argument("--seeds", default="42,43,44,45,46", help="comma-separated campaign seeds")
    parser.add_argument("--runs", default=None, help=f"subset of {', '.join(RUNS)}")
    parser.add_argument("--buffer-size", type=int, default=BUFFER_SIZE, help="FedBuff K")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY,
                        help="FedBuff: clients training at once")
    parser.add_argument("--server-momentum", type=float, default=SERVER_MOMENTUM,
                        help="server.momentum of every run")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--keep-stores", action="store_true")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    runs = list(QUICK_RUNS) if args.quick else list(RUNS)
    if args.quick:
        seeds = seeds[:1]
    if args.runs:
        runs = [r.strip() for r in args.runs.split(",") if r.strip()]
        bad = [r for r in runs if r not in RUNS]
        if bad:
            raise SystemExit(f"unknown run {bad[0]!r}; allowed: {', '.join(RUNS)}")
    if "sync" not in runs:
        runs.insert(0, "sync")  # the reference of every speed-up
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # the workers share the cores

    start = time.perf_counter()
    data_dir = prepare_data(OUT)
    jobs = [(name, seed) for seed in seeds for name in runs]
    print(f"{len(jobs)} campaigns (target {args.target}, seeds {seeds}), {args.workers} "
          f"workers", file=sys.stderr, flush=True)
    extra = {"asynchronous.buffer_size": args.buffer_size,
             "asynchronous.concurrency": args.concurrency,
             "server.momentum": args.server_momentum}
    results = run_all(jobs, args.target, extra, data_dir=data_dir, workers=args.workers,
                      keep_stores=args.keep_stores)
    wall = time.perf_counter() - start
    ups = speedups(results)

    meta: dict[str, Any] = {
        "target_accuracy": args.target, "seeds": seeds, "runs": runs,
        "profile_mix": "cellular_slow 0.3, cellular_fast 0.4, wifi 0.3, jitter 0.3",
        "sync_clients_per_round": SYNC_CLIENTS, "buffer_size": args.buffer_size,
        "concurrency": args.concurrency, "server_momentum": args.server_momentum,
        "staleness_exponent": STALENESS_EXPONENT,
        "max_staleness": MAX_STALENESS, "sync_round_cap": SYNC_ROUND_CAP,
        "fedbuff_round_cap": FEDBUFF_ROUND_CAP, "quick": args.quick, "wall_seconds": wall,
        **code_version(),
    }
    print()
    print(f"time to {args.target:.2f} test accuracy on the simulated clock "
          f"(MNIST 5k Dir(0.5), 20 clients; {meta['profile_mix']})")
    print(table_text(results, ups))
    print()
    lines, summary = summary_text(results, ups, runs)
    print("\n".join(lines))
    meta["summary"] = summary
    files = write_outputs(results, ups, meta, args.out)
    print(f"\nwall time {wall / 60:.1f} min; wrote {', '.join(str(p) for p in files)}")
    if not args.no_mlflow:
        run_id = log_mlflow(results, ups, meta, summary, files)
        print(f"MLflow: experiment {EXPERIMENT!r}, run {run_id}")


if __name__ == "__main__":
    main()
