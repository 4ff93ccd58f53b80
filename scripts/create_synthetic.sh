#!/usr/bin/env bash
# The synthetic shapes set (data/synthetic) and its LMDBs (synthetic_trainval_lmdb,
# synthetic_test_lmdb) with data/synthetic_test_name_size.txt. Extra arguments go to
# `scratchdet data synthetic`. SYNTH_IMAGES (default 600), SYNTH_ROOT, LMDB_DIR as in the Makefile.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRATCHDET=${SCRATCHDET:-$( [ -x .venv/bin/scratchdet ] && echo .venv/bin/scratchdet || echo scratchdet )}
exec "$SCRATCHDET" data synthetic --out "${SYNTH_ROOT:-data/synthetic}" --images "${SYNTH_IMAGES:-600}" \
    --seed "${SYNTH_SEED:-0}" --lmdb "${LMDB_DIR:-data/lmdb}" "$@"
