"""The DVC pipeline's stages: prepare -> partition -> validate -> train -> evaluate.

Each stage is a function of typed config and paths; :mod:`fl_core.cli` is the thin I/O shell
that ``dvc.yaml`` calls. Paths are relative to the project root (the working directory);
local state (MLflow store, artifact store) lives under one root, ``FL_HOME`` (default
``.fl/``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fl_core.config import Config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Paths:
    """Where the stages read and write, relative to the project root."""

    root: Path = Path(".")

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def prepared(self) -> Path:
        return self.data / "prepared"

    @property
    def clients(self) -> Path:
        return self.data / "clients"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def home(self) -> Path:
        """The one local-state root (``FL_HOME``, default ``<root>/.fl``)."""
        env = os.environ.get("FL_HOME")
        return Path(env) if env else self.root / ".fl"


# --------------------------------------------------------------------------- prepare


def prepare(cfg: Config, paths: Paths) -> dict[str, Any]:
    """Load the configured dataset, hold out the global test set, write both tables.

    ``data.dataset`` is a built-in or a dataset registered in ``params.yaml``'s ``datasets``
    section; a missing file or column raises ``ValueError`` naming it.
    """
    from fl_core.config import data_source, scaling_enabled
    from fl_core.data.datasets import load_dataset, train_test_split
    from fl_core.data.io import write_json, write_table

    d = cfg.data
    src = data_source(cfg)
    kwargs: dict[str, Any] = {}
    if src.loader == "synthetic":
        s = d.synthetic
        kwargs = dict(
            alpha=s.alpha,
            beta=s.beta,
            num_clients=s.num_clients,
            num_features=s.num_features,
            num_classes=s.num_classes,
            seed=d.seed,
        )
    elif src.loader == "file":
        problems = check_source(cfg, paths)
        if problems:
            raise ValueError("; ".join(problems))
        kwargs = dict(
            path=paths.root / str(src.path),
            label_column=src.label_column,
            client_column=src.client_column,
        )
    ds = load_dataset(src.loader, **kwargs)
    train, test = train_test_split(ds, test_fraction=d.test_fraction, seed=d.seed)
    out = paths.prepared
    out.mkdir(parents=True, exist_ok=True)
    write_table(out / "train.parquet", train.x, train.y)
    write_table(out / "test.parquet", test.x, test.y)
    if train.client_ids is not None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(
            pa.table({"client_id": [str(c) for c in train.client_ids]}),
            out / "train_clients.parquet",
        )
    meta = {
        "dataset": src.name,
        "loader": src.loader,
        "num_features": int(train.x.shape[1]),
        "num_classes": int(ds.num_classes),
        "input_shape": list(ds.input_shape),
        "labels": list(range(int(ds.num_classes))),
        "feature_min": ds.feature_min,
        "feature_max": ds.feature_max,
        "num_train": int(len(train.y)),
        "num_test": int(len(test.y)),
        "scaling": scaling_enabled(cfg),
    }
    if src.loader == "file":
        meta["source"] = str(src.path)
    write_json(out / "meta.json", meta)
    logger.info(
        "prepared %s: %d train, %d test rows", src.name, meta["num_train"], meta["num_test"]
    )
    return meta


def check_source(cfg: Config, paths: Paths) -> list[str]:
    """Problems with the configured dataset's file that ``fl check`` reports before any work:
    a missing or unreadable file, a missing label or client column (each named). Built-in
    datasets have none. Reads only the file's header (column names)."""
    from fl_core.config import data_source
    from fl_core.data.datasets import table_columns

    src = data_source(cfg)
    if src.loader != "file" or src.path is None:
        return []
    where = f"datasets.{src.name}" if src.name in cfg.datasets else "data"
    path = paths.root / src.path
    if not path.is_file():
        return [f"{where}.path: file {src.path} not found (relative to {paths.root.resolve()})"]
    try:
        columns = table_columns(path)
    except ValueError as exc:
        return [f"{where}.path: {exc}"]
    problems = []
    if src.label_column not in columns:
        problems.append(
            f"{where}.label_column: column {src.label_column!r} not in {src.path} "
            f"(columns: {', '.join(columns[:20])}{', ...' if len(columns) > 20 else ''})"
        )
    if src.client_column is not None and src.client_column not in columns:
        problems.append(
            f"{where}.client_column: column {src.client_column!r} not in {src.path} "
            f"(columns: {', '.join(columns[:20])}{', ...' if len(columns) > 20 else ''})"
        )
    return problems


# --------------------------------------------------------------------------- partition


def partition(cfg: Config, paths: Paths) -> dict[str, Any]:
    """Split the prepared training table into one file per client, with content hashes."""
    from fl_core.data import partition as part
    from fl_core.data.io import read_json, read_table, write_json, write_table
    from fl_core.data.scaling import client_moments, combine

    p = cfg.partition
    x, y = read_table(paths.prepared / "train.parquet")
    out = paths.clients
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("client_*.parquet"):
        old.unlink()
    if p.scheme == "natural":
        import pyarrow.parquet as pq

        ids = np.asarray(
            pq.read_table(paths.prepared / "train_clients.parquet").column("client_id").to_pylist()
        )
        names, parts = part.natural(ids)
        client_ids = part.natural_client_names(names)
    else:
        parts = part.partition(
            p.scheme,
            labels=y,
            num_clients=p.num_clients,
            seed=p.seed,
            alpha=p.alpha,
            classes_per_client=p.classes_per_client,
            sigma=p.sigma,
            min_samples=p.min_samples,
        )
        client_ids = [f"client_{i:04d}" for i in range(len(parts))]
    meta = read_json(paths.prepared / "meta.json")
    clients = []
    moments = []
    for cid, idx in zip(client_ids, parts, strict=True):
        file = f"{cid}.parquet"
        sha = write_table(out / file, x[idx], y[idx])
        labels, counts = np.unique(y[idx], return_counts=True)
        entry = {
            "client_id": cid,
            "file": file,
            "num_examples": int(len(idx)),
            "label_counts": {str(int(k)): int(v) for k, v in zip(labels, counts, strict=True)},
            "sha256": sha,
        }
        if meta.get("scaling"):
            # What the client itself computes and reports: count, sums, sums of squares.
            m = client_moments(x[idx])
            moments.append(m)
            entry["feature_moments"] = m.to_json()
        clients.append(entry)
    if moments and (cfg.privacy.level != "off" or cfg.privacy.client_dp_sgd):
        logger.warning(
            "feature scaling uses per-client feature sums, which the privacy settings do not "
            "cover; set data.scaling: none if the server must not learn client feature means"
        )
    manifest = {
        "scheme": p.scheme,
        "dataset": meta["dataset"],
        "num_clients": len(clients),
        "clients": clients,
        "feature_scaling": combine(moments).to_json() if moments else None,
    }
    write_json(out / "manifest.json", manifest)
    sizes = [len(idx) for idx in parts]
    logger.info(
        "partitioned into %d clients (%s), sizes %d..%d",
        len(clients),
        p.scheme,
        min(sizes),
        max(sizes),
    )
    return manifest


# --------------------------------------------------------------------------- validate


def validate(cfg: Config, paths: Paths) -> Any:
    """Great Expectations suite over every client partition and the test set."""
    from fl_core.data.io import read_json
    from fl_core.data.validation import (
        ValidationRules,
        check_classes,
        validate_tables,
        write_report,
    )

    meta = read_json(paths.prepared / "meta.json")
    manifest = read_json(paths.clients / "manifest.json")
    files = [paths.clients / c["file"] for c in manifest["clients"]]
    test = paths.prepared / "test.parquet"
    rules = ValidationRules(
        num_features=int(meta["num_features"]),
        labels=tuple(int(v) for v in meta["labels"]),
        feature_min=meta["feature_min"],
        feature_max=meta["feature_max"],
        min_samples=cfg.validation.min_samples_per_client,
    )
    report = validate_tables(
        [*files, test], rules=rules, min_samples_applies=lambda path: path != test
    )
    report.files.extend(
        check_classes(
            manifest,
            num_classes=int(meta["num_classes"]),
            num_train_rows=int(meta["num_train"]),
            clients_dir=paths.clients,
            train_file=paths.prepared / "train.parquet",
            allow_single_class=cfg.validation.allow_single_class,
            min_classes_per_client=cfg.validation.min_classes_per_client,
        )
    )
    paths.reports.mkdir(parents=True, exist_ok=True)
    write_report(report, paths.reports / "validation.json")
    return report


# --------------------------------------------------------------------------- train


def train(cfg: Config, paths: Paths, *, progress: bool = True) -> dict[str, Any]:
    """Run the federated campaign (engine), tracked in MLflow, and write DVC outputs."""
    from fl_core import tracking as tr
    from fl_core.engine import run_campaign
    from fl_core.pipeline import model_key, new_campaign_id
    from fl_core.store import LocalStore

    home = paths.home
    store = LocalStore(home / "artifacts")
    campaign_id = new_campaign_id(cfg.campaign.name)
    tracking = tr.start_campaign_run(
        uri=tr.default_tracking_uri(home),
        experiment=cfg.tracking.experiment,
        campaign_id=campaign_id,
        params=cfg.flat(),
        artifact_root=home / "mlartifacts",
    )
    report_file = paths.reports / "validation.json"
    status = "unknown"
    if report_file.exists():
        status = "passed" if json.loads(report_file.read_text()).get("success") else "failed"
    try:
        result = run_campaign(
            cfg,
            data_dir=paths.data,
            store=store,
            tracking=tracking,
            campaign_id=campaign_id,
            progress=progress,
            validation_status=status,
        )
    except BaseException:
        tr.end_run(tracking, status="FAILED")
        raise
    tr.end_run(tracking)
    paths.models.mkdir(parents=True, exist_ok=True)
    paths.metrics.mkdir(parents=True, exist_ok=True)
    paths.plots.mkdir(parents=True, exist_ok=True)
    (paths.models / "global.flw").write_bytes(
        store.get_bytes(model_key(result.campaign_id, result.rounds))
    )
    summary = {
        "campaign_id": result.campaign_id,
        "rounds": result.rounds,
        "final_accuracy": result.final_accuracy,
        "best_accuracy": result.best_accuracy,
        "model_sha256": result.model_sha256,
        "stop_reason": result.stop_reason,
    }
    (paths.models / "campaign.json").write_text(
        json.dumps(
            {
                **summary,
                "tracking": tracking,
                "registered": result.registered,
                "deployed": result.deployed,
                "artifact_store": str(store.root),
            },
            indent=1,
            sort_keys=True,
        )
        + "\n"
    )
    (paths.metrics / "train.json").write_text(
        json.dumps(
            {
                "final_test_accuracy": result.final_accuracy,
                "best_test_accuracy": result.best_accuracy,
                "final_test_loss": result.history[-1]["test_loss"],
                "rounds": result.rounds,
                "bytes_up_total": sum(h["bytes_up"] for h in result.history),
                "bytes_down_total": sum(h["bytes_down"] for h in result.history),
                "updates_accepted_total": sum(int(h["num_accepted"]) for h in result.history),
                "updates_rejected_total": sum(int(h["num_rejected"]) for h in result.history),
                "epsilon": result.history[-1].get("epsilon"),
            },
            indent=1,
            sort_keys=True,
        )
        + "\n"
    )
    keys = [
        "round",
        "test_accuracy",
        "test_loss",
        "train_loss",
        "client_accuracy_mean",
        "client_accuracy_p10",
        "bytes_up",
        "bytes_down",
    ]
    with open(paths.plots / "rounds.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result.history)
    return summary


# --------------------------------------------------------------------------- evaluate


def evaluate(cfg: Config, paths: Paths) -> dict[str, Any]:
    """Final model on the global test set, next to a centralized baseline (same model,
    pooled training data); logged to the campaign's MLflow run with the convergence plot."""
    from fl_core import tracking as tr
    from fl_core import wire
    from fl_core.client import TrainSettings, train_centralized
    from fl_core.client import evaluate as eval_model
    from fl_core.data.io import read_json, read_table
    from fl_core.models import ModelSpec
    from fl_core.seeding import derive_seed

    campaign = json.loads((paths.models / "campaign.json").read_text())
    meta = read_json(paths.prepared / "meta.json")
    spec = ModelSpec.for_data(
        name=cfg.model.name,
        hidden=cfg.model.hidden,
        channels=cfg.model.channels,
        meta=meta,
        manifest=read_json(paths.clients / "manifest.json"),
    )
    _, vector = wire.decode((paths.models / "global.flw").read_bytes())
    x_test, y_test = read_table(paths.prepared / "test.parquet")
    x_train, y_train = read_table(paths.prepared / "train.parquet")
    federated = eval_model(spec, vector, x_test, y_test)
    c = cfg.client
    baseline_vec = train_centralized(
        spec,
        x_train,
        y_train,
        settings=TrainSettings(
            batch_size=c.batch_size, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
        ),
        epochs=cfg.evaluate.baseline_epochs,
        seed=derive_seed(cfg.campaign.seed, "baseline"),
    )
    baseline = eval_model(spec, baseline_vec, x_test, y_test)
    out = {
        "federated_test_accuracy": federated["accuracy"],
        "federated_test_loss": federated["loss"],
        "baseline_test_accuracy": baseline["accuracy"],
        "baseline_test_loss": baseline["loss"],
        "accuracy_gap_points": 100 * (baseline["accuracy"] - federated["accuracy"]),
        "majority_class_accuracy": majority_class_accuracy(y_test),
        "rounds": campaign["rounds"],
    }
    paths.metrics.mkdir(parents=True, exist_ok=True)
    (paths.metrics / "eval.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    history = _read_rounds(paths.plots / "rounds.csv")
    plot = tr.plot_convergence(
        history,
        paths.plots / "convergence.png",
        baseline_accuracy=baseline["accuracy"],
        title=campaign["campaign_id"],
    )
    tracking = campaign.get("tracking")
    if tracking:
        tr.log_metrics(tracking, {k: v for k, v in out.items() if k != "rounds"})
        tr.log_artifact(tracking, plot)
    return out


def _read_rounds(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as fh:
        return [
            {k: (int(v) if k == "round" else float(v)) for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


def majority_class_accuracy(labels: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent label of ``labels`` (0 when empty)."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    return float(np.bincount(y).max() / y.size) if y.size else 0.0


#: A model within this many accuracy points of the majority-class rate learned nothing.
MAJORITY_MARGIN_POINTS = 0.5


def verdict(
    accuracy: float, *, majority: float, rejected: int = 0, accepted: int | None = None
) -> list[str]:
    """Honest warning lines for a summary: a run at (or below) the majority-class rate is
    "no better than predicting the majority class"; rejected updates are counted. Empty when
    there is nothing to warn about."""
    lines = []
    if accuracy <= majority + MAJORITY_MARGIN_POINTS / 100:
        lines.append(
            f"no better than predicting the majority class ({majority:.4f}): the model "
            "learned nothing useful (check feature scaling, lr, rounds)"
        )
    if rejected:
        total = f" of {rejected + accepted}" if accepted is not None else ""
        lines.append(
            f"{rejected}{total} client updates were rejected (see the validation reasons in "
            "the round records / MLflow num_rejected)"
        )
    return lines


def summary(paths: Paths) -> str:
    """The short, human summary printed at the end of ``make run``."""
    campaign = json.loads((paths.models / "campaign.json").read_text())
    ev = json.loads((paths.metrics / "eval.json").read_text())
    manifest = json.loads((paths.clients / "manifest.json").read_text())
    reg = campaign.get("registered") or {}
    dep = campaign.get("deployed") or {}
    tracking = campaign.get("tracking") or {}
    lines = [
        "",
        "Federated campaign finished",
        f"  campaign          {campaign['campaign_id']}",
        f"  rounds            {campaign['rounds']} ({campaign['stop_reason']})",
        f"  clients           {manifest['num_clients']} ({manifest['scheme']} partition of "
        f"{manifest['dataset']})",
        f"  test accuracy     {ev['federated_test_accuracy']:.4f} federated",
        f"                    {ev['baseline_test_accuracy']:.4f} centralized baseline "
        f"(gap {ev['accuracy_gap_points']:+.2f} points)",
        f"  model sha256      {campaign['model_sha256'][:16]}…",
    ]
    train = json.loads((paths.metrics / "train.json").read_text())
    if "majority_class_accuracy" in ev:
        lines.insert(
            -1, f"                    {ev['majority_class_accuracy']:.4f} majority class"
        )
    warnings = verdict(
        float(ev["federated_test_accuracy"]),
        majority=float(ev.get("majority_class_accuracy", 0.0)),
        rejected=int(train.get("updates_rejected_total", 0)),
        accepted=train.get("updates_accepted_total"),
    )
    lines += [f"  WARNING           {w}" for w in warnings]
    if train.get("epsilon") is not None:
        lines.append(f"  privacy           epsilon spent {train['epsilon']:.4f}")
    lines.append(
        f"  uplink bytes      {train['bytes_up_total']:,} (downlink {train['bytes_down_total']:,})"
    )
    if reg:
        reused = " (identical model: existing version reused)" if reg.get("reused") else ""
        lines.append(
            f"  registered        {reg.get('registered_model')} v{reg.get('version')} "
            f"(alias {dep.get('alias', 'challenger')}){reused}"
        )
        if dep.get("reason"):
            lines.append(f"  not deployed      {dep['reason']}")
    lines += [
        f"  MLflow            {tracking.get('uri', '-')} (run {tracking.get('run_id', '-')})",
        "                    open it: make mlflow-ui  ->  http://127.0.0.1:5000",
        f"  artifact store    {campaign.get('artifact_store')}",
        "  DVC               dvc metrics show; dvc plots show (plots/convergence.png)",
    ]
    return "\n".join(lines)
