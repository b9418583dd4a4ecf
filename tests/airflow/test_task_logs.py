"""What lands in task logs: no known third-party deprecation noise, MLflow at its real level.

Services: none — fresh Python subprocesses (warnings filters are per process), the real
MLflow SQLite registry for the stderr check.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CODE = r"""
from fl_airflow import env
if {configure}:
    env.configure()
from pathlib import Path
from airflow.sdk._shared.module_loading import file_discovery as fd
fd._GlobIgnoreRule.compile('*.pyc', Path('.'), Path('.airflowignore'))
import os
print('MLFLOW_CONFIGURE_LOGGING=' + os.environ.get('MLFLOW_CONFIGURE_LOGGING', '-'))
"""


def _run(configure: bool, home: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "MLFLOW")) and k != "PYTHONWARNINGS"
    }
    env.update(FL_HOME=str(home), PYTHONPATH=f"{REPO / 'plugins'}:{REPO}")
    return subprocess.run(
        [sys.executable, "-c", CODE.format(configure=configure)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def test_gitwildmatch_deprecation_is_filtered_at_its_source_only(tmp_path: Path) -> None:
    plain = _run(False, tmp_path)
    configured = _run(True, tmp_path)

    assert "GitWildMatchPattern" in plain.stdout + plain.stderr  # the noise exists
    assert "GitWildMatchPattern" not in configured.stdout + configured.stderr
    assert "MLFLOW_CONFIGURE_LOGGING=false" in configured.stdout


def test_mlflow_registry_prints_become_info_records(tmp_path: Path, capfd, caplog) -> None:
    import logging

    from fl_core import tracking as tr

    with caplog.at_level(logging.INFO, logger="fl_core.tracking"), tr._mlflow_prints_as_info():
        print("Successfully registered model 'fl-x'.", file=sys.stderr)

    assert "Successfully registered" not in capfd.readouterr().err
    record = next(r for r in caplog.records if "Successfully registered" in r.getMessage())
    assert record.levelno == logging.INFO
