#!/usr/bin/env bash
# GPU readiness table (bench/gpu_check.py): ScratchDet300 training at batch 32 in the faithful fp32
# path and the opt-in fast paths, data layer, host syncs, peak memory, torchrun, inference.
#   bench/gpu_check.sh            on cuda:0, at most about 8 minutes (--budget sets when rows stop starting)
#   bench/gpu_check.sh --dry      the same code paths on the CPU, small (what CI runs)
# PYTHON picks the interpreter (default: the repo's .venv, else python3). A machine whose python lacks
# one of the project's packages (lmdb, say) installs wheels from GPU_CHECK_WHEELS (default: .whl,
# else runs/whl) into a temporary folder first.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}"
NEEDED="import torch, numpy, lmdb, cv2, google.protobuf"
if ! "$PY" -c "$NEEDED" 2>/dev/null; then
    WHEELS=${GPU_CHECK_WHEELS:-}
    if [ -z "$WHEELS" ]; then
        if ls .whl/*.whl >/dev/null 2>&1; then WHEELS=.whl; else WHEELS=runs/whl; fi
    fi
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        SITE=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")
        trap 'rm -rf "$SITE"' EXIT
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
            || { echo "gpu_check: could not install the wheels in $WHEELS" >&2; exit 2; }
        export PYTHONPATH="$PYTHONPATH:$SITE"
    fi
    if ! ERR=$("$PY" -c "$NEEDED" 2>&1); then
        echo "gpu_check: $PY lacks a package the engine needs: $(echo "$ERR" | tail -1)" >&2
        echo "  (put its wheel in .whl or runs/whl, e.g. pip download --no-deps --only-binary=:all: lmdb -d runs/whl)" >&2
        exit 2
    fi
fi
# a hard stop past the script's own budget, so a hung row cannot hold the machine
timeout --kill-after=15 "${GPU_CHECK_TIMEOUT:-475}" "$PY" bench/gpu_check.py "$@"
