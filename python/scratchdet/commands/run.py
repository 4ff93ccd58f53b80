"""``scratchdet run``: the whole pipeline of one experiment (data, gen, train, test, compare, plot);
``--dry-run`` prints its commands. The plans are ``pipeline``'s."""
from __future__ import annotations

import os
import sys

from .. import pipeline
from ..errors import EXIT_BAD_INPUT


def add_arguments(p) -> None:
    p.add_argument("experiment", help="demo, demo-table1, voc07_rootres34, voc07_rootres18, "
                                      "voc12_rootres34, coco_rootres34, table1 or table2")
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("DRY_RUN", "") not in ("", "0"),
                   help="print the commands without running them (also DRY_RUN=1)")
    p.add_argument("--lmdb-dir", default=os.environ.get("LMDB_DIR", pipeline.LMDB_DIR),
                   help="folder holding the LMDBs (also LMDB_DIR=...)")
    p.add_argument("--gpus", type=int, default=int(os.environ.get("GPUS", "4")),
                   help="GPUs the paper's schedule assumes (default 4; fewer present -> iter_size raised)")
    p.add_argument("--raw", default=None, help="raw data folder (default from VOC_ROOT / COCO_ROOT)")
    p.add_argument("--images", type=int, default=int(os.environ.get("SYNTH_IMAGES", str(pipeline.DEMO_IMAGES))),
                   help=f"synthetic images to make for the demo (default {pipeline.DEMO_IMAGES}, every 5th held out)")


def main(args) -> int:
    if args.experiment == "demo":
        return pipeline.run_plan(pipeline.plan_demo(images=args.images), args.dry_run)
    if args.experiment == "demo-table1":
        return pipeline.run_plan(pipeline.plan_demo(pipeline.table_variants("demo_table1_"), images=args.images,
                                                    detect=False, name="demo-table1"), args.dry_run)
    try:
        plan = pipeline.plan_experiment(args.experiment, args.lmdb_dir, args.gpus, args.raw)
    except pipeline.DataMissing as exc:
        print(f"scratchdet run: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return pipeline.run_plan(plan, args.dry_run)
