"""``scratchdet summary``: a prototxt's per-layer shapes, parameters, priors and multiply-adds."""
from __future__ import annotations

import json

from ..caffe import summary
from ..caffe.netstate import PHASES


def add_arguments(p) -> None:
    p.add_argument("prototxt", help="net prototxt (train, test or deploy)")
    p.add_argument("--phase", choices=sorted(PHASES), default=None,
                   help="filter layers by NetState phase (default: TEST for nets with phase rules)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def main(args) -> int:
    ns = summary.summarize(args.prototxt, args.phase)
    if args.json:
        print(json.dumps(summary.as_dict(ns), indent=1))
        return 0
    print(f"{'layer':32s} {'type':18s} {'output shape':24s} {'params':>12s} {'MACs':>16s}")
    for ly in ns.layers:
        out = " ".join("x".join(map(str, s)) if s else "scalar" for s in ly.top_shapes)
        print(f"{ly.name[:32]:32s} {ly.type[:18]:18s} {out[:24]:24s} {ly.learnable + ly.stats:12,d} {ly.macs:16,d}")
    print(f"layers: {len(ns.layers)}  learnable parameters: {ns.learnable:,}  BatchNorm statistics: {ns.stats:,}")
    print(f"priors: {ns.priors:,}  multiply-adds per image: {ns.macs // max(ns.batch, 1):,} "
          f"({ns.macs / max(ns.batch, 1) / 1e9:.2f} G)")
    return 0
