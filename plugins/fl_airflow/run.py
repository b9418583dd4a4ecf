"""Run a whole campaign through the real ``federated_training`` DAG, no services needed.

Each round is one DAG run recorded in Airflow's metadata DB (SQLite under
``FL_HOME/airflow``), executed in this process with ``dag.test`` (Airflow's own in-process
runner: real task instances, XCom, mapped tasks, branching, sensors). Here the runner chains
the rounds (``chain=False`` in each run's conf); under a scheduler (``make airflow``) the
DAG's last task triggers the next round itself.

    python -m fl_airflow.run [--rounds N] [--dataset mnist5k] [--model mlp] ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

from fl_airflow import env


def _migrate() -> None:
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def load_dag(dag_id: str) -> Any:
    """The DAG object parsed from this repo's ``dags/`` folder."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(env.PROJECT_ROOT / "dags" / f"{dag_id}.py"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    return bag.get_dag(dag_id)


def run_campaign(form: dict[str, Any], *, quiet: bool = True) -> dict[str, Any]:
    """Run every round of one campaign as a DAG run; returns the campaign's final status."""
    if quiet:  # task logs stay in Airflow; the console shows the progress bar
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    env.configure()
    for name in ("sqlalchemy", "alembic", "mlflow", "great_expectations"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _migrate()
    from tqdm import tqdm

    from fl_airflow.hooks.artifact_store import ArtifactStoreHook
    from fl_core.campaigns import config_from_form
    from fl_core.config import load_params
    from fl_core.rounds import layout, records
    from fl_core.rounds.campaign import new_campaign_id

    dag = load_dag("federated_training")
    store = ArtifactStoreHook.get_store()
    from fl_airflow.hooks.artifact_store import project_root

    cfg = config_from_form(load_params(project_root() / "params.yaml"), form)
    cid = form.get("campaign_id") or new_campaign_id(cfg.campaign.name)
    # What each task did (cohort, accepted/rejected, accuracy, bytes) goes to this file; the
    # console keeps the progress bar.
    task_log = env.fl_home() / "airflow" / f"tasks-{cid}.log"
    bar = tqdm(
        total=cfg.campaign.rounds,
        desc=f"campaign {cid}",
        unit="round",
        file=sys.stderr,
        dynamic_ncols=True,
    )
    status: dict[str, Any] = {}
    try:
        for rnd in range(1, cfg.campaign.rounds + 1):
            conf = {**form, "campaign_id": cid, "round": rnd, "chain": False}
            started = time.perf_counter()
            with (
                open(task_log, "a") as log,
                contextlib.redirect_stdout(log if quiet else sys.stdout),
            ):
                dag_run = dag.test(run_conf=conf)
            if str(dag_run.state) != "success":
                raise RuntimeError(
                    f"round {rnd}: DAG run {dag_run.run_id} ended {dag_run.state}; "
                    f"task output in {task_log}"
                )
            status = records.read(store, records.CampaignStatus, cid, step="run").to_dict()
            metrics = records.read(store, records.RoundMetrics, cid, rnd, step="run").to_dict()
            bar.set_postfix(
                acc=f"{metrics['test_accuracy']:.4f}", s=f"{time.perf_counter() - started:.1f}"
            )
            bar.update(1)
            if not status["continue"]:
                break
    finally:
        bar.close()
    deployed = (
        store.get_json(layout.campaign_key(cid, layout.DEPLOY))
        if store.exists(layout.campaign_key(cid, layout.DEPLOY))
        else None
    )
    return {
        **status,
        "deployed": deployed,
        "task_log": str(task_log),
        "airflow_db": env.configure()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        "artifact_store": store.uri(layout.campaign_key(cid)),
    }


def rerun_round(campaign_id: str, rnd: int) -> str:
    """Run round ``rnd`` of an existing campaign again as a new DAG run (e.g. after clearing
    some of its outputs); returns the run's state. Idempotent steps give the same model."""
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    env.configure()
    _migrate()
    dag_run = load_dag("federated_training").test(
        run_conf={"campaign_id": campaign_id, "round": rnd, "chain": False}
    )
    return str(dag_run.state)


def run_dag(dag_id: str, conf: dict[str, Any]) -> str:
    """One run of any DAG of this repo, in-process; returns its final state."""
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    env.configure()
    _migrate()
    return str(load_dag(dag_id).test(run_conf=conf).state)


def _warnings(out: dict[str, Any]) -> list[str]:
    """The honest-summary warnings (majority-class rate, rejected updates) of a campaign."""
    import numpy as np

    from fl_airflow.hooks.artifact_store import ArtifactStoreHook
    from fl_core.rounds.state import history, load_campaign, test_table
    from fl_core.stages import verdict

    store = ArtifactStoreHook.get_store()
    rec = load_campaign(store, out["campaign_id"])
    _, y = test_table(rec)
    majority = float(np.bincount(np.asarray(y, dtype=np.int64)).max() / max(1, len(y)))
    hist = history(store, out["campaign_id"], int(out["last_round"]))
    rejected = sum(int(h.get("num_rejected", 0)) for h in hist)
    accepted = sum(int(h.get("num_accepted", 0)) for h in hist)
    return verdict(
        float(out["final_accuracy"]), majority=majority, rejected=rejected, accepted=accepted
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--clients-per-round", type=int, dest="clients_per_round")
    parser.add_argument("--local-epochs", type=int, dest="local_epochs")
    parser.add_argument("--dataset")
    parser.add_argument("--model")
    parser.add_argument("--clients", choices=["simulated", "remote"])
    parser.add_argument("--client-batch-size", type=int, dest="client_batch_size", default=5)
    parser.add_argument("--json", action="store_true", help="print the final status as JSON")
    parser.add_argument("--rerun-round", type=int, help="re-run one round of --campaign-id")
    parser.add_argument("--campaign-id")
    parser.add_argument("--dag", help="run one DAG run of this DAG id (with --conf) and exit")
    parser.add_argument("--conf", default="{}", help="JSON conf for --dag")
    args = parser.parse_args(argv)
    if args.dag:
        state = run_dag(args.dag, json.loads(args.conf))
        print(state)
        return 0 if state == "success" else 1
    if args.rerun_round:
        state = rerun_round(args.campaign_id, args.rerun_round)
        print(state)
        return 0 if state == "success" else 1
    from fl_core.form import FORM_FIELDS

    fields = {f.name for f in FORM_FIELDS}
    form = {k: v for k, v in vars(args).items() if v is not None and k in fields}
    out = run_campaign(form)
    if args.json:
        print(json.dumps(out, default=str))  # one line, last on stdout
    else:
        dep = out.get("deployed") or {}
        print(
            f"\ncampaign {out['campaign_id']}: {out['last_round']} rounds ({out['reason']}), "
            f"final test accuracy {out['final_accuracy']:.4f}"
        )
        if out.get("epsilon") is not None:
            print(f"  privacy: epsilon spent {out['epsilon']:.4f}")
        for line in _warnings(out):
            print(f"  WARNING: {line}")
        print(
            f"  model {dep.get('registered_model')} v{dep.get('version')} -> alias "
            f"{dep.get('alias')}"
        )
        print(f"  Airflow DB {out['airflow_db']} (see the runs: make airflow)")
        print(f"  task output {out['task_log']}")
        print(f"  artifacts {out['artifact_store']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
