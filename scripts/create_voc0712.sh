#!/usr/bin/env bash
# VOC0712 LMDBs as SSD's data/VOC0712/create_data.sh makes them: trainval (07+12), test (07),
# data/VOC0712/test_name_size.txt. Extra arguments go to `scratchdet data voc`: --voc12 adds the 07++12
# sets, VOC0712Plus_trainval_lmdb and (with VOC2012test.tar extracted into VOC2012/) VOC2012_test_lmdb
# plus data/VOC0712Plus/test_name_size.txt, the files models/VOC0712Plus/*/test.prototxt reference.
# VOC_ROOT: the VOCdevkit folder (default data/VOCdevkit); LMDB_DIR: output (default data/lmdb).
set -euo pipefail
cd "$(dirname "$0")/.."
SCRATCHDET=${SCRATCHDET:-$( [ -x .venv/bin/scratchdet ] && echo .venv/bin/scratchdet || echo scratchdet )}
exec "$SCRATCHDET" data voc --devkit "${VOC_ROOT:-data/VOCdevkit}" --out "${LMDB_DIR:-data/lmdb}" "$@"
