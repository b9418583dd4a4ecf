"""Accuracy after a fixed number of rounds versus total uplink traffic, per update codec.

Runs the default campaign of ``params.yaml`` (MNIST 5k, Dirichlet(0.5) over 20 clients,
10 per round, MLP 200 hidden) once per configuration, with the same seed and number of
rounds, in simulation (every client gets a slow-cellular, fast-cellular or wifi link from
the same profile mix, so simulated time is comparable):

* dense fp32, fp16, int8 (``q8``), top-1% + error feedback, top-1% + int8 + error
  feedback (fixed policy), and the adaptive policy (codec, local epochs and participation
  by link speed; the codecs of ``params.yaml``);
* if no configuration reaches the goal (at least 100x less uplink than dense fp32 with at
  most 1 point of accuracy lost), a few variants with the same round count (other top-k
  fractions and value codecs, a client learning rate), most compressed first, until one
  stays within 1 point, then the adaptive policy with sparse codecs on every link; the
  best ratio within 1 point becomes the extra row ``best within 1 point``.

Prints a table (final and best accuracy, total uplink bytes, the ratio vs dense fp32 of
whole messages and of payloads only, total downlink bytes, accuracy loss vs dense in
points, simulated time) and writes ``compression.csv``, ``compression.json`` and
``compression.png`` (accuracy vs total uplink bytes, log x) under
``.fl/bench/compression/`` (``compression_quick.*`` with ``--quick``), also logged to
MLflow (embedded store under ``.fl/``, experiment ``bench-compression``)::

    python bench/bench_compression.py [--rounds 30] [--quick] [--no-search] [--no-mlflow]

The message header (~560 bytes with the simulated clients' metrics) is counted in the
"all-in" bytes; it caps the ratio of very sparse codecs, so the payload-only ratio is
reported too.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fl_core import pipeline, stages, wire
from fl_core.config import Config, load_params, with_overrides
from fl_core.engine import run_campaign
from fl_core.store import LocalStore

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".fl" / "bench" / "compression"
EXPERIMENT = "bench-compression"
CAMPAIGN_ID = "bench-compression"  # the same id for every run: same header size, same RNG
GOAL_RATIO = 100.0

# Every run: simulated clients (same profile mix as params.yaml), all rounds run.
COMMON: dict[str, Any] = {
    "simulation.enabled": True,
    "communication.policy": "fixed",
    "communication.error_feedback": True,
    "campaign.target_accuracy": None,
    "campaign.plateau_patience": None,
}


@dataclass(frozen=True)
class Variant:
    """One benchmarked configuration: a label and its overrides of ``params.yaml``."""

    key: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)


def _codec(name: str) -> dict[str, Any]:
    return {"communication.uplink_codec": name}


BASE: tuple[Variant, ...] = (
    Variant("dense_fp32", "dense fp32", _codec("dense_fp32")),
    Variant("fp16", "fp16", _codec("fp16")),
    Variant("q8", "int8 (q8)", _codec("q8")),
    Variant("topk1_ef", "top-1% + EF", _codec("topk:0.01")),
    Variant("topk1_q8_ef", "top-1% + int8 + EF", _codec("topk:0.01+q8")),
    Variant("adaptive", "adaptive policy", {"communication.policy": "adaptive"}),
)

# Tried only when no base row reaches the goal, fixed codecs first, most compressed first
# (estimated all-in ratio in the comment); that part stops at the first one within the
# tolerance. Then the adaptive policy with sparse codecs on every link class. Exploration
# with the default seed showed that no client-side knob rescues top-1% + int8 in 30 rounds
# (client lr 0.03 / 0.07 / 0.1, client momentum 0 / 0.95, local epochs 1 / 5, batch size 8
# end 1.7 to 6.7 points below dense fp32, the defaults 1.4), nor do server lr 2 or server
# momentum 0.5 / 0.9; the loss shrinks with the top-k fraction instead.
FIXED_CANDIDATES: tuple[Variant, ...] = (
    Variant(
        "topk1_q8_lr0.07",
        "top-1% + int8 + EF, client lr 0.07",
        {**_codec("topk:0.01+q8"), "client.lr": 0.07},
    ),  # ~119x
    Variant("topk1.2_q8", "top-1.2% + int8 + EF", _codec("topk:0.012+q8")),  # ~101x
    Variant("topk1.5_q4", "top-1.5% + int4 + EF", _codec("topk:0.015+q4")),  # ~97x
    Variant("topk2_q2", "top-2% + int2 + EF", _codec("topk:0.02+q2")),  # ~82x
    Variant("topk2_q4", "top-2% + int4 + EF", _codec("topk:0.02+q4")),  # ~74x
    Variant("topk3_q4", "top-3% + int4 + EF", _codec("topk:0.03+q4")),  # ~51x
    Variant("topk5_q4", "top-5% + int4 + EF", _codec("topk:0.05+q4")),  # ~31x
)
ADAPTIVE_CANDIDATES: tuple[Variant, ...] = (
    Variant(
        "adaptive_sparse",
        "adaptive: top-1%+q8|3%+q4|5%+q4",
        {
            "communication.policy": "adaptive",
            "communication.slow_codec": "topk:0.01+q8",
            "communication.medium_codec": "topk:0.03+q4",
            "communication.fast_codec": "topk:0.05+q4",
        },
    ),  # ~47x
)
CANDIDATES = FIXED_CANDIDATES + ADAPTIVE_CANDIDATES
# Test accuracies are float32 multiples of 1/num_test: compare losses with this slack (points).
SLACK_POINTS = 1e-4


@dataclass
class Result:
    """One configuration's outcome."""

    key: str
    label: str
    role: str
    overrides: dict[str, Any]
    rounds: int
    final_accuracy: float
    best_accuracy: float
    bytes_up: int
    payload_up: int
    bytes_down: int
    sim_time_s: float
    wall_s: float
    history: list[dict[str, Any]]
    ratio: float = float("nan")
    payload_ratio: float = float("nan")
    loss_points: float = float("nan")

    def compare(self, dense: Result) -> None:
        """Fill the ratios and the accuracy loss against the dense fp32 run."""
        self.ratio = dense.bytes_up / self.bytes_up if self.bytes_up else float("inf")
        self.payload_ratio = dense.payload_up / self.payload_up if self.payload_up else float("inf")
        self.loss_points = 100.0 * (dense.final_accuracy - self.final_accuracy)

    def summary(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "configuration": self.label,
            "role": self.role,
            "overrides": json.dumps(self.overrides, sort_keys=True),
            "rounds": self.rounds,
            "final_accuracy": round(self.final_accuracy, 6),
            "best_accuracy": round(self.best_accuracy, 6),
            "bytes_up": self.bytes_up,
            "payload_up": self.payload_up,
            "ratio_vs_dense": round(self.ratio, 3),
            "payload_ratio_vs_dense": round(self.payload_ratio, 3),
            "bytes_down": self.bytes_down,
            "accuracy_loss_points": round(self.loss_points, 3),
            "sim_time_s": round(self.sim_time_s, 3),
            "wall_s": round(self.wall_s, 1),
        }


# --------------------------------------------------------------------------- running


def prepare_data(cfg: Config, root: Path) -> Path:
    """Prepare and partition the dataset under ``root/data`` once (re-done if the ``data``
    or ``partition`` section changed); returns the data directory."""
    paths = stages.Paths(root)
    stamp = paths.data / "bench_stamp.json"
    want = json.dumps(
        {"data": cfg.to_dict()["data"], "partition": cfg.to_dict()["partition"]}, sort_keys=True
    )
    manifest = paths.clients / "manifest.json"
    if not (manifest.exists() and stamp.exists() and stamp.read_text() == want):
        stages.prepare(cfg, paths)
        stages.partition(cfg, paths)
        stamp.write_text(want)
    return paths.data


def payload_bytes(store: LocalStore, cid: str, rounds: int) -> int:
    """Uplink payload bytes (headers and framing excluded) of every received update."""
    total = 0
    for rnd in range(1, rounds + 1):
        collected = pipeline.collect(store, cid, rnd)
        for client in collected["received"]:
            src = int(collected["sources"][client])
            data = store.get_bytes(pipeline.update_key(cid, src, client))
            total += wire.message_sizes(data)["payload_bytes"]
    return total


def run_variant(base: Config, variant: Variant, *, data_dir: Path, role: str) -> Result:
    """Run one configuration in a throw-away artifact store."""
    cfg = with_overrides(base, variant.overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=OUT, prefix="store-") as tmp:
        store = LocalStore(tmp)
        result = run_campaign(
            cfg,
            data_dir=data_dir,
            store=store,
            campaign_id=CAMPAIGN_ID,
            progress=False,
            deploy=False,
        )
        payload = payload_bytes(store, result.campaign_id, result.rounds)
    hist = result.history
    return Result(
        key=variant.key,
        label=variant.label,
        role=role,
        overrides=variant.overrides,
        rounds=result.rounds,
        final_accuracy=float(result.final_accuracy),
        best_accuracy=float(result.best_accuracy),
        bytes_up=int(sum(h["bytes_up"] for h in hist)),
        payload_up=payload,
        bytes_down=int(sum(h["bytes_down"] for h in hist)),
        sim_time_s=float(hist[-1].get("sim_time_s", 0.0)),
        wall_s=time.perf_counter() - start,
        history=[
            {
                k: h[k]
                for k in ("round", "test_accuracy", "bytes_up", "bytes_down", "sim_time_s")
                if k in h
            }
            for h in hist
        ],
    )


def within(result: Result, max_loss: float) -> bool:
    return result.loss_points <= max_loss + SLACK_POINTS


def best_within(results: list[Result], max_loss: float) -> Result | None:
    """The highest all-in ratio among the compressed configurations within ``max_loss``."""
    ok = [r for r in results if r.key != "dense_fp32" and within(r, max_loss)]
    return max(ok, key=lambda r: r.ratio) if ok else None


# --------------------------------------------------------------------------- reporting


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def format_table(rows: list[Result]) -> str:
    width = max([len("configuration")] + [len(r.label) for r in rows])
    head = (
        f"{'configuration':<{width}} {'final':>6} {'best':>6} {'uplink':>10} {'ratio':>8} "
        f"{'payload':>8} {'downlink':>10} {'loss pt':>7} {'sim time':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.label:<{width}} {r.final_accuracy:>6.4f} {r.best_accuracy:>6.4f} "
            f"{_fmt_bytes(r.bytes_up):>10} {r.ratio:>7.1f}x {r.payload_ratio:>7.1f}x "
            f"{_fmt_bytes(r.bytes_down):>10} {r.loss_points:>+7.2f} {r.sim_time_s:>8.1f}s"
        )
    return "\n".join(lines)


def write_csv(path: Path, results: list[Result]) -> None:
    rows = [r.summary() for r in results]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(path: Path, results: list[Result], dense: Result, max_loss: float) -> None:
    """Final accuracy vs total uplink bytes (log x, dots; the per-round path faint) and
    accuracy vs simulated time, one colour per configuration (search candidates dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, 6))
    cmap = plt.get_cmap("tab20")  # dark shades first, then the light ones
    for i, r in enumerate(results):
        color = cmap((2 * i) % 20 + (i // 10) % 2)
        style = "-" if r.role == "base" else ":"
        cum, total = [], 0
        for h in r.history:
            total += int(h["bytes_up"])
            cum.append(total)
        acc = [float(h["test_accuracy"]) for h in r.history]
        ax1.plot(cum, acc, color=color, ls=style, lw=0.8, alpha=0.35)
        ax1.scatter(
            [r.bytes_up],
            [r.final_accuracy],
            color=color,
            zorder=3,
            marker="o" if r.role == "base" else "s",
            label=f"{r.label}: {r.ratio:.0f}x, {r.loss_points:+.1f} pt",
        )
        ax1.annotate(
            f"{r.ratio:.0f}x",
            (r.bytes_up, r.final_accuracy),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
        sim = [float(h.get("sim_time_s", 0.0)) for h in r.history]
        ax2.plot(sim, acc, color=color, ls=style, lw=1)
    floor = dense.final_accuracy - max_loss / 100.0
    for ax in (ax1, ax2):
        ax.axhline(floor, color="k", ls="--", lw=0.8, label=f"dense fp32 - {max_loss:g} pt")
        ax.set_ylim(max(0.0, floor - 0.05), min(1.0, dense.best_accuracy + 0.01))
        ax.grid(alpha=0.3, which="both")
    ax1.set(
        xscale="log",
        xlabel="total uplink bytes (log; faint: cumulative per round)",
        ylabel="test accuracy",
        title=f"final accuracy vs total uplink bytes ({dense.rounds} rounds)",
    )
    ax2.set(xlabel="simulated time (s)", ylabel="test accuracy", title="accuracy vs simulated time")
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0.0, 0.0, 0.77, 1.0))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_mlflow(results: list[Result], settings: dict[str, Any], files: list[Path]) -> str:
    """One parent run (settings, summary metrics, the table and plot) and one child run per
    configuration (its per-round metrics); returns the parent run id."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from fl_core import tracking as tr

    home = ROOT / ".fl"
    uri = tr.default_tracking_uri(home)
    artifact_root = home / "mlartifacts"
    stamp = time.strftime("%Y%m%dT%H%M%S")
    parent = tr.start_campaign_run(
        uri=uri,
        experiment=EXPERIMENT,
        campaign_id=f"bench-{stamp}",
        params=settings,
        artifact_root=artifact_root,
    )
    client = MlflowClient(tracking_uri=uri)
    ts = int(time.time() * 1000)
    summary: list[Metric] = []
    for r in results:
        child = tr.start_campaign_run(
            uri=uri,
            experiment=EXPERIMENT,
            campaign_id=f"{r.key}-{stamp}",
            params={"configuration": r.label, "role": r.role, **r.overrides},
            tags={"mlflow.parentRunId": parent["run_id"]},
            artifact_root=artifact_root,
        )
        metrics: list[Metric] = []
        cum = 0
        for h in r.history:
            step = int(h["round"])
            cum += int(h["bytes_up"])
            metrics += [
                Metric("test_accuracy", float(h["test_accuracy"]), ts, step),
                Metric("bytes_up", float(h["bytes_up"]), ts, step),
                Metric("bytes_up_cumulative", float(cum), ts, step),
                Metric("sim_time_s", float(h.get("sim_time_s", 0.0)), ts, step),
            ]
        values = {k: v for k, v in r.summary().items() if isinstance(v, int | float)}
        metrics += [Metric(k, float(v), ts, 0) for k, v in values.items()]
        summary += [
            Metric(f"{r.key}.{k}", float(v), ts, 0) for k, v in values.items() if k != "rounds"
        ]
        for i in range(0, len(metrics), 900):
            client.log_batch(child["run_id"], metrics=metrics[i : i + 900])
        tr.end_run(child)
    for i in range(0, len(summary), 900):
        client.log_batch(parent["run_id"], metrics=summary[i : i + 900])
    for path in files:
        tr.log_artifact(parent, path)
    tr.end_run(parent)
    return str(parent["run_id"])


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds per campaign (default 30; 5 with --quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 5 rounds, at most one search candidate"
    )
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--seed", type=int, default=None, help="campaign seed (default: params)")
    parser.add_argument(
        "--max-loss",
        type=float,
        default=1.0,
        help="accuracy points a compressed configuration may lose vs dense",
    )
    parser.add_argument("--no-search", action="store_true", help="only the six base configurations")
    parser.add_argument(
        "--max-candidates",
        type=int,
        default=None,
        help=f"at most this many search candidates (of {len(CANDIDATES)})",
    )
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (5 if args.quick else 30)
    if rounds < 1:
        parser.error("--rounds must be >= 1")
    max_candidates = args.max_candidates
    if max_candidates is None:
        max_candidates = 1 if args.quick else len(CANDIDATES)
    if args.no_search:
        max_candidates = 0

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    params = load_params(args.params)
    overrides: dict[str, Any] = {**COMMON, "campaign.rounds": rounds}
    if args.seed is not None:
        overrides["campaign.seed"] = args.seed
    base = with_overrides(params, overrides)
    data_dir = prepare_data(base, OUT)

    def run(variant: Variant, role: str) -> Result:
        print(f"  running {variant.label} ...", file=sys.stderr, flush=True)
        res = run_variant(base, variant, data_dir=data_dir, role=role)
        print(
            f"    final {res.final_accuracy:.4f}, {res.bytes_up:,} B up, {res.wall_s:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        return res

    print(
        f"{len(BASE)} configurations x {rounds} rounds (seed {base.campaign.seed}, "
        f"simulation on) ...",
        file=sys.stderr,
        flush=True,
    )
    rows = [run(v, "base") for v in BASE]
    dense = rows[0]
    for r in rows:
        r.compare(dense)

    tried: list[Result] = []
    goal_met = any(r.ratio >= GOAL_RATIO and within(r, args.max_loss) for r in rows)
    if not goal_met and max_candidates > 0:
        print(
            f"no base configuration reaches {GOAL_RATIO:g}x within {args.max_loss:g} point; "
            "searching ...",
            file=sys.stderr,
            flush=True,
        )
        budget = max_candidates
        for variant in FIXED_CANDIDATES[:budget]:
            res = run(variant, "candidate")
            res.compare(dense)
            tried.append(res)
            if within(res, args.max_loss):
                break
        for variant in ADAPTIVE_CANDIDATES[: max(0, budget - len(tried))]:
            res = run(variant, "candidate")
            res.compare(dense)
            tried.append(res)

    best = best_within(rows + tried, args.max_loss)
    table_rows = list(rows)
    if best is not None:
        extra = Result(**{**best.__dict__, "role": "best"})
        extra.label = f"best within {args.max_loss:g} point: {best.label}"
        table_rows.append(extra)

    print()
    print(
        f"MNIST 5k, Dirichlet({base.partition.alpha:g}) over {base.partition.num_clients} "
        f"clients, {base.campaign.clients_per_round} per round, {base.model.name} "
        f"{list(base.model.hidden)}, {rounds} rounds, seed {base.campaign.seed}; simulated "
        f"links: cellular_slow {base.simulation.cellular_slow:g} / cellular_fast "
        f"{base.simulation.cellular_fast:g} / wifi {base.simulation.wifi:g}"
    )
    print(
        "ratio = dense fp32 uplink bytes / uplink bytes (whole messages); payload = the same "
        "without headers;\nloss pt = dense final accuracy - final accuracy, in points"
    )
    print(format_table(table_rows))
    if tried:
        print("\nsearch (same rounds and seed):")
        print(format_table(tried))
    print()
    if best is None:
        print(f"no compressed configuration stays within {args.max_loss:g} point of dense fp32")
    else:
        verdict = "reaches" if best.ratio >= GOAL_RATIO else "does not reach"
        print(
            f"best within {args.max_loss:g} point: {best.label}: {best.ratio:.1f}x all-in "
            f"({best.payload_ratio:.1f}x payload), loss {best.loss_points:+.2f} pt "
            f"-> {verdict} the {GOAL_RATIO:g}x goal; overrides {json.dumps(best.overrides)}"
        )

    all_results = table_rows + tried
    stem = "compression_quick" if args.quick else "compression"  # a smoke run keeps the real one
    csv_path, json_path, png_path = (OUT / f"{stem}.{ext}" for ext in ("csv", "json", "png"))
    write_csv(csv_path, all_results)
    settings = {
        "rounds": rounds,
        "seed": base.campaign.seed,
        "max_loss_points": args.max_loss,
        "goal_ratio": GOAL_RATIO,
        "common_overrides": json.dumps(overrides, sort_keys=True),
        "dataset": base.data.dataset,
        "partition": f"{base.partition.scheme}({base.partition.alpha:g}) x "
        f"{base.partition.num_clients}",
        "model": f"{base.model.name} {list(base.model.hidden)}",
    }
    json_path.write_text(
        json.dumps(
            {
                "settings": settings,
                "rows": [{**r.summary(), "history": r.history} for r in table_rows],
                "search": [{**r.summary(), "history": r.history} for r in tried],
                "best_within_tolerance": None if best is None else best.summary(),
            },
            indent=1,
        )
        + "\n"
    )
    plot(png_path, rows + tried, dense, args.max_loss)
    print(f"wrote {csv_path}, {json_path.name}, {png_path.name}")
    if not args.no_mlflow:
        run_id = log_mlflow(all_results, settings, [csv_path, json_path, png_path])
        print(f"MLflow: experiment {EXPERIMENT!r}, run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
