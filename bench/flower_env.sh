#!/usr/bin/env bash
# Create (once) the isolated virtualenv in which bench/bench_aggregation.py runs Flower's side.
#
# Flower's dependency pins conflict with Airflow's, so Flower never goes into the project's
# .venv: it lives in $FL_HOME/bench-flower-venv (default .fl/bench-flower-venv), with only
# flwr and numpy. Prints the venv's python on stdout. Override with FLOWER_VENV, PYTHON
# (the interpreter that creates the venv) and FLWR_VERSION.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FLOWER_VENV:-${FL_HOME:-$PWD/.fl}/bench-flower-venv}"
PY="${PYTHON:-python3}"
FLWR_VERSION="${FLWR_VERSION:-1.42.0}"

if ! "$VENV/bin/python" -c "import flwr.server.strategy.aggregate" >/dev/null 2>&1; then
  echo ">> creating $VENV with flwr==$FLWR_VERSION (first run only)" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade "pip>=24" >&2
  if ! "$VENV/bin/python" -m pip install -q "flwr==$FLWR_VERSION" numpy >&2; then
    echo "!! could not install flwr from PyPI (check: pip download --no-deps flwr)" >&2
    exit 1
  fi
fi
echo "$VENV/bin/python"
