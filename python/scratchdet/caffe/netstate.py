"""Caffe's NetState rules: which layers of a net exist in a given phase, level and stages."""
from __future__ import annotations

from .schema import pb

TRAIN, TEST = pb.TRAIN, pb.TEST
PHASES = {"TRAIN": TRAIN, "TEST": TEST}


def rule_matches(rule, phase: int, level: int = 0, stages=()) -> bool:
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def layer_included(layer, phase: int, level: int = 0, stages=()) -> bool:
    """A layer without rules is always in; ``include`` needs one match; ``exclude`` drops on one."""
    if layer.include:
        return any(rule_matches(r, phase, level, stages) for r in layer.include)
    return not any(rule_matches(r, phase, level, stages) for r in layer.exclude)


def filter_net(net, phase: int, level: int = 0, stages=()):
    """Return a copy of ``net`` holding only the layers present in this state (Caffe's FilterNet)."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for layer in net.layer:
        if layer_included(layer, phase, level, stages):
            out.layer.add().CopyFrom(layer)
    out.state.phase = phase
    return out
