"""Environment for the embedded Airflow: everything under ``FL_HOME/airflow``, SQLite
metadata DB, this repo's ``dags/`` and ``plugins/``, loopback only.

Call :func:`configure` before the first ``import airflow`` of a process.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def fl_home() -> Path:
    env = os.environ.get("FL_HOME")
    return Path(env).resolve() if env else PROJECT_ROOT / ".fl"


def configure(*, parallelism: int = 4) -> dict[str, str]:
    """Set (without overriding what the user set) the Airflow env vars; returns them."""
    home = fl_home() / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    values = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(parallelism),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": "8080",
        "AIRFLOW__API__BASE_URL": "http://127.0.0.1:8080",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://127.0.0.1:8080/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "8793",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "FL_PROJECT_ROOT": str(PROJECT_ROOT),
        "FL_HOME": str(fl_home()),
        "GIT_PYTHON_REFRESH": "quiet",
        "NO_PROXY": "*",
    }
    for key, value in values.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in values}
