"""``scratchdet mini-paper`` (``make mini-paper``): the paper's Table 1 and Table 2 / Figure 3 claims
at CPU scale, over seeds. The plan, the runs and the report are ``scratchdet.mini_paper``'s."""
from __future__ import annotations

import os

from .. import mini_paper
from ..errors import ScratchDetError


def _seeds(text: str) -> tuple:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        seeds = ()
    if not seeds or len(set(seeds)) != len(seeds):
        raise ScratchDetError(f"--seeds {text!r}: want distinct integers, comma-separated (e.g. 1,2,3)")
    return seeds


def add_arguments(p) -> None:
    s = mini_paper.Scale()
    per_part = lambda d: ", ".join(f"{k} {v if isinstance(v, int) else ','.join(map(str, v))}" for k, v in d.items())  # noqa: E731
    p.add_argument("--only", choices=mini_paper.PARTS, default=None, help="one part (default: both)")
    p.add_argument("--input-size", type=int, default=s.input_size, help=f"net input side (default {s.input_size})")
    p.add_argument("--width", type=float, default=s.width, help="channel multiplier (default 1)")
    p.add_argument("--iterations", type=int, default=None,
                   help=f"training iterations per run (default: {per_part(mini_paper.PART_ITERATIONS)})")
    p.add_argument("--seeds", default=None, help=f"seeds per cell, comma-separated (default: {per_part(mini_paper.PART_SEEDS)})")
    p.add_argument("--images", type=int, default=s.images, help=f"synthetic images per set, every 5th held out (default {s.images})")
    p.add_argument("--gpu", default="cpu", help="train on this CUDA device id (default: cpu, one thread a run)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time, one thread each (default: CPUs)")
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("DRY_RUN", "") not in ("", "0"),
                   help="print the plan's commands without running them (also DRY_RUN=1)")
    p.add_argument("--report-only", action="store_true", help="write the report from the runs made so far")


def main(args) -> int:
    if args.input_size < 32 or (args.iterations is not None and args.iterations < 1) or args.images < 10 or args.jobs < 1 or not 0 < args.width <= 8:
        raise ScratchDetError("--input-size >= 32, --iterations >= 1, --images >= 10, --jobs >= 1 and "
                              "0 < --width <= 8, please")
    scales = mini_paper.default_scales(args.input_size, args.width, args.iterations,
                                       _seeds(args.seeds) if args.seeds is not None else None, args.images, args.gpu)
    parts = (args.only,) if args.only else mini_paper.PARTS
    return mini_paper.run_experiment(scales, parts, args.jobs, args.dry_run, args.report_only)
