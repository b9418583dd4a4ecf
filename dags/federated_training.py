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

The tasks are built from the round's step list (`fl_core.rounds.ROUND_STEPS`, then
`FINAL_STEPS`): a task id is its step's name and the task is one call into that step.
Round state lives in the artifact store
(`campaigns/<id>/rounds/<r>/…`), XCom carries only ids and counts. Tasks are idempotent:
clearing any task and rerunning it gives the same global model.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, get_current_context, task
from fl_airflow.hooks.artifact_store import ArtifactStoreHook, project_root
from fl_airflow.sensors.updates import UpdatesArrivedSensor

from fl_core.form import airflow_params, load_params_quietly
from fl_core.rounds import FINAL_STEPS, ROUND_STEPS

REF = "ti.xcom_pull(task_ids='open_round')"
# The form's defaults are the project's params.yaml (the one open_round reads).
FORM = airflow_params(load_params_quietly(str(project_root() / "params.yaml")))


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
    # Declared once in fl_core.form (config key, bounds, help, section); defaults from
    # params.yaml. Users' fields first, run plumbing in a collapsed section.
    params={
        name: Param(**spec)
        for name, spec in airflow_params(
            load_params_quietly(str(project_root() / "params.yaml"))
        ).items()
    },
)
def federated_training() -> None:
    @task
    def open_round() -> dict[str, Any]:
        """Start the campaign on round 1 (data, MLflow run, initial model), else resume it."""
        from fl_airflow.campaign import open_round as open_

        from fl_core.form import check_conf_keys

        context = get_current_context()
        check_conf_keys(dict(context["dag_run"].conf or {}))  # a typo is an error, not ignored
        ref = open_(_store(), dict(context["params"]))
        print(f"campaign {ref['campaign_id']} round {ref['round']}")
        return ref

    def step_task(name: str) -> Any:
        """A task that runs the round step ``name`` (task id == step name)."""

        @task(task_id=name)
        def run(ref: dict[str, Any]) -> Any:
            from fl_airflow.steps import run_step

            return run_step(name, ref)

        return run

    @task(task_id="dispatch")
    def dispatch(ref: dict[str, Any]) -> list[list[str]]:
        """Publish the round's tasks; return the client batches the training tasks map over."""
        from fl_airflow.steps import run_step

        from fl_core.rounds.dispatch import client_batches

        run_step("dispatch", ref)
        size = int(get_current_context()["params"]["client_batch_size"])
        batches = client_batches(_store(), ref["campaign_id"], int(ref["round"]), batch_size=size)
        print(f"dispatched {sum(map(len, batches))} tasks in {len(batches)} batches")
        return batches

    @task(task_id="train_clients", max_active_tis_per_dagrun=4)
    def train_clients(ref: dict[str, Any], batch: list[str]) -> dict[str, Any]:
        from fl_airflow.steps import run_step

        out: dict[str, Any] = run_step("train_clients", ref, batch)
        return out

    @task.branch(task_id="next_round")
    def next_round(ref: dict[str, Any]) -> str | None:
        from fl_airflow.steps import run_step

        status = run_step("next_round", ref)
        if not status["continue"]:
            print(f"campaign ends after round {ref['round']}: {status['reason']}")
            return "register_model"
        chain = get_current_context()["params"]["chain"]
        print(f"campaign continues; chain={chain}")
        return "trigger_next_round" if chain in (True, "true", "True") else None

    trigger_next = TriggerDagRunOperator(
        task_id="trigger_next_round",
        trigger_dag_id="federated_training",
        trigger_run_id="{{ " + REF + "['campaign_id'] }}-r{{ " + REF + "['round'] + 1 }}",
        conf={
            "campaign_id": "{{ " + REF + "['campaign_id'] }}",
            "round": "{{ " + REF + "['round'] + 1 }}",
            "client_batch_size": "{{ params.client_batch_size }}",
            "chain": True,
        },
    )

    special = {"dispatch": dispatch, "train_clients": train_clients, "next_round": next_round}
    ref = open_round()
    outputs: dict[str, Any] = {}
    previous: Any = ref
    for name in ROUND_STEPS:
        if name == "train_clients":
            trained = train_clients.partial(ref=ref).expand(batch=outputs["dispatch"])
            wait = UpdatesArrivedSensor(
                task_id="wait_for_updates",
                campaign_id="{{ " + REF + "['campaign_id'] }}",
                round_num="{{ " + REF + "['round'] }}",
                quorum=0.8,
                deadline_s=600,
                poke_interval=5,
                timeout=3600,
            )
            trained >> wait
            previous = wait
            continue
        current = special.get(name, step_task(name))(ref)
        if previous is not ref:
            previous >> current
        outputs[name] = previous = current
    final_prev: Any = None
    for name in FINAL_STEPS:
        current = step_task(name)(ref)
        if final_prev is not None:
            final_prev >> current
        outputs[name] = final_prev = current
    outputs["next_round"] >> [trigger_next, outputs[FINAL_STEPS[0]]]


federated_training()
