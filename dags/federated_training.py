"""
### federated_training — one DAG run is one federated round

Trigger it from the UI with the form below to **start a campaign** (round 1); each run's
last task triggers the next round's run with the campaign id and round in its conf, until
the campaign ends (rounds done, target accuracy, plateau). The last round registers the
model in MLflow and deploys it (alias `champion` only if it beats the current champion).

Tasks: open_round → select_clients → dispatch → train_clients (mapped over client batches)
→ wait_for_updates (sensor: quorum or deadline) → collect → validate_updates → aggregate →
privatize → server_update → evaluate → register_round → next_round → trigger_next_round |
register_model → deploy.

Every task is one call into `fl_core.pipeline`; round state lives in the artifact store
(`campaigns/<id>/rounds/<r>/…`), XCom carries only ids and counts. Tasks are idempotent:
clearing any task and rerunning it gives the same global model.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, get_current_context, task
from fl_airflow.hooks.artifact_store import ArtifactStoreHook
from fl_airflow.sensors.updates import UpdatesArrivedSensor

REF = "ti.xcom_pull(task_ids='open_round')"


def _store() -> Any:
    return ArtifactStoreHook.get_store()


@dag(
    dag_id="federated_training",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["federated", "training"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=5)},
    doc_md=__doc__,
    render_template_as_native_obj=True,
    params={
        "dataset": Param(
            "mnist5k",
            enum=["mnist5k", "digits", "synthetic"],
            description="Built-in dataset (partitioned per params.yaml)",
        ),
        "model": Param("mlp", enum=["mlp", "logreg", "cnn"]),
        "strategy": Param(
            "fedavg",
            enum=[
                "fedavg",
                "median",
                "weighted_median",
                "trimmed_mean",
                "krum",
                "multi_krum",
                "bulyan",
                "norm_bounding",
                "centered_clipping",
                "fltrust",
            ],
            description="Aggregation rule (Byzantine-robust ones use server.* of params.yaml)",
        ),
        "rounds": Param(30, type="integer", minimum=1, maximum=1000),
        "clients_per_round": Param(10, type="integer", minimum=1, maximum=10000),
        "local_epochs": Param(3, type="integer", minimum=1, maximum=100),
        "privacy_level": Param(
            "off",
            enum=["off", "low", "medium", "high"],
            description="Differential privacy: low eps=8, medium eps=3, high eps=1 (delta 1e-5)",
        ),
        "codec": Param(
            "dense_fp32",
            enum=["dense_fp32", "fp16", "q8", "q4", "topk:0.1+q8", "topk:0.01+q8", "topk:0.01"],
            description="Uplink codec (lossy ones keep an error-feedback residual per client)",
        ),
        "client_batch_size": Param(
            5,
            type="integer",
            minimum=1,
            maximum=1000,
            description="Clients per mapped training task",
        ),
        "campaign_id": Param(
            None,
            type=["null", "string"],
            description="Set by the previous round; empty starts a campaign",
        ),
        "round": Param(1, type="integer", minimum=1, description="Set by the previous round"),
        "chain": Param(
            True, type="boolean", description="Trigger the next round's run when this one ends"
        ),
    },
)
def federated_training() -> None:
    @task
    def open_round() -> dict[str, Any]:
        """Start the campaign on round 1 (data, MLflow run, initial model), else resume it."""
        from fl_airflow.campaign import open_round as open_

        ref = open_(_store(), dict(get_current_context()["params"]))
        print(f"campaign {ref['campaign_id']} round {ref['round']}")
        return ref

    @task
    def select_clients(ref: dict[str, Any]) -> int:
        from fl_core import pipeline

        out = pipeline.select_clients(_store(), ref["campaign_id"], ref["round"])
        print(f"cohort ({out['num_selected']}, {out['strategy']}): {out['cohort']}")
        return int(out["num_selected"])

    @task
    def dispatch(ref: dict[str, Any]) -> list[list[str]]:
        from fl_core import pipeline

        size = int(get_current_context()["params"]["client_batch_size"])
        batches = pipeline.client_batches(
            _store(), ref["campaign_id"], ref["round"], batch_size=size
        )
        print(f"dispatched {sum(map(len, batches))} tasks in {len(batches)} batches")
        return batches

    @task(max_active_tis_per_dagrun=4)
    def train_clients(ref: dict[str, Any], batch: list[str]) -> dict[str, Any]:
        from fl_core import pipeline

        out = pipeline.train_clients(_store(), ref["campaign_id"], ref["round"], batch)
        print(
            f"clients {batch}: trained {out['trained']}, already uploaded {out['skipped']}, "
            f"{out['bytes_up']} bytes up"
        )
        return out

    @task
    def collect(ref: dict[str, Any]) -> int:
        from fl_core import pipeline

        out = pipeline.collect(_store(), ref["campaign_id"], ref["round"])
        print(f"received {out['num_received']}, stragglers/dropouts {out['missing']}")
        return int(out["num_received"])

    @task
    def validate_updates(ref: dict[str, Any]) -> int:
        from fl_core import pipeline

        out = pipeline.validate_updates(_store(), ref["campaign_id"], ref["round"])
        print(
            f"accepted {out['num_accepted']}, rejected {out['rejected']}, "
            f"{out['bytes_up']} bytes up"
        )
        return int(out["num_accepted"])

    @task
    def aggregate(ref: dict[str, Any]) -> dict[str, Any]:
        from fl_core import pipeline

        out = pipeline.aggregate(_store(), ref["campaign_id"], ref["round"])
        print(
            f"{out['strategy']} over {out['num_aggregated']} updates "
            f"({out['total_examples']} examples), update norm {out['update_norm']:.4f}"
        )
        return out

    @task
    def privatize(ref: dict[str, Any]) -> dict[str, Any]:
        from fl_core import pipeline

        out = pipeline.privatize(_store(), ref["campaign_id"], ref["round"])
        print(f"privacy: {out}")
        return out

    @task
    def server_update(ref: dict[str, Any]) -> str:
        from fl_core import pipeline

        out = pipeline.server_update(_store(), ref["campaign_id"], ref["round"])
        print(f"global model v{out['model_version']} sha256 {out['model_sha256']}")
        return str(out["model_sha256"])

    @task
    def evaluate(ref: dict[str, Any]) -> float:
        from fl_core import pipeline

        m = pipeline.evaluate(_store(), ref["campaign_id"], ref["round"])
        print(
            f"round {m['round']}: test accuracy {m['test_accuracy']:.4f}, loss "
            f"{m['test_loss']:.4f}, client accuracy p10 {m['client_accuracy_p10']:.4f}, "
            f"bytes up {m['bytes_up']}, down {m['bytes_down']}"
        )
        return float(m["test_accuracy"])

    @task
    def register_round(ref: dict[str, Any]) -> bool:
        from fl_core import pipeline

        return bool(pipeline.register(_store(), ref["campaign_id"], ref["round"])["logged"])

    @task.branch
    def next_round(ref: dict[str, Any]) -> str | None:
        from fl_core import pipeline

        status = pipeline.next_round(_store(), ref["campaign_id"], ref["round"])
        if not status["continue"]:
            print(f"campaign ends after round {ref['round']}: {status['reason']}")
            return "register_model"
        chain = get_current_context()["params"]["chain"]
        print(f"campaign continues; chain={chain}")
        return "trigger_next_round" if chain in (True, "true", "True") else None

    trigger_next = TriggerDagRunOperator(
        task_id="trigger_next_round",
        trigger_dag_id="federated_training",
        conf={
            "campaign_id": "{{ " + REF + "['campaign_id'] }}",
            "round": "{{ " + REF + "['round'] + 1 }}",
            "client_batch_size": "{{ params.client_batch_size }}",
            "chain": True,
        },
    )

    @task
    def register_model(ref: dict[str, Any]) -> dict[str, Any]:
        from fl_core import pipeline

        out = pipeline.register(_store(), ref["campaign_id"], ref["round"], final=True)
        print(f"registered {out.get('registered_model')} version {out.get('version')}")
        return out

    @task
    def deploy(ref: dict[str, Any]) -> dict[str, Any]:
        from fl_core import pipeline

        out = pipeline.deploy(_store(), ref["campaign_id"], ref["round"])
        print(f"deploy: {out}")
        return out

    ref = open_round()
    batches = dispatch(ref)
    select_clients(ref) >> batches
    trained = train_clients.partial(ref=ref).expand(batch=batches)
    wait = UpdatesArrivedSensor(
        task_id="wait_for_updates",
        campaign_id="{{ " + REF + "['campaign_id'] }}",
        round_num="{{ " + REF + "['round'] }}",
        quorum=0.8,
        deadline_s=600,
        poke_interval=5,
        timeout=3600,
    )
    collected = collect(ref)
    trained >> wait >> collected
    validated = validate_updates(ref)
    aggregated = aggregate(ref)
    privatized = privatize(ref)
    updated = server_update(ref)
    evaluated = evaluate(ref)
    logged = register_round(ref)
    decision = next_round(ref)
    collected >> validated >> aggregated >> privatized >> updated >> evaluated >> logged
    registered = register_model(ref)
    registered >> deploy(ref)
    logged >> decision >> [trigger_next, registered]


federated_training()
