"""Aggregation speed: our rules against Flower's helpers, and FedAvg against memory bandwidth.

For every cohort size ``n`` and dimension ``d`` it builds one float32 ``(n, d)`` input (``n``
client updates, a tenth of them boosted sign-flipped attackers) with example counts, and:

* times each of our rules end to end, as the pipeline uses them (``create_aggregator``, one
  ``add`` per update, which copies it into the rule's buffer, then ``result``), and also the
  rule's pure function on the already-stacked matrix ("kernel");
* times Flower's equivalent helper from ``flwr.server.strategy.aggregate`` (``aggregate``,
  ``aggregate_median``, ``aggregate_trimmed_avg``, ``aggregate_krum`` with ``to_keep=0`` and
  ``to_keep=n-f``, ``aggregate_bulyan``) on the same input, each update being one layer;
* checks that both sides' outputs agree, and prints the ratios;
* times a memory-bandwidth floor (one ``np.add.reduce`` pass over the stacked input) and
  reports FedAvg's time against it.

How Flower runs: Flower's pins conflict with Airflow's, so it is never installed in the
project's venv. ``bench/flower_env.sh`` creates ``$FL_HOME/bench-flower-venv`` (default
``.fl/bench-flower-venv``) with only flwr and numpy; this script saves the inputs as ``.npy``
files (``allow_pickle=False``) in a temporary folder, re-runs itself in that venv with
``--flower-worker DIR`` (a mode that imports only numpy and flwr), and reads Flower's outputs
and timings back from the same folder. Both sides use the same numpy and OpenBLAS threads.

Flower's Krum and Bulyan compute pairwise distances with a Python double loop (Bulyan once
per pick), so they grow like ``n^2 d`` and ``n^3 d``; a case whose predicted time exceeds
``--flower-budget`` seconds is skipped and reported with its prediction.

Usage (from the repository root, in the project's venv)::

    python bench/bench_aggregation.py                       # n = 10, 50, 100 x d = 100k, 1M
    python bench/bench_aggregation.py --n 100 --d 1000000 --json reports/bench_agg.json
    python bench/bench_aggregation.py --skip-flower         # ours and the floor only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FLOWER_RULES = ("fedavg", "median", "trimmed_mean", "krum", "multi_krum", "bulyan")
OWN_ONLY_RULES = ("weighted_median", "norm_bounding", "centered_clipping", "fltrust")
BETA = 0.1
T = TypeVar("T")


def best_seconds(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Fastest wall time of ``repeats`` (>= 1) calls, and the last call's result."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def num_byzantine(n: int) -> int:
    """A tenth of the cohort (at least 1); Bulyan's ``n >= 4f + 3`` holds for n >= 7."""
    return max(1, n // 10)


# --------------------------------------------------------------------------- Flower side


def flower_worker(folder: Path) -> None:
    """Runs in the Flower venv: time Flower's helpers on the saved inputs."""
    from flwr.server.strategy import aggregate as fa

    cfg = json.loads((folder / "config.json").read_text())
    x = np.load(folder / "updates.npy", allow_pickle=False)
    weights = np.load(folder / "weights.npy", allow_pickle=False)
    n, d = x.shape
    f, repeats, budget = cfg["num_byzantine"], cfg["repeats"], cfg["budget_s"]

    def results() -> list[tuple[list[np.ndarray], int]]:
        return [([x[i]], int(weights[i])) for i in range(n)]

    # cost of one pairwise distance as Flower computes it, to predict Krum / Bulyan
    start = time.perf_counter()
    for _ in range(3):
        np.linalg.norm(x[0] - x[1]) ** 2
    pair = (time.perf_counter() - start) / 3
    theta = n - 2 * f
    predicted = {
        "krum": n * n * pair,
        "multi_krum": n * n * pair,
        "bulyan": sum(m * m for m in range(n - theta + 1, n + 1)) * pair,
    }
    calls: dict[str, Callable[[], Any]] = {
        "fedavg": lambda: fa.aggregate(results()),
        "median": lambda: fa.aggregate_median(results()),
        "trimmed_mean": lambda: fa.aggregate_trimmed_avg(results(), cfg["beta"]),
        "krum": lambda: fa.aggregate_krum(results(), f, 0),
        "multi_krum": lambda: fa.aggregate_krum(results(), f, n - f),
        "bulyan": lambda: fa.aggregate_bulyan(results(), f, fa.aggregate_krum, to_keep=0),
    }
    report: dict[str, Any] = {}
    for rule in cfg["rules"]:
        guess = predicted.get(rule, 0.0)
        if guess > budget:
            report[rule] = {"seconds": None, "skipped": f"predicted {guess:.0f} s > budget"}
            continue
        reps = 1 if guess > 5 else repeats
        seconds, out = best_seconds(calls[rule], reps)
        np.save(folder / f"flower_{rule}.npy", np.asarray(out[0]), allow_pickle=False)
        report[rule] = {"seconds": seconds, "repeats": reps}
        print(f"   flower {rule:<17} {seconds:9.3f} s", file=sys.stderr, flush=True)
    report["numpy"] = np.__version__
    (folder / "flower_times.json").write_text(json.dumps(report))


def run_flower(python: str, folder: Path) -> dict[str, Any]:
    subprocess.run(
        [python, str(Path(__file__).resolve()), "--flower-worker", str(folder)],
        check=True,
        cwd=str(folder),  # never imports this repository's packages
    )
    report: dict[str, Any] = json.loads((folder / "flower_times.json").read_text())
    return report


def flower_python(skip: bool) -> str | None:
    if skip:
        return None
    out = subprocess.run(
        ["bash", str(ROOT / "bench" / "flower_env.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


# --------------------------------------------------------------------------- our side


def make_inputs(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x *= np.float32(0.01)
    x += rng.standard_normal(d, dtype=np.float32) * np.float32(0.01)  # a shared direction
    f = num_byzantine(n)
    x[n - f :] *= np.float32(-5.0)  # sign-flipped, boosted attackers
    weights = rng.integers(50, 500, size=n).astype(np.int64)
    return x, weights


def time_ours(
    x: np.ndarray, weights: np.ndarray, rules: list[str], repeats: int
) -> dict[str, dict[str, Any]]:
    from fl_core.aggregation import create_aggregator
    from fl_core.aggregation import robust_math as rm
    from fl_core.aggregation.math import accumulate, weighted_average

    n, d = x.shape
    f = num_byzantine(n)
    rows = list(x)  # what the pipeline gets: one decoded vector per client
    w = [float(v) for v in weights]
    root = x[: n - f].mean(axis=0)
    kwargs: dict[str, dict[str, Any]] = {
        "fedavg": {},
        "median": {},
        "weighted_median": {},
        "trimmed_mean": {"beta": BETA},
        "krum": {"num_byzantine": f},
        "multi_krum": {"num_byzantine": f, "weighted": True},  # Flower weights the mean
        "bulyan": {"num_byzantine": f},
        "norm_bounding": {"max_norm": 1.0},
        "centered_clipping": {"tau": 1.0},
        "fltrust": {"root_update": root},
    }
    kernels: dict[str, Callable[[], np.ndarray]] = {
        "fedavg": lambda: weighted_average(x, weights),
        "median": lambda: rm.coordinate_median(x),
        "weighted_median": lambda: rm.weighted_coordinate_median(x, weights),
        "trimmed_mean": lambda: rm.trimmed_mean(x, beta=BETA),
        "krum": lambda: rm.krum(x, num_byzantine=f),
        "multi_krum": lambda: rm.multi_krum(x, num_byzantine=f, weights=weights),
        "bulyan": lambda: rm.bulyan(x, num_byzantine=f),
        "norm_bounding": lambda: rm.norm_bounding(x, weights, max_norm=1.0),
        "centered_clipping": lambda: rm.centered_clipping(x, center=np.zeros(d), tau=1.0),
        "fltrust": lambda: rm.fltrust(x, root)[0],
    }

    def end_to_end(rule: str) -> Callable[[], np.ndarray]:
        def call() -> np.ndarray:
            agg = create_aggregator(rule, dim=d, **kwargs[rule])
            for row, weight in zip(rows, w, strict=True):
                agg.add(row, weight=weight)
            return agg.result()

        return call

    def fedavg_stream() -> np.ndarray:
        acc = np.zeros(d, dtype=np.float64)
        for row, weight in zip(rows, w, strict=True):
            accumulate(acc, row, weight)
        return (acc / sum(w)).astype(np.float32)

    out: dict[str, dict[str, Any]] = {}
    for rule in rules:
        e2e, result = best_seconds(end_to_end(rule), repeats)
        kernel, _ = best_seconds(kernels[rule], repeats)
        out[rule] = {"seconds": e2e, "kernel_seconds": kernel, "output": result}
        print(f"   ours   {rule:<17} {e2e:9.3f} s (kernel {kernel:.3f} s)", file=sys.stderr)
    floor, _ = best_seconds(lambda: np.add.reduce(x, axis=0), max(repeats, 5))
    stream, _ = best_seconds(fedavg_stream, repeats)
    out["_floor"] = {"seconds": floor, "stream_seconds": stream}
    return out


def compare(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, bool]:
    """Max absolute difference, and agreement within float32 accumulation error."""
    diff = float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64))))
    scale = float(np.max(np.abs(theirs))) or 1.0
    return diff, diff <= 2e-6 * scale


# --------------------------------------------------------------------------- report


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--d", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-flower", action="store_true")
    parser.add_argument(
        "--flower-budget",
        type=float,
        default=1800.0,
        help="skip a Flower case predicted to take longer (seconds)",
    )
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    parser.add_argument("--flower-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flower_worker:
        flower_worker(args.flower_worker)
        return

    sys.path.insert(0, str(ROOT))
    python = flower_python(args.skip_flower)
    rules = [*FLOWER_RULES, *OWN_ONLY_RULES]
    table: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    for d in args.d:
        for n in args.n:
            print(
                f">> n={n} d={d} f={num_byzantine(n)} load={os.getloadavg()[0]:.1f}",
                file=sys.stderr,
                flush=True,
            )
            x, weights = make_inputs(n, d, args.seed)
            flower: dict[str, Any] = {}
            with tempfile.TemporaryDirectory(prefix="bench-agg-") as tmp:
                folder = Path(tmp)
                if python:
                    np.save(folder / "updates.npy", x, allow_pickle=False)
                    np.save(folder / "weights.npy", weights, allow_pickle=False)
                    cfg = {
                        "num_byzantine": num_byzantine(n),
                        "beta": BETA,
                        "repeats": args.repeats,
                        "budget_s": args.flower_budget,
                        "rules": list(FLOWER_RULES),
                    }
                    (folder / "config.json").write_text(json.dumps(cfg))
                    flower = run_flower(python, folder)
                    for rule in FLOWER_RULES:
                        path = folder / f"flower_{rule}.npy"
                        if path.exists():
                            flower[rule]["output"] = np.load(path, allow_pickle=False)
                print(f"   (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
                ours = time_ours(x, weights, rules, args.repeats)
            for rule in rules:
                theirs = flower.get(rule, {})
                row: dict[str, Any] = {
                    "n": n,
                    "d": d,
                    "rule": rule,
                    "ours_s": ours[rule]["seconds"],
                    "ours_kernel_s": ours[rule]["kernel_seconds"],
                    "flower_s": theirs.get("seconds"),
                    "flower_note": theirs.get("skipped"),
                }
                if "output" in theirs:
                    row["max_abs_diff"], row["agree"] = compare(
                        ours[rule]["output"], theirs["output"]
                    )
                    row["speedup"] = theirs["seconds"] / ours[rule]["seconds"]
                table.append(row)
            floors.append(
                {
                    "n": n,
                    "d": d,
                    "floor_s": ours["_floor"]["seconds"],
                    "fedavg_s": ours["fedavg"]["seconds"],
                    "weighted_average_s": ours["fedavg"]["kernel_seconds"],
                    "stream_accumulate_s": ours["_floor"]["stream_seconds"],
                }
            )
            del x

    print(
        f"\nnumpy {np.__version__} (Flower venv: {flower.get('numpy', '-')}), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; "
        f"times are the best of {args.repeats} runs, in seconds"
    )
    head = (
        f"{'n':>4} {'d':>8} {'rule':<18} {'ours':>8} {'kernel':>8} {'flower':>9} "
        f"{'speedup':>8} {'max|diff|':>10} agree"
    )
    print(head)
    print("-" * len(head))
    for r in table:
        speed = f"{r['speedup']:.1f}x" if "speedup" in r else "-"
        diff = f"{r['max_abs_diff']:.2e}" if "max_abs_diff" in r else "-"
        agree = ("yes" if r["agree"] else "NO") if "agree" in r else r["flower_note"] or "-"
        print(
            f"{r['n']:>4} {r['d']:>8} {r['rule']:<18} {fmt(r['ours_s']):>8} "
            f"{fmt(r['ours_kernel_s']):>8} {fmt(r['flower_s']):>9} {speed:>8} {diff:>10} {agree}"
        )
    print("\nFedAvg against the memory-bandwidth floor (one np.add.reduce pass over n x d):")
    head = (
        f"{'n':>4} {'d':>8} {'floor':>8} {'GB/s':>6} {'FedAvg':>8} {'ratio':>6} "
        f"{'w_avg':>8} {'ratio':>6} {'stream':>8} {'ratio':>6}"
    )
    print(head)
    print("-" * len(head))
    for fl in floors:
        gbs = fl["n"] * fl["d"] * 4 / fl["floor_s"] / 1e9
        print(
            f"{fl['n']:>4} {fl['d']:>8} {fl['floor_s']:>8.4f} {gbs:>6.1f} "
            f"{fl['fedavg_s']:>8.4f} {fl['fedavg_s'] / fl['floor_s']:>5.1f}x "
            f"{fl['weighted_average_s']:>8.4f} {fl['weighted_average_s'] / fl['floor_s']:>5.1f}x "
            f"{fl['stream_accumulate_s']:>8.4f} {fl['stream_accumulate_s'] / fl['floor_s']:>5.1f}x"
        )
    print(
        "FedAvg = the registered streaming class (fedavg.py) through add()/result(); "
        "w_avg = math.weighted_average on the stacked matrix; stream = math.accumulate per "
        "update (float64 running sum, blockwise)."
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rules": table, "fedavg_floor": floors}, indent=1))


if __name__ == "__main__":
    main()
