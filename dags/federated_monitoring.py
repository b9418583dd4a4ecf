"""
### federated_monitoring — watch the deployed model, retrain when it degrades

Runs on `monitoring.monitoring_schedule` of `params.yaml` (hourly by default). It
evaluates `models:/NAME@champion` on the latest evaluation data (`monitoring.eval_path`,
default the prepared test set), validates that data with Great Expectations and measures
its drift from the training data (population stability index). When accuracy dropped more
than `monitoring.max_accuracy_drop` below the deploy-time accuracy, the mean PSI exceeds
`monitoring.max_drift`, or the data fails validation, it raises an alert (task log, and the
webhook in `FL_ALERT_WEBHOOK_URL` or the `fl_alert_webhook` connection) and triggers
`federated_retraining` with the reason — at most once per `monitoring.cooldown_hours`.
When healthy it triggers nothing.
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
    return str(((raw or {}).get("monitoring") or {}).get("monitoring_schedule", "0 * * * *"))


@dag(
    dag_id="federated_monitoring",
    schedule=_schedule(),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["federated", "monitoring"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    doc_md=__doc__,
    params={
        "eval_path": Param(
            None,
            type=["null", "string"],
            description="Evaluation table (Parquet); default from params.yaml",
        ),
        "registered_model": Param(
            None,
            type=["null", "string"],
            description="Registered model to watch; default params.yaml",
        ),
    },
)
def federated_monitoring() -> None:
    @task
    def check_champion() -> dict[str, Any]:
        """Accuracy on the latest evaluation data, validation, drift, health verdict."""
        from fl_airflow.monitoring import check

        ctx = get_current_context()
        report = check(ArtifactStoreHook.get_store(), dict(ctx["params"]), run_id=ctx["run_id"])
        print(
            f"champion v{report.get('version')}: accuracy {report.get('accuracy')}, "
            f"reference {report.get('reference_accuracy')}, healthy={report['healthy']}, "
            f"reasons={report['reasons']}"
        )
        return report

    @task.branch
    def decide(report: dict[str, Any]) -> str | None:
        """Alert and retrain when degraded (once per cooldown); nothing when healthy."""
        import time

        from fl_airflow.monitoring import cooldown_hours

        from fl_core.operations import decide_retraining

        decision = decide_retraining(
            ArtifactStoreHook.get_store(),
            report,
            now_s=time.time(),
            cooldown_hours=cooldown_hours(),
        )
        get_current_context()["ti"].xcom_push(key="decision", value=decision)
        print(f"decision: {decision}")
        if decision["trigger"]:
            return "alert"
        return "alert_suppressed" if not report["healthy"] else None

    @task
    def alert(report: dict[str, Any]) -> bool:
        from fl_airflow.hooks.alert import AlertHook

        from fl_core.operations import alert_payload

        decision = get_current_context()["ti"].xcom_pull(task_ids="decide", key="decision")
        return AlertHook().send(alert_payload(report, decision))

    @task
    def alert_suppressed(report: dict[str, Any]) -> None:
        print(f"degraded ({report['reasons']}) but within the retraining cooldown")

    report = check_champion()
    branch = decide(report)
    sent = alert(report)
    retrain = TriggerDagRunOperator(
        task_id="trigger_retraining",
        trigger_dag_id="federated_retraining",
        conf={
            "reason": "{{ ti.xcom_pull(task_ids='decide', key='decision')['reason'] }}",
            "registered_model": "{{ ti.xcom_pull(task_ids='check_champion')['model'] }}",
        },
    )
    branch >> [sent, alert_suppressed(report)]
    sent >> retrain


federated_monitoring()
