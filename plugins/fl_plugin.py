"""The Airflow plugin: registers the FL hooks and sensor with Airflow's plugin manager."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from fl_airflow.hooks.artifact_store import ArtifactStoreHook
from fl_airflow.hooks.mlflow_hook import MlflowHook


class FederatedLearningPlugin(AirflowPlugin):
    name = "fl_airflow"
    hooks = [ArtifactStoreHook, MlflowHook]
