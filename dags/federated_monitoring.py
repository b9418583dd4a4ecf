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

`clients` (form field) picks how: `auto` (the default, also when a run's conf does not
set it) checks the champion the way it was trained, i.e. `campaign.clients` of the campaign
that produced it (its `fl.campaign_id` tag); `simulated` or `remote` force a mode.

With `clients: remote` no central labelled data is needed: `publish_check` sends the
champion and the bin edges of its training data's reference histograms (summed from counts
its training clients reported) to every live edge client; each evaluates it on its fresh
local data and reports accuracy, example count and per-feature bin counts (never rows);
`wait_for_reports` (deferrable) waits for them; `check_champion` aggregates weighted
accuracy and PSI per feature with the same thresholds. When no client reported by the
deadline the check is *inconclusive* (no evidence): the report says so,
`alert_inconclusive` raises an alert, and nothing is retrained.
See docs/protocol.md, "Federated monitoring".
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
from fl_airflow.sensors.monitoring import MonitoringReportsSensor


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
        "clients": Param(
            "auto",
            enum=["auto", "simulated", "remote"],
            description="auto: as the champion was trained (its campaign's clients); "
            "simulated: evaluate centrally on eval_path; remote: the live edge clients check "
            "the champion on their own fresh data",
        ),
        "deadline_s": Param(
            600,
            type="integer",
            minimum=10,
            maximum=86400,
            description="Remote mode: seconds the clients have to report",
        ),
    },
)
def federated_monitoring() -> None:
    @task
    def publish_check() -> dict[str, Any] | None:
        """Remote mode: send the champion and the reference bin edges to the live clients."""
        from fl_airflow.monitoring import publish

        ctx = get_current_context()
        published = publish(
            ArtifactStoreHook.get_store(), dict(ctx["params"]), run_id=ctx["run_id"]
        )
        print(f"published: {published}")
        return published

    @task
    def check_champion(published: dict[str, Any] | None) -> dict[str, Any]:
        """Accuracy on the latest evaluation data, validation, drift, health verdict."""
        from fl_airflow.monitoring import check

        ctx = get_current_context()
        report = check(
            ArtifactStoreHook.get_store(),
            dict(ctx["params"]),
            run_id=ctx["run_id"],
            published=published,
        )
        print(
            f"champion v{report.get('version')}: accuracy {report.get('accuracy')}, "
            f"reference {report.get('reference_accuracy')}, verdict={report.get('verdict')}, "
            f"reasons={report['reasons']}"
        )
        return report

    @task.branch
    def decide(report: dict[str, Any]) -> str | None:
        """Alert and retrain when degraded (once per cooldown); alert only when the check is
        inconclusive (no evidence); nothing when healthy."""
        import time

        from fl_airflow.monitoring import cooldown_hours, next_task

        from fl_core.operations import decide_retraining

        decision = decide_retraining(
            ArtifactStoreHook.get_store(),
            report,
            now_s=time.time(),
            cooldown_hours=cooldown_hours(),
        )
        get_current_context()["ti"].xcom_push(key="decision", value=decision)
        print(f"decision: {decision}")
        return next_task(report, decision)

    @task
    def alert(report: dict[str, Any]) -> bool:
        from fl_airflow.hooks.alert import AlertHook

        from fl_core.operations import alert_payload

        decision = get_current_context()["ti"].xcom_pull(task_ids="decide", key="decision")
        return AlertHook().send(alert_payload(report, decision))

    @task
    def alert_inconclusive(report: dict[str, Any]) -> bool:
        """No evidence (no client reported): alert, retrain nothing."""
        from fl_airflow.hooks.alert import AlertHook

        from fl_core.operations import alert_payload

        decision = get_current_context()["ti"].xcom_pull(task_ids="decide", key="decision")
        return AlertHook().send(alert_payload(report, decision))

    @task
    def alert_suppressed(report: dict[str, Any]) -> None:
        print(f"degraded ({report['reasons']}) but within the retraining cooldown")

    published = publish_check()
    waited = MonitoringReportsSensor(
        task_id="wait_for_reports",
        publish_task_id="publish_check",
        poke_interval=5,
        timeout=86400,
    )
    report = check_champion(published)
    published >> waited >> report
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
    branch >> [sent, alert_suppressed(report), alert_inconclusive(report)]
    sent >> retrain


federated_monitoring()
