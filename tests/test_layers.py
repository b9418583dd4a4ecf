"""Layering: import-linter's contracts (pyproject.toml) hold, and DAG files import only
Airflow, the plugin and the light step list of fl_core.rounds."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept() -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'plugins'}"}
    lint = Path(sys.executable).with_name("lint-imports")

    run = subprocess.run(
        [str(lint)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_dag_files_import_only_downwards() -> None:
    allowed = ("airflow", "fl_airflow", "pendulum", "datetime", "typing", "__future__")
    for dag_file in sorted((REPO / "dags").glob("*.py")):
        tree = ast.parse(dag_file.read_text())
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        for node in top:
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [
                a.name for a in node.names
            ]
            for name in names:
                ok = name.startswith(allowed) or name == "fl_core.rounds"
                assert ok, f"{dag_file.name} imports {name} at parse time"
