# Two entry points for a new user: `make repro` and `make test`.
# Both create .venv from the committed lock file when it is missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# dvc.yaml runs `python -m immune_aging.stages.<stage>`: the venv's python must come first.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup browser repro test lint format bench bench-scale science summary lock clean-venv

setup: $(STAMP)

# The stamp depends on the lock: a changed lock reinstalls into the same venv.
# The packages' bytecode is compiled on every core after the install (pip compiles on
# one: 50 s instead of 65 s); it must exist, as PYTHONDONTWRITEBYTECODE=1 would leave
# every process to compile what it imports.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps --no-compile -r requirements.lock
	$(BIN)/python -m compileall -q -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" > /dev/null
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

repro: setup
	$(BIN)/dvc repro

# Headless Chromium (Debian packages) for the report's browser test; best effort here,
# required in CI (.ci/run).
browser:
	@bash scripts/install-chromium.sh || echo "warning: no chromium: the browser test will be skipped"

test: setup browser
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
	$(BIN)/python bench/compression.py
	$(BIN)/python bench/simulate_onek1k.py

# The whole pipeline at OneK1K's shape (SCALE=1.0: 981 donors, ~1.25 M cells) or a
# fraction of it, in a scratch project: bench/results/scale-*.json and scale.md.
# SCALE="0.04 0.2 1.0" runs the ladder (~50 k, ~250 k, ~1.25 M cells) with growth exponents.
SCALE ?= 1.0
bench-scale: setup
	$(BIN)/python bench/scale.py $(if $(word 2,$(SCALE)),--ladder $(SCALE),--scale $(SCALE))

# Power and calibration on the realistic simulation preset (about two hours on two
# cores): bench/results/science.{json,md,png}. Runs are kept in bench/scratch/science/.
science: setup
	IMMUNE_AGING_THREADS=$${IMMUNE_AGING_THREADS:-2} $(BIN)/python bench/science.py study
	$(BIN)/python bench/science.py summarise

# Regenerate the lock after changing dependency ranges in pyproject.toml.
lock:
	uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --generate-hashes -o requirements.lock

clean-venv:
	rm -rf $(VENV)
