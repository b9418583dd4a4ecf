"""Accuracy under attack: final test accuracy for each attack x aggregation rule.

The campaign is ``params.yaml`` (MNIST 5k, Dirichlet(0.5) over 20 clients, MLP) with the
benchmark's own settings pinned on top (see :func:`base_overrides`); every cell differs
only in ``server.strategy`` and the ``attack`` section, with the same seed, so every cell
sees the same cohorts, the same malicious clients and the same initial model:

* ``attack.fraction`` 0.2: 4 of the 20 clients are malicious (drawn once per campaign);
  ``campaign.clients_per_round`` (default 15) for *every* rule so rows are comparable, and
  ``server.num_byzantine`` = ceil(0.2 x clients_per_round) (3 with 15 clients: Bulyan's
  n >= 4f + 3 holds). Random cohorts of 15 out of 20 hold 1-4 attackers (3 on average).
* attacks (``fl_core.attacks``, an omniscient adversary replacing the attackers' updates):
  ``sign_flip`` -4 u; ``scaling`` 10 u (boosting, the library's default factor);
  ``gaussian`` u + N(0, 0.01^2) per coordinate (noise L2 norm ~4 over the MLP's 159k
  parameters, the order of the benign update norms, ~0.5-6); ``alie`` (mean - z std of the
  benign updates, z from n and f as in the paper); ``label_flip`` (c -> 9 - c on the
  attackers' data). ``clean`` = no attack.
* rules: ``fedavg``, ``median``, ``trimmed_mean`` (``server.trim_fraction`` 0.2, cutting
  as many per end as there are expected attackers), ``krum``, ``multi_krum``, ``bulyan``,
  ``centered_clipping`` and ``norm_bounding`` (``server.clip_norm`` 3, about the median
  benign update norm of the first rounds), ``fltrust`` (100 clean root examples).
* ``server.norm_outlier_factor`` null in every row, so the rules themselves are measured
  (validation would otherwise drop scaled updates before any rule sees them), plus one row
  ``fedavg+validation`` with the norm-outlier rejection on (factor 10, the default), to show
  what validation alone does.
* ``server.momentum`` 0 (plain server SGD with lr 1) in every cell by default: server
  momentum keeps pushing along whatever gets past a rule for several rounds. Measured at
  20 rounds (rules fedavg, median, krum, multi_krum x clean, sign_flip, alie): momentum 0.7
  raises clean FedAvg from 91.4% to 92.8% but lowers Multi-Krum under sign flipping from
  90.4% to 88.2%, so the best robust rule under sign flipping ends 3.9 points below clean
  FedAvg with 0.7 against 1.0 with 0. ``--momentum 0.7`` reruns the table with the
  project's default FedAvgM.
* FLTrust's root data set: the test set's rows are shuffled after ``prepare`` (see
  :func:`shuffle_test_rows`), otherwise the root set is 100 images of the digit 0.

The clean FedAvg reference is the ``fedavg`` row's ``clean`` cell (same rounds, same
momentum). Goal checked at the end: under every attack the best robust rule is within 2
points of clean FedAvg, and plain FedAvg visibly fails (>= 10 points below clean) under at
least ``scaling`` and ``alie``.

Cells run in ``--workers`` processes (default: 2, one per core; torch single-threaded per
campaign). Outputs under ``.fl/bench/robustness/``: ``robustness.csv`` (one row per rule),
``robustness.json`` (every cell's settings, per-round accuracy, timing), ``heatmap.png``;
the data is prepared once per invocation under ``.fl/bench/robustness/data``; campaign
stores are deleted after each cell unless ``--keep-stores``. Logged to MLflow
(``fl_core.tracking.default_tracking_uri(.fl)``, experiment ``bench-robustness``): one
parent run with the table's cells as metrics and the files as artifacts, and one child run
per cell with its per-round test accuracy.

Usage (from the repository root, in the project's venv)::

    python bench/bench_robustness.py --quick      # 5 rules x 3 columns, 10 rounds, ~2 min
    python bench/bench_robustness.py              # 10 rows x 6 columns, 20 rounds, ~12 min
    python bench/bench_robustness.py --momentum 0.7 --rules fedavg,krum --attacks alie
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
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

OUT = ROOT / ".fl" / "bench" / "robustness"
EXPERIMENT = "bench-robustness"

ATTACKS: tuple[str, ...] = ("sign_flip", "scaling", "gaussian", "alie", "label_flip")
COLUMNS: tuple[str, ...] = ("clean", *ATTACKS)
RULES: tuple[str, ...] = (
    "fedavg", "fedavg+validation", "median", "trimmed_mean", "krum", "multi_krum", "bulyan",
    "centered_clipping", "norm_bounding", "fltrust",
)
NON_ROBUST = ("fedavg", "fedavg+validation")
QUICK_RULES = ("fedavg", "fedavg+validation", "median", "multi_krum", "fltrust")
QUICK_COLUMNS = ("clean", "scaling", "alie")

FRACTION = 0.2
SIGN_FLIP_SCALE = 4.0
SCALING_BOOST = 10.0
GAUSSIAN_STD = 0.01
CLIP_NORM = 3.0
TRIM_FRACTION = 0.2
VALIDATION_FACTOR = 10.0
GOAL_MARGIN = 0.02  # best robust rule within 2 points of clean FedAvg
FAIL_DROP = 0.10  # plain FedAvg "visibly fails": at least 10 points below clean FedAvg


@dataclass(frozen=True)
class Settings:
    """What every cell shares."""

    rounds: int
    clients_per_round: int
    momentum: float
    seed: int

    @property
    def num_byzantine(self) -> int:
        return math.ceil(FRACTION * self.clients_per_round - 1e-9)


@dataclass
class CellResult:
    rule: str
    column: str
    overrides: dict[str, Any]
    final_accuracy: float | None = None
    best_accuracy: float | None = None
    accuracy: list[float] = field(default_factory=list)
    num_rejected: int = 0
    seconds: float = 0.0
    error: str | None = None


def base_overrides(s: Settings) -> dict[str, Any]:
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
        "selection.strategy": "random",
        "selection.overselect": False,
        "simulation.enabled": False,
        "asynchronous.enabled": False,
        "campaign.rounds": s.rounds,
        "campaign.clients_per_round": s.clients_per_round,
        "campaign.fraction": None,
        "campaign.target_accuracy": None,
        "campaign.plateau_patience": None,
        "campaign.seed": s.seed,
        "server.optimizer": "sgd",
        "server.lr": 1.0,
        "server.momentum": s.momentum,
        "server.num_byzantine": s.num_byzantine,
        "server.trim_fraction": TRIM_FRACTION,
        "server.clip_norm": CLIP_NORM,
    }


def cell_overrides(s: Settings, rule: str, column: str) -> dict[str, Any]:
    """Overrides of one cell: rule (and validation) plus attack."""
    out = base_overrides(s)
    strategy = "fedavg" if rule == "fedavg+validation" else rule
    out["server.strategy"] = strategy
    out["server.norm_outlier_factor"] = VALIDATION_FACTOR if rule == "fedavg+validation" else None
    if column == "clean":
        out.update({"attack.kind": "none", "attack.fraction": 0.0, "attack.scale": None})
    else:
        out.update({"attack.kind": column, "attack.fraction": FRACTION, "attack.scale": None})
        if column == "sign_flip":
            out["attack.scale"] = SIGN_FLIP_SCALE
        elif column == "scaling":
            out["attack.scale"] = SCALING_BOOST
        elif column == "gaussian":
            out["attack.noise_std"] = GAUSSIAN_STD
    return out


# --------------------------------------------------------------------------- workers


def prepare_data(root: Path) -> Path:
    """Prepare and partition the benchmark's data once under ``root``; returns data_dir."""
    from fl_core import stages
    from fl_core.config import load_params, with_overrides

    cfg = with_overrides(load_params(ROOT / "params.yaml"),
                         base_overrides(Settings(rounds=1, clients_per_round=10, momentum=0.0,
                                                 seed=42)))
    paths = stages.Paths(root)
    stages.prepare(cfg, paths)
    shuffle_test_rows(paths.prepared / "test.parquet", seed=cfg.data.seed)
    stages.partition(cfg, paths)
    return paths.data


def shuffle_test_rows(path: Path, *, seed: int) -> None:
    """Put the held-out test set in a random row order (same rows, same accuracy).

    Work-around: ``fl_core.pipeline._root_update`` takes FLTrust's root dataset as the
    *first* ``server.root_dataset_size`` rows of ``test.parquet``, and ``prepare`` keeps
    MNIST 5k's label-sorted order, so those 100 rows are all digit 0 and FLTrust's
    reference direction is "predict 0" (about 29% accuracy even without attack). After the
    shuffle the root set is 100 random test rows, as the FLTrust paper assumes.
    """
    import numpy as np

    from fl_core.data.io import read_table, write_table

    x, y = read_table(path)
    order = np.random.default_rng(seed).permutation(len(y))
    write_table(path, x[order], y[order])


def run_cell(rule: str, column: str, overrides: dict[str, Any], data_dir: str,
             store_dir: str, keep_store: bool) -> CellResult:
    """One campaign (runs in a worker process)."""
    logging.basicConfig(level=logging.ERROR, force=True)
    from fl_core.config import load_params, with_overrides
    from fl_core.engine import run_campaign
    from fl_core.store import LocalStore

    result = CellResult(rule=rule, column=column, overrides=overrides)
    start = time.perf_counter()
    store_path = Path(store_dir)
    try:
        cfg = with_overrides(load_params(ROOT / "params.yaml"), overrides)
        out = run_campaign(cfg, data_dir=data_dir, store=LocalStore(store_path),
                           progress=False, deploy=False)
        result.accuracy = [float(h["test_accuracy"]) for h in out.history]
        result.final_accuracy = float(out.final_accuracy)
        result.best_accuracy = float(out.best_accuracy)
        result.num_rejected = int(sum(int(h["num_rejected"]) for h in out.history))
    except Exception as exc:  # a failing cell is reported, the table goes on
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if not keep_store:
            shutil.rmtree(store_path, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    return result


def run_cells(cells: list[tuple[str, str]], s: Settings, *, data_dir: Path, workers: int,
              keep_stores: bool) -> dict[tuple[str, str], CellResult]:
    stores = OUT / "stores"
    results: dict[tuple[str, str], CellResult] = {}
    start = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures: dict[Future[CellResult], tuple[str, str]] = {}
        for rule, column in cells:
            store = stores / f"{rule.replace('+', '_')}-{column}-{uuid.uuid4().hex[:6]}"
            fut = pool.submit(run_cell, rule, column, cell_overrides(s, rule, column),
                              str(data_dir), str(store), keep_stores)
            futures[fut] = (rule, column)
        for done, fut in enumerate(as_completed(futures), start=1):
            res = fut.result()
            results[futures[fut]] = res
            acc = "ERROR " + str(res.error) if res.error else f"{res.final_accuracy:.4f}"
            print(f"[{done:2d}/{len(cells)} {time.perf_counter() - start:6.0f}s] "
                  f"{res.rule:<18} {res.column:<10} final acc {acc}  ({res.seconds:.0f}s)",
                  file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        (OUT / "stores").rmdir()  # only when empty (not with --keep-stores)
    return results


# --------------------------------------------------------------------------- reporting


def fmt(value: float | None) -> str:
    return "  err" if value is None else f"{100 * value:5.1f}"


def table_text(results: dict[tuple[str, str], CellResult], rules: list[str],
               columns: list[str]) -> str:
    width = max(len(r) for r in rules) + 2
    lines = ["final test accuracy (%)".ljust(width) + "".join(f"{c:>12}" for c in columns)]
    for rule in rules:
        cells = [results.get((rule, c)) for c in columns]
        lines.append(rule.ljust(width) + "".join(
            f"{fmt(cell.final_accuracy if cell else None):>12}" for cell in cells))
    return "\n".join(lines)


def final(results: dict[tuple[str, str], CellResult], rule: str, column: str) -> float | None:
    cell = results.get((rule, column))
    return None if cell is None else cell.final_accuracy


def goal_report(results: dict[tuple[str, str], CellResult], rules: list[str],
                columns: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Check the issue's goal on what was run; returns (text lines, summary)."""
    lines: list[str] = []
    summary: dict[str, Any] = {}
    clean = results.get(("fedavg", "clean"))
    if clean is None or clean.final_accuracy is None:
        return ["goal: not checked (no clean FedAvg reference in this run)"], summary
    ref = clean.final_accuracy
    summary["clean_fedavg"] = ref
    lines.append(f"clean FedAvg reference: {100 * ref:.1f}%")
    robust = [r for r in rules if r not in NON_ROBUST]
    within_all = True
    per_attack: dict[str, Any] = {}
    for column in columns:
        if column == "clean":
            continue
        scored = [(acc, r) for r in robust if (acc := final(results, r, column)) is not None]
        best = max(scored) if scored else None
        fed = results.get(("fedavg", column))
        fed_acc = fed.final_accuracy if fed else None
        ok = best is not None and best[0] >= ref - GOAL_MARGIN
        within_all &= ok
        per_attack[column] = {"best_rule": best[1] if best else None,
                              "best_accuracy": best[0] if best else None,
                              "within_2_points": ok, "fedavg": fed_acc,
                              "fedavg_drop": None if fed_acc is None else ref - fed_acc}
        best_txt = f"{best[1]} {100 * best[0]:.1f}% ({100 * (best[0] - ref):+.1f})" if best \
            else "n/a"
        fed_txt = "n/a" if fed_acc is None else \
            f"{100 * fed_acc:.1f}% ({100 * (fed_acc - ref):+.1f})"
        lines.append(f"  {column:<10} best robust: {best_txt:<34} "
                     f"{'OK  ' if ok else 'MISS'}  plain FedAvg: {fed_txt}")
    summary["per_attack"] = per_attack
    fails = {a: per_attack[a]["fedavg_drop"] is not None
             and per_attack[a]["fedavg_drop"] >= FAIL_DROP
             for a in ("scaling", "alie") if a in per_attack}
    attacked = [c for c in columns if c != "clean"]
    uniform = [r for r in robust if attacked and all(
        (acc := final(results, r, c)) is not None and acc >= ref - GOAL_MARGIN
        for c in attacked)]
    summary["best_robust_within_2_points_under_every_attack"] = within_all
    summary["single_rules_within_2_points_under_every_attack"] = uniform
    summary["fedavg_fails_under"] = fails
    lines.append(f"goal (a) best robust rule within {100 * GOAL_MARGIN:.0f} points of clean "
                 f"FedAvg under every attack run: {'MET' if within_all else 'NOT MET'}")
    lines.append(f"          one rule within {100 * GOAL_MARGIN:.0f} points under every attack "
                 f"run: {', '.join(uniform) or 'none'}")
    if fails:
        met = all(fails.values()) and len(fails) == 2
        lines.append(f"goal (b) plain FedAvg >= {100 * FAIL_DROP:.0f} points below clean under "
                     f"scaling and ALIE: {'MET' if met else 'NOT MET'} "
                     f"({', '.join(f'{k}: {v}' for k, v in fails.items())})")
    return lines, summary


def write_outputs(results: dict[tuple[str, str], CellResult], rules: list[str],
                  columns: list[str], meta: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path, png_path = (out / "robustness.csv", out / "robustness.json",
                                     out / "heatmap.png")
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["rule", *columns])
        for rule in rules:
            row = [results.get((rule, c)) for c in columns]
            writer.writerow([rule, *("" if cell is None or cell.final_accuracy is None
                                     else f"{cell.final_accuracy:.4f}" for cell in row)])
    cells = [asdict(results[(r, c)]) for r in rules for c in columns if (r, c) in results]
    json_path.write_text(json.dumps({**meta, "cells": cells}, indent=2))
    heatmap(results, rules, columns, png_path, title=meta["title"])
    return [csv_path, json_path, png_path]


def heatmap(results: dict[tuple[str, str], CellResult], rules: list[str], columns: list[str],
            path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.full((len(rules), len(columns)), np.nan)
    for i, rule in enumerate(rules):
        for j, column in enumerate(columns):
            cell = results.get((rule, column))
            if cell is not None and cell.final_accuracy is not None:
                grid[i, j] = 100 * cell.final_accuracy
    fig, ax = plt.subplots(figsize=(1.3 * len(columns) + 3, 0.5 * len(rules) + 1.8))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for i in range(len(rules)):
        for j in range(len(columns)):
            text = "err" if np.isnan(grid[i, j]) else f"{grid[i, j]:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rules)), rules)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="final test accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_mlflow(results: dict[tuple[str, str], CellResult], meta: dict[str, Any],
               files: list[Path], summary: dict[str, Any]) -> str:
    """One parent run (cells as metrics, files as artifacts), one child run per cell."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from fl_core import tracking as tr

    uri = tr.default_tracking_uri(ROOT / ".fl")
    exp_id = tr.ensure_experiment(uri, EXPERIMENT, artifact_root=ROOT / ".fl" / "mlartifacts")
    client = MlflowClient(tracking_uri=uri)
    parent = client.create_run(exp_id, run_name=f"robustness-{time.strftime('%Y%m%dT%H%M%S')}",
                               tags={"bench": "robustness"})
    pid = parent.info.run_id
    params = {k: v for k, v in meta.items() if not isinstance(v, dict | list)}
    params.update({f"attack.{k}": v for k, v in meta["attack_settings"].items()})
    client.log_batch(pid, params=[Param(k, str(v)[:500]) for k, v in sorted(params.items())])
    ts = int(time.time() * 1000)
    metrics = [Metric(f"acc.{r.replace('+', '_')}.{c}", float(res.final_accuracy), ts, 0)
               for (r, c), res in results.items() if res.final_accuracy is not None]
    if "clean_fedavg" in summary:
        metrics.append(Metric("clean_fedavg", float(summary["clean_fedavg"]), ts, 0))
    for i in range(0, len(metrics), 500):
        client.log_batch(pid, metrics=metrics[i:i + 500])
    client.set_tag(pid, "goal_met", str(summary.get(
        "best_robust_within_2_points_under_every_attack")))
    for path in files:
        client.log_artifact(pid, str(path))
    for (rule, column), res in sorted(results.items()):
        child = client.create_run(exp_id, run_name=f"{rule}/{column}",
                                  tags={"mlflow.parentRunId": pid, "rule": rule,
                                        "attack": column})
        cid = child.info.run_id
        client.log_batch(cid, params=[Param(k, str(v)) for k, v in sorted(
            res.overrides.items())], tags=[RunTag("error", res.error or "")])
        series = [Metric("test_accuracy", a, ts, i + 1) for i, a in enumerate(res.accuracy)]
        if res.final_accuracy is not None:
            series.append(Metric("final_accuracy", res.final_accuracy, ts, 0))
        series.append(Metric("seconds", res.seconds, ts, 0))
        client.log_batch(cid, metrics=series)
        client.set_terminated(cid, "FAILED" if res.error else "FINISHED")
    client.set_terminated(pid)
    return pid


# --------------------------------------------------------------------------- main


def parse_list(text: str | None, allowed: tuple[str, ...], default: tuple[str, ...]) -> list[str]:
    if text is None:
        return list(default)
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise SystemExit(f"unknown {bad[0]!r}; allowed: {', '.join(allowed)}")
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"rules {','.join(QUICK_RULES)} x {','.join(QUICK_COLUMNS)}, "
                        "10 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="default 20 (10 with --quick)")
    parser.add_argument("--clients-per-round", type=int, default=15)
    parser.add_argument("--momentum", type=float, default=0.0, help="server.momentum")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rules", default=None, help="comma-separated subset of rows")
    parser.add_argument("--attacks", default=None,
                        help="comma-separated subset of columns (clean and attacks)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--keep-stores", action="store_true")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--report", type=Path, default=None, metavar="JSON",
                        help="re-print the table and redraw the files from a saved "
                        "robustness.json (no campaign, no MLflow)")
    args = parser.parse_args()

    rules = parse_list(args.rules, RULES, QUICK_RULES if args.quick else RULES)
    columns = parse_list(args.attacks, COLUMNS, QUICK_COLUMNS if args.quick else COLUMNS)
    rounds = args.rounds or (10 if args.quick else 20)
    s = Settings(rounds=rounds, clients_per_round=args.clients_per_round,
                 momentum=args.momentum, seed=args.seed)
    if s.clients_per_round < 4 * s.num_byzantine + 3 and "bulyan" in rules:
        raise SystemExit(f"bulyan needs clients_per_round >= {4 * s.num_byzantine + 3}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # the workers share the cores; no oversubscription

    if args.report is not None:  # re-print and re-draw saved results, no campaign
        saved = json.loads(args.report.read_text())
        results = {(c["rule"], c["column"]): CellResult(**c) for c in saved.pop("cells")}
        saved.pop("goal", None)
        report(results, saved["rules"], saved["columns"], saved, args.out, mlflow=False)
        return
    start = time.perf_counter()
    data_dir = prepare_data(OUT)
    prep_s = time.perf_counter() - start
    cells = [(r, c) for r in rules for c in columns]
    print(f"{len(cells)} cells, {rounds} rounds, {s.clients_per_round} clients/round, "
          f"f={s.num_byzantine}, server momentum {s.momentum}, {args.workers} workers "
          f"(data prepared in {prep_s:.0f}s)", file=sys.stderr, flush=True)
    results = run_cells(cells, s, data_dir=data_dir, workers=args.workers,
                        keep_stores=args.keep_stores)
    wall = time.perf_counter() - start

    title = (f"MNIST 5k Dir(0.5), 20 clients, {s.clients_per_round}/round, "
             f"{int(100 * FRACTION)}% malicious, {rounds} rounds, momentum {s.momentum}")
    meta: dict[str, Any] = {
        "title": title, "rounds": rounds, "clients_per_round": s.clients_per_round,
        "num_byzantine": s.num_byzantine, "attack_fraction": FRACTION,
        "server_momentum": s.momentum, "seed": s.seed, "clip_norm": CLIP_NORM,
        "trim_fraction": TRIM_FRACTION, "validation_factor_row": VALIDATION_FACTOR,
        "attack_settings": {"sign_flip_scale": SIGN_FLIP_SCALE, "scaling_boost": SCALING_BOOST,
                            "gaussian_noise_std": GAUSSIAN_STD},
        "quick": args.quick, "wall_seconds": wall, "workers": args.workers,
        "rules": rules, "columns": columns,
        **code_version(),
    }
    report(results, rules, columns, meta, args.out, mlflow=not args.no_mlflow)


def report(results: dict[tuple[str, str], CellResult], rules: list[str], columns: list[str],
           meta: dict[str, Any], out: Path, *, mlflow: bool) -> None:
    """Print the table and the goal check, write the files, log to MLflow."""
    print()
    print(meta["title"])
    print(table_text(results, rules, columns))
    lines, summary = goal_report(results, rules, columns)
    print()
    print("\n".join(lines))
    meta["goal"] = summary
    files = write_outputs(results, rules, columns, meta, out)
    print(f"\nwall time {meta['wall_seconds'] / 60:.1f} min; wrote "
          f"{', '.join(str(p) for p in files)}")
    if mlflow:
        run_id = log_mlflow(results, meta, files, summary)
        print(f"MLflow: experiment {EXPERIMENT!r}, run {run_id}")

if __name__ == "__main__":
    main()
