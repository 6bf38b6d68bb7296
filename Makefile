# Two entry points for a new user: `make repro` and `make test`.
# Both create .venv from the committed lock file when it is missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup repro test test-fast lint format bench summary lock clean-venv

setup: $(STAMP)

# The stamp depends on the lock: a changed lock reinstalls into the same venv.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

repro: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

summary: setup
	$(BIN)/python -m immune_aging.runlog

bench: setup
	$(BIN)/python bench/run.py

# Regenerate the lock after changing dependency ranges in pyproject.toml.
lock:
	uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --generate-hashes -o requirements.lock

clean-venv:
	rm -rf $(VENV)
