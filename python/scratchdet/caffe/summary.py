"""A prototxt's per-layer shapes, parameters, priors and multiply-adds (``scratchdet summary``)."""
from __future__ import annotations

from . import io, shapes
from .netstate import PHASES


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
