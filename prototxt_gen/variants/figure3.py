"""Figure 3: the four ResNet-18 first layers whose training curves the paper plots (a: 7x7/2 conv
and max-pool, b: max-pool removed, c: first conv stride 1, d: Root-ResNet-18's three 3x3 convs),
on Table 2's net and schedule. Ids ``fig3_<name>``."""
from __future__ import annotations

from .base import Variant
from .table2 import resnet18_variant

NETS = {   # name -> (title, root convs, kernel, downsample, max-pool)
    "resnet18": ("ResNet-18 (7x7/2 conv + max-pool)", 1, 7, True, True),
    "resnet18_a": ("ResNet-18-A (max-pool removed)", 1, 7, True, False),
    "resnet18_b": ("ResNet-18-B (first conv stride 1)", 1, 7, False, True),
    "root_resnet18": ("Root-ResNet-18 (three 3x3 convs, stride 1)", 3, 3, False, True),
}


def variants() -> list[Variant]:
    return [resnet18_variant(f"fig3_{name}", title, "Figure 3", title, f"figure3/{name}", c, k, ds, pool)
            for name, (title, c, k, ds, pool) in NETS.items()]
