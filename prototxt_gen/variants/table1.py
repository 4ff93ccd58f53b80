"""Table 1: SSD300 with VGG16 on VOC07, BatchNorm switched on in the backbone and/or the head, from
scratch or from ImageNet weights, at base lr 0.001 / 0.01 / 0.05 (paper §4.1; the configurations and
numbers are ``scratchdet.paper.TABLE1_CONFIGS`` / ``RESULTS``). 18 cells, ids
``table1_<config>_lr<lr>``."""
from __future__ import annotations

from scratchdet import paper
from scratchdet.datasets import DATASETS

from ..backbones import VGGSpec
from .base import Arch, Variant
from .schedules import ssd_schedule

SWITCHES = {   # config -> (BN in backbone, BN in head, pretrained weights)
    "scratch_nobn": (False, False, None),
    "scratch_bn_head": (False, True, None),
    "scratch_bn_backbone": (True, False, None),
    "scratch_bn_both": (True, True, None),
    "pretrained_vgg16": (False, False, "VGG16 fc-reduced ImageNet (SSD's VGG_ILSVRC_16_layers_fc_reduced)"),
    "pretrained_vgg16bn_bn_both": (True, True, "VGG16-BN ImageNet weights converted from PyTorch's model"),
}

VGG_SOURCES = ("conv4_3 (38), fc7 (19), conv6_2 (10), conv7_2 (5), conv8_2 (3), conv9_2 (1); "
               "SSD's layers, read after their ReLU")


def variants() -> list[Variant]:
    out = []
    labels = dict(paper.TABLE1_CONFIGS)
    for config, _ in paper.TABLE1_CONFIGS:
        bn_backbone, bn_head, weights = SWITCHES[config]
        for lr in paper.TABLE1_LRS:
            scratch = weights is None
            out.append(Variant(
                id=f"table1_{config}_lr{lr:g}", title=f"SSD300 VGG16, {labels[config]}, lr {lr:g}",
                table="Table 1", cell=f"{labels[config]}; base lr {lr:g}", data=DATASETS["voc07"],
                paper_key=paper.table1_key(config, lr), schedule=ssd_schedule(lr), profile="paper",
                arch=Arch(vgg=VGGSpec(bn=bn_backbone), bn_head=bn_head),
                # scratch: batch 128 as 4 GPUs x 32; pretrained: SSD's 32 (paper §4.1)
                batch_per_gpu=32, gpus=4 if scratch else 1, pretrained=weights,
                test_interval=10000, snapshot=80000, display=10,
                notes=("'backbone' = truncated VGG16 + SSD's extra layers, 'head' = the 3x3 loc/conf convs "
                       "(BatchNorm+Scale after each); no L2 Normalize (paper §4.1)",
                       "sources: " + VGG_SOURCES)))
    return out
