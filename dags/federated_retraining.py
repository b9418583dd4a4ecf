"""
### federated_retraining — a new campaign warm-started from the champion

Runs on the schedule `monitoring.retraining_schedule` of `params.yaml` (nightly by
default), and when `federated_monitoring` finds the deployed model degraded (the reason is
in the run's conf). It opens a campaign whose initial model is the current `champion`
(a fresh model if there is none or the configured model changed), then triggers
`federated_training` for round 1; the rounds chain from there, and the last one deploys
only if the new model beats the champion on the same evaluation data.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
import yaml
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, get_current_context, task
from fl_airflow.hooks.artifact_store import ArtifactStoreHook


def _schedule() -> str:
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    raw = yaml.safe_load(params.read_text()) if params.exists() else {}
    return str(((raw or {}).get("monitoring") or {}).get("retraining_schedule", "0 2 * * *"))


@dag(
    dag_id="federated_retraining",
    schedule=_schedule(),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["federated", "retraining"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
    params={
        "reason": Param("scheduled", type="string", description="Why retraining runs"),
        "registered_model": Param(
            None,
            type=["null", "string"],
            description="Whose champion to retrain; default params.yaml",
        ),
        "rounds": Param(None, type=["null", "integer"], minimum=1, maximum=1000),
        "clients_per_round": Param(None, type=["null", "integer"], minimum=1),
        "local_epochs": Param(None, type=["null", "integer"], minimum=1, maximum=100),
        "chain": Param(True, type="boolean", description="Trigger the campaign's rounds"),
    },
)
def federated_retraining() -> None:
    @task
    def open_campaign() -> dict[str, Any]:
        """Campaign warm-started from the champion's weights."""
        from fl_airflow.campaign import open_retraining

        params = dict(get_current_context()["params"])
        ref = open_retraining(ArtifactStoreHook.get_store(), params)
        print(
            f"retraining campaign {ref['campaign_id']} (warm start: {ref['warm_start']}, "
            f"reason: {ref['reason']})"
        )
        return ref

    @task.short_circuit
    def chain() -> bool:
        return bool(get_current_context()["params"]["chain"])

    ref = open_campaign()
    start = TriggerDagRunOperator(
        task_id="start_training",
        trigger_dag_id="federated_training",
        conf={
            "campaign_id": "{{ ti.xcom_pull(task_ids='open_campaign')['campaign_id'] }}",
            "round": 1,
            "chain": True,
        },
    )
    ref >> chain() >> start


federated_retraining()
