#!/usr/bin/env bash
# COCO LMDBs: trainval35k and minival (2014 layout) or train2017/val2017, plus the name-size file
# in data/coco/. Extra arguments go to `scratchdet data coco` (e.g. --year 2017).
# COCO_ROOT: folder with annotations/ and the image folders (default data/coco); LMDB_DIR: output.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRATCHDET=${SCRATCHDET:-$( [ -x .venv/bin/scratchdet ] && echo .venv/bin/scratchdet || echo scratchdet )}
exec "$SCRATCHDET" data coco --root "${COCO_ROOT:-data/coco}" --out "${LMDB_DIR:-data/lmdb}" "$@"
