"""SSD300 itself (fine-tuned VGG16, no BatchNorm, L2 Normalize on conv4_3), the baseline the paper
compares with (77.2 mAP in SSD's paper). Id ``voc07_ssd300_vgg16``."""
from __future__ import annotations

from scratchdet.datasets import DATASETS

from ..backbones import VGGSpec
from .base import Arch, Variant
from .schedules import ssd_schedule
from .table1 import VGG_SOURCES


def variants() -> list[Variant]:
    return [Variant(
        id="voc07_ssd300_vgg16", title="SSD300 (pretrained VGG16, L2 Normalize on conv4_3), the paper's baseline",
        table="SSD300", cell="SSD300 as SSD's ssd_pascal.py: fine-tuned VGG16, no BatchNorm, Normalize 20 on conv4_3",
        data=DATASETS["voc07"], paper_key=None, schedule=ssd_schedule(0.001), profile="ssd",
        arch=Arch(vgg=VGGSpec(bn=False), bn_head=False, normalizations=(20, -1, -1, -1, -1, -1)),
        batch_per_gpu=32, gpus=1, pretrained="VGG16 fc-reduced ImageNet (SSD's VGG_ILSVRC_16_layers_fc_reduced)",
        test_interval=10000, snapshot=80000, display=10,
        notes=("the paper quotes SSD's own 77.2 mAP for it (not one of its tables)", "sources: " + VGG_SOURCES))]
