"""``scratchdet plot``: training curves of several runs on shared axes, and the paper's Figure 1
(the panels are described in ``report.plots``)."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import ScratchDetError
from ..report import plots, variants
from ..report.logparse import parse_log


def add_arguments(p) -> None:
    p.add_argument("logs", nargs="+", metavar="LOG", help="training logs (Caffe SSD, BVLC Caffe or ours)")
    p.add_argument("--out", required=True, help="folder for loss.png, lr.png, map.png, figure1.png")
    p.add_argument("--variant", action="append", default=None,
                   help="curve label per log, in order (default: the variant inferred as by compare)")
    p.add_argument("--window", type=int, default=plots.FLUCTUATION_WINDOW,
                   help=f"display points averaged in the fluctuation panel (default {plots.FLUCTUATION_WINDOW})")


def main(args) -> int:
    labels = args.variant or []
    if labels and len(labels) != len(args.logs):
        raise ScratchDetError(f"--variant given {len(labels)} times for {len(args.logs)} logs: give it once per log")
    runs, paper_values = [], {}
    for k, log in enumerate(args.logs):
        rec = parse_log(log)
        for w in rec.warnings:
            print(f"warning: {w}", file=sys.stderr)
        runs.append((labels[k] if labels else (variants.infer_variant(log, rec) or Path(log).stem), rec))
    names = plots.distinct_labels([name for name, _ in runs], args.logs)
    for k, ((name, rec), label) in enumerate(zip(runs, names)):
        runs[k] = (label, rec)
        try:
            result = variants.paper_result(variants.paper_key_for(name))
        except ScratchDetError:
            result = None
        if result is not None and result.value is not None and result.metric.startswith("VOC"):
            paper_values[label] = result.value
    if not any(rec.train or rec.tests or rec.diverged for _, rec in runs):
        raise ScratchDetError("nothing to plot: no training or test lines in " + ", ".join(args.logs))
    for path in plots.plot_runs(runs, args.out, args.window, paper_values):
        print(f"wrote {path}")
    return 0
