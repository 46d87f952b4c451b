# vit-rpe: `make train` and `make test` work on a fresh clone; each installs first when needed.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
# a pinned uv of our own, bootstrapped with pip ignoring any machine-wide pip config (override: UV=uv)
UV ?= .tools/bin/uv
UV_VERSION := 0.13.8
EXTRAS ?= --extra dev
STAMP := $(VENV)/.installed
# pytest workers: tests pin one thread each, so one worker per core
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# the real MNIST files some tests read, when the workplace has them beside the repo
MNIST ?= $(wildcard $(CURDIR)/../shared/data/mnist)

.PHONY: help install train test test-full lint format bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv from uv.lock (idempotent): the dev extra, which has sweep; slurm: see README

# --compile-bytecode: uv, unlike pip, writes no .pyc files, and where PYTHONDONTWRITEBYTECODE is set
# (CI, containers) Python never caches them either: every process would compile torch, Lightning and
# transformers from source, `import lightning` taking 25 s instead of 9 s on a 2-core VM (2026-12-06;
# compiling them once at install takes about 50 s there)
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode $(EXTRAS)
	@touch $@

.tools/bin/uv:
	python3 -m venv .tools
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= .tools/bin/pip install --quiet "uv==$(UV_VERSION)"

train: install ## the main job: a small ViT on the bundled digits, CPU, about 2 minutes
	$(PY) -m vit_rpe.train experiment=quickstart

test: install ## the test suite without the slow tests (every feature end to end at tiny sizes)
	VIT_RPE_MNIST=$(MNIST) $(PY) -m pytest -m "not slow" -n $(JOBS) -q --durations=15

test-full: install ## every test, the slow learning and scaling runs included
	VIT_RPE_MNIST=$(MNIST) $(PY) -m pytest -n $(JOBS) -q --durations=15

lint: install ## ruff lint and format check
	$(VENV)/bin/ruff check vit_rpe tests
	$(VENV)/bin/ruff format --check vit_rpe tests

format: install ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix vit_rpe tests
	$(VENV)/bin/ruff format vit_rpe tests

bench: install ## the benchmarks recorded in docs/benchmarks.md
	$(PY) -m vit_rpe.bench attention
	$(PY) -m vit_rpe.bench model
	$(PY) -m vit_rpe.bench favor
	$(PY) -m vit_rpe.bench data

clean: ## remove run outputs, caches and build files (keeps .venv and data/)
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf multirun .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -not -path './.venv/*' -exec rm -rf {} +
