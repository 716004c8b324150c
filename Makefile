# Two entry points (see README): `make pipeline` and `make test`.
# Both install the locked environment into .venv first (once; later calls skip it).
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: pipeline test setup data lint summary

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
