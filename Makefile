# One-command entry points. Each target sets up the project's virtualenv first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export FL_HOME ?= $(CURDIR)/.fl
export GIT_PYTHON_REFRESH := quiet

.PHONY: setup run experiment airflow serve test lint bench mlflow-ui clean-state help

help:
	@echo "make run         a federated campaign through the Airflow DAGs (embedded defaults)"
	@echo "make experiment  the whole DVC pipeline (dvc repro) with the in-process engine"
	@echo "make airflow     Airflow UI and scheduler on http://127.0.0.1:8080"
	@echo "make serve       serve models:/fl-mnist5k-mlp@champion on http://127.0.0.1:5001"
	@echo "make test        run the test suite"
	@echo "make lint       ruff + mypy"
	@echo "make bench      benchmarks (bench/)"
	@echo "make mlflow-ui  MLflow UI on http://127.0.0.1:5000"

$(STAMP): requirements.lock pyproject.toml
	@echo ">> creating $(VENV) and installing pinned dependencies (first run only)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# Data stages are DVC's (versioned partitions); the campaign runs as Airflow DAG runs.
run: setup
	dvc repro validate
	PYTHONPATH=plugins python -m fl_airflow.run

experiment: setup
	dvc repro
	-dvc push -q
	fl summary

airflow: setup
	PYTHONPATH=plugins python -m fl_airflow.services

MODEL ?= fl-mnist5k-mlp
serve: setup
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(FL_HOME)/mlflow.db} \
	MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
	  mlflow models serve -m "models:/$(MODEL)@champion" --env-manager local -h 127.0.0.1 -p 5001

test: setup
	python -m pytest -q

lint: setup
	ruff check .
	mypy
	PYTHONPATH=plugins lint-imports

bench: setup
	for b in bench/bench_*.py; do echo ">> $$b"; python $$b || exit 1; done

mlflow-ui: setup
	mlflow ui --backend-store-uri sqlite:///$(FL_HOME)/mlflow.db --host 127.0.0.1 --port 5000

clean-state:
	rm -rf .fl data/prepared data/clients models metrics plots reports

# Mutation testing (not part of `make test`; hours on two cores): mutmut from the dev extra,
# group by group (MUTATION_GROUPS="codec wire" for some), report in $(FL_HOME)/mutation/.
MUTATION_GROUPS ?=
.PHONY: mutation
mutation: setup
	python -m pip install -q -e ".[dev]"
	python -m tests.mutation --max-children 2 $(MUTATION_GROUPS)

# Production stack as local processes on 127.0.0.1 (PostgreSQL + Redis of this machine,
# moto_server as S3): Airflow with two Celery workers, MLflow server, serving. See
# docs/production.md; state and logs under $(FL_HOME)/stack.
.PHONY: stack stack-down
stack: setup
	PYTHONPATH=plugins:$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} python -m fl_airflow.stack up

stack-down: setup
	PYTHONPATH=plugins:$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} python -m fl_airflow.stack down
