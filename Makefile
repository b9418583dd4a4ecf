# One-command entry points. Each target sets up the project's virtualenv first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export FL_HOME ?= $(CURDIR)/.fl
export GIT_PYTHON_REFRESH := quiet

.PHONY: setup run test lint bench mlflow-ui clean-state help

help:
	@echo "make run        run the federated experiment (dvc repro) on the embedded defaults"
	@echo "make test       run the test suite"
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

run: setup
	dvc repro
	-dvc push -q
	fl summary

test: setup
	python -m pytest -q

lint: setup
	ruff check .
	mypy

bench: setup
	python bench/bench_engine.py

mlflow-ui: setup
	mlflow ui --backend-store-uri sqlite:///$(FL_HOME)/mlflow.db --host 127.0.0.1 --port 5000

clean-state:
	rm -rf .fl data/prepared data/clients models metrics plots reports
