"""Scaffolding shared by the benchmarks: data preparation, seeds and statistics, result
files, MLflow logging, code version, and ``docs/benchmarks.md`` generated from the results.

Rules every benchmark follows (issue 14, "evidence you can trust"):

* every configuration is declared in the script before anything runs; nothing is chosen by
  looking at the reporting seeds;
* tuning, if any, uses :data:`TUNING_SEEDS` only; headline rows are the mean and standard
  deviation over :data:`REPORTING_SEEDS` (at least three; DP rows also vary the secret noise);
* baselines get the same features (deadlines, over-selection) and tuning budget;
* evaluation data is never used for training or as a root set;
* the numbers quoted in docs come from the result files this module writes
  (``.fl/bench/results/<name>.json``): ``python bench/_common.py docs`` regenerates
  ``docs/benchmarks.md`` from them.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_HOME = ROOT / ".fl" / "bench"
RESULTS = BENCH_HOME / "results"
DOCS = ROOT / "docs" / "benchmarks.md"

TUNING_SEEDS: tuple[int, ...] = (101, 102)
"""Seeds a benchmark may tune on; never reported."""
REPORTING_SEEDS: tuple[int, ...] = (1, 2, 3)
"""Seeds every headline row is averaged over (mean +- std)."""

logger = logging.getLogger(__name__)

__all__ = [
    "BENCH_HOME",
    "REPORTING_SEEDS",
    "RESULTS",
    "TUNING_SEEDS",
    "Stat",
    "check_runs",
    "code_version",
    "log_mlflow",
    "preregister",
    "prepare_data",
    "render_docs",
    "result_path",
    "run_parallel",
    "stat",
    "write_results",
]


# --------------------------------------------------------------------------- data


def prepare_data(cfg: Any, root: Path) -> Path:
    """Prepare and partition ``cfg``'s dataset under ``root`` once; returns the data dir.

    Redone only when the ``data`` or ``partition`` section changed (a stamp file keeps
    them). The held-out test table is the evaluation data: benchmarks must not train on it
    or draw root sets from it.
    """
    from fl_core import stages

    paths = stages.Paths(root)
    stamp = paths.data / "bench_stamp.json"
    raw = cfg.to_dict()
    want = json.dumps({"data": raw["data"], "partition": raw["partition"]}, sort_keys=True)
    manifest = paths.clients / "manifest.json"
    if not (manifest.exists() and stamp.exists() and stamp.read_text() == want):
        stages.prepare(cfg, paths)
        stages.partition(cfg, paths)
        stamp.write_text(want)
    return Path(paths.data)


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation and count of one metric over seeds."""

    mean: float
    std: float
    n: int

    def __format__(self, spec: str) -> str:
        spec = spec or ".4f"
        return f"{self.mean:{spec}} ± {self.std:{spec}}"

    def to_json(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def stat(values: Iterable[float]) -> Stat:
    """:class:`Stat` of ``values`` (std 0 for a single value; NaN values refused)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("values: need at least one value")
    if any(math.isnan(x) for x in xs):
        raise ValueError("values: NaN in the results")
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return Stat(statistics.fmean(xs), std, len(xs))


# --------------------------------------------------------------------------- provenance


def code_version() -> dict[str, Any]:
    """The commit the benchmark ran on and whether ``fl_core`` or ``bench`` had local edits."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "commit": git("rev-parse", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "--", "fl_core", "bench")),
    }


def result_path(name: str, *, quick: bool) -> Path:
    """``<RESULTS>/<name>.json`` (``<name>_quick.json`` for a smoke run)."""
    return RESULTS / f"{name}{'_quick' if quick else ''}.json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def preregister(
    name: str, *, configurations: dict[str, Any], seeds: Sequence[int], quick: bool, **declared: Any
) -> Path:
    """Write the declaration of a benchmark before any campaign runs.

    The result file first holds only ``status: declared``, the configurations, the seeds
    and whatever else is ``declared`` (goals, tuning grid, fixed settings).
    :func:`write_results` later refuses results whose configurations or seeds differ from
    this declaration, so what is reported is what was declared.
    """
    if not configurations:
        raise ValueError("configurations: declare at least one")
    if not seeds:
        raise ValueError("seeds: declare at least one reporting seed")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = result_path(name, quick=quick)
    doc = {
        "benchmark": name,
        "status": "declared",
        "quick": quick,
        "declared": _now(),
        "code": code_version(),
        "configurations": configurations,
        "seeds": list(seeds),
        **declared,
    }
    path.write_text(json.dumps(doc, indent=1, sort_keys=True, default=_jsonable) + "\n")
    return path


def check_runs(
    configurations: Iterable[str], seeds: Iterable[int], runs: dict[str, dict[int, Any]]
) -> None:
    """Raise ``ValueError`` unless ``runs`` (configuration -> seed -> result) holds exactly
    one result for every declared configuration and seed, and nothing else."""
    want = {(c, int(s)) for c in configurations for s in seeds}
    have = {(c, int(s)) for c, by_seed in runs.items() for s in by_seed}
    if missing := sorted(want - have):
        raise ValueError(f"runs: declared but not run: {missing[:5]}")
    if extra := sorted(have - want):
        raise ValueError(f"runs: run but not declared: {extra[:5]}")


def write_results(name: str, payload: dict[str, Any], *, quick: bool) -> Path:
    """Write a benchmark's results (configurations, seeds, rows, provenance) as JSON.

    ``quick`` results go to ``<name>_quick.json`` and are never rendered as headline
    numbers. When :func:`preregister` wrote a declaration, the payload's
    ``configurations`` and ``seeds`` must equal it (``ValueError`` otherwise) and its
    time stamp is kept as ``declared``.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = result_path(name, quick=quick)
    declared: dict[str, Any] = {}
    if path.exists():
        prior = json.loads(path.read_text())
        if prior.get("status") == "declared":
            declared = prior
    if declared:
        for key in ("configurations", "seeds"):
            mine = json.loads(json.dumps(payload.get(key), default=_jsonable, sort_keys=True))
            if mine != declared.get(key):
                raise ValueError(f"{key}: the results differ from the declaration in {path}")
    doc = {
        "benchmark": name,
        "status": "done",
        "quick": quick,
        "declared": declared.get("declared"),
        "written": _now(),
        "code": code_version(),
        "python": sys.version.split()[0],
        **payload,
    }
    path.write_text(json.dumps(doc, indent=1, sort_keys=True, default=_jsonable) + "\n")
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Stat):
        return obj.to_json()
    if isinstance(obj, tuple | set):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# --------------------------------------------------------------------------- workers


def run_parallel(fn: Any, jobs: Sequence[tuple[Any, ...]], *, workers: int) -> Iterable[Any]:
    """Yield ``fn(*job)`` for every job as each finishes, in ``workers`` spawned processes
    (torch and BLAS single-threaded in each, so two workers use two cores); ``workers`` 1
    runs in this process."""
    import os

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if workers <= 1:
        for job in jobs:
            yield fn(*job)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        for fut in as_completed(futures):
            yield fut.result()


# --------------------------------------------------------------------------- MLflow


def log_mlflow(
    experiment: str,
    *,
    params: dict[str, Any],
    runs: Sequence[tuple[str, dict[str, Any], dict[str, float]]],
    files: Sequence[Path] = (),
) -> str:
    """One parent run (``params``, ``files``) with one child run per configuration and seed.

    ``runs`` holds ``(name, params, metrics)``; metrics are logged at step 0. Uses the
    embedded store under ``.fl/`` unless ``MLFLOW_TRACKING_URI`` is set. Returns the
    parent's run id.
    """
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from fl_core import tracking as tr

    home = ROOT / ".fl"
    uri = tr.default_tracking_uri(home)
    artifacts = home / "mlartifacts"
    stamp = time.strftime("%Y%m%dT%H%M%S")
    parent = tr.start_campaign_run(
        uri=uri,
        experiment=experiment,
        campaign_id=f"{experiment}-{stamp}",
        params={**params, **code_version()},
        artifact_root=artifacts,
    )
    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    for name, run_params, metrics in runs:
        child = tr.start_campaign_run(
            uri=uri,
            experiment=experiment,
            campaign_id=f"{name}-{stamp}",
            params=run_params,
            tags={"mlflow.parentRunId": parent["run_id"]},
            artifact_root=artifacts,
        )
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 900):
            client.log_batch(child["run_id"], metrics=batch[i : i + 900])
        tr.end_run(child)
    for path in files:
        tr.log_artifact(parent, path)
    tr.end_run(parent)
    return str(parent["run_id"])


# --------------------------------------------------------------------------- docs


def _section(doc: dict[str, Any]) -> list[str]:
    lines = [f"## {doc.get('title', doc['benchmark'])}", ""]
    if doc.get("question"):
        lines += [doc["question"], ""]
    code = doc.get("code", {})
    commit = (code.get("commit") or "unknown")[:12]
    dirty = " (local changes)" if code.get("dirty") else ""
    lines += [
        f"Command: `{doc.get('command', '')}`; declared {doc.get('declared') or 'n/a'}, "
        f"written {doc['written']} at commit `{commit}`{dirty}; reporting seeds "
        f"{doc.get('seeds')}.",
        "",
    ]
    for note in doc.get("notes", []):
        lines.append(f"- {note}")
    if doc.get("notes"):
        lines.append("")
    columns: list[str] = doc.get("columns", [])
    rows: list[dict[str, Any]] = doc.get("rows", [])
    if columns and rows:
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for row in rows:
            cells = []
            for col in columns:
                value = row.get(col)
                if isinstance(value, dict) and {"mean", "std"} <= set(value):
                    cells.append(f"{value['mean']:.4g} ± {value['std']:.2g}")
                elif isinstance(value, float):
                    cells.append(f"{value:.4g}")
                else:
                    cells.append(str(value))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for goal in doc.get("goals", []):
        lines.append(
            f"- goal: {goal['goal']}: **{'holds' if goal['holds'] else 'does not hold'}**"
            f" ({goal.get('evidence', '')})"
        )
    if doc.get("goals"):
        lines.append("")
    return lines


def render_docs(results: Path = RESULTS, out: Path = DOCS) -> Path:
    """Write ``docs/benchmarks.md`` from the full (non-quick) result files; quick results
    are listed separately as smoke runs, never as headline numbers."""
    full = sorted(p for p in results.glob("*.json") if not p.stem.endswith("_quick"))
    quick = sorted(results.glob("*_quick.json"))
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python bench/_common.py docs` from `.fl/bench/results/*.json`, the",
        "files the benchmark scripts write; do not edit by hand. Every configuration is",
        "declared in its script before it runs (copies of the result files this page was",
        "generated from: `docs/bench-results/`); headline numbers are mean ± std over the",
        f"reporting seeds {list(REPORTING_SEEDS)} (tuning, if any, only on {list(TUNING_SEEDS)}).",
        "",
    ]
    if not full:
        lines += ["No full benchmark results yet (only quick smoke runs below).", ""]
    docs = [json.loads(p.read_text()) for p in full]
    for doc in docs:
        if doc.get("status") != "declared":
            lines += _section(doc)
    pending = [d["benchmark"] for d in docs if d.get("status") == "declared"]
    if pending:
        lines += [f"Declared, no results yet: {', '.join(pending)}.", ""]
    quick_docs = [json.loads(p.read_text()) for p in quick]
    quick_docs = [d for d in quick_docs if d.get("status") != "declared"]
    if quick_docs:
        lines += ["# Quick smoke runs (not headline numbers)", ""]
        for doc in quick_docs:
            lines += _section(doc)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip() + "\n")
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["docs"]:
        sys.exit("usage: python bench/_common.py docs")
    print(render_docs())
