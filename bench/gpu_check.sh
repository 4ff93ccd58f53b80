#!/usr/bin/env bash
# GPU readiness table (bench/gpu_check.py): ScratchDet300 training at batch 32 in the faithful fp32
# path and the opt-in fast paths, data layer, host syncs, peak memory, torchrun, inference.
#   bench/gpu_check.sh            on cuda:0, at most about 8 minutes (--budget sets when rows stop starting)
#   bench/gpu_check.sh --dry      the same code paths on the CPU, small (what CI runs)
# PYTHON picks the interpreter (default: the repo's .venv, else python3).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# a hard stop past the script's own budget, so a hung row cannot hold the machine
exec timeout --kill-after=15 "${GPU_CHECK_TIMEOUT:-475}" "$PY" bench/gpu_check.py "$@"
