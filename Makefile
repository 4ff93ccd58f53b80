# scratchdet — see README.md. `make demo` and `make test` work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup test gen bench demo help

help:
	@echo "make setup | test | demo | gen | bench (see README.md)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned: this version installs from the local wheel cache; an open range pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.14.1
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q tests

gen: setup
	$(VENV)/bin/scratchdet gen --all --out models

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
