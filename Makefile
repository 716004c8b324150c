# Two entry points (see README): `make pipeline` and `make test`.
# Both install the locked environment into .venv first (once; later calls skip it).
# TORCH=cpu (default) or TORCH=cu130 picks the torch build (requirements-torch-<TORCH>.lock).
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export TORCH ?= cpu

.PHONY: pipeline test setup data lint summary up down

setup:
	@bash scripts/bootstrap.sh

# The bundled datasets come out of the in-repo DVC remote (data/dvc-store) into the workspace.
data: setup
	@dvc pull --quiet $(wildcard data/raw/*.dvc)

pipeline: data
	python -m flows.pipeline
	dvc metrics show

test: data
	python -m pytest

# Every dataset's evaluated results side by side (outputs/summary.md), logged to MLflow.
summary: setup
	python -m flows.summary

lint: setup
	ruff check components flows tests scripts

# The Prefect UI (127.0.0.1:4200), the MLflow UI (127.0.0.1:5000) and the scheduled pipeline
# deployment; `down` stops them by their recorded ids (README, "Operations").
up: data
	python -m flows.services start

down:
	python -m flows.services stop
