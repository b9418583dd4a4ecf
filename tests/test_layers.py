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
    # At parse time a DAG file may import Airflow, the plugin, light libraries and, of
    # fl_core, only the step list (fl_core.rounds) and the form (fl_core.form); the steps
    # load inside tasks.
    heavy = ("torch", "mlflow", "numpy", "pandas", "sklearn", "great_expectations", "dvc")
    for dag_file in sorted((REPO / "dags").glob("*.py")):
        tree = ast.parse(dag_file.read_text())
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                assert root not in heavy, f"{dag_file.name} imports {name} at parse time"
                if root == "fl_core":
                    assert name in ("fl_core.rounds", "fl_core.form"), f"{dag_file.name}: {name}"


def test_rule_names_are_the_registry_s() -> None:
    # The config's strategy type and the form's choices are the aggregation registry's names.
    import typing

    from fl_core.aggregation import AGGREGATORS
    from fl_core.config import StrategyName
    from fl_core.form import FORM_FIELDS

    assert tuple(typing.get_args(StrategyName)) == tuple(AGGREGATORS)
    [strategy] = [f for f in FORM_FIELDS if f.name == "strategy"]
    assert strategy.enum == tuple(AGGREGATORS)
