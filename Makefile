# scratchdet — see README.md. On a fresh clone `make demo` and `make test` need only Python 3.11:
# they create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SCRATCHDET := $(VENV)/bin/scratchdet
export PYTHONUNBUFFERED := 1

# Experiment knobs (see README): DRY_RUN=1 prints the commands; LMDB_DIR, VOC_ROOT, COCO_ROOT point at
# data elsewhere; GPUS is the GPU count the paper's schedule assumes (fewer present -> iter_size raised).
DRY_RUN ?=
LMDB_DIR ?= data/lmdb
GPUS ?= 4
export DRY_RUN LMDB_DIR GPUS VOC_ROOT COCO_ROOT

EXPERIMENTS := voc07_rootres34 voc07_rootres18 voc12_rootres34 coco_rootres34 table1 table2

.PHONY: help setup test gen bench demo demo-table1 mini-paper clean-demo $(EXPERIMENTS)

help:
	@echo "make demo          the whole pipeline on the embedded synthetic data (minutes, CPU)"
	@echo "make test          the test suite"
	@echo "make mini-paper    Table 1 and Table 2 / Figure 3 at CPU scale over seeds, claims marked (~1 h)"
	@echo "                   (MINI_PAPER_ARGS=\"--input-size 300 --width 4\" scales it up, e.g. on a GPU)"
	@echo "make demo-table1   Table 1's NAN pattern only, 300 iterations a cell (~15 min)"
	@echo "make gen           regenerate models/ for every paper variant"
	@echo "make bench         speed benchmarks (tables)"
	@echo "make $(EXPERIMENTS)"
	@echo "                   the paper's experiments on real data (DRY_RUN=1 prints the commands)"

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
	$(SCRATCHDET) gen --all --out models

# the speed benchmarks' peers (torchvision's SSD augmentation recipe), matching the pinned torch
$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install -q torchvision==0.29.1
	touch $@

bench: setup $(VENV)/.bench-installed
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
	@# gpu_check needs a CUDA device: without one its --dry mode runs the same code paths, small
	@if $(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		echo "== bench/gpu_check.sh"; bash bench/gpu_check.sh; \
	else echo "== bench/gpu_check.sh --dry (no CUDA device here)"; bash bench/gpu_check.sh --dry; fi

demo: setup
	$(SCRATCHDET) run demo

demo-table1: setup
	$(SCRATCHDET) run demo-table1

mini-paper: setup
	$(SCRATCHDET) mini-paper $(MINI_PAPER_ARGS)

# Real-data experiments need only the CLI: a missing data set stops at once with the commands to get it.
$(EXPERIMENTS): setup
	$(SCRATCHDET) run $@

clean-demo:
	rm -rf runs/synthetic data/synthetic data/lmdb/synthetic_*_lmdb data/synthetic_test_name_size.txt
