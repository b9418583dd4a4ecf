"""Hook owning the artifact store (round state): a local folder by default, S3 in production."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook


class ArtifactStoreHook(BaseHook):
    """Opens the store named by ``FL_ARTIFACT_STORE`` (path, file:// or s3:// URL), else
    ``FL_HOME/artifacts``."""

    conn_name_attr = "fl_artifact_store_conn_id"
    hook_name = "FL artifact store"

    def get_conn(self) -> Any:
        return self.get_store()

    @staticmethod
    def get_store() -> Any:
        from fl_core.store import store_from_env

        return store_from_env(fl_home() / "artifacts")


def fl_home() -> Path:
    env = os.environ.get("FL_HOME")
    if env:
        return Path(env)
    return project_root() / ".fl"


def project_root() -> Path:
    env = os.environ.get("FL_PROJECT_ROOT")
    return Path(env) if env else Path(__file__).resolve().parents[3]
