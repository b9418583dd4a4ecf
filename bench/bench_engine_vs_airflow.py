"""Orchestration overhead: the same small campaign through the in-process engine and Airflow.

Both sides run one campaign built from ``params.yaml`` plus the same form overrides
(``--dataset``, ``--rounds``, ``--clients-per-round``; applied with
``fl_core.campaigns.config_from_form``, exactly as the DAG's ``open_round`` does), in one
fresh temporary ``FL_HOME``:

* data: ``fl_core.campaigns.ensure_data`` prepares, partitions and validates the data once
  (timed, reported as "data prep"); both sides then read the same cached folder
  ``FL_HOME/datasets/<key>`` (the Airflow side finds it already there; the script checks
  that every campaign record points at that folder);
* engine: ``fl_core.pipeline`` in this process, each round timed around
  ``fl_core.engine.run_round`` with single-threaded torch (``run_campaign``'s default).
  Variants: without tracking; with MLflow (its own SQLite DB under ``FL_HOME``, opened with
  ``fl_core.campaigns.open_campaign`` like the DAG's round 1), the fair comparison since the
  DAG logs every round to MLflow and registers/deploys at the end; and, when torch's default
  thread count is not 1, with MLflow at that default, which is what the DAG's tasks run with
  (they do not set torch's threads), to separate threading from orchestration;
* Airflow: ``python -m fl_airflow.run --json`` in a subprocess (``FL_HOME`` set,
  ``PYTHONPATH=plugins``): one ``federated_training`` DAG run per round through
  ``dag.test``. Per-round seconds come from the Airflow metadata DB (``dag_run.start_date``
  / ``end_date``) and, for comparison, from the runner's own wall clock around each
  ``dag.test`` call (the ``s=`` field of its progress bar).

Rounds: the first round includes opening the campaign (MLflow run and DB creation, initial
model) and warm-up, the last one registers and deploys the model (Airflow's last DAG run
runs ``register_model`` and ``deploy``; the engine+MLflow variant's last round includes the
same two calls). Both are printed separately; the steady-state mean is over the rounds in
between (rounds 2..N-1; rounds 2..N when N < 3), pooled over ``--repeat`` repetitions.
Ratios are steady-state means: Airflow (or engine+MLflow) over the engine.

Usage (from the repository root, in the project's venv)::

    python bench/bench_engine_vs_airflow.py                     # digits, 5 rounds, ~2 min
    python bench/bench_engine_vs_airflow.py --rounds 8 --repeat 2 --clients-per-round 4
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_CLIENT_BATCH_SIZE = 5  # fl_airflow.run's default clients per mapped training task
ENGINE_TORCH_THREADS = 1  # fl_core.engine.run_campaign's default


@dataclass
class SideResult:
    """One side's measurements, pooled over repetitions."""

    label: str
    rounds: list[list[float]] = field(default_factory=list)  # seconds, one list per repeat
    accuracies: list[list[float]] = field(default_factory=list)  # test accuracy per round
    model_sha256: list[str] = field(default_factory=list)  # final global model, per repeat
    notes: list[str] = field(default_factory=list)
    short: str = ""  # column title when this side is a ratio's denominator
    breakdown: list[dict[str, float]] = field(default_factory=list)  # Airflow steady rounds

    def first(self) -> list[float]:
        return [r[0] for r in self.rounds if r]

    def last(self) -> list[float]:
        return [r[-1] for r in self.rounds if len(r) >= 2]

    def steady(self) -> list[float]:
        out: list[float] = []
        for r in self.rounds:
            out.extend(steady_slice(r))
        return out

    def final_accuracy(self) -> float | None:
        return self.accuracies[-1][-1] if self.accuracies and self.accuracies[-1] else None


def steady_slice(rounds: list[Any]) -> list[Any]:
    """Rounds 2..N-1 (2..N when N < 3): neither opening the campaign nor registering."""
    return rounds[1:-1] if len(rounds) >= 3 else rounds[1:]


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    std = statistics.stdev(values) if len(values) >= 2 else 0.0
    return statistics.fmean(values), std


def loadavg() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "n/a"
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min, {os.cpu_count()} CPUs)"


# --------------------------------------------------------------------------- config and data


def make_form(args: argparse.Namespace) -> dict[str, Any]:
    """The form ``fl_airflow.run`` builds from the same command-line options."""
    form: dict[str, Any] = {
        "rounds": args.rounds,
        "dataset": args.dataset,
        "client_batch_size": AIRFLOW_CLIENT_BATCH_SIZE,
    }
    if args.clients_per_round is not None:
        form["clients_per_round"] = args.clients_per_round
    return form


def make_config(form: dict[str, Any]) -> Any:
    from fl_core.campaigns import config_from_form
    from fl_core.config import load_params

    return config_from_form(load_params(ROOT / "params.yaml"), form)


# --------------------------------------------------------------------------- engine side


def run_engine(
    cfg: Any,
    *,
    data_dir: Path,
    home: Path,
    tracking: bool,
    threads: int,
    label: str,
    result: SideResult,
) -> None:
    """One engine campaign with ``threads`` torch threads, each round timed; appends to
    ``result``."""
    import torch

    from fl_core import pipeline
    from fl_core.campaigns import open_campaign
    from fl_core.engine import run_round
    from fl_core.store import LocalStore

    work = home / "engine" / label
    store = LocalStore(work / "artifacts")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: list[float] = []
    accs: list[float] = []
    try:
        started = time.perf_counter()  # round 1 includes opening the campaign, as in the DAG
        if tracking:
            cid = open_campaign(
                store,
                cfg,
                project_root=ROOT,
                home=home,
                tracking_uri=f"sqlite:///{(home / 'engine' / 'mlflow.db').resolve()}",
                tags={"fl.orchestrator": "bench-engine"},
            )
        else:
            cid = pipeline.start_campaign(store, cfg, data_dir=data_dir)
        rnd = 0
        for rnd in range(1, cfg.campaign.rounds + 1):
            out = run_round(store, cid, rnd, batch_size=AIRFLOW_CLIENT_BATCH_SIZE)
            done = not out["decision"]["continue"]
            if done and tracking:  # what the DAG's last run does after next_round
                pipeline.register(store, cid, rnd, final=True)
                pipeline.deploy(store, cid, rnd)
            times.append(time.perf_counter() - started)
            accs.append(float(out["metrics"]["test_accuracy"]))
            started = time.perf_counter()
            if done:
                break
        result.model_sha256.append(pipeline.server_update(store, cid, rnd)["model_sha256"])
        rec = pipeline.load_campaign(store, cid)
        if Path(rec["data_dir"]) != data_dir.resolve():
            result.notes.append(f"data dir differs: {rec['data_dir']}")
    finally:
        torch.set_num_threads(previous_threads)
    result.rounds.append(times)
    result.accuracies.append(accs)


# --------------------------------------------------------------------------- Airflow side


def airflow_env(home: Path) -> dict[str, str]:
    """The environment ``tests/airflow/test_dags.py`` gives the runner."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "FL_")) and k != "MLFLOW_TRACKING_URI"
    }
    env.update(
        FL_HOME=str(home),
        PYTHONPATH=str(ROOT / "plugins"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        GIT_PYTHON_REFRESH="quiet",
    )
    return env


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _db_runs(db_path: Path, after_id: int) -> list[tuple[int, str, str, str, str]]:
    if not db_path.exists():
        return []
    with sqlite3.connect(db_path) as db:
        rows = db.execute(
            "select id, run_id, state, start_date, end_date from dag_run "
            "where dag_id = 'federated_training' and id > ? order by id",
            (after_id,),
        ).fetchall()
    return [(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows]


def _task_seconds(db_path: Path, run_id: str) -> dict[str, float]:
    """Summed ``task_instance.duration`` per task id (mapped instances added) of one run."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute(
            "select task_id, coalesce(sum(duration), 0) from task_instance where dag_id = "
            "'federated_training' and run_id = ? group by task_id",
            (run_id,),
        ).fetchall()
    return {str(task): float(secs) for task, secs in rows}


def runner_round_seconds(stderr: str) -> list[float]:
    """Per-round wall seconds from the runner's progress bar (``acc=…, s=…`` postfixes).

    tqdm redraws the bar several times per round; consecutive identical postfixes are one
    round."""
    out: list[float] = []
    previous = None
    for acc, secs in re.findall(r"acc=([0-9.]+), s=([0-9.]+)", stderr):
        if (acc, secs) != previous:
            out.append(float(secs))
            previous = (acc, secs)
    return out


def run_airflow(
    args: argparse.Namespace,
    *,
    home: Path,
    repeat: int,
    db_side: SideResult,
    wall_side: SideResult,
    data_dir: Path,
) -> None:
    """One Airflow campaign in a subprocess; appends DB and runner timings."""
    from fl_core import pipeline
    from fl_core.store import LocalStore

    db_path = home / "airflow" / "airflow.db"
    before = _db_runs(db_path, 0)
    last_id = before[-1][0] if before else 0
    cmd = [
        sys.executable,
        "-m",
        "fl_airflow.run",
        "--rounds",
        str(args.rounds),
        "--dataset",
        args.dataset,
        "--json",
    ]
    if args.clients_per_round is not None:
        cmd += ["--clients-per-round", str(args.clients_per_round)]
    logs = home / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=ROOT, env=airflow_env(home), capture_output=True, text=True, timeout=1800
    )
    wall = time.perf_counter() - started
    (logs / f"airflow-{repeat}.stdout").write_text(proc.stdout)
    (logs / f"airflow-{repeat}.stderr").write_text(proc.stderr)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    cid = str(status["campaign_id"])

    runs = _db_runs(db_path, last_id)
    bad = [r for r in runs if r[2] != "success"]
    if bad:
        raise RuntimeError(f"DAG runs not successful: {bad}")
    durations = [(_ts(r[4]) - _ts(r[3])).total_seconds() for r in runs]
    db_side.rounds.append(durations)
    for run, secs in steady_slice(list(zip(runs, durations, strict=True))):
        tasks = _task_seconds(db_path, run[1])
        db_side.breakdown.append(
            {
                "run": secs,
                "tasks": sum(tasks.values()),
                "train_clients": tasks.get("train_clients", 0.0),
                "evaluate": tasks.get("evaluate", 0.0),
            }
        )
    walls = runner_round_seconds(proc.stderr)
    if len(walls) == len(runs):
        wall_side.rounds.append(walls)
    else:
        wall_side.notes.append(f"repeat {repeat}: parsed {len(walls)} bar rounds, {len(runs)} runs")
    last_tasks = _task_seconds(db_path, runs[-1][1])
    finalize = last_tasks.get("register_model", 0.0) + last_tasks.get("deploy", 0.0)
    db_side.notes.append(
        f"repeat {repeat}: process wall {wall:.1f} s, of which outside the DAG runs "
        f"(imports, db migrate, DAG parse) {wall - sum(db_side.rounds[-1]):.1f} s; "
        f"last run's register_model+deploy tasks {finalize:.1f} s"
    )

    store = LocalStore(home / "artifacts")
    hist = pipeline.history(store, cid, int(status["last_round"]))
    accs = [float(h["test_accuracy"]) for h in hist]
    sha = str(pipeline.server_update(store, cid, int(status["last_round"]))["model_sha256"])
    for side in (db_side, wall_side):
        side.accuracies.append(accs)
        side.model_sha256.append(sha)
    rec = pipeline.load_campaign(store, cid)
    if Path(rec["data_dir"]).resolve() != data_dir.resolve():
        db_side.notes.append(f"repeat {repeat}: Airflow used other data: {rec['data_dir']}")


# --------------------------------------------------------------------------- report


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    m, s = mean_std(values)
    return f"{m:.3f}" if len(values) == 1 else f"{m:.3f}±{s:.3f}"


def print_table(sides: list[SideResult], baselines: list[SideResult]) -> None:
    """One row per side; one ratio column (steady-state means) per baseline."""
    bases = [mean_std(b.steady())[0] for b in baselines]
    ratio_titles = "".join(f" {'x ' + b.short:>15}" for b in baselines)
    header = (
        f"{'side':<26} {'round 1 s':>14} {'steady s/round (mean±std, n)':>30} "
        f"{'last round s':>14}{ratio_titles} {'final acc':>10}"
    )
    print(header)
    print("-" * len(header))
    for side in sides:
        steady = side.steady()
        m = mean_std(steady)[0]
        acc = side.final_accuracy()
        ratios = "".join(f" {m / b:>15.2f}" for b in bases)
        print(
            f"{side.label:<26} {_fmt(side.first()):>14} "
            f"{_fmt(steady) + f' (n={len(steady)})':>30} {_fmt(side.last()):>14}{ratios} "
            f"{'-' if acc is None else f'{acc:.4f}':>10}"
        )


def breakdown_line(side: SideResult) -> str:
    """Where an Airflow steady round's time goes, from ``task_instance.duration``."""
    if not side.breakdown:
        return f"{side.label}: no steady-state runs to break down"
    mean = {k: statistics.fmean(b[k] for b in side.breakdown) for k in side.breakdown[0]}
    return (
        f"{side.label} steady round {mean['run']:.3f} s = tasks {mean['tasks']:.3f} s "
        f"(train_clients {mean['train_clients']:.3f}, evaluate {mean['evaluate']:.3f}, "
        f"other {mean['tasks'] - mean['train_clients'] - mean['evaluate']:.3f}) + between "
        f"tasks {mean['run'] - mean['tasks']:.3f} s"
    )


def compare_results(sides: list[SideResult]) -> list[str]:
    lines = []
    ref = sides[0]
    for side in sides[1:]:
        same_sha = len(set(ref.model_sha256)) == 1 and set(side.model_sha256) == set(
            ref.model_sha256
        )
        same_acc = side.accuracies == ref.accuracies
        lines.append(
            f"{side.label} vs {ref.label}: final model "
            f"{'identical (same sha256)' if same_sha else 'DIFFERENT sha256'}, per-round "
            f"accuracies {'identical' if same_acc else 'differ'}"
        )
    for side in sides:
        lines.append(
            f"{side.label}: accuracy per round {[round(a, 4) for a in side.accuracies[-1]]}, "
            f"sha256 {side.model_sha256[-1][:16]}…"
        )
    return lines


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist5k", "synthetic"])
    parser.add_argument("--clients-per-round", type=int, dest="clients_per_round")
    parser.add_argument("--repeat", type=int, default=1, help="campaigns per side")
    parser.add_argument("--keep", action="store_true", help="keep the temporary FL_HOME")
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.repeat < 1:
        parser.error("--rounds must be >= 2 and --repeat >= 1")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=UserWarning)
    for name in ("mlflow", "alembic", "sqlalchemy", "great_expectations", "fl_core"):
        logging.getLogger(name).setLevel(logging.WARNING)

    print(f"load average at start: {loadavg()}")
    home = Path(tempfile.mkdtemp(prefix="fl-bench-engine-airflow-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the engine+MLflow side uses its own DB
    os.environ.pop("FL_ARTIFACT_STORE", None)
    try:
        from fl_core.campaigns import ensure_data

        form = make_form(args)
        cfg = make_config(form)
        started = time.perf_counter()
        data_dir = ensure_data(cfg, project_root=ROOT, home=home)
        prep = time.perf_counter() - started
        print(
            f"FL_HOME {home}\nform {form}\ncampaign {cfg.campaign.name}: dataset "
            f"{cfg.data.dataset}, model {cfg.model.name}, {cfg.campaign.rounds} rounds x "
            f"{cfg.campaign.clients_per_round} clients of {cfg.partition.num_clients}, "
            f"{cfg.client.local_epochs} local epochs\ndata prep (ensure_data, once, shared): "
            f"{prep:.1f} s -> {data_dir}"
        )
        default_threads = _torch_default_threads()
        engine = SideResult("engine (no tracking)", short="engine")
        engine_ml = SideResult("engine + MLflow", short="eng+MLflow")
        variants: list[tuple[SideResult, bool, int]] = [
            (engine, False, ENGINE_TORCH_THREADS),
            (engine_ml, True, ENGINE_TORCH_THREADS),
        ]
        if default_threads != ENGINE_TORCH_THREADS:
            # The DAG's tasks leave torch at its default: same code, Airflow's threading.
            engine_ml_default = SideResult(
                f"engine + MLflow, {default_threads} thr", short=f"eng+MLf {default_threads}thr"
            )
            variants.append((engine_ml_default, True, default_threads))
        air_db = SideResult("airflow (dag_run)")
        air_wall = SideResult("airflow (dag.test wall)")
        for rep in range(1, args.repeat + 1):
            # Interleaved, so that a change in machine load hits every side alike.
            for side, tracking, threads in variants:
                print(f"repeat {rep}/{args.repeat}: {side.label} ...", flush=True)
                run_engine(
                    cfg,
                    data_dir=data_dir,
                    home=home,
                    tracking=tracking,
                    threads=threads,
                    label=f"{len(side.rounds)}-{side.short.replace(' ', '-')}",
                    result=side,
                )
            print(f"repeat {rep}/{args.repeat}: airflow ...", flush=True)
            run_airflow(
                args,
                home=home,
                repeat=rep,
                db_side=air_db,
                wall_side=air_wall,
                data_dir=data_dir,
            )
        engines = [v[0] for v in variants]
        sides = [*engines, air_db, air_wall]
        print()
        print_table(sides, engines)
        print()
        print(
            "round 1 includes opening the campaign and warm-up (with MLflow: a new MLflow run, "
            "and for the first such run of each DB its creation); the last round includes "
            "register+deploy (with MLflow: engine and Airflow alike; deploy also evaluates the "
            "current champion when one exists); steady = the rounds in between."
        )
        print(
            f"torch threads: engine {', '.join(str(v[2]) for v in variants)} (per variant); "
            f"Airflow tasks: torch default ({default_threads}); "
            f"Airflow client batch size {AIRFLOW_CLIENT_BATCH_SIZE}."
        )
        print(breakdown_line(air_db))
        for side in sides:
            for note in side.notes:
                print(f"{side.label}: {note}")
        for line in compare_results([*engines, air_db]):
            print(line)
    finally:
        print(f"load average at end: {loadavg()}")
        if args.keep:
            print(f"kept FL_HOME {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return 0


def _torch_default_threads() -> int:
    import torch

    return int(torch.get_num_threads())


if __name__ == "__main__":
    sys.exit(main())
