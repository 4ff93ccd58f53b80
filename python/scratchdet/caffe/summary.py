"""``scratchdet summary``: a prototxt's per-layer shapes, parameters, priors and multiply-adds."""
from __future__ import annotations

import json

from . import io, shapes
from .netstate import PHASES


def add_arguments(p) -> None:
    p.add_argument("prototxt", help="net prototxt (train, test or deploy)")
    p.add_argument("--phase", choices=sorted(PHASES), default=None,
                   help="filter layers by NetState phase (default: TEST for nets with phase rules)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def summarize(path, phase_name=None) -> shapes.NetShape:
    net = io.read_net(path)
    phase = PHASES[phase_name] if phase_name else None
    if phase is None and any(layer.include or layer.exclude for layer in net.layer):
        phase = PHASES["TEST"]
    return shapes.infer(net, phase, source=str(path))


def as_dict(ns: shapes.NetShape) -> dict:
    return {
        "name": ns.name, "batch": ns.batch, "layers": [
            {"name": ly.name, "type": ly.type, "bottoms": ly.bottoms, "tops": ly.tops,
             "top_shapes": [list(s) for s in ly.top_shapes],
             "param_shapes": [list(s) for s in ly.param_shapes],
             "learnable": ly.learnable, "stats": ly.stats, "macs": ly.macs, "priors": ly.priors}
            for ly in ns.layers],
        "learnable": ns.learnable, "stats": ns.stats, "priors": ns.priors,
        "macs": ns.macs, "macs_per_image": ns.macs // max(ns.batch, 1),
        "layer_types": {t: ns.count(t) for t in sorted({ly.type for ly in ns.layers})},
    }


def main(args) -> int:
    ns = summarize(args.prototxt, args.phase)
    if args.json:
        print(json.dumps(as_dict(ns), indent=1))
        return 0
    print(f"{'layer':32s} {'type':18s} {'output shape':24s} {'params':>12s} {'MACs':>16s}")
    for ly in ns.layers:
        out = " ".join("x".join(map(str, s)) if s else "scalar" for s in ly.top_shapes)
        print(f"{ly.name[:32]:32s} {ly.type[:18]:18s} {out[:24]:24s} {ly.learnable + ly.stats:12,d} {ly.macs:16,d}")
    print(f"layers: {len(ns.layers)}  learnable parameters: {ns.learnable:,}  BatchNorm statistics: {ns.stats:,}")
    print(f"priors: {ns.priors:,}  multiply-adds per image: {ns.macs // max(ns.batch, 1):,} "
          f"({ns.macs / max(ns.batch, 1) / 1e9:.2f} G)")
    return 0
