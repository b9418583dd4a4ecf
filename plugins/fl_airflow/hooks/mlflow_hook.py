"""Hook owning the MLflow tracking/registry URI (embedded SQLite, or ``MLFLOW_TRACKING_URI``)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from fl_airflow.hooks.artifact_store import fl_home


class MlflowHook(BaseHook):
    """Gives the tracking URI and an ``MlflowClient`` for it."""

    hook_name = "FL MLflow"

    def get_conn(self) -> Any:
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri()
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    @staticmethod
    def tracking_uri() -> str:
        from fl_core.tracking import default_tracking_uri

        return default_tracking_uri(fl_home())
