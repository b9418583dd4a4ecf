"""Environment for the embedded Airflow: everything under ``FL_HOME/airflow``, SQLite
metadata DB, this repo's ``dags/`` and ``plugins/``, loopback only.

Call :func:`configure` before the first ``import airflow`` of a process.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def fl_home() -> Path:
    env = os.environ.get("FL_HOME")
    return Path(env).resolve() if env else PROJECT_ROOT / ".fl"


#: Known third-party deprecation warnings, filtered only where they are raised: pathspec's
#: ``GitWildMatchPattern`` (used by Airflow's DAG-folder ignore rules) would put one
#: DeprecationWarning into every task log. (message prefix, category, source module)
QUIET_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    ("GitWildMatchPattern ('gitwildmatch') is deprecated", DeprecationWarning,
     "airflow.sdk._shared.module_loading.file_discovery"),
    ("GitWildMatchPattern ('gitwildmatch') is deprecated", DeprecationWarning,
     "airflow._shared.module_loading.file_discovery"),
    ("GitWildMatchPattern ('gitwildmatch') is deprecated", DeprecationWarning,
     "pathspec.pattern"),
)


def quiet_known_warnings() -> str:
    """Install :data:`QUIET_WARNINGS` in this process and return them in ``PYTHONWARNINGS``
    syntax, for processes that do not inherit this one's filters.

    Airflow adds a "show DeprecationWarnings of module airflow" filter in front of all others
    at import time unless ``sys.warnoptions`` is set; so the entries also go into
    ``sys.warnoptions``, Airflow's own filter is installed here, and ours in front of it.
    """
    entries = [
        f"ignore:{message}:{category.__name__}:{module}"
        for message, category, module in QUIET_WARNINGS
    ]
    for entry in entries:
        if entry not in sys.warnoptions:
            sys.warnoptions.append(entry)
    warnings.filterwarnings("default", category=DeprecationWarning, module="airflow")
    warnings.filterwarnings("default", category=PendingDeprecationWarning, module="airflow")
    for message, category, module in QUIET_WARNINGS:
        warnings.filterwarnings(
            "ignore", message=re.escape(message), category=category,
            module=re.escape(module) + "$",
        )
    return ",".join(entries)


def configure(*, parallelism: int = 4) -> dict[str, str]:
    """Set (without overriding what the user set) the Airflow env vars; returns them.

    Besides Airflow's own settings: MLflow does not install its stderr log handler
    (``MLFLOW_CONFIGURE_LOGGING=false``: Airflow files a task's stderr at ERROR level, so
    MLflow's INFO lines became red ERROR lines; its records now reach Airflow's handler at
    their real level), MLflow's artifact download progress bars are off (they were dumped
    into task logs; ``make run``'s own console progress bar stays), and the known third-party
    deprecation warnings are filtered at their source modules (:func:`quiet_known_warnings`).
    """
    quiet = quiet_known_warnings()
    existing = os.environ.get("PYTHONWARNINGS")
    if not existing or quiet not in existing:
        os.environ["PYTHONWARNINGS"] = f"{existing},{quiet}" if existing else quiet
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
        "MLFLOW_CONFIGURE_LOGGING": "false",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    for key, value in values.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in values}
